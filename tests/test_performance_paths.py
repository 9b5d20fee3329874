"""The fast paths: bf16 expert matmuls and attention, torch.compile of the blocks, no host syncs per step."""
from __future__ import annotations

import copy
import json
import math
from collections import Counter

import pytest
import torch
import torch._dynamo
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from megamythos.model.attention import attend, matmul_attention
from megamythos.model.lm import MythosLM, compile_blocks
from megamythos.model.moe import grouped_matmul
from megamythos.model.row_layout import PackedDocuments
from tests.helpers import losses, requires_grouped_mm, run, small_config, tiny_args


def padded_reference(x: torch.Tensor, weight: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Per-group x_g @ weight[g]^T with a Python loop, fp32."""
    chunks = x.float().split(counts.tolist())
    return torch.cat([c @ w.float().t() for c, w in zip(chunks, weight)])


# ------------------------------------------------------------------------------------------------ dtype paths
def test_grouped_matmul_gradients_match_per_group_reference() -> None:
    counts = torch.tensor([3, 0, 5, 8])
    x = torch.randn(16, 32, requires_grad=True)
    w = torch.randn(4, 8, 32, requires_grad=True)
    grad = torch.randn(16, 8)
    grouped_matmul(x, w, counts).backward(grad)
    x_ref, w_ref = x.detach().requires_grad_(), w.detach().requires_grad_()
    padded_reference(x_ref, w_ref, counts).backward(grad)
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-5) and torch.allclose(w.grad, w_ref.grad, atol=1e-5)


def test_grouped_matmul_runs_in_bf16_under_autocast() -> None:
    counts = torch.tensor([6, 2, 8])
    x, w = torch.randn(16, 32), torch.randn(3, 16, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = grouped_matmul(x, w, counts)
    assert out.dtype == torch.bfloat16
    ref = padded_reference(x, w, counts)
    assert (out.float() - ref).abs().max() <= 0.02 * ref.abs().max()


@pytest.mark.parametrize("q_len,causal", [(12, True), (3, False)])
def test_matmul_attention_matches_sdpa(q_len: int, causal: bool) -> None:
    """bf16 explicit attention (causal, and cached decode with a mask) against fp32 SDPA."""
    q, k = torch.randn(2, q_len, 4, 24), torch.randn(2, 12, 4, 24)
    v = torch.randn(2, 12, 4, 16)
    q_pos = torch.arange(12 - q_len, 12)[:, None]
    mask = None if causal else torch.arange(12)[None, :] <= q_pos
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, is_causal=causal, scale=0.2
    ).transpose(1, 2)
    bf = [t.bfloat16() for t in (q, k, v)]
    out = matmul_attention(*bf, mask, causal, 0.2)
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape
    assert (out.float() - ref).abs().max() < 0.03
    assert torch.equal(attend(*bf, mask, causal, 0.2), out)  # the kernel attend picks for bf16 on CPU


@pytest.mark.parametrize("seq,masked,kernel", [(1024, False, "matmul"), (1032, False, "sdpa"),
                                               (256, True, "matmul"), (264, True, "sdpa")])
def test_bf16_cpu_attention_switches_to_sdpa_beyond_its_score_budget(seq: int, masked: bool, kernel: str) -> None:
    """attend() in bf16 on CPU: the explicit matmuls up to 1024 x 1024 scores per head for causal self-attention
    (in query blocks) and up to 256 x 256 with a mask, SDPA's flash kernel beyond (bench/bench_attention.py,
    2026-12-05: the blocked path runs 0.5-0.8x SDPA's time from 512 to 1024 tokens)."""
    q, k, v = (torch.randn(1, seq, 2, d).bfloat16() for d in (16, 16, 8))
    mask = torch.ones(seq, seq, dtype=torch.bool).tril() if masked else None
    expected = (matmul_attention(q, k, v, mask, not masked, 0.25) if kernel == "matmul" else
                torch.nn.functional.scaled_dot_product_attention(
                    q.transpose(1, 2), k.transpose(1, 2), torch.nn.functional.pad(v, (0, 8)).transpose(1, 2),
                    attn_mask=mask, is_causal=not masked, scale=0.25).transpose(1, 2)[..., :8])
    other = (matmul_attention(q, k, v, mask, not masked, 0.25) if kernel == "sdpa" else None)
    out = attend(q, k, v, mask, not masked, 0.25)
    assert torch.equal(out, expected)
    assert other is None or not torch.equal(out, other)


class MatmulShapes(TorchDispatchMode):
    """Records the output shape of every (batched) matmul dispatched inside the mode."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        if func in (torch.ops.aten.bmm.default, torch.ops.aten.mm.default):
            self.shapes.append(tuple(out.shape))
        return out


@pytest.mark.parametrize("block", [128, 256])  # compiled, eager
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("q_len,kv_len", [(600, 600), (512, 512), (300, 700)])
def test_causal_matmul_attention_in_query_blocks_equals_one_pass(monkeypatch: pytest.MonkeyPatch, block: int,
                                                                  dtype: torch.dtype, q_len: int, kv_len: int) -> None:
    """Causal attention over more queries than a block runs per query block against the keys up to the block's
    end: the same values and gradients as one pass over every score, with only the scores on and below the
    diagonal blocks computed (queries are the last q_len of kv_len positions)."""
    import megamythos.model.attention as attention

    torch.manual_seed(0)
    leaves = [torch.randn(2, length, 4, d, dtype=dtype) for length, d in ((q_len, 24), (kv_len, 24), (kv_len, 16))]
    grad_out = torch.randn(2, q_len, 4, 16, dtype=dtype)
    results, score_counts = [], []
    for size in (block, 4096):  # the library's block, then one block holding every query
        monkeypatch.setattr(attention, "_CAUSAL_QUERY_BLOCK", size)
        q, k, v = (t.clone().requires_grad_() for t in leaves)
        with MatmulShapes() as shapes:
            out = matmul_attention(q, k, v, None, True, 0.2)
        out.backward(grad_out)
        results.append([out, q.grad, k.grad, v.grad])
        score_counts.append(sum(math.prod(s) for s in shapes.shapes if s[-1] != 16))  # q k^T, not P v
    tol = 1e-5 if dtype == torch.float32 else 0.02
    for blocked, one_pass in zip(*results):
        assert (blocked.float() - one_pass.float()).abs().max() <= tol * one_pass.float().abs().max()
    past = kv_len - q_len
    expected = sum(min(block, q_len - s) * (past + min(s + block, q_len)) for s in range(0, q_len, block)) * 2 * 4
    assert score_counts == [expected, q_len * kv_len * 2 * 4]


def test_causal_query_block_is_smaller_under_compile() -> None:
    """Eager causal attention runs 256-query blocks, compiled 128 (measured per mode, bench/README.md); the
    compiled blocked path gives the eager values and gradients."""
    import megamythos.model.attention as attention

    traced = torch.compile(lambda x: x + attention.causal_query_block(), backend="eager", fullgraph=True)
    assert attention.causal_query_block() == 256
    assert traced(torch.zeros(())).item() == 128
    torch.manual_seed(0)
    leaves = [torch.randn(1, 300, 2, d) for d in (24, 24, 16)]
    grad_out = torch.randn(1, 300, 2, 16)
    results = []
    for fn in (matmul_attention, torch.compile(matmul_attention, backend="aot_eager", fullgraph=True)):
        q, k, v = (t.clone().requires_grad_() for t in leaves)
        out = fn(q, k, v, None, True, 0.2)
        out.backward(grad_out)
        results.append([out, q.grad, k.grad, v.grad])
    for compiled, eager in zip(results[1], results[0]):
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------ torch.compile
# every packed-document flag, eod = 2: what a test batch with documents() in it trains with
DOCUMENTS = PackedDocuments(2, eod_mask_loss=True, reset_position_ids=True, reset_attention_mask=True)


def documents(ids: torch.Tensor) -> torch.Tensor:
    """ids [B, S] with an eod (DOCUMENTS.eod) in each row, at a different place in each."""
    ids = ids.clone()
    for b in range(ids.shape[0]):
        ids[b, 3 + 5 * b] = DOCUMENTS.eod
    return ids


def loss_and_grads(model: MythosLM, ids: torch.Tensor, n_loops: int, backprop_loops: int,
                   packed: PackedDocuments | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = model(ids, labels=ids, n_loops=n_loops, backprop_loops=backprop_loops, documents=packed)
    (out.loss + out.aux_loss).backward()
    return out.loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


@requires_grouped_mm
@pytest.mark.parametrize("packed", [None, DOCUMENTS], ids=["plain", "documents"])
def test_compiled_blocks_match_eager_without_graph_breaks_or_recompiles(packed: PackedDocuments | None) -> None:
    """Every block compiles to one graph (fullgraph; the recurrent block one more for the no-grad loops of
    truncated BPTT), is not recompiled for another loop index, loop count, truncation or checkpoint recompute,
    and losses/gradients equal eager; so do samples of packed documents (per-row positions and a block-causal
    mask). aot_eager runs
    Dynamo and AOTAutograd exactly as inductor would see them, without inductor's C++ build time."""
    cfg = small_config(loop_embedding=True, checkpoint_loops=True, max_loops=8)
    eager = MythosLM(cfg).train()
    compiled = copy.deepcopy(eager)
    torch._dynamo.reset()
    names = compile_blocks(compiled, backend="aot_eager", fullgraph=True)
    assert names == ["prelude.0", "recurrent.block", "coda.0", "token_loss"]
    ids = documents(torch.randint(0, cfg.vocab_size, (2, 16)))
    torch._dynamo.utils.counters.clear()
    # (loop count, backprop loops): the first step also runs loops without autograd (truncated BPTT), which
    # is a second graph of the recurrent block (grad mode is part of a graph's guards), compiled once
    schedule = [(6, 2), (3, 0), (5, 0), (1, 0), (4, 1)]
    for i, (n_loops, backprop) in enumerate(schedule):
        with torch._dynamo.config.patch(error_on_recompile=i > 0):  # the first step compiles each block once
            got_loss, got_grads = loss_and_grads(compiled, ids, n_loops, backprop, packed)
        want_loss, want_grads = loss_and_grads(eager, ids, n_loops, backprop, packed)
        assert torch.allclose(got_loss, want_loss, atol=1e-5)
        assert all(torch.allclose(g, w, atol=1e-5) for g, w in zip(got_grads, want_grads))
    assert not torch._dynamo.utils.counters["graph_break"]


# ------------------------------------------------------------------------------------------------ host syncs
SYNC_OPS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default,
            torch.ops.aten.masked_select.default}


