"""The recurrent core: one shared attention + MoE block looped T times with LTI-stable injection and ACT.

State update (Parcae-style linear time-invariant injection, diagonal per channel, all in fp32):

    u_t     = h_t + e  (+ loop-index signal)               block input, e = RMSNorm(prelude output)
    h_{t+1} = A_bar * h_t + B_bar * e + Block(u_t)         Block(u) = attention and MoE residual updates
    A_bar   = exp(-exp(clamp(log_dt + log_A, lo, hi)))     in [eps, 1 - delta] for every parameter value
    B_bar   = exp(clamp(log_dt)) * B

The clamp acts on the exponent, so A_bar stays inside [eps, 1 - delta] even for log_A, log_dt = +-1e4, and
delta >= 2**-8 (validated in the config) keeps the bound below 1 after rounding to bf16.

Two baselines for studies (``config.injection``): "additive", h_{t+1} = u_t + Block(u_t) with u_t = h_t + e
(identity state transition, rho = 1), and "concat", Huginn's adapter u_t = W [h_t; e], h_{t+1} = u_t + Block(u_t).

ACT (Graves): p_t = sigmoid(halt(h_{t+1})) per token; a token halts at the first step where the cumulative
probability reaches ``act_threshold`` and takes the remainder 1 - sum(previous p) as its weight there (or at
the last step), so the weights over steps sum to 1 per token; the output is sum_t w_t h_{t+1}. The ponder
cost N + R (steps taken plus remainder) is added to the aux loss. Training always runs every iteration (all
ranks run the same count); only inference may stop once every token has halted.
"""
from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from typing import Callable, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from megamythos.attention import LayerKVCache, build_attention
from megamythos.config import ModelConfig
from megamythos.layers import RMSNorm
from megamythos.moe import MoE, expert_counts_frozen

_LOG_DT_RANGE = (-8.0, 2.0)  # B_bar's step size exp(log_dt) stays in [3e-4, 7.4]


def sample_loop_count(mean_loops: int, sigma: float, max_loops: int, seed: int, step: int) -> int:
    """Loop count for one training step: 1 + Poisson(exp(tau)), tau ~ N(log(mean - 1) - sigma^2 / 2, sigma).

    The log-normal Poisson of Huginn, with mean ``mean_loops``, clipped to [1, max_loops]. Drawn from a
    generator seeded by (seed, step) alone, so every rank draws the same count without communicating.
    """
    if mean_loops <= 1:
        return 1
    rng = np.random.default_rng([seed, step])
    tau = rng.normal(math.log(mean_loops - 1) - sigma ** 2 / 2, sigma)
    return int(np.clip(1 + rng.poisson(math.exp(tau)), 1, max_loops))


