"""attend()'s kernel choice on CPU by shape and dtype (bench/bench_attention.py, bench/README.md 2026-12-04): one
query (decode) takes the explicit matmuls in bf16 and fp32 at any cache length; fp32 with several queries takes
SDPA's flash kernel. The explicit path's one-pass masked scores equal cast, scale and masked_fill bit for bit."""
from __future__ import annotations

import pytest
import torch

from megamythos.model.attention import attend, causal_mask, masked_scores, matmul_attention, sdpa_attention


@pytest.mark.parametrize("dtype,kv_len", [(torch.float32, 64), (torch.float32, 4096), (torch.bfloat16, 40000)])
def test_decode_takes_the_matmul_kernel_at_any_cache_length(dtype: torch.dtype, kv_len: int) -> None:
    """40000 keys is beyond the bf16 score budget of several queries (256 x 256), where one query stays on matmul."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, length, 4, d, dtype=dtype) for length, d in ((1, 24), (kv_len, 24), (kv_len, 16)))
    out = attend(q, k, v, None, False, 0.2)
    assert torch.equal(out, matmul_attention(q, k, v, None, False, 0.2))
    assert not torch.equal(out, sdpa_attention(q, k, v, None, False, 0.2))


def test_fp32_training_shapes_take_sdpa() -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 128, 4, d) for d in (24, 24, 16))
    out = attend(q, k, v, None, True, 0.2)
    assert torch.equal(out, sdpa_attention(q, k, v, None, True, 0.2))
    assert not torch.equal(out, matmul_attention(q, k, v, None, True, 0.2))


@pytest.mark.parametrize("dq,dv", [(24, 16), (16, 24)])
def test_query_and_value_widths_that_differ_take_sdpa_s_fused_kernel_with_the_explicit_result(dq: int,
                                                                                             dv: int) -> None:
    """MLA's value width may be below or above its query width (nope + rope); the fused kernels need one width.
    Values wider than the queries went to SDPA's math fallback, which materialises every S x L score (and
    flash-attn, which needs equal widths, would have refused them; found 2026-12-08, config-space sweep): the
    narrower side is zero-padded either way, so the fused kernel runs (no bmm for the FLOP counter to see)."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 128, 4, d) for d in (dq, dq, dv))
    with FlopCounterMode(display=False) as counter:
        out = attend(q, k, v, None, True, 0.2)
    assert counter.get_total_flops() == 0
    torch.testing.assert_close(out, matmul_attention(q, k, v, None, True, 0.2))


def _three_pass_scores(scores: torch.Tensor, mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    """What the explicit kernels computed before masked_scores: cast, scale, then masked_fill."""
    scores = scores.float() * scale
    return scores if mask is None else scores.masked_fill(~mask, float("-inf"))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("q_len,kv_len,form", [(16, 16, "causal"), (5, 21, "causal"), (5, 21, "mask"),
                                               (7, 7, "batched mask"), (6, 6, "none")])
def test_masked_scores_equal_cast_scale_and_masked_fill(dtype: torch.dtype, q_len: int, kv_len: int,
                                                        form: str) -> None:
    """Values and gradients bit for bit, for the kernel's causal flag (queries the last q_len of kv_len
    positions), an explicit [S, L] mask, a per-batch [B, 1, S, L] mask (token subsets) and no mask."""
    torch.manual_seed(0)
    raw = torch.randn(2, 3, q_len, kv_len, dtype=dtype)
    mask = causal_mask(q_len, kv_len, raw.device) if form in ("causal", "mask") else None
    if form == "batched mask":
        mask = torch.rand(2, 1, q_len, kv_len) < 0.7
        mask[..., 0] = True  # every query sees a key: no all -inf row
    grad_out = torch.randn(2, 3, q_len, kv_len)
    results = []
    for compute in (lambda s: _three_pass_scores(s, mask, 0.3),
                    lambda s: masked_scores(s, None if form == "causal" else mask, form == "causal", 0.3)):
        leaf = raw.clone().requires_grad_()
        probs = compute(leaf).softmax(dim=-1)
        probs.backward(grad_out)
        results.append((probs, leaf.grad))
    (probs, grad), (probs_new, grad_new) = results
    assert probs_new.dtype == torch.float32
    assert torch.equal(probs, probs_new)
    assert torch.equal(grad, grad_new)
