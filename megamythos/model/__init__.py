"""The model: ``config`` (ModelConfig, presets) → ``layers`` (RMSNorm, SwiGLU, RoPE) → ``attention`` (MLA/GQA,
KV cache) and ``moe`` (routed + shared experts) → ``recurrent`` (the looped block, injection, exit rule) →
``lm`` (MythosLM: prelude → recurrent core → coda → head); ``params`` counts parameters and FLOPs analytically.

The names a user builds a model with are importable from here (``from megamythos.model import MythosLM,
get_preset``), each loaded on first use, so ``import megamythos.model.config`` or ``.params`` stays free of torch.

Nothing here imports DeepSpeed or any other megamythos layer except :mod:`megamythos.errors`.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"ConfigError": "config", "ModelConfig": "config", "get_preset": "config", "MythosLM": "lm",
            "MythosOutput": "lm", "compile_blocks": "lm", "sample_loop_count": "lm", "count": "params"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """``megamythos.model.NAME`` for the names of ``__all__``, from the module that defines it."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
