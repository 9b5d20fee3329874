"""Building blocks shared by every part of the model: RMSNorm, SwiGLU, rotary embeddings, the weight-cast cache."""
from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


@functools.lru_cache(maxsize=1)
def _apex_rms_norm() -> Callable[..., torch.Tensor] | None:
    """NVIDIA apex's fused ``fused_rms_norm_affine(x, weight, shape, eps)`` when apex is built with its CUDA
    extensions, else None (lazy import; the PyPI package named ``apex`` is another project and fails here)."""
    try:
        from apex.normalization.fused_layer_norm import fused_rms_norm_affine  # type: ignore[import-not-found]
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return None
    return fused_rms_norm_affine


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight over the last dim, x [..., H] -> [..., H], computed in fp32 and
    returned in the input dtype.

    On CUDA with apex installed and x, weight of one dtype, apex's fused kernel computes the same (fp32 inside).
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch.compile traces the cached import attempt as a graph break, and fuses the norm itself anyway
        if x.is_cuda and x.dtype == self.weight.dtype and not torch.compiler.is_compiling():
            fused = _apex_rms_norm()
            if fused is not None:
                return fused(x, self.weight, self.weight.shape, self.eps)
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * self.weight.float()).to(x.dtype)


class SwiGLU(nn.Module):
    """FFN(x) = W_down (silu(W_gate x) * W_up x); [..., H] -> [..., H], hidden width F.

    Gate and up stay separate Linears so tensor parallelism can column-shard both and row-shard W_down.
    """

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w_gate = nn.Linear(dim, hidden_dim, bias=False)
        self.w_up = nn.Linear(dim, hidden_dim, bias=False)
        self.w_down = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


def rope_cos_sin(positions: torch.Tensor, rot_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [..., rot_dim/2] in fp32 for integer ``positions`` [...]: [S] shared by the batch, or [B, S]
    per row (a padded batch).

    Built on the fly from the positions (never stored, so never in a checkpoint and never cast to bf16):
    angle[..., i] = pos[...] * theta^(-2i/rot_dim), formed and reduced mod 2*pi in fp64, then fp32 for cos/sin.
    An fp32 product would carry half an ulp of the whole angle (1e-4 rad at position 4096, 0.05 near 10^6, the
    1M-context presets' max_seq_len); the reduced angle in [0, 2*pi) is within 3e-7 rad at any position.
    """
    inv_freq = theta ** (-torch.arange(0, rot_dim, 2, device=positions.device, dtype=torch.float64) / rot_dim)
    angles = (positions.to(torch.float64)[..., None] * inv_freq).remainder_(2 * math.pi).to(torch.float32)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of the last dim of x [B, S, h, d] by the angles of cos/sin [S, d/2] or [B, S, d/2]
    (fp32 math)."""
    x32 = x.float()
    x1, x2 = x32.chunk(2, dim=-1)
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).to(x.dtype)


# ------------------------------------------------------------------------------------------- weight-cast cache
class _CastCache(threading.local):
    """The open cache of this thread: {(id(weight), dtype): (weight, weight._version, cast)}, or None."""

    entries: dict[tuple[int, torch.dtype], tuple[torch.Tensor, int, torch.Tensor]] | None = None


_CAST_CACHE = _CastCache()


@contextmanager
def weights_cast_once() -> Iterator[None]:
    """Inside this context :func:`cast_weight` casts each leaf weight to a dtype once, not once per call.

    Meant around one forward of a module whose weights are used several times (the shared recurrent block,
    T loops): each weight w is cast to w_c = w.to(dtype) at its first use and w_c is reused afterwards, so
    the forward holds one cast per weight and the backward one ToCopyBackward per weight, into which autograd
    first sums the T uses' gradients (in the compute dtype, as autocast's own weight cache does for
    ``nn.Linear``). Gradients still reach the fp32 parameter through the cast. A cast made under
    ``torch.no_grad`` (truncated backprop's no-grad loops) is replaced by a tracked one at the first use with
    gradient; an in-place change of the weight (its version counter) invalidates its entry. Nested opens keep
    the outer cache; the cache is emptied when the outermost context exits, so it never outlives the forward
    (an activation-checkpoint recompute in backward casts afresh). Under ZeRO-3 the first use happens inside
    the module call, where the weight is gathered; the cached cast stays valid after the release.
    """
    if _CAST_CACHE.entries is not None:
        yield
        return
    _CAST_CACHE.entries = {}
    try:
        yield
    finally:
        _CAST_CACHE.entries = None


def cast_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """weight.to(dtype), taken from the cache of :func:`weights_cast_once` when one is open and weight is a leaf.

    Outside the context, for non-leaf tensors, when no cast is needed and while ``torch.compile`` traces
    (inductor schedules casts itself; a Python dict is not traceable), it is a plain ``weight.to(dtype)``.
    """
    if torch.compiler.is_compiling() or weight.dtype == dtype or not weight.is_leaf:
        return weight.to(dtype)  # tracing first: Dynamo must not read (and guard on) the cache dict
    entries = _CAST_CACHE.entries
    if entries is None:
        return weight.to(dtype)
    key = (id(weight), dtype)
    cached = entries.get(key)
    if (cached is not None and cached[1] == weight._version
            and (cached[2].requires_grad or not (torch.is_grad_enabled() and weight.requires_grad))):
        return cached[2]
    cast = weight.to(dtype)
    entries[key] = (weight, weight._version, cast)
    return cast
