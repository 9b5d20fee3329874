"""Compaction at inference: only the tokens still iterating go through the block, with the same numbers as
running every token and freezing the exited ones (the masked path)."""
from __future__ import annotations

import pytest
import torch

import megamythos.model.recurrent as recurrent
from megamythos.model.config import ConfigError
from megamythos.model.lm import ModelKVCache, MythosLM
from megamythos.model.params import count
from megamythos.model.token_subset import TokenSubset
from tests.helpers import small_config


def _threshold_between_changes(model: MythosLM, ids: torch.Tensor, n_loops: int, iteration: int) -> float:
    """Halfway between the two middle relative changes at ``iteration``: half the tokens exit there."""
    with torch.no_grad():
        changes = model(ids, n_loops=n_loops, exit_threshold=0.0).stats["relative_change"][iteration]
    changes = changes.flatten().sort().values
    mid = len(changes) // 2
    return float(changes[mid - 1] + changes[mid]) / 2


def _run(model: MythosLM, ids: torch.Tensor, threshold: float, cached: bool,
         absorb: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, per-token depths) of a forward, or of a prefill of 4 tokens and 1-token decode steps."""
    with torch.no_grad():
        if not cached:
            out = model(ids, n_loops=6, exit_threshold=threshold)
            return out.logits.float(), out.stats["depth"]
        cache = ModelKVCache(model.config, 6)
        parts = [model(ids[:, :4], cache=cache, absorb=absorb, exit_threshold=threshold)]
        parts += [model(ids[:, i:i + 1], cache=cache, absorb=absorb, exit_threshold=threshold)
                  for i in range(4, ids.shape[1])]
        return (torch.cat([p.logits.float() for p in parts], dim=1),
                torch.cat([p.stats["depth"] for p in parts], dim=1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cached", [False, True])
@pytest.mark.parametrize("attn_type,absorb,router", [("mla", False, "change"), ("mla", True, "change"),
                                                     ("gqa", False, "change"), ("mla", True, "learned")])
def test_compaction_equals_masked_path(monkeypatch: pytest.MonkeyPatch, attn_type: str, absorb: bool, router: str,
                                       cached: bool, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    monkeypatch.setattr(recurrent, "COMPACTION_MIN_TOKENS", 1)  # compact the small cached steps too
    model = MythosLM(small_config(attn_type=attn_type, capacity_router=router)).to(dtype).eval()
    ids = torch.randint(0, 97, (3, 12))
    threshold = _threshold_between_changes(model, ids, 6, iteration=1)
    tokens_in_moe = []
    moe = model.recurrent.block.moe
    moe.register_forward_hook(lambda m, args, out: tokens_in_moe.append(args[0].shape[:-1].numel()))
    logits, depth = _run(model, ids, threshold, cached, absorb)
    computed = sum(tokens_in_moe)
    tokens_in_moe.clear()
    with monkeypatch.context() as patch:  # the masked path: every token through the block at every iteration
        patch.setattr(recurrent, "still_active", lambda active: None)
        masked_logits, masked_depth = _run(model, ids, threshold, cached, absorb)
    assert torch.equal(depth, masked_depth) and depth.min() < depth.max()
    tolerance = 1e-4 if dtype == torch.float32 else 3e-2
    assert torch.allclose(logits, masked_logits, atol=tolerance, rtol=tolerance)
    # the MoE saw each token once per iteration it ran, where the masked path sends whole rows each time
    assert computed == int(depth.sum()) < sum(tokens_in_moe)


def test_exit_statistics_count_the_computed_tokens_whether_compacted_or_masked(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """relative_change reads 0 for a token once it exited and router_gate averages the tokens still iterating, also
    where a small batch runs its exited tokens through the block and discards them (the masked path)."""
    torch.manual_seed(0)
    model = MythosLM(small_config(capacity_router="learned")).eval()
    ids = torch.randint(0, 97, (3, 12))  # 36 tokens: compacted
    threshold = _threshold_between_changes(model, ids, 6, iteration=1)
    with torch.no_grad():
        compacted = model(ids, n_loops=6, exit_threshold=threshold).stats
        monkeypatch.setattr(recurrent, "COMPACTION_MIN_TOKENS", 10 ** 6)
        masked = model(ids, n_loops=6, exit_threshold=threshold).stats
    depth = compacted["depth"]
    assert torch.equal(depth, masked["depth"]) and depth.min() < depth.max()
    ran = torch.arange(int(compacted["n_loops"]))[:, None, None] < depth  # [T, B, S]: the token ran loop t
    for stats in (compacted, masked):
        assert torch.equal(stats["relative_change"] > 0, ran)
    assert torch.allclose(masked["relative_change"], compacted["relative_change"], atol=1e-5)
    assert torch.allclose(masked["router_gate"], compacted["router_gate"], atol=1e-5)


def test_small_batches_mask_instead_of_compacting() -> None:
    """Cached decode at batch 8 (8 tokens a step) runs every row through the block, exited ones masked."""
    torch.manual_seed(0)
    model = MythosLM(small_config()).eval()
    ids = torch.randint(0, 97, (8, 12))
    threshold = _threshold_between_changes(model, ids, 6, iteration=1)
    tokens_in_moe = []
    model.recurrent.block.moe.register_forward_hook(lambda m, args, out: tokens_in_moe.append(args[0].shape[:2]))
    with torch.no_grad():
        cache = ModelKVCache(model.config, 6)
        model(ids[:, :8], cache=cache, exit_threshold=threshold)  # 64 tokens: compacted once some exited
        prefill = list(tokens_in_moe)
        tokens_in_moe.clear()
        step = model(ids[:, 8:9], cache=cache, exit_threshold=threshold)
    assert any(shape[0] == 1 for shape in prefill)  # the flat row of the still-active tokens
    assert step.stats["depth"].min() < step.stats["n_loops"] and set(tokens_in_moe) == {(8, 1)}
    assert recurrent.COMPACTION_MIN_TOKENS == 32


@pytest.mark.parametrize("attn_type", ["mla", "gqa"])
def test_block_on_every_token_as_a_subset_equals_the_full_block(attn_type: str) -> None:
    torch.manual_seed(0)
    model = MythosLM(small_config(attn_type=attn_type)).eval()
    block, u = model.recurrent.block, torch.randn(2, 9, 64)
    positions = torch.arange(9)
    with torch.no_grad():
        full, _ = block(u, positions, None, False)
        every = TokenSubset.of(torch.ones(2, 9, dtype=torch.bool))
        subset, _ = block(u, positions, None, False, every)
    assert torch.allclose(every.scatter(torch.zeros_like(full), subset), full, atol=1e-5)


def test_token_subset_layouts() -> None:
    chosen = torch.tensor([[True, False, True, True], [False, False, True, False]])
    subset = TokenSubset.of(chosen)
    assert subset.width == 3 and subset.index.tolist() == [0, 2, 3, 6] and subset.slot.tolist() == [0, 1, 2, 0]
    x = torch.arange(8.0).view(2, 4, 1)
    flat = subset.gather(x)
    assert flat.flatten().tolist() == [0.0, 2.0, 3.0, 6.0]
    assert subset.pad(flat, fill=-1).squeeze(-1).tolist() == [[0.0, 2.0, 3.0], [6.0, -1.0, -1.0]]
    assert torch.equal(subset.unpad(subset.pad(flat)), flat)
    assert torch.equal(subset.scatter(torch.zeros_like(x), flat), x * chosen.unsqueeze(-1))
    mask = subset.attention_mask(torch.arange(4), 4)  # query at position p sees keys 0..p; padding sees all
    assert mask.shape == (2, 1, 3, 4)
    assert mask[0, 0].tolist() == [[True, False, False, False], [True, True, True, False], [True] * 4]
    assert mask[1, 0].tolist() == [[True, True, True, False], [True] * 4, [True] * 4]


# ------------------------------------------------------------------------------------- loop capacity (training)
SCHEDULE = (1.0, 1.0, 0.5, 0.5, 0.25, 0.25)


def test_loop_capacity_trains_only_the_scheduled_tokens_with_gradients_everywhere() -> None:
    torch.manual_seed(0)
    model = MythosLM(small_config(mean_loops=3, loop_capacity=SCHEDULE, backprop_loops=2,
                                  checkpoint_loops=True)).train()
    ids = torch.randint(0, 97, (2, 16))
    tokens_in_moe = []
    moe = model.recurrent.block.moe
    moe.register_forward_hook(lambda m, args, out: tokens_in_moe.append(args[0].shape[:-1].numel()))
    out = model(ids, labels=ids, n_loops=6)
    (out.loss + out.aux_loss).backward()
    # forward: 32 tokens at the full loops, 16 and 8 after; checkpointed loops run their forward once more
    assert tokens_in_moe[:6] == [32, 32, 16, 16, 8, 8] and tokens_in_moe[6:] == [8, 8]
    assert out.stats["active_share"].tolist() == list(SCHEDULE) and float(out.stats["mean_depth"]) == 3.5
    depth = out.stats["depth"]
    assert torch.equal((depth == 6).sum(dim=1), torch.tensor([4, 4]))  # ceil(0.25 * 16) per sequence
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["recurrent.block.moe.experts.gate_up_proj"].abs().sum() > 0
    with torch.no_grad():
        assert torch.equal(model.eval()(ids, n_loops=6, exit_threshold=0.0).stats["depth"], torch.full((2, 16), 6.0))
    with pytest.raises(ValueError, match="n_loops=7 exceeds the 6 loops of loop_capacity"):
        model.train()(ids, n_loops=7)


def test_loop_capacity_keeps_the_tokens_whose_state_moved_most() -> None:
    torch.manual_seed(0)
    model = MythosLM(small_config(mean_loops=3, loop_capacity=SCHEDULE)).train()
    ids = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        out = model(ids, n_loops=3)
    change, depth = out.stats["relative_change"][1], out.stats["depth"]  # loop 2 keeps the top half of loop 1
    kept = depth == 3
    assert torch.equal(kept.sum(dim=1), torch.tensor([8, 8]))
    assert all(change[b][kept[b]].min() >= change[b][~kept[b]].max() for b in range(2))


def _router_calls(model: MythosLM) -> list[torch.Tensor]:
    """The learned router's logits of every call, in call order (ranking calls see all B x S tokens)."""
    calls = []
    model.recurrent.router.register_forward_hook(lambda m, args, out: calls.append(out.detach()))
    return calls


