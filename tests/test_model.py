"""Behaviour of MythosLM: causality, cached decode, stability of the recurrence, early exit, options, training."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from megamythos.inference.generate import SamplingConfig, generate, sample_next, sampling_logits
from megamythos.model.config import ConfigError, ModelConfig, get_preset
from megamythos.model.lm import ModelKVCache, MythosLM, weight_decay_param_groups
from megamythos.model.recurrent import sample_loop_count
from tests.helpers import REPO, rope_by_hand, small_config


@pytest.mark.parametrize("attn_type", ["mla", "gqa"])
def test_causal(attn_type: str) -> None:
    model = MythosLM(small_config(attn_type=attn_type)).eval()
    ids = torch.randint(0, 97, (2, 16))
    changed = ids.clone()
    changed[:, 10] = (changed[:, 10] + 1) % 97
    with torch.no_grad():
        a, b = model(ids).logits, model(changed).logits
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-5)
    assert not torch.allclose(a[:, 10:], b[:, 10:], atol=1e-3)


@pytest.mark.parametrize("attn_type,absorb", [("mla", False), ("mla", True), ("gqa", False)])
def test_kv_cache_decode_equals_full_forward(attn_type: str, absorb: bool) -> None:
    cfg = small_config(attn_type=attn_type)
    model = MythosLM(cfg).eval()
    ids = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        full = model(ids, n_loops=5).logits
        cache = ModelKVCache(cfg, 5)
        parts = [model(ids[:, :5], cache=cache, absorb=absorb).logits]
        parts += [model(ids[:, i:i + 1], cache=cache, absorb=absorb).logits for i in range(5, 12)]
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-4)


@pytest.mark.parametrize("attn_type,absorb", [("mla", True), ("gqa", False)])
def test_generation_that_fills_the_context_runs_one_forward_per_new_token(attn_type: str, absorb: bool) -> None:
    """A prompt of 10 and 6 new tokens fill a context of 16: the prefill and 5 cached decodes (of the new tokens at
    positions 10-14) give the greedy tokens of one full forward over the result, the last sampled at position 15.
    Found 2026-12-08: a 7th forward ran the last new token through every layer and loop, for logits nothing read."""
    model = MythosLM(small_config(max_seq_len=16, attn_type=attn_type, exit_threshold=0.0)).eval()
    forwards: list[int] = []
    model.register_forward_pre_hook(lambda module, args, kwargs: forwards.append(args[0].shape[1]), with_kwargs=True)
    prompt = torch.randint(0, 97, (2, 10))
    out, _ = generate(model, prompt, SamplingConfig(max_new_tokens=6, temperature=0, absorb=absorb))
    assert out.shape == (2, 16) and forwards == [10, 1, 1, 1, 1, 1]
    with torch.no_grad():
        full = model(out[:, :-1], n_loops=model.config.mean_loops, exit_threshold=0.0).logits
    assert torch.equal(full[:, 9:].argmax(-1), out[:, 10:])


def test_mla_cache_holds_only_latent_and_shared_rope_key() -> None:
    cfg = small_config()
    model = MythosLM(cfg).eval()
    cache = ModelKVCache(cfg, 2)
    with torch.no_grad():
        model(torch.randint(0, 97, (1, 7)), cache=cache)
    widths = [sum(t.shape[-1] for t in layer.tensors) for layer in cache.prelude + cache.loops + cache.coda]
    assert widths == [cfg.kv_lora_rank + cfg.qk_rope_head_dim] * (2 + 2)
    assert all(layer.tensors[0].shape[1] == 7 for layer in cache.loops)


@pytest.mark.parametrize("value", [1e4, -1e4])
@pytest.mark.parametrize("dt_value", [1e4, -1e4])
def test_spectral_radius_below_one_for_adversarial_parameters(value: float, dt_value: float) -> None:
    cfg = small_config(decay_margin=2.0 ** -8)
    model = MythosLM(cfg)
    with torch.no_grad():
        model.recurrent.injection.log_A.fill_(value)
        model.recurrent.injection.log_dt.fill_(dt_value)
    rho = model.spectral_radius()
    assert rho.dtype == torch.float32 and 0 < rho.item() < 1
    assert rho.to(torch.bfloat16).item() < 1.0
    ids = torch.randint(0, 97, (1, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, labels=ids, n_loops=8)
        assert model.spectral_radius().to(torch.bfloat16).item() < 1.0
    assert torch.isfinite(out.loss) and torch.isfinite(out.stats["state_norm"]).all()


def test_spectral_radius_is_the_decay_forward_uses() -> None:
    model = MythosLM(small_config())
    inj = model.recurrent.injection
    h = torch.ones(1, 1, 64)
    applied, rho = inj(h, torch.zeros_like(h), h, report_rho=True)  # A_bar * 1 + B_bar * 0
    assert torch.equal(applied.max(), model.spectral_radius()) and torch.equal(rho, model.spectral_radius())
    ids = torch.randint(0, 97, (1, 4))
    assert torch.equal(model(ids).stats["rho"], model.spectral_radius())  # what TensorBoard logs


def test_decay_margin_below_bf16_resolution_is_rejected() -> None:
    with pytest.raises(ConfigError, match="decay_margin"):
        small_config(decay_margin=1e-3)


def _threshold_between_changes(model: MythosLM, ids: torch.Tensor, n_loops: int) -> float:
    """An exit threshold halfway between two observed relative changes at the second iteration, so that some
    tokens exit there and others run on (and no token sits on the threshold)."""
    with torch.no_grad():
        changes = model(ids, n_loops=n_loops, exit_threshold=0.0).stats["relative_change"][1].flatten().sort().values
    mid = len(changes) // 2
    return float(changes[mid - 1] + changes[mid]) / 2


def test_exit_threshold_defaults_to_the_config_and_zero_runs_every_loop() -> None:
    model = MythosLM(small_config()).eval()
    ids = torch.randint(0, 97, (2, 10))
    with torch.no_grad():
        default = model(ids, n_loops=6)
        configured = model(ids, n_loops=6, exit_threshold=model.config.exit_threshold)
        every = model(ids, n_loops=6, exit_threshold=0.0)
        trained = model.train()(ids, n_loops=6)  # training: every loop, whatever the config says
    assert model.config.exit_threshold == 0.2
    assert torch.equal(default.logits, configured.logits) and default.stats["mean_depth"] < 6
    assert torch.equal(every.stats["depth"], torch.full((2, 10), 6.0))
    assert torch.equal(trained.stats["depth"], torch.full((2, 10), 6.0))
    # a config of another threshold is its own default (here the library's 0.2 stops every token after one loop)
    other = MythosLM(small_config(exit_threshold=0.01)).eval()
    with torch.no_grad():
        own = other(ids, n_loops=6)
        assert torch.equal(own.logits, other(ids, n_loops=6, exit_threshold=0.01).logits)
        assert not torch.equal(own.stats["depth"], other(ids, n_loops=6, exit_threshold=0.2).stats["depth"])


def test_exit_gives_each_token_one_exit_step_and_fewer_loops() -> None:
    model = MythosLM(small_config()).eval()
    ids = torch.randint(0, 97, (3, 12))
    threshold = _threshold_between_changes(model, ids, 6)
    with torch.no_grad():
        out = model(ids, n_loops=6, exit_threshold=threshold)
    steps = out.stats["depth"]
    # every token exits exactly once, after a whole number of iterations within [1, T]
    assert steps.min() >= 1 and steps.max() <= 6 and torch.equal(steps, steps.round())
    assert steps.min() < steps.max() and out.stats["mean_depth"] < 6
    with pytest.raises(RuntimeError, match="inference-only"):
        model.train()(ids, exit_threshold=threshold)


@pytest.mark.parametrize("attn_type,absorb", [("mla", True), ("gqa", False)])
def test_per_token_exit_in_cached_decode_equals_uncached_forward(attn_type: str, absorb: bool) -> None:
    cfg = small_config(attn_type=attn_type)
    model = MythosLM(cfg).eval()
    ids = torch.randint(0, 97, (2, 12))
    threshold = _threshold_between_changes(model, ids, 6)
    with torch.no_grad():
        full = model(ids, n_loops=6, exit_threshold=threshold)
        cache = ModelKVCache(cfg, 6)
        parts = [model(ids[:, :4], cache=cache, absorb=absorb, exit_threshold=threshold)]
        parts += [model(ids[:, i:i + 1], cache=cache, absorb=absorb, exit_threshold=threshold) for i in range(4, 12)]
    assert torch.equal(torch.cat([p.stats["depth"] for p in parts], dim=1), full.stats["depth"])
    assert torch.allclose(torch.cat([p.logits for p in parts], dim=1), full.logits, atol=1e-4)
    assert any(p.stats["n_loops"].item() < 6 for p in parts)  # some decode steps stopped early
    assert all(layer.length == 12 for layer in cache.loops)


def test_exit_in_generation_uses_fewer_loops() -> None:
    model = MythosLM(small_config()).eval()
    _, full = generate(model, torch.randint(0, 97, (1, 4)),
                       SamplingConfig(max_new_tokens=5, temperature=0, n_loops=6, exit_threshold=0.0))
    _, early = generate(model, torch.randint(0, 97, (1, 4)),
                        SamplingConfig(max_new_tokens=5, temperature=0, n_loops=6, exit_threshold=1e9))
    assert full.mean_loops == 6 and early.mean_loops == 1  # any change is below 1e9: every token exits at once


def test_generation_is_reproducible_with_seed() -> None:
    model = MythosLM(small_config()).eval()
    prompt = torch.randint(0, 97, (1, 3))
    cfg = SamplingConfig(max_new_tokens=8, temperature=1.0, top_k=20, top_p=0.9)
    runs = [generate(model, prompt, cfg, torch.Generator().manual_seed(seed))[0] for seed in (7, 7, 8)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])  # it samples from the generator (greedy decoding would pass the above)


def test_a_temperature_near_zero_samples_the_greedy_token() -> None:
    """``--temperature 1e-40`` overflowed the scaled logits to inf: a multinomial traceback (found 2026-12-06). A
    row whose logits are all negative overflowed to -inf everywhere, the same traceback (found 2026-12-07)."""
    logits = torch.tensor([[1.0, 3.0, 2.0], [5.0, -1.0, 4.0], [-5.0, -4.0, -6.0]])
    for temperature in (1e-38, 1e-40, 1e-300):
        cfg = SamplingConfig(max_new_tokens=1, temperature=temperature)
        assert sample_next(logits, cfg, torch.Generator().manual_seed(0)).tolist() == [1, 0, 1]


@pytest.mark.parametrize("probs, top_p", [([0.5, 0.25, 0.25], 0.5), ([0.5, 0.25, 0.125, 0.125], 0.75),
                                           ([0.6, 0.3, 0.1], 0.9), ([0.4, 0.3, 0.2, 0.1], 0.95)])
def test_top_p_keeps_the_tokens_transformers_keeps(probs: list[float], top_p: float) -> None:
    """Top-p kept a token whose more likely tokens held exactly ``top_p`` (``[0.5, 0.25, 0.25]`` at 0.5 sampled the
    second token), where transformers' ``TopPLogitsWarper`` drops it (found 2026-12-07): the HF export's seeded
    ``generate()`` and ours then sampled from different sets. The distributions put the tie on the boundary."""
    warper = pytest.importorskip("transformers.generation.logits_process").TopPLogitsWarper(top_p)
    logits = (torch.tensor(probs) / max(probs)).log()[None]  # maximum 0: our shift by the maximum changes nothing
    kept = set((~warper(None, logits.clone()).isinf()).nonzero()[:, 1].tolist())
    draws = sample_next(logits.expand(4000, -1), SamplingConfig(top_p=top_p), torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == kept



@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 0, 1.0), (0.7, 0, 0.9), (1.3, 10, 1.0), (0.3, 5, 0.8),
                                                       (1e-6, 0, 0.95), (0.7, 0, 0.9012239575386047)])
def test_the_sampled_distribution_is_transformers_to_the_bit(temperature: float, top_k: int, top_p: float) -> None:
    """The logits transformers' ``generate()`` samples from for the same settings, bit for bit: the padded ids
    suppressed (the export's ``suppress_tokens``), temperature, top-k, top-p. Before (found 2026-12-07) the logits
    were shifted by their maximum before the division, so the probabilities differed in the last bits and a top-p
    boundary could fall otherwise (the last case: at that top-p row 0's least likely tokens hold exactly 1 - top_p
    in transformers' float, and ours kept other tokens), and the padded ids were cut off rather than suppressed:
    a distribution over fewer ids, whose seeded draws differ from transformers' from the second token on."""
    processors = pytest.importorskip("transformers.generation.logits_process")
    chain = [processors.SuppressTokensLogitsProcessor(list(range(40, 48)), device="cpu"),
             processors.TemperatureLogitsWarper(temperature)]
    chain += [processors.TopKLogitsWarper(top_k)] if top_k else []
    chain += [processors.TopPLogitsWarper(top_p)] if top_p < 1 else []
    logits = torch.randn(64, 48, generator=torch.Generator().manual_seed(0)) * 4
    theirs = processors.LogitsProcessorList(chain)(None, logits.clone())
    ours = sampling_logits(logits, SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, vocab_limit=40))
    assert torch.equal(ours, theirs)


def test_a_row_that_ends_yields_eos_while_the_others_go_on() -> None:
    """In a batch, a row that sampled eos went on generating until every row did (found 2026-12-06)."""
    torch.manual_seed(0)
    model = MythosLM(small_config()).eval()
    prompts = torch.randint(0, 97, (2, 4))
    free, _ = generate(model, prompts, SamplingConfig(max_new_tokens=6), torch.Generator().manual_seed(1))
    new = free[:, 4:]
    eos = int(new[0, 0])  # the first token of row 0 ends it
    stop = next((i for i, t in enumerate(new[1].tolist()) if t == eos), new.shape[1] - 1)
    assert stop > 0 and set(new[0, 1:stop + 1].tolist()) != {eos}, "pick another generator seed"
    ended, _ = generate(model, prompts, SamplingConfig(max_new_tokens=6, eos_id=eos), torch.Generator().manual_seed(1))
    assert ended.shape[1] == 4 + stop + 1  # until row 1 ends too, or the limit
    assert ended[0, 4:].tolist() == [eos] * (stop + 1)
    assert torch.equal(ended[1, 4:], new[1, :stop + 1])  # the same draws: the finished row is masked after them


class _TwoRowScript(nn.Module):
    """A stand-in model for a batch of 2 rows: row 0 always picks token 1, row 1 token 2; row i executes i + 1
    loops per token."""

    def __init__(self) -> None:
        super().__init__()
        self.config = small_config()

    def forward(self, input_ids: torch.Tensor, **_: object) -> SimpleNamespace:
        logits = torch.zeros(*input_ids.shape, self.config.vocab_size)
        logits[0, :, 1] = logits[1, :, 2] = 1.0
        depth = torch.tensor([[1.0], [2.0]]).expand(input_ids.shape)
        return SimpleNamespace(logits=logits, stats={"depth": depth})


def test_loop_statistics_leave_out_the_rows_that_already_ended() -> None:
    """loops_per_token and mean_loops averaged in the eos padding of rows that had ended (found 2026-12-06)."""
    out, stats = generate(_TwoRowScript(), torch.zeros(2, 3, dtype=torch.long),
                          SamplingConfig(max_new_tokens=4, temperature=0, eos_id=1))  # row 0 ends at once
    assert out[:, 3:].tolist() == [[1, 1, 1, 1], [2, 2, 2, 2]]
    assert stats.loops_per_token == [1.5, 2.0, 2.0, 2.0]  # step 0: both rows; then row 1 alone
    assert stats.mean_loops == (1 + 4 * 2) / 5  # 5 generated tokens: row 0's eos, row 1's 4


def test_sampled_loop_count_same_on_every_rank_and_centred() -> None:
    draws = [sample_loop_count(8, 0.5, 32, seed=3, step=s) for s in range(2000)]
    assert draws[:50] == [sample_loop_count(8, 0.5, 32, seed=3, step=s) for s in range(50)]
    assert abs(sum(draws) / len(draws) - 8) < 0.5
    assert min(draws) >= 1 and max(draws) <= 32 and len(set(draws)) > 5


def test_truncated_backprop_runs_only_last_k_iterations_with_grad() -> None:
    model = MythosLM(small_config())
    grad_flags: list[bool] = []
    model.recurrent.block.register_forward_hook(lambda *_: grad_flags.append(torch.is_grad_enabled()))
    ids = torch.randint(0, 97, (2, 8))
    out = model(ids, labels=ids, n_loops=5, backprop_loops=2)
    (out.loss + out.aux_loss).backward()
    assert grad_flags == [False, False, False, True, True]
    assert model.recurrent.injection.log_A.grad is not None


@pytest.mark.parametrize("segment, n_loops, backprop_loops", [(1, 4, 0), (0, 7, 0), (3, 7, 5), (0, 6, 1)])
def test_loop_checkpointing_is_exact_and_counts_expert_load_once(segment: int, n_loops: int,
                                                                  backprop_loops: int) -> None:
    """Per-iteration (segment 1) and two-level (sqrt / fixed segments) checkpointing reproduce the loss, the
    gradients and the expert-load counts of the plain run; recomputes must not count tokens again."""
    ids = torch.randint(0, 97, (2, 8))
    results = []
    for ckpt in (False, True):
        torch.manual_seed(5)
        model = MythosLM(small_config(checkpoint_loops=ckpt, loop_checkpoint_segment=segment))
        out = model(ids, labels=ids, n_loops=n_loops, backprop_loops=backprop_loops)
        (out.loss + out.aux_loss).backward()
        results.append((out.loss.detach(), out.stats["state_norm"], model.recurrent.block.moe.tokens_per_expert.clone(),
                        [p.grad for p in model.parameters()]))
    (loss_a, norms_a, counts_a, grads_a), (loss_b, norms_b, counts_b, grads_b) = results
    assert torch.equal(loss_a, loss_b) and torch.equal(norms_a, norms_b) and norms_a.numel() == n_loops
    assert torch.equal(counts_a, counts_b) and counts_a.sum() == n_loops * 2 * 8 * 2  # loops x tokens x top-2
    assert all((a is None) == (b is None) for a, b in zip(grads_a, grads_b))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads_a, grads_b) if a is not None)


