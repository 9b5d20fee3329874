"""megamythos: DeepSpeed/Megatron-style pretraining of a recurrent-depth Mixture-of-Experts transformer.

Prelude (dense blocks, once) -> one shared Recurrent Block looped T times with LTI-stable injection and a
state-convergence exit at inference -> Coda (dense blocks, once) -> RMSNorm -> LM head. The layers are the
sub-packages (README.md, "Layout"); ``errors`` is the base they all import.
"""
__version__ = "0.1.0"
