"""The model: ``config`` (ModelConfig, presets) → ``layers`` (RMSNorm, SwiGLU, RoPE) → ``attention`` (MLA/GQA,
KV cache) and ``moe`` (routed + shared experts) → ``recurrent`` (the looped block, injection, exit rule) →
``lm`` (MythosLM: prelude → recurrent core → coda → head); ``params`` counts parameters and FLOPs analytically.

Nothing here imports DeepSpeed or any other megamythos layer except :mod:`megamythos.errors`.
"""
