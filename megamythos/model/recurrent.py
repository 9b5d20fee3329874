"""The recurrent core: one shared attention + MoE block looped T times with LTI-stable injection.

State update (Parcae-style linear time-invariant injection, diagonal per channel, all in fp32):

    u_t     = h_t + e  (+ loop-index signal)               block input, e = RMSNorm(prelude output)
    h_{t+1} = A_bar * h_t + B_bar * e + Block(u_t)         Block(u) = attention and MoE residual updates
    A_bar   = exp(-exp(clamp(log_dt + log_A, lo, hi)))     in [eps, 1 - delta] for every parameter value
    B_bar   = exp(clamp(log_dt)) * B

The clamp acts on the exponent, so A_bar stays inside [eps, 1 - delta] even for log_A, log_dt = +-1e4, and
delta >= 2**-8 (validated in the config) keeps the bound below 1 after rounding to bf16.

Two baselines for studies (``config.injection``): "additive", h_{t+1} = u_t + Block(u_t) with u_t = h_t + e
(identity state transition, rho = 1), and "concat", Huginn's adapter u_t = W [h_t; e], h_{t+1} = u_t + Block(u_t).

Adaptive depth (Huginn's rule, no halting unit to collapse): every rank runs the same iterations; at inference a
token *exits* after iteration t once its state stopped moving,

    r_t = ||h_{t+1} - h_t|| / ||h_{t+1}||  <  exit_threshold,

and that state h_{t+1} is frozen from then on: the coda reads it (no halting weights mix steps). A frozen token
still offers keys/values to later tokens at deeper loop indices: those of its frozen state, which a decode step
computes with the attention's cache projection only. Threshold 0 never exits, so it reproduces the full depth.
In training, ``loop_capacity`` c_t keeps the ceil(c_t * S) tokens of each sequence with the largest r_{t-1} (a
fixed count: static shapes on every rank). Either way only the still-running tokens are computed (compaction,
:class:`~megamythos.model.token_subset.TokenSubset`).

``capacity_router = "learned"`` (Mixture-of-Recursions' expert-choice router) ranks by a learned score instead:
z_t = w_t . h_t per token and loop, and the router learns from the loss through a gate on the state update,

    h_{t+1} <- h_t + g_t * (h_{t+1} - h_t),    g_t = 2 sigmoid(z_t) in (0, 2)

(g = 1 at z = 0: the ungated recurrence). The gated transition h -> (1 - g (1 - A_bar)) h keeps its
magnitude below 1 for g < 2, so the contraction bound holds. The gate applies at every loop, in training and at
inference (it is part of the network); a token with a small gate moves little, so the exit rule stops it early.
"""
from __future__ import annotations

import functools
import math
from contextlib import AbstractContextManager, nullcontext
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from megamythos.model.attention import LayerKVCache, build_attention
from megamythos.model.config import ModelConfig
from megamythos.model.layers import RMSNorm, weights_cast_once
from megamythos.model.moe import MoE, expert_counts_frozen
from megamythos.model.row_layout import RowLayout
from megamythos.model.token_subset import TokenSubset

_LOG_DT_RANGE = (-8.0, 2.0)  # B_bar's step size exp(log_dt) stays in [3e-4, 7.4]


def sample_loop_count(mean_loops: int, sigma: float, max_loops: int, seed: int, step: int) -> int:
    """Loop count for one training step: 1 + Poisson(exp(tau)), tau ~ N(log(mean - 1) - sigma^2 / 2, sigma).

    The log-normal Poisson of Huginn shifted to mean ``mean_loops`` (Huginn's 1 + Poisson(exp(tau)) with
    tau ~ N(log r - sigma^2 / 2, sigma) has mean r + 1), then clipped to [1, max_loops]; the clip lowers the mean
    by about 3% at sigma = 0.5 and max_loops = 2 * mean_loops (3.88 for 4, 31.1 for 32). Drawn from a generator
    seeded by (seed, step) alone, so every rank draws the same count without communicating.
    """
    if mean_loops <= 1:
        return 1
    rng = np.random.default_rng([seed, step])
    tau = rng.normal(math.log(mean_loops - 1) - sigma ** 2 / 2, sigma)
    return int(np.clip(1 + rng.poisson(math.exp(tau)), 1, max_loops))


