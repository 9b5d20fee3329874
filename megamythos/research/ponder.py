"""PonderNet (Banino et al. 2021) on the study model: a learned halting distribution, study-only.

The stack's adaptive depth is Huginn's convergence exit rule (see :mod:`megamythos.model.recurrent`); this module is
the learned-halting anchor it is measured against. Training runs a fixed N loops on every token (as
distributed training requires) and reads a halting probability after each loop n = 1..N:

    lambda_n = sigmoid(w . RMSNorm(h_n) + b)                      h_n: recurrent state after loop n [B, S, H]
    p_n      = lambda_n prod_{j<n} (1 - lambda_j)     (n < N)     p_N = prod_{j<N} (1 - lambda_j)   (remainder)
    loss     = mean_tokens[ sum_n p_n CE(head(coda(h_n)), y) ] + beta KL(p || q)
    q_n      = lambda_p (1 - lambda_p)^(n-1) / sum_{m<=N} lambda_p (1 - lambda_p)^(m-1)   (truncated geometric)

so sum_n p_n = 1 per token. The coda and LM head run on every loop's state: N coda passes per token instead of
one (:func:`ponder_train_flops_per_token`). At inference a token halts after the first loop n whose cumulative
halting mass exceeds 0.5, i.e. once its survival S_n = prod_{j<=n} (1 - lambda_j) < 0.5; from then on its
state is frozen exactly as the convergence rule freezes it (:func:`megamythos.model.recurrent.advance`), so both
rules are measured with the same frozen-token semantics and one coda pass.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from megamythos.inference.evaluate import LoopEval
from megamythos.model.config import ModelConfig
from megamythos.model.layers import RMSNorm
from megamythos.model.lm import MythosLM
from megamythos.model.params import attention_fwd_flops_per_token, count, dense_block_matmul_params
from megamythos.model.recurrent import LoopState, advance, computed_iterations, exit_distribution, keep_frozen

BETA = 0.01  # the paper's KL weight
PRIOR_LAMBDA = 0.09  # truncated to N = 8 loops: prior mean 4.01 loops, the study model's trained mean depth
HALT_THRESHOLD = 0.5  # a token halts once its cumulative halting probability exceeds this


class PonderOutput(NamedTuple):
    """loss = task_loss + BETA * kl (scalars, with grad); aux_loss: the MoE balance terms averaged over loops;
    halting: p [N, B, S]; loop_loss: per-loop CE [N, B, S] (detached)."""

    loss: torch.Tensor
    aux_loss: torch.Tensor
    task_loss: torch.Tensor
    kl: torch.Tensor
    halting: torch.Tensor
    loop_loss: torch.Tensor


def halting_distribution(logits: torch.Tensor) -> torch.Tensor:
    """Halting logits z [N, B, S] (lambda_n = sigmoid(z_n)) -> p [N, B, S], sum over n = 1; the last loop takes the
    remainder, so z_N is unused. Computed in log space: log p_n = log lambda_n + sum_{j<n} log(1 - lambda_j)."""
    head = logits[:-1].float()
    none = torch.zeros_like(logits[-1:], dtype=torch.float32)
    log_survive = torch.cat((none, torch.cumsum(F.logsigmoid(-head), dim=0)))  # sum_{j<n} log(1 - lambda_j)
    return torch.exp(torch.cat((F.logsigmoid(head), none)) + log_survive)


def truncated_geometric(prior_lambda: float, n_loops: int) -> torch.Tensor:
    """q [N]: q_n proportional to lambda_p (1 - lambda_p)^(n-1), n = 1..N, normalised to sum 1."""
    n = torch.arange(n_loops, dtype=torch.float64)
    q = prior_lambda * (1 - prior_lambda) ** n
    return (q / q.sum()).float()


def kl_to_prior(p: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of KL(p || q) = sum_n p_n log(p_n / q_n); p [N, B, S], q [N] -> scalar (0 log 0 = 0)."""
    log_q = prior.to(p.device).log().view(-1, *([1] * (p.dim() - 1)))
    return (torch.xlogy(p, p) - p * log_q).sum(dim=0).mean()


def ponder_train_flops_per_token(config: ModelConfig, seq_len: int, n_loops: int) -> float:
    """Training FLOPs per token (3x forward, full backprop) of N loops with the coda and head run after each:
    the model's count at N loops plus N - 1 extra coda + head passes."""
    coda_head = (2 * (config.coda_layers * dense_block_matmul_params(config) + config.vocab_size * config.dim)
                 + config.coda_layers * attention_fwd_flops_per_token(config, seq_len))
    return count(config, seq_len=seq_len, n_loops=n_loops).train_flops_per_token + 3 * (n_loops - 1) * coda_head