@pytest.mark.parametrize("capacity", [(), (1, 1, 0.5, 0.5, 0.25)])
@pytest.mark.parametrize("segment, backprop_loops", [(1, 0), (2, 0), (0, 0), (2, 3)])
def test_loop_checkpointing_reruns_each_loop_once_per_checkpoint_level(capacity: tuple[float, ...], segment: int,
                                                                        backprop_loops: int) -> None:
    """The shared block runs once per loop in forward. Backward re-runs each of the k loops with gradient once
    for its own checkpoint and, in segments of c > 1 loops, once more for its segment's, except the segment's
    last loop (its output is the next segment's kept input): k + k - ceil(k / c) re-runs, with loop_capacity
    as without it."""
    config = small_config(checkpoint_loops=True, loop_checkpoint_segment=segment, backprop_loops=backprop_loops,
                          mean_loops=5, max_loops=5, loop_capacity=capacity)
    model = MythosLM(config)
    calls: list[bool] = []
    model.recurrent.block.register_forward_hook(lambda *_: calls.append(True))
    ids = torch.randint(0, 97, (2, 16))
    out = model(ids, labels=ids)
    forward_calls = len(calls)
    (out.loss + out.aux_loss).backward()
    k = backprop_loops or 5
    length = segment or math.ceil(math.sqrt(k))
    segment_reruns = k - math.ceil(k / length) if length > 1 else 0
    assert (forward_calls, len(calls) - forward_calls) == (5, k + segment_reruns)


