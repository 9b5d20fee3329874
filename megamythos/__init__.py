"""megamythos: DeepSpeed/Megatron-style pretraining of a recurrent-depth Mixture-of-Experts transformer.

Prelude (dense blocks, once) -> one shared Recurrent Block looped T times with LTI-stable injection and ACT
halting -> Coda (dense blocks, once) -> RMSNorm -> LM head.
"""
__version__ = "0.1.0"
