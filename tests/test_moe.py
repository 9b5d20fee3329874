"""MoE: sorted dispatch against a per-expert reference, routing rules, aux-loss-free balancing."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

import megamythos.model.moe as moe_module
from megamythos.model.config import ModelConfig
from megamythos.model.moe import (
    BalanceLoss,
    MoE,
    expert_bias_state,
    grouped_matmul,
    load_expert_bias_state,
    route,
    update_expert_bias,
)
from megamythos.planning.plan import main as plan_main
from megamythos.training.arguments import ArgumentError, parse_args
from tests.helpers import small_config


def naive_moe(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """Reference: loop over tokens' chosen experts one expert at a time."""
    flat = x.reshape(-1, x.shape[-1])
    weights, ids, _ = route(moe.gate(flat), moe.gate.e_score_correction_bias, moe.top_k, moe.score_func,
                            moe.route_norm)
    out = torch.zeros_like(flat)
    f = moe.experts.hidden_dim
    for e in range(moe.gate.out_features):
        rows, slot = (ids == e).nonzero(as_tuple=True)
        if rows.numel() == 0:
            continue
        w_gu, w_d = moe.experts.gate_up_proj[e], moe.experts.down_proj[e]
        h = flat[rows] @ w_gu.t()
        y = (F.silu(h[:, :f]) * h[:, f:]) @ w_d.t()
        out = out.index_add(0, rows, y * weights[rows, slot, None])
    return out.view_as(x) + moe.shared_experts(x)


@pytest.mark.parametrize("dim,expert_dim,score_func,dtype", [(64, 32, "softmax", torch.float32),
                                                             (60, 30, "sigmoid", torch.float32),
                                                             (64, 32, "sigmoid", torch.float64)])
def test_sorted_dispatch_matches_per_expert_reference_with_grads(dim: int, expert_dim: int, score_func: str,
                                                                 dtype: torch.dtype) -> None:
    # fp32 (64, 32) takes torch._grouped_mm; (60, 30) is not 16-byte aligned and takes the padded bmm path, as does
    # fp64 (the kernel has no fp64: a float64 model, e.g. for a numerical check, raised in the MoE before)
    cfg = small_config(dim=dim, expert_dim=expert_dim, score_func=score_func, n_experts=8, num_experts_per_tok=3)
    moe = MoE(cfg).to(dtype)
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(2, 9, dim, dtype=dtype, requires_grad=True)
    atol = 1e-5 if dtype == torch.float32 else 1e-12
    grads = []
    outs = []
    for fn in (lambda t: moe(t).hidden, lambda t: naive_moe(moe, t)):
        moe.zero_grad()
        x.grad = None
        out = fn(x)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outs.append(out.detach())
        grads.append([x.grad.clone()] + [p.grad.clone() for p in moe.parameters()])
    assert torch.allclose(outs[0], outs[1], atol=atol)
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=atol)