def _saved_bytes(model: MythosLM, ids: torch.Tensor, n_loops: int) -> int:
    """Bytes autograd keeps for backward after a forward (distinct storages, via saved-tensor hooks)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(ids, labels=ids, n_loops=n_loops)
    return sum(storages.values())


def test_two_level_loop_checkpointing_keeps_fewer_states_than_per_iteration() -> None:
    """What the forward keeps for backward (every saved tensor, checkpoint inputs included) grows by one state
    per iteration with per-iteration checkpoints and by one carry per sqrt(k) iterations with two-level
    checkpointing. (The backward peak adds one segment's states; bench/bench_train.py measures it.)"""
    ids = torch.randint(0, 97, (2, 64))
    kept = {}
    for segment in (0, 1):
        model = MythosLM(small_config(checkpoint_loops=True, loop_checkpoint_segment=segment))
        kept[segment] = {n: _saved_bytes(model, ids, n) for n in (4, 16)}
    growth = {s: kept[s][16] - kept[s][4] for s in kept}
    assert kept[0][16] < kept[1][16]
    assert growth[0] < growth[1] / 2


def test_every_parameter_receives_a_gradient() -> None:
    cfg = small_config(loop_embedding=True, router_z_loss_coef=1e-3, tie_embeddings=False)
    model = MythosLM(cfg)
    ids = torch.randint(0, 97, (4, 32))
    out = model(ids, labels=ids)
    (out.loss + out.aux_loss).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


@pytest.mark.parametrize("option", [dict(loop_embedding=True), dict(lora_rank=0), dict(state_init="noise")])
def test_recurrence_options_change_the_function(option: dict) -> None:
    ids = torch.randint(0, 97, (1, 8))
    torch.manual_seed(2)
    base = MythosLM(small_config(lora_rank=4)).eval()
    torch.manual_seed(2)
    variant = MythosLM(small_config(**{"lora_rank": 4, **option})).eval()
    with torch.no_grad():
        assert not torch.allclose(base(ids).logits, variant(ids).logits, atol=1e-4)
        variant(ids, n_loops=3 * variant.config.resolved_max_loops)  # depth extrapolation past every table


def test_weight_decay_groups_exclude_norms_embeddings_and_recurrence_params() -> None:
    model = MythosLM(small_config())
    decay, no_decay = weight_decay_param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert {"tok_embeddings.weight", "recurrent.injection.log_A", "recurrent.injection.B",
            "norm.weight"} <= no_decay_names
    assert "recurrent.block.moe.experts.gate_up_proj" in {names[id(p)] for p in decay["params"]}


def test_tiny_preset_overfits_a_fixed_batch() -> None:
    cfg = get_preset("tiny", vocab_size=512, max_seq_len=32)
    model = MythosLM(cfg)
    ids = torch.randint(0, 512, (2, 33))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        out = model(ids[:, :-1], labels=ids[:, 1:])
        (out.loss + out.aux_loss).backward()
        opt.step()
        opt.zero_grad()
        first = first if first is not None else out.loss.item()
    assert first > 5.0 and out.loss.item() < 0.5


def test_bad_config_names_the_field() -> None:
    with pytest.raises(ConfigError, match="num_experts_per_tok"):
        small_config(num_experts_per_tok=9)
    with pytest.raises(ConfigError, match="attn_type"):
        small_config(attn_type="linear")
    with pytest.raises(ConfigError, match="no field"):
        ModelConfig.from_dict({"dims": 3})
    with pytest.raises(ConfigError, match="unknown preset"):
        get_preset("2t")


def test_config_json_round_trip(tmp_path) -> None:
    cfg = get_preset("small", loop_embedding=True)
    path = tmp_path / "config.json"
    cfg.to_json(path)
    assert ModelConfig.from_json(path) == cfg
    path.write_text('{"dim": -1}')
    with pytest.raises(ConfigError, match="dim"):
        ModelConfig.from_json(path)


# Importable stand-ins for the optional CUDA extras: where the real ones are missing, an eager (guarded) import fails
# and leaves no trace in sys.modules, so only a stand-in that imports shows whether the library reached for it.
STAND_IN_EXTRAS = {
    "flash_attn/__init__.py": "def flash_attn_func(*args, **kwargs):\n    raise RuntimeError('stand-in')\n",
    "apex/__init__.py": "",
    "apex/normalization/__init__.py": "",
    "apex/normalization/fused_layer_norm.py": "def fused_rms_norm_affine(*args):\n    raise RuntimeError('stand-in')\n",
    "apex/optimizers/__init__.py": "FusedAdam = object\n",
}


def test_optional_cuda_extras_are_not_imported_eagerly(tmp_path) -> None:
    import os
    import subprocess
    import sys

    for name, text in STAND_IN_EXTRAS.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    probe = "import sys; {}; print(sorted({{m for m in sys.modules if m.split('.')[0] in ('flash_attn', 'apex')}}))"
    imports = "import megamythos.model.lm, megamythos.inference.generate, megamythos.model.params"
    result = subprocess.run([sys.executable, "-c", probe.format(imports)], capture_output=True, text=True, env=env,
                            check=True)
    assert result.stdout.strip() == "[]"
    reached = "from megamythos.model.attention import _flash_attn_func; from megamythos.model.layers import " \
              "_apex_rms_norm; _flash_attn_func(); _apex_rms_norm()"  # the stand-ins are what a lazy import finds
    result = subprocess.run([sys.executable, "-c", probe.format(reached)], capture_output=True, text=True, env=env,
                            check=True)
    assert "flash_attn" in result.stdout and "apex.normalization.fused_layer_norm" in result.stdout


@pytest.mark.parametrize("injection", ["additive", "concat"])
def test_baseline_injections_run_and_report_unit_radius_at_init(injection: str) -> None:
    model = MythosLM(small_config(injection=injection))
    ids = torch.randint(0, 97, (2, 8))
    out = model(ids, labels=ids)
    (out.loss + out.aux_loss).backward()
    assert torch.isfinite(out.loss)
    assert model.spectral_radius().item() == pytest.approx(1.0)


def test_mla_is_the_deepseek_v2_equations_written_out() -> None:
    """Per token and head: q = W_qb RMSNorm(W_qa x), [c_kv | k_pe] = W_kva x, [k_nope | v] = W_kvb RMSNorm(c_kv),
    k = [k_nope | rope(k_pe)] with ONE k_pe for every head, causal softmax(q.k / sqrt(nope + rope)) v, then W_o;
    the absorbed path (latent-space scores) gives the same in fp64."""
    from megamythos.model.attention import MLA

    torch.manual_seed(0)
    cfg = small_config(dim=24, n_heads=3, q_lora_rank=10, kv_lora_rank=8, qk_rope_head_dim=6, qk_nope_head_dim=4,
                       v_head_dim=5)
    mla = MLA(cfg).double()
    for p in mla.parameters():
        torch.nn.init.normal_(p, std=0.4)
    x = torch.randn(2, 6, 24, dtype=torch.float64)
    with torch.no_grad():
        out, absorbed = mla(x, torch.arange(6)), mla(x, torch.arange(6), absorb=True)

    def rms(v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return v / (v.pow(2).mean(-1, keepdim=True) + cfg.norm_eps).sqrt() * w

    heads, nope, rope, vd, rank = 3, 4, 6, 5, 8
    expected = torch.zeros_like(out)
    with torch.no_grad():
        for b in range(2):
            q = (rms(x[b] @ mla.wq_a.weight.T, mla.q_norm.weight) @ mla.wq_b.weight.T).view(6, heads, nope + rope)
            latent = x[b] @ mla.wkv_a.weight.T
            kv = (rms(latent[:, :rank], mla.kv_norm.weight) @ mla.wkv_b.weight.T).view(6, heads, nope + vd)
            for t in range(6):
                o = []
                for h in range(heads):
                    qt = torch.cat((q[t, h, :nope], rope_by_hand(q[t, h, nope:], t, cfg.rope_theta)))
                    keys = [torch.cat((kv[s, h, :nope], rope_by_hand(latent[s, rank:], s, cfg.rope_theta)))
                            for s in range(t + 1)]
                    p = torch.stack([qt @ k / (nope + rope) ** 0.5 for k in keys]).softmax(0)
                    o.append(sum(p[s] * kv[s, h, nope:] for s in range(t + 1)))
                expected[b, t] = torch.cat(o) @ mla.wo.weight.T
    # RoPE's cos/sin tables are fp32 (as in training), the rest fp64
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(absorbed, out, atol=1e-12)


@pytest.mark.parametrize("attn_type", ["mla", "gqa"])
def test_attention_depends_only_on_position_differences(attn_type: str) -> None:
    """RoPE makes attention translation-invariant: the same tokens at positions p..p+S-1 give the same output for
    every offset p (cached decode and prefill share these tables), near the 1M-context presets' last position too."""
    from megamythos.model.attention import build_attention

    torch.manual_seed(0)
    attn = build_attention(small_config(attn_type=attn_type)).double()
    x = torch.randn(1, 7, 64, dtype=torch.float64)
    with torch.no_grad():
        outs = [attn(x, torch.arange(offset, offset + 7)) for offset in (0, 5, 1000, 999_000)]
    assert all(torch.allclose(outs[0], out, atol=1e-6) for out in outs[1:])


def test_rope_angles_stay_exact_up_to_the_longest_preset_context() -> None:
    """The cos/sin tables agree with fp64 to 1e-6 at every position up to the 1t preset's max_seq_len (10^6), at
    its rope width and base, and at the tiny preset's. Found 2026-12-08: the angles were formed in fp32 and carried
    half an ulp of the whole angle, 2e-4 at position 4096 and 0.055 near 10^6. The tables hold no state: a shorter
    call's are the first rows of a longer one's, whichever runs first."""
    from megamythos.model.layers import rope_cos_sin

    for preset in ("tiny", "1t"):
        cfg = get_preset(preset)
        positions = torch.cat([torch.arange(start, start + 64) for start in (0, 4032, cfg.max_seq_len - 64)])
        cos, sin = rope_cos_sin(positions, cfg.qk_rope_head_dim, cfg.rope_theta)
        i = torch.arange(0, cfg.qk_rope_head_dim, 2, dtype=torch.float64)
        angles = positions.double()[:, None] * cfg.rope_theta ** (-i / cfg.qk_rope_head_dim)
        assert cos.dtype == sin.dtype == torch.float32
        assert (cos.double() - angles.cos()).abs().max() < 1e-6, preset
        assert (sin.double() - angles.sin()).abs().max() < 1e-6, preset
    short = rope_cos_sin(torch.arange(8), 8, 1e4)
    long = rope_cos_sin(torch.arange(64), 8, 1e4)
    assert all(torch.equal(s, x[:8]) for s, x in zip(short, long))


def test_truncated_backprop_gradient_equals_detaching_the_state_by_hand() -> None:
    """backprop_loops=k: every parameter's gradient equals that of running the first n - k iterations under no_grad
    and detaching the state (Huginn's truncated BPTT), and differs from full backprop."""
    torch.manual_seed(0)
    model = MythosLM(small_config(seq_aux_loss_coef=0.01)).train()
    ids, labels = torch.randint(0, 97, (2, 9)), torch.randint(0, 97, (2, 9))
    n, k = 5, 2

    def grads(loss: torch.Tensor) -> dict[str, torch.Tensor]:
        model.zero_grad()
        loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    def by_hand() -> torch.Tensor:
        core, pos = model.recurrent, torch.arange(9)
        x = model.prelude_states(ids, pos)
        e = core.input_norm(x)
        h, aux = core.initial_state(e), 0.0
        for t in range(n):
            with torch.set_grad_enabled(t >= n - k):
                h, step_aux, _, _ = core.iteration(h if t >= n - k else h.detach(), e, t, pos, None, False)
            aux = aux + step_aux
        return model.token_loss(model.coda_logits(h.to(x.dtype), pos), labels) + aux / n

    out = model(ids, labels=labels, n_loops=n, backprop_loops=k)
    truncated, expected = grads(out.loss + out.aux_loss), grads(by_hand())
    assert truncated.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(truncated[name], expected[name], rtol=1e-5, atol=1e-7, msg=name)
    full = model(ids, labels=labels, n_loops=n, backprop_loops=0)
    assert not torch.allclose(grads(full.loss + full.aux_loss)["recurrent.injection.log_A"],
                              expected["recurrent.injection.log_A"])


def test_the_python_api_example_in_docs_model_md_runs(capsys: pytest.CaptureFixture) -> None:
    """docs/model.md's "Using it from Python" block is the library's front door for a notebook user: it must run as
    written, and its padded perplexity must score the 39 + 11 real tokens."""
    text = (REPO / "docs" / "model.md").read_text()
    section = text[text.index("## Using it from Python"):text.index("## Components")]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "docs/model.md", "exec"), {"__name__": "docs_example"})
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[-1] for line in printed[-3:]] == ["50", "50", "50"]
