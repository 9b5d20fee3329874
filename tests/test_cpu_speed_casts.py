"""The weight-cast cache: a weight reused across loops is cast to the compute dtype once per forward, and the
gradients it passes to the fp32 (here: fp64) parameters equal those of the plain per-call cast."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from megamythos.model.config import ModelConfig
from megamythos.model.layers import cast_weight, weights_cast_once
from megamythos.model.moe import MoE, grouped_matmul
from tests.helpers import requires_grouped_mm

COUNTS = torch.tensor([5, 0, 7, 4])


class CastCounter(TorchDispatchMode):
    """Counts ``aten._to_copy`` calls whose input has a given shape (the casts of one weight)."""

    def __init__(self, shape: torch.Size) -> None:
        super().__init__()
        self.shape, self.calls = shape, 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func is torch.ops.aten._to_copy.default and args[0].shape == self.shape:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def looped(x: torch.Tensor, weight: torch.Tensor, loops: int) -> torch.Tensor:
    """x [16, 32] through grouped_matmul with the same weight [4, 32, 32] ``loops`` times (a shared block)."""
    for _ in range(loops):
        x = torch.tanh(grouped_matmul(x, weight, COUNTS))
    return x


def grads(cached: bool, no_grad_loops: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of (x, weight) for fp32 compute on an fp64 weight, 3 loops (after ``no_grad_loops`` more)."""
    torch.manual_seed(0)
    x = torch.randn(16, 32, requires_grad=True)
    weight = torch.randn(4, 32, 32, dtype=torch.float64, requires_grad=True)
    with weights_cast_once() if cached else nullcontext():
        h = x
        with torch.no_grad():
            h = looped(h, weight, no_grad_loops)
        out = looped(h + x, weight, 3)
    out.pow(2).sum().backward()
    return x.grad, weight.grad


@pytest.mark.parametrize("no_grad_loops", [0, 2])
def test_cached_cast_gradients_equal_per_call_casts(no_grad_loops: int) -> None:
    """Truncated backprop included: a cast cached under no_grad must not cut the weight's gradient."""
    x_plain, w_plain = grads(False, no_grad_loops)
    x_cached, w_cached = grads(True, no_grad_loops)
    assert w_cached is not None and w_cached.dtype == torch.float64
    torch.testing.assert_close(x_cached, x_plain, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(w_cached, w_plain, rtol=1e-6, atol=1e-6)


def test_weight_is_cast_once_per_forward_inside_the_context() -> None:
    x, weight = torch.randn(16, 32), torch.randn(4, 32, 32, requires_grad=True)
    counter = CastCounter(weight.shape)
    with counter, torch.autocast("cpu", dtype=torch.bfloat16):
        looped(x, weight, 4)
        assert counter.calls == 4
        for _ in range(2):  # two forwards: one cast each, the cache does not outlive its context
            with weights_cast_once():
                looped(x, weight, 4)
    assert counter.calls == 6


def test_in_place_update_invalidates_the_cached_cast() -> None:
    weight = torch.randn(4, 8, 8, dtype=torch.float64)
    with weights_cast_once():
        first = cast_weight(weight, torch.float32)
        assert cast_weight(weight, torch.float32) is first
        weight.mul_(2)
        second = cast_weight(weight, torch.float32)
    torch.testing.assert_close(second, 2 * first)


def test_moe_under_bf16_autocast_gradients_match_per_call_casts() -> None:
    """The MoE layer (routed + shared experts) looped 3 times under bf16 autocast: the cached path differs only
    by the bf16 summation of the loops' weight gradients before the one cast back."""
    torch.manual_seed(0)
    moe = MoE(ModelConfig(dim=32, n_experts=4, num_experts_per_tok=2, expert_dim=16, n_shared_experts=1))
    for param in moe.parameters():
        torch.nn.init.normal_(param, std=0.2)
    x = torch.randn(1, 24, 32)

    def weight_grads(cached: bool) -> dict[str, torch.Tensor]:
        moe.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16), (weights_cast_once() if cached else nullcontext()):
            h = x
            for _ in range(3):
                h = h + moe(h).hidden
        h.float().pow(2).sum().backward()
        return {name: param.grad.clone() for name, param in moe.named_parameters()}

    plain, cached = weight_grads(False), weight_grads(True)
    for name, grad in plain.items():
        assert cached[name].dtype == torch.float32
        assert (cached[name] - grad).norm() <= 0.02 * grad.norm(), name


@requires_grouped_mm
def test_cached_cast_under_torch_compile_matches_eager() -> None:
    """While Dynamo traces, cast_weight is a plain cast (no graph break): the compiled loop gives eager's
    output and gradients (fp32 compute on an fp64 weight)."""
    x = torch.randn(16, 32)
    weight = torch.randn(4, 32, 32, dtype=torch.float64, requires_grad=True)
    compiled = torch.compile(looped, backend="aot_eager", fullgraph=True)
    results = []
    for fn in (looped, compiled):
        weight.grad = None
        with weights_cast_once():
            out = fn(x, weight, 3)
        out.sum().backward()
        results.append((out.detach(), weight.grad.clone()))
    torch.testing.assert_close(results[1], results[0], rtol=1e-6, atol=1e-6)