def test_learned_router_ranks_the_tokens_and_learns_through_its_gate() -> None:
    torch.manual_seed(0)
    model = MythosLM(small_config(mean_loops=3, loop_capacity=SCHEDULE, capacity_router="learned",
                                  backprop_loops=2)).train()
    ids = torch.randint(0, 97, (2, 16))
    calls = _router_calls(model)
    out = model(ids, labels=ids, n_loops=6)
    out.loss.backward()
    # per loop one gate on the computed tokens, and before each loop with c_t < 1 a ranking of all of them
    assert [tuple(z.shape) for z in calls] == [(2, 16), (2, 16), (2, 16), (1, 16), (2, 16), (1, 16), (2, 16),
                                               (1, 8), (2, 16), (1, 8)]
    ranking, depth = calls[2], out.stats["depth"]  # before loop 2 (capacity 1/2): the top half by logit continue
    kept = depth >= 3
    assert torch.equal(kept.sum(dim=1), torch.tensor([8, 8]))
    assert all(ranking[b][kept[b]].min() >= ranking[b][~kept[b]].max() for b in range(2))
    # the statistic behind recurrent/router-gate: per loop the mean gate 2 sigmoid(z_t) of the computed tokens
    gate_calls = [calls[i] for i in (0, 1, 3, 5, 7, 9)]
    assert torch.allclose(out.stats["router_gate"], torch.stack([2 * torch.sigmoid(z).mean() for z in gate_calls]))
    # the router learns from the loss through its gate, in the loops under gradient (the last 2) only
    per_loop = model.recurrent.router.weight.grad.abs().sum(dim=1)
    assert (per_loop[4:] > 0).all() and (per_loop[:4] == 0).all()


