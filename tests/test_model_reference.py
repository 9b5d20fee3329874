"""MythosLM against an independent reference written from the papers, token by token in fp64: the training loss, the
balance loss and every parameter's gradient, under truncated backprop.

The reference shares no code with the model: per token and head, DeepSeek-V2 MLA (ONE shared decoupled RoPE key,
softmax scale 1/sqrt(nope + rope)) or GQA (query head h reads key/value head h // (n_heads / n_kv_heads)); per token
and expert, DeepSeek-V3 routing (top-k of scores + bias, weights the unbiased scores renormalised) and its
sequence-wise balance loss plus the router z-loss; the LTI recurrence h <- A h + B e + Block(h + e) with
A = exp(-exp(clamp(log_dt + log_A))), B = exp(clamp(log_dt)) B; the first n - k loops under no_grad (Huginn).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from megamythos.model.config import ModelConfig
from megamythos.model.lm import MythosLM
from tests.helpers import rope_by_hand, small_config

F64 = torch.float64
Vectors = list[torch.Tensor]


def rms(v: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """v / sqrt(mean(v^2) + eps) * weight for one vector v [d]."""
    return v / torch.sqrt((v * v).mean() + eps) * weight.to(F64)


def swiglu(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """W_down (silu(W_gate x) * W_up x) for one vector x [H], weights [F, H], [F, H], [H, F]."""
    gate = w_gate.to(F64) @ x
    return w_down.to(F64) @ (gate / (1 + torch.exp(-gate)) * (w_up.to(F64) @ x))


def softmax_mix(query: torch.Tensor, keys: Vectors, values: Vectors, scale: float) -> torch.Tensor:
    """sum_s softmax_s(query . keys[s] * scale) values[s] over the causal prefix given."""
    scores = torch.stack([query @ k * scale for k in keys])
    weights = torch.exp(scores - scores.max())
    return sum(w * v for w, v in zip(weights / weights.sum(), values))


def mla(attn: nn.Module, cfg: ModelConfig, xs: Vectors) -> Vectors:
    """DeepSeek-V2 MLA over one sequence xs (S vectors [H], positions 0..S-1) -> S outputs [H]."""
    nope, rope, v_dim, rank = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank
    queries, keys, values = [], [], []
    for pos, x in enumerate(xs):
        if cfg.q_lora_rank > 0:
            q = attn.wq_b.weight.to(F64) @ rms(attn.wq_a.weight.to(F64) @ x, attn.q_norm.weight, cfg.norm_eps)
        else:
            q = attn.wq.weight.to(F64) @ x
        latent = attn.wkv_a.weight.to(F64) @ x
        kv = attn.wkv_b.weight.to(F64) @ rms(latent[:rank], attn.kv_norm.weight, cfg.norm_eps)
        k_pe = rope_by_hand(latent[rank:], pos, cfg.rope_theta)  # one rope key, shared by every head
        q, kv = q.view(cfg.n_heads, nope + rope), kv.view(cfg.n_heads, nope + v_dim)
        queries.append([torch.cat((qh[:nope], rope_by_hand(qh[nope:], pos, cfg.rope_theta))) for qh in q])
        keys.append([torch.cat((kvh[:nope], k_pe)) for kvh in kv])
        values.append([kvh[nope:] for kvh in kv])
    scale = 1 / math.sqrt(nope + rope)
    return [attn.wo.weight.to(F64) @ torch.cat([
        softmax_mix(queries[t][h], [k[h] for k in keys[:t + 1]], [v[h] for v in values[:t + 1]], scale)
        for h in range(cfg.n_heads)]) for t in range(len(xs))]


def gqa(attn: nn.Module, cfg: ModelConfig, xs: Vectors) -> Vectors:
    """Grouped-query attention with RoPE over one sequence xs -> S outputs [H]."""
    d, group = cfg.resolved_head_dim, cfg.n_heads // cfg.n_kv_heads
    queries, keys, values = [], [], []
    for pos, x in enumerate(xs):
        q, k, v = (w.to(F64) @ x for w in (attn.wq.weight, attn.wk.weight, attn.wv.weight))
        queries.append([rope_by_hand(qh, pos, cfg.rope_theta) for qh in q.view(-1, d)])
        keys.append([rope_by_hand(kh, pos, cfg.rope_theta) for kh in k.view(-1, d)])
        values.append(list(v.view(-1, d)))
    return [attn.wo.weight.to(F64) @ torch.cat([
        softmax_mix(queries[t][h], [k[h // group] for k in keys[:t + 1]], [v[h // group] for v in values[:t + 1]],
                    1 / math.sqrt(d))
        for h in range(cfg.n_heads)]) for t in range(len(xs))]


def attention(attn: nn.Module, cfg: ModelConfig, xs: Vectors) -> Vectors:
    return mla(attn, cfg, xs) if cfg.attn_type == "mla" else gqa(attn, cfg, xs)


def dense_block(block: nn.Module, cfg: ModelConfig, xs: Vectors) -> Vectors:
    """x + attn(norm x), then + SwiGLU(norm x), for one sequence."""
    xs = [x + a for x, a in zip(xs, attention(block.attn, cfg, [rms(x, block.attn_norm.weight, cfg.norm_eps)
                                                                 for x in xs]))]
    ffn = block.ffn
    return [x + swiglu(rms(x, block.ffn_norm.weight, cfg.norm_eps), ffn.w_gate.weight, ffn.w_up.weight,
                       ffn.w_down.weight) for x in xs]


def moe_token(moe: nn.Module, cfg: ModelConfig, x: torch.Tensor) -> tuple[torch.Tensor, list[int], torch.Tensor,
                                                                          torch.Tensor]:
    """One token x [H] -> (routed + shared experts' output [H], chosen experts, scores s [E], router logits [E])."""
    logits = moe.gate.weight.to(F64) @ x
    scores = torch.softmax(logits, 0) if cfg.score_func == "softmax" else torch.sigmoid(logits)
    choice = (scores + moe.gate.e_score_correction_bias.to(F64)).tolist()  # the bias selects, it does not weight
    chosen = sorted(range(cfg.n_experts), key=lambda i: -choice[i])[:cfg.num_experts_per_tok]
    gates = [scores[i] / (sum(scores[j] for j in chosen) if cfg.route_norm else 1) for i in chosen]
    out = sum(g * swiglu(x, *moe.experts.gate_up_proj[i].split(cfg.expert_dim), moe.experts.down_proj[i])
              for g, i in zip(gates, chosen))
    shared = moe.shared_experts
    return out + swiglu(x, shared.w_gate.weight, shared.w_up.weight, shared.w_down.weight), chosen, scores, logits


def balance_loss(cfg: ModelConfig, chosen: list[list[int]], scores: Vectors, logits: Vectors) -> torch.Tensor:
    """DeepSeek-V3 sequence-wise loss of one sequence of T tokens, alpha sum_i f_i P_i with
    f_i = E / (K T) #{t: i chosen}, P_i = mean_t s_ti / sum_j s_tj; plus z-loss coef * mean_t logsumexp_t^2."""
    n, per_token = len(chosen), cfg.n_experts / (cfg.num_experts_per_tok * len(chosen))
    seq = sum(per_token * sum(i in c for c in chosen) * sum(s[i] / s.sum() for s in scores) / n
              for i in range(cfg.n_experts))
    z_loss = sum(torch.logsumexp(lg, 0) ** 2 for lg in logits) / n
    return cfg.seq_aux_loss_coef * seq + cfg.router_z_loss_coef * z_loss


def reference_loss(model: MythosLM, ids: torch.Tensor, labels: torch.Tensor, n_loops: int,
                   backprop_loops: int) -> torch.Tensor:
    """Mean next-token cross-entropy + the balance loss averaged over the loops, for ids, labels [B, S]."""
    cfg, core = model.config, model.recurrent
    inj, block, lora = core.injection, core.block, core.lora
    rate = (inj.log_dt.to(F64) + inj.log_A.to(F64)).clamp(math.log(-math.log1p(-cfg.decay_margin)),
                                                            math.log(-math.log(cfg.decay_floor)))
    decay, gain = torch.exp(-torch.exp(rate)), torch.exp(inj.log_dt.to(F64).clamp(-8.0, 2.0)) * inj.B.to(F64)
    no_grad_loops = n_loops - backprop_loops if 0 < backprop_loops < n_loops else 0
    ce, aux = [], []  # summed outside no_grad: a sum taken inside it would drop the terms before it from the graph
    for row, targets in zip(ids.tolist(), labels.tolist()):
        xs = [model.tok_embeddings.weight[i].to(F64) for i in row]
        for layer in model.prelude:
            xs = dense_block(layer, cfg, xs)
        es = [rms(x, core.input_norm.weight, cfg.norm_eps) for x in xs]
        hs = list(es)
        for t in range(n_loops):
            with torch.set_grad_enabled(t >= no_grad_loops):
                if t == no_grad_loops > 0:  # truncated backprop: the state enters the gradient loops detached
                    hs = [h.detach() for h in hs]
                us = [h + e for h, e in zip(hs, es)]
                attn = attention(block.attn, cfg, [rms(u, block.attn_norm.weight, cfg.norm_eps) for u in us])
                routed = [moe_token(block.moe, cfg, rms(u + a, block.moe_norm.weight, cfg.norm_eps))
                          for u, a in zip(us, attn)]
                lora_scale = lora.scale.weight[min(t, lora.scale.num_embeddings - 1)].to(F64)
                lora_out = [lora.up.weight.to(F64) @ (lora.down.weight.to(F64) @ u * lora_scale) for u in us]
                hs = [decay * h + gain * e + a + y + lo
                      for h, e, a, (y, *_), lo in zip(hs, es, attn, routed, lora_out)]
                _, chosen, scores, logits = (list(column) for column in zip(*routed))
                aux.append(balance_loss(cfg, chosen, scores, logits) / (len(ids) * n_loops))
        for layer in model.coda:
            hs = dense_block(layer, cfg, hs)
        for h, target in zip(hs, targets):
            logits = model.lm_head.weight.to(F64) @ rms(h, model.norm.weight, cfg.norm_eps)
            if target != -100:
                ce.append(torch.logsumexp(logits, 0) - logits[target])
    return sum(ce) / len(ce) + sum(aux)


@pytest.mark.parametrize("overrides", [dict(), dict(attn_type="gqa", score_func="sigmoid", q_lora_rank=0)])
@pytest.mark.parametrize("backprop_loops", [0, 2])
def test_loss_and_every_gradient_equal_the_papers_written_out(overrides: dict, backprop_loops: int) -> None:
    """fp64 and fp32 models against the fp64 reference, with a nonzero expert bias, a balance and z-loss, an unscored
    label, and A_bar and B_bar over their whole range, clamps included. The tolerance is set by RoPE's tables, which
    the model builds in fp32 whatever its dtype (about 1e-6 relative here); a wrong sign, factor or operand is far
    above it."""
    torch.manual_seed(0)
    model = MythosLM(small_config(seq_aux_loss_coef=0.05, router_z_loss_coef=0.01, **overrides)).train()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(std=0.15)
        injection = model.recurrent.injection
        injection.log_A.normal_(std=1.0)
        injection.log_A[:2] = torch.tensor([-10.0, 10.0])  # A_bar held at 1 - delta and at epsilon by the clamp
        injection.log_dt[2:4] = torch.tensor([-9.0, 3.0])  # B_bar's step size held at exp(-8) and exp(2)
        model.recurrent.block.moe.gate.e_score_correction_bias.normal_(std=0.05)
    ids, labels = torch.randint(0, 97, (2, 5)), torch.randint(0, 97, (2, 5))
    labels[0, 2] = -100

    def loss_and_grads(loss_fn: Callable[[], torch.Tensor]) -> tuple[float, dict[str, torch.Tensor]]:
        model.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss.item(), {name: p.grad.double().clone() for name, p in model.named_parameters()}

    expected_loss, expected = loss_and_grads(lambda: reference_loss(model.double(), ids, labels, 4, backprop_loops))
    for dtype, tolerance in ((torch.float64, 1e-5), (torch.float32, 2e-5)):
        model.to(dtype)

        def forward() -> torch.Tensor:
            out = model(ids, labels=labels, n_loops=4, backprop_loops=backprop_loops)
            return out.loss + out.aux_loss

        loss, grads = loss_and_grads(forward)
        assert loss == pytest.approx(expected_loss, rel=tolerance)
        for name, want in expected.items():
            assert float((grads[name] - want).norm()) <= tolerance * float(want.norm()), (dtype, name)