class PonderLM(MythosLM):
    """MythosLM plus a halting unit. ``forward`` is MythosLM's (full depth or the convergence exit rule), so the
    library's evaluation runs unchanged; :meth:`ponder_loss` trains and :meth:`halting_forward` infers with
    PonderNet's halting. Parameter names are MythosLM's plus ``halt_norm.*`` and ``halt.*``."""

    def __init__(self, config: ModelConfig, n_loops: int) -> None:
        super().__init__(config)
        self.n_loops = n_loops
        self.halt_norm = RMSNorm(config.dim, config.norm_eps)
        self.halt = nn.Linear(config.dim, 1)
        nn.init.zeros_(self.halt.weight)  # start at lambda_n = lambda_p (the prior, remainder mass at loop N)
        nn.init.constant_(self.halt.bias, math.log(PRIOR_LAMBDA / (1 - PRIOR_LAMBDA)))
        self.register_buffer("prior", truncated_geometric(PRIOR_LAMBDA, n_loops), persistent=False)

    def _prelude(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids [B, S] -> (e = RMSNorm(prelude output) [B, S, H], positions [S])."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.recurrent.input_norm(self.prelude_states(input_ids, positions)), positions

    def _halting_logits(self, h: torch.Tensor) -> torch.Tensor:
        """z = w . RMSNorm(h) + b: [..., H] -> [...] fp32."""
        return self.halt(self.halt_norm(h.to(self.halt.weight.dtype))).squeeze(-1).float()

    def ponder_loss(self, input_ids: torch.Tensor, labels: torch.Tensor) -> PonderOutput:
        """input_ids and labels [B, S] -> PonderOutput over ``n_loops`` loops, every loop under gradient."""
        e, positions = self._prelude(input_ids)
        h, aux, states = self.recurrent.initial_state(e), e.new_zeros((), dtype=torch.float32), []
        for t in range(self.n_loops):
            h, step_aux, *_ = self.recurrent.iteration(h, e, t, positions, None, False)
            states.append(h)
            aux = aux + step_aux
        stacked = torch.stack(states)  # [N, B, S, H]; one coda pass over the loops folded into the batch
        logits = self.coda_logits(stacked.flatten(0, 1).to(e.dtype), positions).unflatten(0, stacked.shape[:2])
        loop_loss = F.cross_entropy(logits.float().flatten(0, 2), labels.repeat(self.n_loops, 1).flatten(),
                                    ignore_index=-100, reduction="none").view(self.n_loops, *labels.shape)
        p = halting_distribution(self._halting_logits(stacked))
        mask = (labels != -100).float()
        task = ((p * loop_loss).sum(dim=0) * mask).sum() / mask.sum().clamp_min(1.0)
        kl = kl_to_prior(p, self.prior)
        return PonderOutput(task + BETA * kl, aux / self.n_loops, task, kl, p, loop_loss.detach())

    @torch.no_grad()
    def halting_forward(self, input_ids: torch.Tensor,
                        threshold: float = HALT_THRESHOLD) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference with PonderNet's halting: input_ids [B, S] -> (logits [B, S, V], executed loops [B, S]).
        A token runs loops until its survival S_n = prod_{j<=n} (1 - lambda_j) < 1 - ``threshold`` (S_N = 0),
        then keeps its state frozen."""
        e, positions = self._prelude(input_ids)
        zeros = e.new_zeros(e.shape[:2], dtype=torch.float32)
        state = LoopState(self.recurrent.initial_state(e), ~zeros.bool(), zeros, zeros.new_zeros(()),
                          zeros.new_zeros(()), zeros)
        log_survival = zeros
        for t in range(self.n_loops):
            h_next, aux, *_ = self.recurrent.iteration(state.h, e, t, positions, None, False)
            last = t == self.n_loops - 1
            log_survival = log_survival + (F.logsigmoid(-self._halting_logits(h_next)) if not last
                                           else torch.full_like(zeros, -math.inf))
            state = advance(state, keep_frozen(h_next, state.h, state.active), aux, None, log_survival.exp(),
                            1 - threshold)
            if not bool(state.active.any()):
                break
        return self.coda_logits(state.h.to(e.dtype), positions), state.depth


@torch.no_grad()
def evaluate_halting(model: PonderLM, batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                     threshold: float = HALT_THRESHOLD) -> tuple[LoopEval, list[float]]:
    """Held-out loss under PonderNet halting over (inputs [B, S], targets [B, S]) batches -> (a LoopEval at
    ``loops`` = N with ``exit_threshold`` = the cumulative-probability threshold, and the mean halting
    distribution p [N] of the training objective: all N loops, no freezing). Its forward FLOPs count the halted
    tokens' keys/values at each later loop their batch runs, as :func:`~megamythos.inference.evaluate.evaluate_loops`
    counts the exit rule's (:func:`~megamythos.model.recurrent.computed_iterations`)."""
    was_training = model.training
    model.eval()
    total_loss, total_tokens = 0.0, 0
    exits, p_mean = torch.zeros(model.n_loops), torch.zeros(model.n_loops)
    whole, frozen = 0.0, 0.0  # iterations computed whole / frozen (keys/values only), summed over tokens
    try:
        for inputs, targets in batches:
            logits, steps = model.halting_forward(inputs, threshold)
            total_loss += F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="sum").item()
            exits += exit_distribution(steps, model.n_loops) * targets.numel()
            batch_whole, batch_frozen = computed_iterations(steps, int(steps.max()))  # the batch runs to its last halt
            whole, frozen = whole + batch_whole, frozen + batch_frozen
            p_mean += model.ponder_loss(inputs, targets).halting.sum(dim=(1, 2)).cpu()
            total_tokens += targets.numel()
    finally:
        model.train(was_training)
    loss, share = total_loss / total_tokens, exits / total_tokens
    mean_depth = float((share * torch.arange(1, model.n_loops + 1)).sum())
    flops = model.forward_flops_per_token(inputs.shape[1], whole / total_tokens, frozen / total_tokens)
    result = LoopEval(model.n_loops, threshold, loss, math.exp(min(loss, 50.0)), mean_depth, share.tolist(), flops,
                      total_tokens)
    return result, (p_mean / total_tokens).tolist()