def test_learned_router_scores_in_fp32_under_bf16_autocast() -> None:
    """The gate scales the fp32 state update: under autocast its logits stay the fp32 product (a bf16 gate near 1
    would move in steps of 2**-7), in the gate and in loop capacity's ranking alike."""
    torch.manual_seed(0)
    model = MythosLM(small_config(mean_loops=3, loop_capacity=SCHEDULE, capacity_router="learned")).train()
    router, h = model.recurrent.router, torch.randn(2, 16, 64)
    calls = _router_calls(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = router(h, 1)
        model(torch.randint(0, 97, (2, 16)), n_loops=6)
    assert torch.equal(logits, h @ router.weight[1])
    assert len(calls) == 11 and all(z.dtype == torch.float32 for z in calls)


def test_learned_router_at_zero_is_the_ungated_recurrence() -> None:
    torch.manual_seed(0)
    plain = MythosLM(small_config(mean_loops=3, loop_capacity=SCHEDULE)).eval()
    gated = MythosLM(small_config(mean_loops=3, loop_capacity=SCHEDULE, capacity_router="learned")).eval()
    gated.load_state_dict(plain.state_dict(), strict=False)
    ids = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        gated.recurrent.router.weight.fill_(1.0)
        assert not torch.allclose(gated(ids, n_loops=4).logits, plain(ids, n_loops=4).logits, atol=1e-3)
        gated.recurrent.router.weight.zero_()  # gate 2 sigmoid(0) = 1
        out = gated(ids, n_loops=4)
        assert torch.allclose(out.logits, plain(ids, n_loops=4).logits, atol=1e-5)
        assert torch.equal(out.stats["router_gate"], torch.ones(int(out.stats["n_loops"])))  # one per loop run
        assert "router_gate" not in plain(ids, n_loops=4).stats


def test_capacity_counts_only_the_computed_tokens() -> None:
    config = small_config(mean_loops=3, loop_capacity=SCHEDULE)
    full = count(config.replace(loop_capacity=()), 16, 6)
    ones = count(config.replace(loop_capacity=(1.0,) * 6), 16, 6)
    half = count(config, 16, 6)
    assert ones.train_flops_per_token == full.train_flops_per_token
    assert half.train_flops_per_token < full.train_flops_per_token
    assert half.fwd_flops_per_token == full.fwd_flops_per_token  # inference runs the exit rule, not the schedule
    deeper = count(config, 16, 12)  # deeper than the schedule (an inference depth): counted, its last entry holds
    assert deeper.fwd_flops_per_token == count(config.replace(loop_capacity=()), 16, 12).fwd_flops_per_token
    assert deeper.train_flops_per_token > half.train_flops_per_token
    # the learned router: its row of the loop for each computed token (forward and backward), and its ranking of
    # every token where c_t < 1 (under no_grad: forward only; found 2026-12-08, config-space sweep: counted 3x)
    learned = config.replace(capacity_router="learned")
    dim = config.dim
    assert count(learned, 16, 6).fwd_flops_per_token - half.fwd_flops_per_token == 6 * 2 * dim
    forward_gates = sum(SCHEDULE) * 2 * dim
    rankings = sum(c < 1 for c in SCHEDULE) * 2 * dim
    assert count(learned, 16, 6).train_flops_per_token - half.train_flops_per_token == pytest.approx(
        3 * forward_gates + rankings)


@pytest.mark.parametrize("schedule, message", [
    ((1.0, 0.5, 0.75, 0.5, 0.5, 0.5), "non-increasing"), ((0.5,) * 6, "starting at 1"), ((1.0, 1.0, 0.0) * 2, "(0, 1]"),
    ((1.0, 0.5), "one entry per loop up to max_loops=6"), ("1,x", "give numbers")])
def test_bad_capacity_schedule_is_one_error_naming_the_field(schedule: object, message: str) -> None:
    with pytest.raises(ConfigError, match=r"loop_capacity") as err:
        small_config(mean_loops=3, loop_capacity=schedule)
    assert message in str(err.value)
    with pytest.raises(ConfigError, match=r"capacity_router='state' is invalid: choose 'change' .* or 'learned'"):
        small_config(capacity_router="state")
