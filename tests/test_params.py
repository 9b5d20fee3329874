"""Analytic parameter counts, FLOPs and memory plan against the real model."""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict, fields
from typing import TypeVar

import pytest
import torch

from megamythos.inference.evaluate import evaluate_loops
from megamythos.model.config import PRESETS, get_preset
from megamythos.model.lm import MythosLM
from megamythos.model.params import (
    PartCounts,
    attention_fwd_flops_per_token,
    count,
    forward_flops_per_token,
    frozen_token_matmul_params,
    parts,
)
from megamythos.model.recurrent import COMPACTION_MIN_TOKENS
from megamythos.parallel.tensor_parallel import TP_COLUMN_PATTERNS, TP_ROW_PATTERNS
from megamythos.planning.layout import LayoutError, ZeroBuffers, zero_buffers
from megamythos.planning.memory import (
    StartupMemoryError,
    check_startup_memory,
    checkpointed_loop_states,
    core_dense_local_params,
    dense_block_activation_bytes,
    dense_local_params,
    iteration_activation_bytes,
    memory_plan,
    startup_memory,
)
from megamythos.planning.plan import main
from tests.helpers import REPO, requires_grouped_mm, small_config

T = TypeVar("T")

# parameter names of MythosLM (re.fullmatch) that make up each PartCounts field
PART_NAMES = {
    "embedding": r"tok_embeddings\..*|lm_head\..*",
    "dense_attention": r"(prelude|coda)\.\d+\.attn\..*",
    "dense_ffn": r"(prelude|coda)\.\d+\.ffn\..*",
    "dense_norms": r"(prelude|coda)\.\d+\.(attn|ffn)_norm\..*",
    "recurrent_attention": r"recurrent\.block\.attn\..*",
    "router": r"recurrent\.block\.moe\.gate\..*",
    "routed_experts": r"recurrent\.block\.moe\.experts\..*",
    "shared_experts": r"recurrent\.block\.moe\.shared_experts\..*",
    "recurrent_norms": r"recurrent\.(input_norm|block\.attn_norm|block\.moe_norm)\..*",
    "injection": r"recurrent\.injection\..*",
    "lora": r"recurrent\.lora\..*",
    "depth_router": r"recurrent\.router\..*",
    "final_norm": r"norm\..*",
}


def meta_parts(config) -> dict[str, int]:
    """Parameters of the meta-device MythosLM per PartCounts field; every parameter must fall in one part."""
    assert set(PART_NAMES) == {f.name for f in fields(PartCounts)}
    with torch.device("meta"):
        model = MythosLM(config)
    counts = dict.fromkeys(PART_NAMES, 0)
    for name, param in model.named_parameters():  # tied weights are yielded once
        matches = [part for part, pattern in PART_NAMES.items() if re.fullmatch(pattern, name)]
        assert len(matches) == 1, f"{name} falls in parts {matches}"
        counts[matches[0]] += param.numel()
    return counts


def assert_counts_equal_model(config) -> None:
    analytic, on_meta = parts(config), meta_parts(config)
    assert {f.name: getattr(analytic, f.name) for f in fields(PartCounts)} == on_meta
    assert count(config).total == sum(on_meta.values())


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_counts_equal_model_on_meta_device(name: str) -> None:
    assert_counts_equal_model(get_preset(name))


@pytest.mark.parametrize("variant", [dict(attn_type="gqa"), dict(lora_rank=0, loop_embedding=True),
                                     dict(tie_embeddings=False), dict(q_lora_rank=0, n_shared_experts=0),
                                     dict(injection="concat"), dict(injection="additive"),
                                     dict(capacity_router="learned", max_loops=6),
                                     dict(attn_type="gqa", tie_embeddings=False, lora_rank=8, max_loops=12),
                                     dict(loop_embedding=True, injection="concat", lora_rank=0, tie_embeddings=False)])
def test_variant_counts_equal_model(variant: dict) -> None:
    assert_counts_equal_model(small_config(**variant))


def test_active_and_effective_counts() -> None:
    config = small_config()
    report = count(config, n_loops=4)
    expert = 3 * config.dim * config.expert_dim
    assert report.total - report.active_per_token == (config.n_experts - config.num_experts_per_tok) * expert
    rec_active = report.recurrent - (config.n_experts - config.num_experts_per_tok) * expert
    assert report.effective_per_token == report.active_per_token + 3 * rec_active
    assert count(config, n_loops=8).train_flops_per_token > report.train_flops_per_token