class HostSyncCounter(TorchDispatchMode):
    """Counts ops that need a device value on the host: ``item``/``bool``/``int`` (aten._local_scalar_dense),
    data-dependent output shapes (nonzero, masked_select) and ``tolist`` (caught at the Python level)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()
        self._functions = _SyncFunctionCounter(self.counts)

    def __enter__(self) -> HostSyncCounter:
        self._functions.__enter__()
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self._functions.__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        if func in SYNC_OPS:
            self.counts[str(func)] += 1
        return func(*args, **(kwargs or {}))


class _SyncFunctionCounter(TorchFunctionMode):
    def __init__(self, counts: Counter[str]) -> None:
        super().__init__()
        self.counts = counts

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        if func is torch.Tensor.tolist:
            self.counts["tolist"] += 1
        return func(*args, **(kwargs or {}))


def train_step_syncs(expert_dim: int, n_loops: int, dtype: torch.dtype,
                     packed: PackedDocuments | None = None) -> Counter[str]:
    model = MythosLM(small_config(expert_dim=expert_dim, checkpoint_loops=True)).to(dtype).train()
    ids = documents(torch.randint(0, 97, (2, 16)))
    with HostSyncCounter() as counter:
        out = model(ids, labels=ids, n_loops=n_loops, documents=packed)
        (out.loss + out.aux_loss).backward()
    return counter.counts


@requires_grouped_mm
@pytest.mark.parametrize("packed", [None, DOCUMENTS], ids=["plain", "documents"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_training_step_has_no_host_syncs(dtype: torch.dtype, packed: PackedDocuments | None) -> None:
    assert train_step_syncs(expert_dim=32, n_loops=4, dtype=dtype, packed=packed) == Counter()


@requires_grouped_mm
def test_padded_fallback_syncs_once_per_misaligned_expert_matmul() -> None:
    """Expert width 30: the down projection's fp32 rows of 120 bytes are not 16-byte aligned, so it takes the
    padded bmm fallback, which reads the largest group size once: 1 per MoE call, 4 loops, each loop run again
    by its activation checkpoint in backward (the gate/up matmul, 60 x 64, stays on torch._grouped_mm)."""
    assert train_step_syncs(expert_dim=30, n_loops=4, dtype=torch.float32) == Counter(
        {str(torch.ops.aten._local_scalar_dense.default): 4 * 2})


# ------------------------------------------------------------------------------------------------ GPU check
def test_gpu_check_numerics_pass_on_cpu_and_catch_a_wrong_kernel() -> None:
    """bench/gpu_check.sh's numerical part, on the CPU kernels; a non-causal kernel must fail its check."""
    from bench import gpu_check  # the repository root is on sys.path (pytest.ini: pythonpath = .)

    result = gpu_check.numerics(torch.device("cpu"))
    assert result["passed"], result
    q, k, v = torch.randn(1, 32, 2, 16), torch.randn(1, 32, 2, 16), torch.randn(1, 32, 2, 8)
    errors = gpu_check.compare(lambda *t: attend(*t, None, False, 0.25),
                               lambda *t: gpu_check.reference_attention(*t, 0.25), [q, k, v], torch.bfloat16)
    assert errors["output"] > gpu_check.TOL