def test_without_the_grouped_mm_kernel_the_experts_take_the_padded_matmul(monkeypatch) -> None:
    """Before torch 2.9 (GROUPED_MM_KERNEL false: 2.8's op has no CPU kernel and raises) grouped_matmul never
    calls torch._grouped_mm, even on aligned shapes, and gives the kernel's result."""
    x, weight = torch.randn(12, 64), torch.randn(3, 32, 64)
    counts = torch.tensor([5, 0, 7])
    with_kernel = grouped_matmul(x, weight, counts)

    def no_kernel(*_: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("Could not run 'aten::_grouped_mm' with arguments from the 'CPU' backend")

    monkeypatch.setattr(moe_module, "_grouped_mm", no_kernel)
    with pytest.raises(NotImplementedError):
        grouped_matmul(x, weight, counts)
    monkeypatch.setattr(moe_module, "GROUPED_MM_KERNEL", False)
    torch.testing.assert_close(grouped_matmul(x, weight, counts), with_kernel)


def test_grouped_matmul_takes_a_broadcast_gradient() -> None:
    """Found 2026-12-07 (model-math audit): the gradient of ``grouped_matmul(...).sum()`` is a broadcast tensor
    (strides 0), which torch._grouped_mm refused in the backward (``Invalid strides/sizes``); the MoE's own
    gradient is always a fresh tensor, but Experts or grouped_matmul called on their own met it."""
    x, weight = torch.randn(6, 16, requires_grad=True), torch.randn(3, 8, 16, requires_grad=True)
    counts = torch.tensor([2, 0, 4])
    grouped_matmul(x, weight, counts).sum().backward()
    rows = torch.repeat_interleave(torch.arange(3), counts)
    torch.testing.assert_close(x.grad, weight.detach()[rows].sum(1))
    torch.testing.assert_close(weight.grad, torch.stack([x.detach()[rows == g].sum(0).expand(8, 16)
                                                         for g in range(3)]))


def test_bias_selects_but_does_not_weight() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    bias = torch.tensor([0.0, 0.0, 0.0, 10.0])
    weights, ids, scores = route(logits, bias, 2, "softmax", route_norm=False)
    assert set(ids[0].tolist()) == {0, 3}
    assert torch.allclose(weights.sort().values, scores[0, [3, 0]].sort().values)


def test_expert_bias_update_moves_load_toward_uniform() -> None:
    cfg = small_config(n_experts=8, num_experts_per_tok=2)
    moe = MoE(cfg).train()
    with torch.no_grad():
        moe.gate.weight.normal_(std=0.05)
        moe.gate.weight[0, 0] = 3.0  # with the constant channel below, expert 0 attracts nearly every token
    x = torch.randn(4, 32, cfg.dim)
    x[..., 0] = 1.0

    def imbalance() -> float:
        moe(x)
        stats = update_expert_bias(moe, rate=0.02).stats
        assert stats["load_imbalance"] == stats["max_load"] / stats["mean_load"]
        return stats["load_imbalance"]

    start = imbalance()
    history = [imbalance() for _ in range(100)]
    end = sum(history[-20:]) / 20
    assert start > 2.5 and end < 0.6 * start
    assert float(moe.tokens_per_expert.sum()) == 0.0


def test_experts_no_token_reached_are_counted() -> None:
    """``moe/idle-experts``: a router sending nearly every token to one expert (top-1) leaves most of the other 7
    idle, until the bias updates bring them back in."""
    cfg = small_config(n_experts=8, num_experts_per_tok=1)
    moe = MoE(cfg).train()
    with torch.no_grad():
        moe.gate.weight.normal_(std=0.05)
        moe.gate.weight[0, 0] = 3.0
    x = torch.randn(4, 32, cfg.dim, generator=torch.Generator().manual_seed(0))
    x[..., 0] = 1.0
    idle, which = [], []
    for _ in range(60):
        moe(x)
        balance = update_expert_bias(moe, rate=0.02)
        idle.append(balance.stats["idle_experts"])
        which.append(balance.idle)
    assert idle[0] >= 5.0 and idle[-1] == 0.0, idle
    assert [len(w) for w in which] == idle and 0 not in which[0] and which[-1] == ()


def test_an_expert_the_router_keeps_without_tokens_is_named(caplog):
    """With the bias update off, a router that sends every token to expert 0 (top-1) leaves the others idle for
    good: after IDLE_EXPERT_STEPS steps the trainer's watch names them in one warning (the console said nothing)."""
    from megamythos.training.monitor import IDLE_EXPERT_STEPS, IdleExpertWatch

    cfg = small_config(n_experts=4, num_experts_per_tok=1, n_shared_experts=0, expert_bias_update_rate=0.0)
    moe = MoE(cfg).train()
    with torch.no_grad():
        moe.gate.weight.zero_()
        moe.gate.weight[0, 0] = 5.0
    x = torch.zeros(1, 4, cfg.dim)
    x[..., 0] = 1.0
    watch = IdleExpertWatch(cfg.n_experts, cfg.expert_bias_update_rate)
    caplog.set_level("WARNING", logger="megamythos.training.monitor")
    for iteration in range(1, IDLE_EXPERT_STEPS + 1):
        moe(x)
        watch.observe(update_expert_bias(moe, cfg.expert_bias_update_rate).idle, iteration)
    assert len(caplog.records) == 1 and caplog.records[0].getMessage().startswith(
        f"routed expert(s) 1, 2, 3 of 4 received no token for {IDLE_EXPERT_STEPS} steps in a row (iterations 1-"
        f"{IDLE_EXPERT_STEPS})")
    assert "the aux-loss-free bias update is off" in caplog.records[0].getMessage()


def test_counts_only_in_training_and_bias_state_round_trip() -> None:
    moe = MoE(small_config())
    moe.eval()(torch.randn(1, 4, 64))
    assert float(moe.tokens_per_expert.sum()) == 0
    moe.train()(torch.randn(1, 4, 64))
    assert float(moe.tokens_per_expert.sum()) == 4 * moe.top_k
    update_expert_bias(moe, 0.1)
    saved = expert_bias_state(moe)
    other = MoE(small_config())
    load_expert_bias_state(other, saved)
    assert torch.equal(other.gate.e_score_correction_bias, moe.gate.e_score_correction_bias)
    with pytest.raises(KeyError, match="expert-bias state"):
        load_expert_bias_state(other, {"elsewhere": saved[""]})


def test_top1_routing_refuses_renormalised_weights_that_leave_the_router_untrained(tmp_path, capsys) -> None:
    """route_norm renormalises the K routed weights to sum 1: at K = 1 the one weight is 1 whatever the scores, so
    the router got no gradient from the loss, silently (found 2026-12-07). A training run is refused naming
    route_norm, and so is its plan, with the trainer's line (found 2026-12-07: the planner printed a plan of it);
    but the config still loads: a model trained so before computes with weight 1, which route_norm false would
    change, so its checkpoints and exports must stay readable. Top-1 with the raw score as its weight
    (Switch-style) trains the router."""
    with pytest.raises(ArgumentError, match=r"num_experts_per_tok=1\) with route_norm=true") as refused:
        parse_args(["--override", "num_experts_per_tok=1"]).model_config()
    saved = small_config(num_experts_per_tok=1)
    assert ModelConfig.from_json(json.dumps(dataclasses.asdict(saved))).route_norm
    (tmp_path / "top1.json").write_text(saved.to_json())
    assert plan_main(["--config", str(tmp_path / "top1.json")]) == 2
    assert capsys.readouterr().err == f"error: {refused.value}\n"
    moe = MoE(small_config(num_experts_per_tok=1, route_norm=False, seq_aux_loss_coef=0.0))
    for param in moe.parameters():
        torch.nn.init.normal_(param, std=0.05)
    moe(torch.randn(2, 8, 64)).hidden.sum().backward()
    assert moe.gate.weight.grad.abs().min() > 0


def test_one_routed_expert_scored_by_softmax_is_refused_for_training_and_trains_its_gate_with_sigmoid() -> None:
    """n_experts=1: a softmax over one logit is 1 whatever the router, so the gate got an all-zero gradient from the
    loss and the balance terms, silently (found 2026-12-08, config-space sweep). Training refuses it naming
    score_func, as it does top-1 with route_norm; with sigmoid scores the one expert's weight is a learned gate."""
    flags = ["--override", "n_experts=1", "--override", "num_experts_per_tok=1", "--override", "route_norm=false"]
    with pytest.raises(ArgumentError, match=r"n_experts=1\) with score_func=softmax.*score_func=sigmoid"):
        parse_args(flags).model_config()
    assert parse_args([*flags, "--override", "score_func=sigmoid"]).model_config().n_experts == 1
    for score_func, trained in (("softmax", False), ("sigmoid", True)):
        torch.manual_seed(0)
        moe = MoE(small_config(n_experts=1, num_experts_per_tok=1, route_norm=False, score_func=score_func))
        for param in moe.parameters():
            torch.nn.init.normal_(param, std=0.05)
        out = moe(torch.randn(2, 8, 64))
        (out.hidden.sum() + out.aux_loss).backward()
        assert bool(moe.gate.weight.grad.abs().min() > 0) == trained, score_func


def test_a_bf16_model_keeps_exact_fp32_balancing_buffers() -> None:
    """model.to(torch.bfloat16) casts the weights, not the bias and the counts: a bf16 bias at 0.6 (spacing 2**-8)
    would not move by the rate 1e-3, and bf16 counts round above 256 (300 + 7 = 308)."""
    moe = MoE(small_config(n_experts=2, num_experts_per_tok=1, route_norm=False))
    with torch.no_grad():
        moe.gate.e_score_correction_bias.copy_(torch.tensor([0.6, -0.6]))
        moe.gate.weight.zero_()
        moe.gate.weight[0, 0] = 1.0  # with channel 0 positive below, expert 0 takes every token
    moe = moe.to(torch.bfloat16).train()
    bias, counts = moe.gate.e_score_correction_bias, moe.tokens_per_expert
    assert moe.gate.weight.dtype == torch.bfloat16 and bias.dtype == counts.dtype == torch.float32
    assert torch.equal(bias, torch.tensor([0.6, -0.6]))  # not rounded on the way
    x = torch.randn(1, 300, 64, dtype=torch.bfloat16)
    x[..., 0] = 5.0
    moe(x)
    moe(x[:, :7])
    assert counts.tolist() == [307.0, 0.0]
    update_expert_bias(moe, 1e-3)
    assert torch.allclose(bias, torch.tensor([0.599, -0.599]), rtol=0, atol=1e-7)


def test_sequence_aux_loss_penalises_imbalance_and_has_router_gradient() -> None:
    cfg = small_config(n_experts=8, num_experts_per_tok=2)
    moe = MoE(cfg)
    x = torch.randn(2, 16, cfg.dim)
    balance_loss = BalanceLoss(top_k=2, score_func="softmax", seq_aux_coef=1.0, z_loss_coef=0.0)
    balanced = balance_loss(moe.gate(x), moe.gate.e_score_correction_bias)
    with torch.no_grad():
        moe.gate.weight[0] += 1.0
    skewed = balance_loss(moe.gate(x.abs()), moe.gate.e_score_correction_bias)
    assert skewed > balanced
    skewed.backward()
    assert moe.gate.weight.grad.abs().sum() > 0


def test_moe_returns_the_balance_loss_of_the_logits_it_routed_with() -> None:
    """The MoE owns its balance loss: computed in its forward from its own gate's logits (no second router matmul,
    no read of the router weight outside a module call), with the config's coefficients."""
    cfg = small_config(n_experts=8, num_experts_per_tok=2, seq_aux_loss_coef=0.01, router_z_loss_coef=0.001)
    moe = MoE(cfg)
    x = torch.randn(2, 5, cfg.dim)
    out = moe(x)
    logits = moe.gate(x.reshape(-1, cfg.dim)).view(2, 5, -1)
    want = BalanceLoss.from_config(cfg)(logits, moe.gate.e_score_correction_bias)
    assert out.hidden.shape == x.shape and out.aux_loss > 0 and torch.equal(out.aux_loss, want)


@pytest.mark.parametrize("score_func", ["softmax", "sigmoid"])
def test_sequence_aux_loss_is_the_deepseek_v3_formula_written_out(score_func: str) -> None:
    """L = coef * mean_b sum_i f_i P_i with f_i = E / (K S) * #tokens of the sequence routed to expert i (the top-k of
    scores + bias, as routed) and P_i = mean_t s_{t,i} / sum_j s_{t,j}, by per-token loops."""
    torch.manual_seed(0)
    n_experts, top_k, bsz, seq, coef = 6, 2, 3, 5, 0.3
    logits = torch.randn(bsz, seq, n_experts, dtype=torch.float64)
    bias = torch.randn(n_experts) * 0.5
    loss = BalanceLoss(top_k=top_k, score_func=score_func, seq_aux_coef=coef, z_loss_coef=0.0)(logits, bias)
    expected = 0.0
    for b in range(bsz):
        f, p = [0.0] * n_experts, [0.0] * n_experts
        for t in range(seq):
            s = logits[b, t].softmax(-1) if score_func == "softmax" else logits[b, t].sigmoid()
            for i in torch.topk(s + bias, top_k).indices.tolist():
                f[i] += n_experts / (top_k * seq)
            for i in range(n_experts):
                p[i] += float(s[i] / s.sum()) / seq
        expected += coef * sum(fi * pi for fi, pi in zip(f, p)) / bsz
    assert loss.item() == pytest.approx(expected, rel=1e-6)