def test_cli_json_and_memory_plan(capsys) -> None:
    assert main(["--preset", "1t", "--json", "--gpus", "1024", "--tp", "8", "--ep", "64"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["total"] == count(get_preset("1t")).total
    trained = get_preset("1t").replace(checkpoint_loops=True, checkpoint_dense_blocks=True)  # trainer's defaults
    assert report["memory_plan"] == asdict(memory_plan(trained, 1024, tp=8, ep=64, replicated_core=True,
                                                       fp32_reduce=True))  # over dp 128
    more_ep = memory_plan(get_preset("1t"), 1024, tp=8, ep=128)
    assert more_ep.weights_gib <= memory_plan(get_preset("1t"), 1024, tp=8, ep=64).weights_gib
    with pytest.raises(ValueError, match="divisible"):
        memory_plan(get_preset("1t"), 100, tp=8)


def test_startup_memory_is_the_whole_model_on_the_host_and_the_rank_share_on_the_gpu() -> None:
    """The trainer builds MythosLM whole in fp32 on every rank (its bytes, counted on a real tiny model), and
    DeepSpeed moves the rank's share (its experts after AutoEP) to the GPU in bf16 before ZeRO-3 partitions it."""
    tiny = get_preset("tiny")
    built = sum(p.numel() * p.element_size() for p in MythosLM(tiny).parameters())
    experts = count(tiny).routed_experts
    assert startup_memory(tiny).host_gib == pytest.approx(built / 2**30)
    assert startup_memory(tiny, ep=4).device_gib == pytest.approx((built / 4 - experts * 3 / 4) * 2 / 2**30)
    need = startup_memory(tiny, ep=4)
    check_startup_memory(tiny, 1, 4, 2, int(2 * need.host_gib * 2**30) + 1, int(need.device_gib * 2**30) + 1)
    with pytest.raises(StartupMemoryError, match=r"built whole in fp32 on every rank .* 2 rank\(s\) of this host"):
        check_startup_memory(tiny, 1, 4, 2, int(2 * need.host_gib * 2**30) - 1, None)
    with pytest.raises(StartupMemoryError, match="goes to the GPU whole .* in bf16"):
        check_startup_memory(tiny, 1, 4, 2, 2**40, int(need.device_gib * 2**30) - 1)


def test_the_weights_a_tensor_parallel_rank_holds_are_the_autotp_shards_of_the_model() -> None:
    """AutoTP splits only the Linears its patterns name (attention, the prelude/coda SwiGLUs); the embeddings, LM
    head and the recurrent core's router, shared experts and LoRA stay whole on every TP rank, and so do the fp32
    logits. The plan divided every weight outside the routed experts, and the logits, by tp (1t at TP 8, ZeRO-1:
    23.7 GiB of weights per GPU for 50.3)."""
    config, tp, ep = get_preset("tiny"), 4, 2
    with torch.device("meta"):
        model = MythosLM(config)
    split = [re.compile(pattern) for pattern in TP_COLUMN_PATTERNS + TP_ROW_PATTERNS]
    experts = count(config).routed_experts
    held = sum(p.numel() / (tp if any(r.fullmatch(name) for r in split) else 1)
               for name, p in model.named_parameters() if p.dim() < 3)  # the routed experts: [E, out, in]
    assert dense_local_params(config, tp) == pytest.approx(held)
    plan = memory_plan(config, 8, tp=tp, ep=ep, zero=0)
    assert plan.weights_gib == pytest.approx((held + experts / ep) * 2 / 2**30)
    assert startup_memory(config, tp, ep).device_gib == pytest.approx(plan.weights_gib)
    tokens = config.training_seq_len
    wider = memory_plan(config.replace(vocab_size=config.vocab_size + 1000), 8, tp=tp, ep=ep, zero=0)
    assert wider.activations_gib - plan.activations_gib == pytest.approx(tokens * 1000 * 4 / 2**30)


def test_the_plan_refuses_a_start_the_node_or_the_gpu_cannot_hold(capsys) -> None:
    """1t with EP 256 (ds_configs/1t.json): 117.4 GiB per GPU once partitioned, 94.6 GiB at start-up, and 3.3 TiB
    per rank on the host; the plan prints both and refuses each in one line."""
    layout = ["--preset", "1t", "--gpus", "1024", "--ep", "256", "--global-batch-size", "1024",
              "--loop-checkpoint-segment", "0", "--ds-config", str(REPO / "ds_configs" / "1t.json")]
    assert main([*layout, "--gpu-memory-gb", "141", "--host-memory-gb", "30000"]) == 0
    assert "start-up per rank     3416.5 GiB in host memory" in capsys.readouterr().out
    assert main([*layout, "--gpu-memory-gb", "80"]) == 2
    assert "the plan needs 117.4 GiB per GPU: does not fit ['80 GB']" in capsys.readouterr().err
    assert main([*layout, "--ep", "512", "--no-replicate-core", "--gpu-memory-gb", "80"]) == 2
    assert "91.4 GiB per GPU at start-up" in capsys.readouterr().err
    assert main([*layout, "--host-memory-gb", "2048"]) == 2
    assert "of a node (--host-memory-gb 2048), which has 1907.3 GiB" in capsys.readouterr().err


def test_checkpointed_loop_states_follow_the_checkpointing_scheme() -> None:
    """Per-iteration: one state per loop under gradient; two-level: one state per segment boundary plus one
    segment; truncated BPTT caps both. The memory plan follows the config."""
    tiny = get_preset("tiny").replace(backprop_loops=0)  # the preset's truncated backprop is the case below
    assert checkpointed_loop_states(tiny, 32) == 32
    assert checkpointed_loop_states(tiny.replace(backprop_loops=8), 32) == 8
    assert checkpointed_loop_states(tiny.replace(loop_checkpoint_segment=0), 32) == 6 + 6
    assert checkpointed_loop_states(tiny.replace(loop_checkpoint_segment=0), 36) == 6 + 6
    assert checkpointed_loop_states(tiny.replace(loop_checkpoint_segment=4), 32) == 8 + 4
    big = get_preset("1t").replace(checkpoint_loops=True, checkpoint_dense_blocks=True)
    two_level = big.replace(loop_checkpoint_segment=0)
    saved_states = (checkpointed_loop_states(big, big.resolved_max_loops)
                    - checkpointed_loop_states(two_level, big.resolved_max_loops))
    assert saved_states > 100
    assert (memory_plan(big, 1024, tp=8, ep=128).activations_gib
            - memory_plan(two_level, 1024, tp=8, ep=128).activations_gib) == pytest.approx(
                saved_states * 4096 * big.dim * 4 / 2**30)


def counted_matmul_flops(run: Callable[[], T]) -> tuple[int, T]:
    """(matmul FLOPs of ``run()``, its result), counted op by op with FlopCounterMode; our expert op
    (megamythos::grouped_mm, 2 * a.numel() * out) is taught to it. Attention's SDPA CPU kernels have no FLOP rule
    and stay uncounted."""
    from torch.utils.flop_counter import FlopCounterMode

    def grouped_mm_flops(a_shape, b_shape, *_, **__) -> int:
        return 2 * a_shape[0] * a_shape[1] * b_shape[-1]

    with FlopCounterMode(display=False, custom_mapping={torch.ops.megamythos.grouped_mm: grouped_mm_flops}) as counter:
        result = run()
    return counter.get_total_flops(), result


def counted_matmul_flops_per_token(config, seq_len: int, n_loops: int) -> float:
    """Matmul FLOPs per token of one real training step (forward + backward), :func:`counted_matmul_flops`:
    keep seq_len small so that the uncounted attention scores are negligible."""
    torch.manual_seed(0)
    model = MythosLM(config)
    ids = torch.randint(0, config.vocab_size, (2, seq_len))
    flops, _ = counted_matmul_flops(lambda: model(ids, labels=ids, n_loops=n_loops).loss.backward())
    return flops / ids.numel()


@requires_grouped_mm
@pytest.mark.parametrize("backprop_loops", [0, 2])
def test_train_flops_equal_a_counted_training_step(backprop_loops: int) -> None:
    """count(): forward + 2x forward for backward where gradients flow; truncated BPTT's first loops have none."""
    config = get_preset("tiny").replace(backprop_loops=backprop_loops, checkpoint_loops=False)
    seq_len, n_loops = 8, 4
    report = count(config, seq_len=seq_len, n_loops=n_loops)
    measured = counted_matmul_flops_per_token(config, seq_len, n_loops)
    assert measured == pytest.approx(report.train_flops_per_token, rel=0.01)
    if backprop_loops:
        full = count(config.replace(backprop_loops=0), seq_len, n_loops)
        assert report.train_flops_per_token < full.train_flops_per_token


@pytest.mark.parametrize("variant", [dict(), dict(attn_type="gqa"), dict(injection="concat")])
def test_a_frozen_iteration_costs_the_key_value_and_concat_matmuls(variant: dict) -> None:
    """An exited token's iteration while its batch runs on: its keys/values (MLA W_kva and W_kvb, GQA W_k and W_v)
    and the concat baseline's adapter, 2 FLOPs per weight, the real model's modules."""
    config = small_config(**variant)
    with torch.device("meta"):
        core = MythosLM(config).recurrent
    attn = core.block.attn
    kv = [attn.wk, attn.wv] if config.attn_type == "gqa" else [attn.wkv_a, attn.wkv_b]
    adapter = [core.injection.adapter] if config.injection == "concat" else []
    weights = sum(m.weight.numel() for m in kv + adapter)
    assert frozen_token_matmul_params(config) == weights
    added = forward_flops_per_token(config, 16, 2.5, 1.5) - forward_flops_per_token(config, 16, 2.5)
    assert added == pytest.approx(1.5 * 2 * weights)


@requires_grouped_mm
@pytest.mark.parametrize("variant", [dict(), dict(attn_type="gqa"), dict(injection="concat"),
                                     dict(v_head_dim=32)])  # values wider than queries (16 + 8): padded, fused kernel
@pytest.mark.parametrize("batch", [4, 1])  # 64 tokens: compaction; 16 (< COMPACTION_MIN_TOKENS): masked
def test_early_exit_flops_of_evaluate_equal_a_counted_forward(variant: dict, batch: int) -> None:
    """``evaluate``'s forward FLOPs per token under early exit equal the matmul FLOPs of the forward, counted op by
    op, once the analytic attention scores (uncounted SDPA) are taken off: the executed iterations, plus the keys/
    values (and concat adapter) of each exited token at every later iteration its batch runs; a batch below
    COMPACTION_MIN_TOKENS computes its exited tokens whole."""
    config = small_config(**variant)
    torch.manual_seed(0)
    model = MythosLM(config).eval()
    ids = torch.randint(0, config.vocab_size, (batch, 16))
    with torch.no_grad():  # a threshold at which about half the tokens exit after loop 3
        threshold = float(model(ids, n_loops=6, exit_threshold=0.0).stats["relative_change"][2].median())
        flops, out = counted_matmul_flops(lambda: model(ids, n_loops=6, exit_threshold=threshold))
    (result,) = evaluate_loops(model, [(ids, ids)], [6], threshold)
    loops_run = float(out.stats["n_loops"])
    assert result.mean_depth < loops_run and result.exit_share[-1] < 1.0  # tokens exited while others ran on
    attended = result.mean_depth if ids.numel() >= COMPACTION_MIN_TOKENS else loops_run
    scores = (config.prelude_layers + config.coda_layers + attended) * attention_fwd_flops_per_token(config, 16)
    assert result.forward_flops_per_token - scores == pytest.approx(flops / ids.numel(), rel=1e-9)


def saved_activation_bytes(model: MythosLM, tokens: torch.Tensor, n_loops: int) -> int:
    """Bytes of the tensors autograd keeps for backward in one training forward (parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in params:
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(tokens, labels=tokens, n_loops=n_loops)
    return sum(kept.values())


@pytest.mark.parametrize("preset", ["1t", "50b"])
def test_the_memory_plan_counts_what_an_iteration_and_a_dense_block_keep(preset: str) -> None:
    """The plan took Megatron's 34 s h bytes of a 4h-MLP layer (and doubled them) for a block whose MoE keeps 5x
    as much: 1t's plan said 61 GiB per GPU for what needs about 115. Measured on the preset at 1/32 of its widths
    (heads, latents, expert and dense widths; 16 experts), bf16: one more loop, one more prelude block."""
    c = get_preset(preset)
    c = c.replace(dim=c.dim // 32, n_heads=c.n_heads // 32, n_kv_heads=max(c.n_kv_heads // 32, 1),
                  q_lora_rank=c.q_lora_rank // 32, kv_lora_rank=c.kv_lora_rank // 32,
                  expert_dim=c.expert_dim // 32, ffn_dim=c.resolved_ffn_dim // 32, lora_rank=c.lora_rank // 32,
                  n_experts=16, vocab_size=512, max_seq_len=64, prelude_layers=1, coda_layers=1,
                  backprop_loops=0, sample_depth=False)
    tokens = torch.randint(0, 512, (1, 64))
    torch.manual_seed(0)
    model = MythosLM(c).to(torch.bfloat16).train()
    iteration = (saved_activation_bytes(model, tokens, 3) - saved_activation_bytes(model, tokens, 1)) / 2 / 64
    assert iteration == pytest.approx(iteration_activation_bytes(c, 1, 2), rel=0.05)
    torch.manual_seed(0)
    deeper = MythosLM(c.replace(prelude_layers=2)).to(torch.bfloat16).train()
    dense = (saved_activation_bytes(deeper, tokens, 1) - saved_activation_bytes(model, tokens, 1)) / 64
    assert dense == pytest.approx(dense_block_activation_bytes(c, 1, 2), rel=0.12)  # CPU attention keeps a bit more


def test_the_core_gradient_is_whole_until_the_first_loops_backward_and_the_plan_counts_it() -> None:
    """A weight the loops share gets its gradient summed by autograd and handed to ZeRO once, after every loop's
    backward: the plan counted it sharded (1t: 1.7 GiB of gradients per GPU for 32.6 GiB)."""
    model = MythosLM(small_config(backprop_loops=0)).train()
    weight = model.recurrent.block.attn_norm.weight
    handed = []
    weight.register_post_accumulate_grad_hook(lambda p: handed.append(p.grad.clone()))
    tokens = torch.randint(0, 97, (2, 16))
    model(tokens, labels=tokens, n_loops=4).loss.backward()
    assert len(handed) == 1
    c = get_preset("1t")
    plan = memory_plan(c, 1024, tp=1, ep=256, zero=3, seq_len=4096, replicated_core=True)
    core = count(c).routed_experts / 256 + core_dense_local_params(c, 1)
    assert plan.grads_gib >= core * 2 / 2**30


def test_the_plan_counts_fp32_gradient_partitions_where_micro_batches_are_summed_in_fp32() -> None:
    """bf16 ZeRO-2/3 with gradient accumulation sum the micro-batches' gradients in fp32 partitions (the trainer's
    ``data_types``, found 2026-12-07): 4 bytes per partitioned parameter, not 2; the whole core gradient the
    loops' backward sums stays bf16, and one micro-batch, ZeRO-1 and fp32 are as before."""
    c = get_preset("small")
    dense, experts = dense_local_params(c, 1), count(c).routed_experts / 2
    partitions = (dense / 8 + experts / 4) / 2**30  # dp 8, edp 4
    for zero in (2, 3):
        one, many = (memory_plan(c, 8, ep=2, zero=zero, grad_accum=n) for n in (1, 4))
        assert many.grads_gib - one.grads_gib == pytest.approx(2 * partitions, rel=1e-9), zero
        assert many.total_gib - one.total_gib == pytest.approx(2 * partitions, rel=1e-9)
    assert memory_plan(c, 8, ep=2, zero=1, grad_accum=4) == memory_plan(c, 8, ep=2, zero=1)
    assert memory_plan(c, 8, ep=2, zero=3, grad_accum=4, dtype="fp32") == memory_plan(c, 8, ep=2, zero=3,
                                                                                      dtype="fp32")


def test_the_plan_counts_zero_s_reduce_bucket_and_its_copy_in_the_reduction_s_dtype(capsys) -> None:
    """ZeRO-3 keeps a gradient reduce bucket of ``reduce_bucket_size`` elements in the reduction's dtype (fp32 where
    the trainer reduces in fp32) and reduce-scatters it through a copy of the same size; ZeRO-2 keeps its buckets in
    the weights' dtype (two with ``overlap_comm``) and casts the one it reduces. The plan counted none of it (found
    2026-12-07: 1.5 GiB per GPU for 1t on ds_configs/1t.json). Sizes come from the template the plan is for, else
    DeepSpeed's defaults; the prefetch bucket adds to the gathered parameters up to ``max_live_parameters``."""
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    for stage in (2, 3):
        theirs = DeepSpeedZeroConfig(stage=stage)
        assert (ZeroBuffers().reduce_bucket_size, ZeroBuffers().prefetch_bucket_size,
                ZeroBuffers().max_live_parameters, ZeroBuffers().contiguous_gradients, ZeroBuffers().overlaps(stage)) \
            == (theirs.reduce_bucket_size, theirs.prefetch_bucket_size, theirs.max_live_parameters,
                theirs.contiguous_gradients, theirs.overlap_comm)
    template = json.loads((REPO / "ds_configs" / "1t.json").read_text())["zero_optimization"]
    buffers = zero_buffers(template, "1t.json")
    assert buffers == ZeroBuffers(reduce_bucket_size=200_000_000, prefetch_bucket_size=200_000_000,
                                  max_live_parameters=500_000_000, contiguous_gradients=True, overlap_comm=True)
    c = get_preset("1t").replace(checkpoint_loops=True, loop_checkpoint_segment=0, checkpoint_dense_blocks=True)
    layout = dict(gpus=1024, ep=256, seq_len=4096, replicated_core=True, buffers=buffers)
    fp32, bf16 = memory_plan(c, **layout, fp32_reduce=True), memory_plan(c, **layout)
    assert fp32.reduce_bucket_gib == fp32.reduce_copy_gib == 2e8 * 4 / 2**30
    assert bf16.reduce_bucket_gib == bf16.reduce_copy_gib == 2e8 * 2 / 2**30
    assert fp32.total_gib - bf16.total_gib == pytest.approx(2 * 2e8 * 2 / 2**30, rel=1e-9)
    zero2 = memory_plan(c, **layout, zero=2, fp32_reduce=True)
    assert (zero2.reduce_bucket_gib, zero2.reduce_copy_gib) == (2 * 2e8 * 2 / 2**30, 2e8 * (2 + 4) / 2**30)
    assert memory_plan(c, **layout, zero=1).reduce_bucket_gib == 0
    small = get_preset("small")
    gathered = [memory_plan(small, 8, buffers=ZeroBuffers(prefetch_bucket_size=n)).gathered_working_gib
                for n in (0, 10**6)]
    assert gathered[1] - gathered[0] == pytest.approx(10**6 * 2 / 2**30, rel=1e-9)
    for key, value in (("reduce_bucket_size", 0), ("stage3_max_live_parameters", "5e8"),
                       ("contiguous_gradients", "true")):
        # found 2026-12-07: the line named the key but not the file
        with pytest.raises(LayoutError, match=f"^--ds-config ds.json: zero_optimization.{key} must be"):
            zero_buffers({key: value}, "ds.json")
    assert main(["--preset", "1t", "--gpus", "1024", "--ep", "256", "--global-batch-size", "1024",
                 "--loop-checkpoint-segment", "0", "--ds-config", str(REPO / "ds_configs" / "1t.json")]) == 0
    assert "gathered 4.9, reduce bucket 0.7 (+0.7 while it reduces), activations 35.8" in capsys.readouterr().out


def test_checkpointed_dense_blocks_keep_their_inputs_only_and_train_alike() -> None:
    config = small_config(prelude_layers=2, coda_layers=2, backprop_loops=0, sample_depth=False)
    tokens = torch.randint(0, 97, (2, 16))
    losses, grads, kept = [], [], []
    for checkpointed in (False, True):
        torch.manual_seed(0)
        model = MythosLM(config.replace(checkpoint_dense_blocks=checkpointed)).train()
        kept.append(saved_activation_bytes(model, tokens, 2))
        loss = model(tokens, labels=tokens, n_loops=2).loss
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in model.prelude.parameters()]))
    assert losses[0] == losses[1] and torch.allclose(grads[0], grads[1], atol=1e-6)
    assert kept[1] < kept[0] - 3 * 2 * 16 * config.dim * 4  # at least 3 blocks' fp32 norm outputs fewer