class LTIInjection(nn.Module):
    """Per-channel parameters of the stable linear recurrence h <- A_bar h + B_bar e + delta."""

    def block_input(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """u = h + e (fp32)."""
        return h + e.float()

    def spectral_radius(self) -> torch.Tensor:
        return self.decay().max()

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

    def decay(self) -> torch.Tensor:
        """A_bar [H] in fp32 (autocast off), guaranteed inside [decay_floor, 1 - decay_margin]."""
        with torch.autocast(device_type=self.log_A.device.type, enabled=False):
            rate = (self.log_dt.float() + self.log_A.float()).clamp(self.log_rate_min, self.log_rate_max)
            return torch.exp(-torch.exp(rate))

    def input_gain(self) -> torch.Tensor:
        """B_bar [H] in fp32."""
        return torch.exp(self.log_dt.float().clamp(*_LOG_DT_RANGE)) * self.B.float()

    def forward(self, h: torch.Tensor, e: torch.Tensor, u: torch.Tensor, delta: torch.Tensor,
                report_rho: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """h [B, S, H] fp32, e, u and delta [B, S, H] -> (next state A_bar h + B_bar e + delta in fp32,
        with ``report_rho`` the detached max rho(A_bar) of this very A_bar — read here, inside the module call,
        for ZeRO-3 — else None)."""
        del u
        decay = self.decay()
        return decay * h + self.input_gain() * e.float() + delta.float(), decay.detach().max() if report_rho else None


class AdditiveInjection(nn.Module):
    """Baseline: h <- (h + e) + delta; the state transition is the identity (rho = 1, no decay)."""

    def reset_parameters(self) -> None:
        pass

    def block_input(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return h + e.float()

    def spectral_radius(self) -> torch.Tensor:
        return torch.ones(())

    def forward(self, h: torch.Tensor, e: torch.Tensor, u: torch.Tensor, delta: torch.Tensor,
                report_rho: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        return u + delta.float(), self.spectral_radius() if report_rho else None


class ConcatInjection(nn.Module):
    """Baseline (Huginn adapter): u = W [h; e] with W [H, 2H] initialised to [I | I]; h <- u + delta."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.adapter = nn.Linear(2 * config.dim, config.dim, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            eye = torch.eye(self.adapter.out_features)
            self.adapter.weight.copy_(torch.cat((eye, eye), dim=1))

    def block_input(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return self.adapter(torch.cat((h, e.float()), dim=-1).to(self.adapter.weight.dtype)).float()

    def spectral_radius(self) -> torch.Tensor:
        """max |eigenvalue| of the state block W[:, :H] (fp32; meant for study-sized widths)."""
        w_h = self.adapter.weight[:, : self.adapter.out_features].detach().float()
        return torch.linalg.eigvals(w_h).abs().max()

    def forward(self, h: torch.Tensor, e: torch.Tensor, u: torch.Tensor, delta: torch.Tensor,
                report_rho: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        return u + delta.float(), self.spectral_radius() if report_rho else None


def build_injection(config: ModelConfig) -> nn.Module:
    if config.injection == "lti":
        return LTIInjection(config)
    return AdditiveInjection() if config.injection == "additive" else ConcatInjection(config)


class LoopLoRA(nn.Module):
    """Per-loop low-rank adapter: up(down(u) * scale[t]), t clamped to the table (depth extrapolation)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.down = nn.Linear(config.dim, config.lora_rank, bias=False)
        self.up = nn.Linear(config.lora_rank, config.dim, bias=False)
        self.scale = nn.Embedding(config.resolved_max_loops, config.lora_rank)

    def forward(self, u: torch.Tensor, t: int) -> torch.Tensor:
        index = torch.tensor(min(t, self.scale.num_embeddings - 1), device=u.device)
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

    def forward(self, u: torch.Tensor, positions: torch.Tensor, cache: LayerKVCache | None,
                absorb: bool) -> tuple[torch.Tensor, torch.Tensor]:
        attn_out = self.attn(self.attn_norm(u), positions, cache, absorb)
        moe_out, aux = self.moe(self.moe_norm(u + attn_out))
        return attn_out + moe_out, aux


class RecurrenceResult(NamedTuple):
    """Output of :class:`RecurrentCore`: mixed state [B, S, H] fp32, aux loss and detached statistics.

    A NamedTuple, so ZeRO-3's module hooks see the tensors inside it."""

    state: torch.Tensor
    aux_loss: torch.Tensor
    stats: dict[str, torch.Tensor]


class LoopCarry(NamedTuple):
    """What one iteration hands to the next, all fp32: state h [B, S, H]; ACT's weighted state mixture
    [B, S, H] (None without ACT), cumulative halting weight, halted mask, ponder cost N + R and steps taken
    (each [B, S]); the summed aux loss and max rho(A_bar), reported by the first iteration (scalars)."""

    h: torch.Tensor
    mixed: torch.Tensor | None
    cum: torch.Tensor
    halted: torch.Tensor
    ponder: torch.Tensor
    steps: torch.Tensor
    aux: torch.Tensor
    rho: torch.Tensor


def act_update(carry: LoopCarry, p_halt: torch.Tensor, last: bool, threshold: float) -> LoopCarry:
    """Fold the new state ``carry.h`` into ACT's mixture with halting probability p_halt [B, S].

    A running token halts once cum + p >= threshold (always at the ``last`` step) and then takes the
    remainder 1 - cum, so its weights sum to exactly 1; ponder accumulates N (one per running step) + R.
    """
    running = ~carry.halted
    halting_now = running if last else running & (carry.cum + p_halt >= threshold)
    remainder = 1.0 - carry.cum
    weight = torch.where(halting_now, remainder, torch.where(running, p_halt, torch.zeros_like(p_halt)))
    return carry._replace(
        mixed=carry.mixed + weight.unsqueeze(-1) * carry.h,
        cum=carry.cum + weight,
        halted=carry.halted | halting_now,
        ponder=carry.ponder + running.float() + torch.where(halting_now, remainder, torch.zeros_like(remainder)),
        steps=carry.steps + running.float())


class RecurrentCore(nn.Module):
    """Runs the shared block ``n_loops`` times from the prelude output e [B, S, H].

    Activation checkpointing (``checkpoint_loops``, training only): each iteration with gradient is a
    non-reentrant checkpoint that keeps only its input state, so the forward keeps O(k) states for k
    iterations under gradient. ``loop_checkpoint_segment`` = c > 1 (0: c = ceil(sqrt(k))) checkpoints runs of
    c iterations again (two-level): the forward keeps only segment-boundary carries and the backward
    re-creates one segment's per-iteration states at a time, O(k / c + c) states for one extra forward of
    the k iterations.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.input_norm = RMSNorm(config.dim, config.norm_eps)
        self.injection = build_injection(config)
        self.block = RecurrentBlock(config)
        self.halt = nn.Linear(config.dim, 1) if config.act else None
        self.lora = LoopLoRA(config) if config.lora_rank > 0 else None

    def reset_parameters(self) -> None:
        """LTI init, and a halting bias of -log(mean_loops) (p ~ 1/(1 + mean_loops)) so that at init tokens
        spread their ACT weight over the whole trained depth instead of halting after two steps."""
        self.injection.reset_parameters()
        if self.halt is not None:
            nn.init.constant_(self.halt.bias, -math.log(self.config.mean_loops))

    def _step(self, h: torch.Tensor, e: torch.Tensor, t: int, positions: torch.Tensor, cache: LayerKVCache | None,
              absorb: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One iteration: (h_next fp32, aux loss, halting probability [B, S] fp32 — zeros without ACT, max rho of
        the state transition at the first iteration, else None)."""
        cfg = self.config
        u_state = self.injection.block_input(h, e)
        u = u_state.to(e.dtype)
        if cfg.loop_embedding:
            u = u + loop_index_signal(t, cfg.resolved_loop_embedding_dim, cfg.dim, u.device, u.dtype)
        delta, aux = self.block(u, positions, cache, absorb)
        if self.lora is not None:
            delta = delta + self.lora(u, t)
        h_next, rho = self.injection(h, e, u_state, delta, report_rho=t == 0)  # rho is the same every loop
        if self.halt is None:
            p_halt = h_next.new_zeros(h_next.shape[:2])
        else:
            p_halt = torch.sigmoid(self.halt(h_next.to(e.dtype)).float().squeeze(-1))
        return h_next, aux, p_halt, rho

    def _checkpoint_contexts(self) -> tuple[AbstractContextManager, AbstractContextManager]:
        """(forward, recompute) contexts of every checkpoint: a recompute does not count expert load again."""
        return nullcontext(), expert_counts_frozen(self.block)

    def _checkpoint(self, fn: Callable, *args: object) -> object:
        return checkpoint(fn, *args, use_reentrant=False, context_fn=self._checkpoint_contexts)

    def initial_carry(self, e: torch.Tensor) -> LoopCarry:
        """The carry before the first iteration: h0 = e (or Huginn's noise), nothing mixed or halted yet."""
        if self.config.state_init == "noise":
            h = torch.randn(e.shape, device=e.device, dtype=torch.float32) * self.config.noise_std
        else:
            h = e.float()
        zeros = torch.zeros(e.shape[:2], device=e.device)
        return LoopCarry(h=h, mixed=torch.zeros_like(h) if self.halt is not None else None, cum=zeros,
                         halted=torch.zeros_like(zeros, dtype=torch.bool), ponder=zeros, steps=zeros,
                         aux=zeros.new_zeros(()), rho=zeros.new_zeros(()))

    def _run_loops(self, e: torch.Tensor, *carry_fields: torch.Tensor | None, loops: range, n_loops: int,
                   positions: torch.Tensor, caches: list[LayerKVCache] | None, absorb: bool,
                   per_loop_checkpoint: bool, act_exit: bool) -> tuple[LoopCarry, torch.Tensor]:
        """Iterations ``loops`` from the carry -> (carry after them, mean state norm per iteration run [n]).

        The carry comes as its fields, so a checkpoint of this call saves them as tensors (version-checked).
        """
        carry = LoopCarry(*carry_fields)
        norms = []
        for t in loops:
            cache = caches[t] if caches is not None else None
            step_args = (carry.h, e, t, positions, cache, absorb)
            h, aux, p_halt, rho = self._checkpoint(self._step, *step_args) if per_loop_checkpoint \
                else self._step(*step_args)
            carry = carry._replace(h=h, aux=carry.aux + aux, rho=carry.rho if rho is None else rho)
            if carry.mixed is not None:
                carry = act_update(carry, p_halt, t == n_loops - 1, self.config.act_threshold)
            norms.append(h.detach().norm(dim=-1).mean())
            if act_exit and bool(carry.halted.all()):
                if caches is not None:
                    for later in caches[t + 1:]:
                        later.repeat_last(caches[t])
                break
        return carry, torch.stack(norms)

    def _schedule(self, n_loops: int, backprop_loops: int, checkpointing: bool) -> list[tuple[range, bool, bool]]:
        """(iterations, run with autograd, checkpoint the run as one segment) in execution order.

        Truncated BPTT runs the first n_loops - k iterations without autograd; with checkpointing the k
        iterations under gradient are cut into segments of ``loop_checkpoint_segment`` (0: ceil(sqrt(k))).
        """
        grad = torch.is_grad_enabled()
        first_grad = n_loops - backprop_loops if 0 < backprop_loops < n_loops else 0
        pieces = [(range(0, first_grad), False, False)] if first_grad else []
        if not (checkpointing and grad):
            return pieces + [(range(first_grad, n_loops), grad, False)]
        k = n_loops - first_grad
        length = self.config.loop_checkpoint_segment or math.ceil(math.sqrt(k))
        return pieces + [(range(start, min(start + length, n_loops)), True, length > 1)
                         for start in range(first_grad, n_loops, length)]

    def forward(self, e: torch.Tensor, positions: torch.Tensor, n_loops: int, backprop_loops: int,
                caches: list[LayerKVCache] | None = None, absorb: bool = False,
                act_exit: bool = False) -> RecurrenceResult:
        """e [B, S, H] (already normalised) -> RecurrenceResult.

        backprop_loops k > 0 runs the first n_loops - k iterations without autograd (truncated BPTT).
        ``caches`` holds one LayerKVCache per loop index (decode); ``act_exit`` stops once all tokens halted
        (inference only) and fills the skipped loops' caches with the last computed entry.
        """
        if act_exit and self.training:
            raise RuntimeError("ACT early exit is inference-only: in training every rank must run every loop")
        checkpointing = self.config.checkpoint_loops and self.training
        carry = self.initial_carry(e)
        norms: list[torch.Tensor] = []
        for loops, grad, as_segment in self._schedule(n_loops, backprop_loops, checkpointing):
            run = partial(self._run_loops, loops=loops, n_loops=n_loops, positions=positions, caches=caches,
                          absorb=absorb, per_loop_checkpoint=checkpointing and grad, act_exit=act_exit)
            with torch.set_grad_enabled(grad):
                carry, run_norms = self._checkpoint(run, e, *carry) if as_segment else run(e, *carry)
            norms.append(run_norms)
            if act_exit and bool(carry.halted.all()):
                break
        state_norm = torch.cat(norms)
        steps_run = state_norm.numel()
        stats = {"n_loops": torch.tensor(float(steps_run)), "state_norm": state_norm, "rho": carry.rho}
        aux = carry.aux / steps_run
        if carry.mixed is None:
            return RecurrenceResult(carry.h, aux, stats)
        # ponder = N (a count, no gradient) + R (the remainder, which carries the gradient).
        stats["act_mean_steps"] = carry.steps.mean()
        stats["act_weight_sum"] = carry.cum.detach()
        return RecurrenceResult(carry.mixed, aux + self.config.ponder_cost * carry.ponder.mean(), stats)