# ------------------------------------------------------------------------------------------------ injections
# Every variant answers two questions: the block input u_t = combine(h_t, e), and the carried term of the next
# state, forward(h_t, e, u_t) = h_{t+1} - Block(u_t), with on request the detached max rho of its transition.
class LTIInjection(nn.Module):
    """Per-channel parameters of the stable linear recurrence h <- A_bar h + B_bar e + Block(u)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.log_A = nn.Parameter(torch.zeros(config.dim))
        self.log_dt = nn.Parameter(torch.empty(config.dim))
        self.B = nn.Parameter(torch.ones(config.dim))
        # exponent bounds: A_bar = exp(-exp(z)) <= 1 - delta  <=>  z >= log(-log(1 - delta)), likewise for eps.
        self.log_rate_min = math.log(-math.log1p(-config.decay_margin))
        self.log_rate_max = math.log(-math.log(config.decay_floor))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():  # step sizes log-uniform in [0.1, 1]: A_bar in [0.37, 0.90] at init
            self.log_dt.uniform_(math.log(0.1), math.log(1.0))
            self.log_A.zero_()
            self.B.fill_(1.0)

    def combine(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """u = h + e: h [B, S, H] fp32, e [B, S, H] -> u [B, S, H] fp32."""
        return h + e.float()

    def decay(self) -> torch.Tensor:
        """A_bar [H] in fp32 (autocast off), guaranteed inside [decay_floor, 1 - decay_margin]."""
        with torch.autocast(device_type=self.log_A.device.type, enabled=False):
            rate = (self.log_dt.float() + self.log_A.float()).clamp(self.log_rate_min, self.log_rate_max)
            return torch.exp(-torch.exp(rate))

    def spectral_radius(self) -> torch.Tensor:
        """max A_bar, a [] fp32 tensor: the diagonal transition's largest eigenvalue."""
        return self.decay().max()

    def input_gain(self) -> torch.Tensor:
        """B_bar [H] in fp32."""
        return torch.exp(self.log_dt.float().clamp(*_LOG_DT_RANGE)) * self.B.float()

    def forward(self, h: torch.Tensor, e: torch.Tensor, u: torch.Tensor,
                report_rho: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """h [B, S, H] fp32, e and u [B, S, H] -> (A_bar h + B_bar e in fp32, with ``report_rho`` the detached
        max rho(A_bar) of this very A_bar — read inside the module call, for ZeRO-3 — else None)."""
        decay = self.decay()
        return decay * h + self.input_gain() * e.float(), decay.detach().max() if report_rho else None


class AdditiveInjection(nn.Module):
    """Baseline: h <- (h + e) + Block(u); the state transition is the identity (rho = 1, no decay)."""

    def reset_parameters(self) -> None:
        pass

    def combine(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """u = h + e: h [B, S, H] fp32, e [B, S, H] -> u [B, S, H] fp32."""
        return h + e.float()

    def spectral_radius(self) -> torch.Tensor:
        """1, a [] tensor: the identity transition."""
        return torch.ones(())

    def forward(self, h: torch.Tensor, e: torch.Tensor, u: torch.Tensor,
                report_rho: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The carried term u [B, S, H] itself (h + e), with ``report_rho`` 1, else None."""
        return u, self.spectral_radius() if report_rho else None


class ConcatInjection(nn.Module):
    """Baseline (Huginn adapter): u = W [h; e] with W [H, 2H] initialised to [I | I]; h <- u + Block(u)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.adapter = nn.Linear(2 * config.dim, config.dim, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            eye = torch.eye(self.adapter.out_features)
            self.adapter.weight.copy_(torch.cat((eye, eye), dim=1))

    def combine(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """u = W [h; e]: h [B, S, H] fp32, e [B, S, H] -> u [B, S, H] fp32 (the matmul in W's dtype)."""
        return self.adapter(torch.cat((h, e.float()), dim=-1).to(self.adapter.weight.dtype)).float()

    def spectral_radius(self) -> torch.Tensor:
        """max |eigenvalue| of the state block W[:, :H] (fp32; meant for study-sized widths)."""
        w_h = self.adapter.weight[:, : self.adapter.out_features].detach().float()
        return torch.linalg.eigvals(w_h).abs().max()

    def forward(self, h: torch.Tensor, e: torch.Tensor, u: torch.Tensor,
                report_rho: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The carried term u [B, S, H] itself, with ``report_rho`` :meth:`spectral_radius`, else None."""
        return u, self.spectral_radius() if report_rho else None


def build_injection(config: ModelConfig) -> nn.Module:
    """The state injection ``config.injection`` names: lti, additive or concat (see the classes above)."""
    if config.injection == "lti":
        return LTIInjection(config)
    return AdditiveInjection() if config.injection == "additive" else ConcatInjection(config)


# ------------------------------------------------------------------------------------ per-loop conditioning
class LoopLoRA(nn.Module):
    """Per-loop low-rank adapter: up(down(u) * scale[t]), t clamped to the table (depth extrapolation)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.down = nn.Linear(config.dim, config.lora_rank, bias=False)
        self.up = nn.Linear(config.lora_rank, config.dim, bias=False)
        self.scale = nn.Embedding(config.resolved_max_loops, config.lora_rank)

    def forward(self, u: torch.Tensor, t: int) -> torch.Tensor:
        """u [..., H] at loop t -> up(down(u) * scale[min(t, max_loops - 1)]) [..., H]."""
        # filled on the device (torch.tensor of a Python int would copy it from the host: a stream sync per loop);
        # read through the Embedding's own call, which is where ZeRO-3 gathers its weight
        index = torch.full((), min(t, self.scale.num_embeddings - 1), dtype=torch.long, device=u.device)
        return self.up(self.down(u) * self.scale(index).to(u.dtype))


def loop_index_signal(t: int, width: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Sinusoidal encoding of the iteration index t on the first ``width`` of ``dim`` channels -> [dim]."""
    freqs = 10000.0 ** (-torch.arange(0, width, 2, device=device, dtype=torch.float32) / width)
    angles = t * freqs
    signal = torch.zeros(dim, device=device, dtype=torch.float32)
    signal[0:width:2], signal[1:width:2] = angles.sin(), angles.cos()
    return signal.to(dtype)


class RecurrentBlock(nn.Module):
    """Pre-norm attention + MoE; returns (the residual update Block(u) - u, the MoE's balance loss)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.dim, config.norm_eps)
        self.attn = build_attention(config)
        self.moe_norm = RMSNorm(config.dim, config.norm_eps)
        self.moe = MoE(config)

    def forward(self, u: torch.Tensor, positions: torch.Tensor, cache: LayerKVCache | None, absorb: bool,
                queries: TokenSubset | None = None,
                layout: RowLayout | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """u [B, S, H] -> (update [B, S, H], aux); with ``queries`` the update of those tokens only, [1, N, H]:
        they attend to the keys/values of every token of u, and only they go through the MoE."""
        attn_out = self.attn(self.attn_norm(u), positions, cache, absorb, queries, layout)
        if queries is not None:
            u = queries.gather(u)
        moe_out, aux = self.moe(self.moe_norm(u + attn_out))
        return attn_out + moe_out, aux

    def extend_cache(self, u: torch.Tensor, positions: torch.Tensor, cache: LayerKVCache,
                     layout: RowLayout | None = None) -> None:
        """Append the keys/values ``forward(u)`` would cache, without attending or running the MoE."""
        self.attn.extend_cache(self.attn_norm(u), positions, cache, layout)


class DepthRouter(nn.Module):
    """Per-loop linear router on the state: z_t = w_t . h_t, one weight row per loop (t clamped to the table,
    for depth extrapolation), in fp32 with autocast off (as A_bar: the gate scales the fp32 state update, and a
    bf16 gate near 1 moves in steps of 2**-7); the gate on the state update is 2 sigmoid(z_t)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.init_std = config.init_std
        self.weight = nn.Parameter(torch.empty(config.resolved_max_loops, config.dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=self.init_std)

    def forward(self, h: torch.Tensor, t: int) -> torch.Tensor:
        """h [..., H] -> router logits z_t [...] fp32 (also under autocast)."""
        with torch.autocast(device_type=h.device.type, enabled=False):
            return h.float() @ self.weight[min(t, self.weight.shape[0] - 1)].float()

    @staticmethod
    def gate(logits: torch.Tensor) -> torch.Tensor:
        """z [...] -> g = 2 sigmoid(z) [..., 1], the factor on a token's state update."""
        return 2.0 * torch.sigmoid(logits).unsqueeze(-1)


# ------------------------------------------------------------------------------------------------ the loop
class RecurrenceResult(NamedTuple):
    """Output of :class:`RecurrentCore`: final state [B, S, H] fp32, aux loss and detached statistics.

    A NamedTuple, so ZeRO-3's module hooks see the tensors inside it."""

    state: torch.Tensor
    aux_loss: torch.Tensor
    stats: dict[str, torch.Tensor]


class LoopState(NamedTuple):
    """What one iteration hands to the next: state h [B, S, H] fp32; ``active`` [B, S] bool, the tokens still
    iterating (None when no token may exit or be left out); ``depth`` [B, S] fp32, the iterations each token
    executed; the summed aux loss and max rho(A_bar) reported by the first iteration (scalars); ``change`` [B, S]
    fp32, each token's relative change in the last iteration (0 where it was not computed)."""

    h: torch.Tensor
    active: torch.Tensor | None
    depth: torch.Tensor
    aux: torch.Tensor
    rho: torch.Tensor
    change: torch.Tensor


class LoopGroup(NamedTuple):
    """Iterations ``loops`` run together: with autograd or not, and as one more activation checkpoint or not."""

    loops: range
    grad: bool
    checkpoint: bool


def relative_change(h_next: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """r = ||h_next - h|| / ||h_next|| per token, [B, S, H] x 2 -> [B, S] fp32 (detached)."""
    h_next, h = h_next.detach().float(), h.detach().float()
    return (h_next - h).norm(dim=-1) / h_next.norm(dim=-1).clamp_min(1e-12)


def keep_frozen(h_next: torch.Tensor, h: torch.Tensor, running: torch.Tensor) -> torch.Tensor:
    """h_next [B, S, H] at the ``running`` [B, S] tokens, their frozen state h [B, S, H] at the exited ones."""
    return torch.where(running.unsqueeze(-1), h_next, h)


def advance(state: LoopState, h_next: torch.Tensor, aux: torch.Tensor, rho: torch.Tensor | None,
            change: torch.Tensor, exit_threshold: float) -> LoopState:
    """The state after one iteration whose new state of every token is h_next [B, S, H] (the exited tokens' frozen
    one: :func:`keep_frozen`), with relative change [B, S]: under early exit only the active tokens count the step,
    and they stay active while their change is >= exit_threshold.

    Keeps nothing for backward (no autograd op saves a tensor here), so that nothing after a checkpointed segment's
    last iteration makes the segment's recompute re-run it (:meth:`RecurrentCore.step`)."""
    rho = state.rho if rho is None else rho
    if state.active is None:
        return LoopState(h_next, None, state.depth + 1.0, state.aux + aux, rho, change)
    return LoopState(h=h_next, active=state.active & (change >= exit_threshold),
                     depth=state.depth + state.active.float(), aux=state.aux + aux, rho=rho, change=change)


def capacity_subset(state: LoopState, capacity: float, score: torch.Tensor) -> tuple[LoopState, TokenSubset]:
    """Expert-choice depth: of each sequence's still-running tokens, the ceil(capacity * S) with the highest
    ``score`` [B, S] (the state change of the last iteration, or the learned router's logits) run the next one;
    the others leave for good (static shapes, no host sync)."""
    seq = score.shape[1]
    ranking = torch.where(state.active, score.float(), torch.finfo(torch.float32).min)
    chosen = TokenSubset.top(ranking, math.ceil(capacity * seq))
    return state._replace(active=chosen.mask(seq)), chosen


# Below this many tokens in a batch (cached decode: one per sequence) every token goes through the block and the
# exited ones are masked: the matmuls are bound by reading the weights, not by rows, so compaction saves nothing
# and costs its gathers (decode at batch 8: the masked path 1.0-1.1x as fast; a forward of 8 x 128 tokens:
# compaction 1.1-1.25x as fast as masking; bench/README.md, "Adaptive depth at inference").
COMPACTION_MIN_TOKENS = 32


def still_active(active: torch.Tensor | None) -> TokenSubset | None:
    """The tokens to compute in the next iteration: None (all of them) when no token may exit, none has
    exited yet or the batch is smaller than ``COMPACTION_MIN_TOKENS``, else the still-active subset of
    ``active`` [B, S] (compaction)."""
    if active is None or active.numel() < COMPACTION_MIN_TOKENS or bool(active.all()):
        return None
    return TokenSubset.of(active)


def computed_iterations(depth: torch.Tensor, loops_run: int) -> tuple[float, float]:
    """What one forward without a cache computed, from the iterations each token executed ``depth`` [B, S] and the
    ``loops_run`` its batch ran (``stats["n_loops"]``) -> (whole iterations, frozen iterations), each summed over
    the B x S tokens.

    With compaction an exited token is frozen for the loops_run - depth iterations after its exit and only its
    keys/values (and concat block input) are computed in each (``params.frozen_token_matmul_params``); a batch
    below ``COMPACTION_MIN_TOKENS`` tokens computes every token whole at each of the loops_run iterations
    (masked, :func:`still_active`)."""
    every_loop = float(loops_run * depth.numel())
    if depth.numel() < COMPACTION_MIN_TOKENS:
        return every_loop, 0.0
    executed = float(depth.float().sum())
    return executed, every_loop - executed


def exit_depths(relative_change: torch.Tensor, threshold: float) -> torch.Tensor:
    """Iterations each token would run under the exit rule, from the relative changes [T, B, S] of a run of
    all T iterations -> [B, S] fp32: the first t with change < threshold, plus one (T when it never happens)."""
    below = relative_change < threshold
    never = torch.full_like(below[0], below.shape[0], dtype=torch.long)
    return torch.where(below.any(dim=0), below.long().argmax(dim=0) + 1, never).float()


def exit_distribution(depth: torch.Tensor, n_loops: int) -> torch.Tensor:
    """Share of tokens exiting after each iteration 1..n_loops, from per-token depths (iterations run) -> [n_loops]."""
    counts = torch.bincount(depth.detach().long().flatten() - 1, minlength=n_loops)[:n_loops]
    return counts.float() / max(depth.numel(), 1)


class RecurrentCore(nn.Module):
    """Runs the shared block ``n_loops`` times from the prelude output x [B, S, H], injecting e = input_norm(x).

    Activation checkpointing (``checkpoint_loops``, training only): each iteration with gradient is a
    non-reentrant checkpoint that keeps only its input state, so the forward keeps O(k) states for k
    iterations under gradient. ``loop_checkpoint_segment`` = c > 1 (0: c = ceil(sqrt(k))) checkpoints runs of
    c iterations again (two-level): the forward keeps only segment-boundary states and the backward
    re-creates one segment's per-iteration states at a time, O(k / c + c) states for one extra forward of
    the k iterations but each segment's last (its output is the next segment's kept input: the recompute stops
    before it, :meth:`step`).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.input_norm = RMSNorm(config.dim, config.norm_eps)
        self.injection = build_injection(config)
        self.block = RecurrentBlock(config)
        self.lora = LoopLoRA(config) if config.lora_rank > 0 else None
        self.router = DepthRouter(config) if config.capacity_router == "learned" else None

    def reset_parameters(self) -> None:
        self.injection.reset_parameters()
        if self.router is not None:
            self.router.reset_parameters()

    def forward(self, x: torch.Tensor, positions: torch.Tensor, n_loops: int, backprop_loops: int,
                caches: list[LayerKVCache] | None = None, absorb: bool = False,
                exit_threshold: float = 0.0, layout: RowLayout | None = None) -> RecurrenceResult:
        """Prelude output x [B, S, H] -> RecurrenceResult with the state after (at most) ``n_loops``; the
        injected input is e = input_norm(x). Every parameter of the core is used inside this call, so ZeRO-3
        can treat the core as one leaf module (one gather per forward and per backward, see
        :mod:`megamythos.parallel.zero`).

        backprop_loops k > 0 runs the first n_loops - k iterations without autograd (truncated BPTT).
        ``caches`` holds one LayerKVCache per loop index (decode). ``exit_threshold`` > 0 (inference only)
        freezes each token once its relative state change falls below it and stops when every token exited;
        deeper caches then get the frozen tokens' keys/values. In training, the config's ``loop_capacity``
        c_t computes only ceil(c_t * S) tokens of each sequence at loop t (:func:`capacity_subset`).
        ``layout``: the per-row positions and key mask of every attention, those of a padded batch (inference) or
        of packed documents (training); a padded batch's padding tokens count as exited before the first loop
        (never computed once compaction applies, depth 0), so they never keep the batch iterating, and
        ``mean_depth`` is then the mean over the real tokens.
        """
        if exit_threshold > 0 and self.training:
            raise RuntimeError("early exit is inference-only: in training every rank must run every loop")
        capacity = self.config.loop_capacity if self.training else ()
        if n_loops > len(capacity) > 0:
            raise ValueError(f"n_loops={n_loops} exceeds the {len(capacity)} loops of loop_capacity")
        checkpoint_each = self.config.checkpoint_loops and self.training
        e = self.input_norm(x)
        zeros = e.new_zeros(e.shape[:2], dtype=torch.float32)
        if layout is not None and layout.real is not None:
            active = layout.real
        else:
            active = zeros.bool().logical_not() if exit_threshold > 0 or capacity else None
        state = LoopState(h=self.initial_state(e), active=active,
                          depth=zeros, aux=zeros.new_zeros(()), rho=zeros.new_zeros(()), change=zeros)
        norms, changes, shares, gates = [], [], [], []
        with weights_cast_once():  # the shared block's weights are cast to the compute dtype once, not per loop
            for group in self.schedule(n_loops, backprop_loops, checkpoint_each):  # no-grad loops, then grad loops
                run_args = (state, e, group.loops, positions, caches, absorb, exit_threshold, capacity,
                            checkpoint_each and group.grad, layout)
                with torch.set_grad_enabled(group.grad):
                    run = functools.partial(self._checkpointed, self.run_loops) if group.checkpoint else self.run_loops
                    state, group_norms, group_changes, group_shares, group_gates = run(*run_args)
                norms.append(group_norms)
                changes.append(group_changes)
                shares.append(group_shares)
                gates.append(group_gates)
                if exit_threshold > 0 and not bool(state.active.any()):
                    break
        loops_run = sum(len(n) for n in norms)
        if caches is not None:
            for t in range(loops_run, n_loops):  # every token exited: deeper loops cache the frozen states
                u = self.with_loop_signal(self.injection.combine(state.h, e), t, e.dtype)
                self.block.extend_cache(u, positions, caches[t], layout)
        mean_depth = state.depth.mean() if layout is None else layout.real_mean(state.depth)
        stats = {"n_loops": torch.tensor(float(loops_run)), "state_norm": torch.cat(norms), "rho": state.rho,
                 "mean_depth": mean_depth, "depth": state.depth, "relative_change": torch.cat(changes),
                 "active_share": torch.cat(shares)}
        if self.router is not None:
            stats["router_gate"] = torch.cat(gates)
        return RecurrenceResult(state.h, state.aux / loops_run, stats)

    def run_loops(self, state: LoopState, e: torch.Tensor, loops: range, positions: torch.Tensor,
                  caches: list[LayerKVCache] | None, absorb: bool, exit_threshold: float,
                  capacity: tuple[float, ...], checkpoint_each: bool, layout: RowLayout | None = None
                  ) -> tuple[LoopState, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Iterations ``loops`` from ``state`` -> (state after them, mean state norm per iteration [n],
        relative change per iteration and token [n, B, S], share of the tokens computed per iteration [n], mean
        learned-router gate of the computed tokens per iteration [n] (empty without the router))."""
        norms, changes, shares, gates = [], [], [], []
        for t in loops:
            if capacity:  # training: the schedule decides, without a host sync
                state, active = ((state, None) if capacity[t] >= 1.0 else
                                 capacity_subset(state, capacity[t], self.ranking_score(state, t)))
            else:
                active = still_active(state.active)
            shares.append(state.depth.new_ones(()) if state.active is None else state.active.float().mean())
            args = (state.h, e, t, positions, caches[t] if caches is not None else None, absorb, active,
                    state.active, layout)
            h_new, h_next, aux, rho, gate = (self._checkpointed(self.step, *args) if checkpoint_each
                                             else self.step(*args))
            if active is None:
                change = relative_change(h_next, state.h)
                if state.active is not None:  # masked path: the exited tokens ran too; their change and gate don't
                    change = change * state.active
                    gate = None if gate is None else (gate * state.active).sum() / state.active.sum()
            else:  # an exited token's change reads 0; gathered detached, as nothing here may keep a tensor (step)
                change = active.scatter(torch.zeros_like(state.depth),
                                        relative_change(h_next, active.gather(state.h.detach())))
            state = advance(state, h_new, aux, rho, change, exit_threshold)
            norms.append(state.h.detach().norm(dim=-1).mean())
            changes.append(change)
            if gate is not None:
                gates.append(gate.mean())
            if exit_threshold > 0 and not bool(state.active.any()):
                break
        return (state, torch.stack(norms), torch.stack(changes), torch.stack(shares),
                torch.stack(gates) if gates else state.depth.new_zeros(0))

    def ranking_score(self, state: LoopState, t: int) -> torch.Tensor:
        """What ``loop_capacity`` ranks the tokens by before loop t, [B, S] (detached): the learned router's
        logits on h_t, or the state change of loop t - 1."""
        if self.router is None:
            return state.change
        with torch.no_grad():
            return self.router(state.h, t)

    def step(self, h: torch.Tensor, e: torch.Tensor, t: int, positions: torch.Tensor, cache: LayerKVCache | None,
             absorb: bool, active: TokenSubset | None, running: torch.Tensor | None, layout: RowLayout | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Iteration t as the loop runs it, h_t [B, S, H] fp32 -> (h_{t+1} of every token [B, S, H] fp32, then what
        :meth:`iteration` returns): the computed tokens' new states (``active``'s under compaction, else those of
        the ``running`` [B, S] tokens, None: every token) into the frozen h_t of the others.

        The loop checkpoints this whole call, the merge included: after it the loop keeps nothing for backward
        (:func:`advance`), so the recompute of a segment of checkpointed iterations stops (torch's early stop)
        before re-running its last iteration, whose output the next segment kept, with ``loop_capacity`` as
        without it.
        """
        h_next, aux, rho, gate = self.iteration(h, e, t, positions, cache, absorb, active, layout)
        if active is not None:
            h_new = active.scatter(h, h_next)
        else:
            h_new = h_next if running is None else keep_frozen(h_next, h, running)
        return h_new, h_next, aux, rho, gate

    def iteration(self, h: torch.Tensor, e: torch.Tensor, t: int, positions: torch.Tensor,
                  cache: LayerKVCache | None, absorb: bool, active: TokenSubset | None = None,
                  layout: RowLayout | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Iteration t of the recurrence, h_t [B, S, H] fp32 -> (h_{t+1} fp32, MoE balance loss, max rho at t = 0,
        gate g_t [B, S] or [1, N] detached, with the learned depth router):

            u_t     = h_t + e  (+ loop-index signal)                          (concat baseline: W [h_t; e])
            h_{t+1} = A_bar * h_t + B_bar * e  +  Block(u_t) (+ LoRA_t(u_t))  (baselines: u_t + Block(u_t))
            h_{t+1} <- h_t + 2 sigmoid(w_t . h_t) * (h_{t+1} - h_t)            (with the learned depth router)

        With ``active`` (compaction) only those tokens are updated, h_{t+1} is theirs, [1, N, H]: they attend to
        the keys/values of every token's u_t (an exited token's from its frozen state at this loop index, as the
        full batch computes them), and only they go through the block's projections, the MoE and the LoRA.
        """
        u_mix = self.injection.combine(h, e)
        u = self.with_loop_signal(u_mix, t, e.dtype)
        update, aux = self.block(u, positions, cache, absorb, active, layout)
        if active is not None:
            h, e, u_mix, u = (active.gather(x) for x in (h, e, u_mix, u))
        if self.lora is not None:
            update = update + self.lora(u, t)
        carried, rho = self.injection(h, e, u_mix, report_rho=t == 0)  # A_bar * h_t + B_bar * e
        h_next = carried + update.float()
        if self.router is None:
            return h_next, aux, rho, None
        gate = self.router.gate(self.router(h, t))
        return h + gate * (h_next - h), aux, rho, gate.detach().squeeze(-1)

    def with_loop_signal(self, u: torch.Tensor, t: int, dtype: torch.dtype) -> torch.Tensor:
        """u [B, S, H] in ``dtype``, plus the sinusoidal loop-index signal when ``loop_embedding`` is on."""
        u = u.to(dtype)
        if self.config.loop_embedding:
            u = u + loop_index_signal(t, self.config.resolved_loop_embedding_dim, self.config.dim, u.device, u.dtype)
        return u

    def schedule(self, n_loops: int, backprop_loops: int, checkpoint_each: bool) -> list[LoopGroup]:
        """Huginn's schedule: truncated BPTT runs the first n_loops - k iterations without autograd, then the
        k under gradient; with checkpointing those are cut into groups of ``loop_checkpoint_segment``
        (0: ceil(sqrt(k))), each one more checkpoint (two-level)."""
        grad = torch.is_grad_enabled()
        first_grad = n_loops - backprop_loops if 0 < backprop_loops < n_loops else 0
        head = [LoopGroup(range(0, first_grad), False, False)] if first_grad else []
        if not (checkpoint_each and grad):
            return head + [LoopGroup(range(first_grad, n_loops), grad, False)]
        length = self.config.loop_checkpoint_segment or math.ceil(math.sqrt(n_loops - first_grad))
        return head + [LoopGroup(range(start, min(start + length, n_loops)), True, length > 1)
                       for start in range(first_grad, n_loops, length)]

    def _checkpoint_contexts(self) -> tuple[AbstractContextManager, AbstractContextManager]:
        """(forward, recompute) contexts of every checkpoint: a recompute does not count expert load again."""
        return nullcontext(), expert_counts_frozen(self.block)

    def _checkpointed(self, fn, *args: object):  # noqa: ANN001, ANN202 - same signature as ``fn``
        return checkpoint(fn, *args, use_reentrant=False, context_fn=self._checkpoint_contexts)

    def initial_state(self, e: torch.Tensor) -> torch.Tensor:
        """h_0 [B, S, H] fp32: e (or Huginn's noise)."""
        if self.config.state_init == "noise":
            return torch.randn(e.shape, device=e.device, dtype=torch.float32) * self.config.noise_std
        return e.float()
