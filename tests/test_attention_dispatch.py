"""attend()'s kernel choice on CPU by shape and dtype (bench/bench_attention.py, bench/README.md 2026-12-04): one
query (decode) takes the explicit matmuls in bf16 and fp32 at any cache length; fp32 with several queries takes
SDPA's flash kernel."""
from __future__ import annotations

import pytest
import torch

from megamythos.model.attention import attend, matmul_attention, sdpa_attention


@pytest.mark.parametrize("dtype,kv_len", [(torch.float32, 64), (torch.float32, 4096), (torch.bfloat16, 40000)])
def test_decode_takes_the_matmul_kernel_at_any_cache_length(dtype: torch.dtype, kv_len: int) -> None:
    """40000 keys is beyond the bf16 score budget of several queries (192 x 192), where one query stays on matmul."""
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
