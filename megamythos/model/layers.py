"""Building blocks shared by every part of the model: RMSNorm, SwiGLU, rotary embeddings."""
from __future__ import annotations

import functools
from collections.abc import Callable

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
    """y = x / sqrt(mean(x^2) + eps) * weight, computed in fp32 and returned in the input dtype.

    On CUDA with apex installed and x, weight of one dtype, apex's fused kernel computes the same (fp32 inside).
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda and x.dtype == self.weight.dtype:
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
    """cos/sin tables [S, rot_dim/2] in fp32 for integer ``positions`` [S].

    Built on the fly from the positions (never stored, so never in a checkpoint and never cast to bf16):
    angle[s, i] = pos[s] * theta^(-2i/rot_dim).
    """
    inv_freq = theta ** (-torch.arange(0, rot_dim, 2, device=positions.device, dtype=torch.float32) / rot_dim)
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of the last dim of x [B, S, h, d] by the angles of cos/sin [S, d/2] (fp32 math)."""
    x32 = x.float()
    x1, x2 = x32.chunk(2, dim=-1)
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).to(x.dtype)