# ------------------------------------------------------------------------------------------------ bf16 training
# |bf16 - fp32| lm loss per step and its mean over the run, on losses 5.9 -> 4.5; measured 2026-12-01:
# max 0.023 (one step), mean 0.004
BF16_LOSS_TOL, BF16_MEAN_TOL = 0.05, 0.01


@pytest.mark.distributed
@pytest.mark.launch
def test_bf16_training_tracks_fp32(corpus, launches, tmp_path) -> None:
    """DeepSpeed's bf16 section (bf16 weights and activations, fp32 master weights and Adam state, fp32 LTI
    state) against fp32: 12 steps of the tiny test model at lr 1e-2, 1 process, ZeRO-3, same data and seed.
    The per-step lm loss differs by at most BF16_LOSS_TOL, and by BF16_MEAN_TOL on average."""
    runs = {}
    for name, flag in (("fp32", "--no-bf16"), ("bf16", "--bf16")):  # side by side (conftest's ``launches``)
        out = tmp_path / name
        launches.submit(f"bf16/{name}", run, 1, [*tiny_args(corpus, 12), "--zero", "3", flag, "--save",
                                                 str(out / "ckpt"), "--save-interval", "0", "--metrics-file",
                                                 str(out / "metrics.jsonl")], out / "log.txt")
    for name in ("fp32", "bf16"):
        launches.result(f"bf16/{name}")
        runs[name] = losses(tmp_path / name / "metrics.jsonl")
    assert sorted(runs["bf16"]) == sorted(runs["fp32"]) == list(range(1, 13))
    diffs = {i: abs(runs["bf16"][i] - runs["fp32"][i]) for i in runs["fp32"]}
    assert max(diffs.values()) <= BF16_LOSS_TOL, diffs
    assert sum(diffs.values()) / len(diffs) <= BF16_MEAN_TOL, diffs
    assert runs["bf16"][12] < runs["bf16"][1] - 0.5  # and it learns


def test_gpu_check_summary_takes_the_steady_steps_and_the_peak_memory(tmp_path) -> None:
    from bench import gpu_check

    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"iteration": i, "tokens-per-sec": 100.0 * i, "tflops": 1.0, "mfu": 0.5,
                                           "iteration-time": 0.1, "lm loss": 9.0 - i,
                                           "memory/max-allocated-GiB": 10.0 + (i == 3)}) + "\n" for i in range(1, 8)))
    summary = gpu_check.summarize(metrics, warmup=4)
    assert summary["tokens_per_sec_median"] == 600.0 and summary["steps"] == 7 and summary["lm_loss_last"] == 2.0
    assert summary["peak_memory_gib"] == 11.0
