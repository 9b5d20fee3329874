"""DeepSeek-style Mixture of Experts: fine-grained routed experts + always-on shared experts.

Parameters and buffers: ``gate`` = Linear(H, E) with buffer ``gate.e_score_correction_bias`` [E] (the expert bias),
``experts.gate_up_proj`` [E, 2F, H] (rows [:F] feed silu, rows [F:] are the up projection), ``experts.down_proj``
[E, H, F], ``shared_experts`` called on [B, S, H], and a ``tokens_per_expert`` [E] count buffer. These names are a
contract with ``megamythos.parallel``, which may swap this module for an expert-parallel replacement.

Routing: s = softmax|sigmoid(x W_g^T) in fp32; the top-k experts are chosen on s + b (b = expert bias, used for
selection only); weights are the unbiased s of the chosen experts, renormalised to sum to 1 when ``route_norm``.
Dispatch sorts the T*K (token, expert) assignments by expert and runs one grouped matmul; there is no Python loop
over experts and no per-expert host sync.

Balance: the MoE owns its balance loss (:class:`BalanceLoss` of the logits it routed with, returned next to its
output), and counts tokens per expert in training for the aux-loss-free bias update (:func:`update_expert_bias`).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from megamythos.model.config import ModelConfig
from megamythos.model.layers import SwiGLU, cast_weight


def route(logits: torch.Tensor, expert_bias: torch.Tensor | None, top_k: int, score_func: str,
          route_norm: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k routing for router logits [T, E] with the expert bias [E] (or None) added for selection only.

    Returns (weights [T, K] fp32, expert ids [T, K] int64, scores [T, E] fp32).
    """
    scores = logits.float().softmax(dim=-1) if score_func == "softmax" else logits.float().sigmoid()
    choice = scores if expert_bias is None else scores + expert_bias.float()
    expert_ids = choice.topk(top_k, dim=-1, sorted=False).indices
    weights = scores.gather(1, expert_ids)
    if route_norm:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return weights, expert_ids, scores


# torch._grouped_mm has a CPU kernel, and on CUDA a fallback below sm90, from torch 2.9; torch 2.8 has the op with
# neither (it raises; its sm90 kernel goes unused here), torch 2.6-2.7 lack it: there the MoE takes the padded
# batched matmul of grouped_matmul.
GROUPED_MM_KERNEL = hasattr(torch, "_grouped_mm") and torch.__version__ >= (2, 9)


def _grouped_mm_ok(x: torch.Tensor, w: torch.Tensor) -> bool:
    """torch._grouped_mm needs torch >= 2.9, 16-byte aligned strides, fp32/bf16/fp16 (no fp64 kernel) and, on
    CUDA, bf16."""
    if not GROUPED_MM_KERNEL or x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return False
    if x.is_cuda and x.dtype != torch.bfloat16:
        return False
    return all((d * x.element_size()) % 16 == 0 for d in (x.shape[-1], w.shape[-1], w.shape[-2]))


# The op's namespace: "megamythos" for the library, the module's own name for a copy of this file shipped in a
# Hugging Face export (transformers_modules.<dir>.<hash>.moe). torch lets a name be defined again and destroys the
# first definition, so an export loaded next to the library would leave the library's op calling a freed handle.
OP_NAMESPACE = "megamythos" if __name__ == "megamythos.model.moe" else re.sub(r"\W", "_", __name__)


@torch.library.custom_op(f"{OP_NAMESPACE}::grouped_mm", mutates_args=())
def _grouped_mm(a: torch.Tensor, b: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """torch._grouped_mm(a, b, offs=offsets) as an op that torch.compile does not look into.

    a [N, in] x b [G, in, out] -> [N, out] (rows of a grouped by offsets), or a [in, N] x b [N, out] ->
    [G, in, out] (the weight gradient: the shared dim N grouped). Wrapped because the fake-tensor rule of
    aten._grouped_mm accepts only bf16, while the CPU kernel also runs fp32.
    """
    return torch._grouped_mm(a, b, offs=offsets)


@_grouped_mm.register_fake
def _(a: torch.Tensor, b: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    if b.dim() == 3:
        return a.new_empty(a.shape[0], b.shape[-1])
    return a.new_empty(offsets.shape[0], a.shape[0], b.shape[-1])


def _grouped_mm_setup(ctx: Any, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
    ctx.save_for_backward(*inputs)


def _grouped_mm_backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
    """y = a b_g per group: da = dy b_g^T (rows grouped), db_g = a_g^T dy_g (the shared dim grouped).

    db is computed as (dy_g^T a_g)^T: b is the transposed view of a weight [G, out, in], so this gradient has
    the weight's own strides and reaches its ``.grad`` without a layout copy. dy is made contiguous first: the
    kernel refuses a broadcast one (the gradient of ``y.sum()``, strides 0).
    """
    a, b, offsets = ctx.saved_tensors
    grad = grad.contiguous()
    grad_b = _grouped_mm(grad.t(), a, offsets).transpose(-2, -1)
    return _grouped_mm(grad, b.transpose(-2, -1), offsets), grad_b, None


_grouped_mm.register_autograd(_grouped_mm_backward, setup_context=_grouped_mm_setup)


def matmul_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a matmul of x runs in: autocast's for x's device when autocast is on, else x's own."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def grouped_matmul(x: torch.Tensor, weight: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Rows of x [N, in] sorted by group (group g owns counts[g] consecutive rows) times weight[g]^T.

    weight [G, out, in] -> [N, out] in :func:`matmul_dtype` (bf16 under bf16 autocast, which does not cover
    aten._grouped_mm by itself); the weight is cast by :func:`~megamythos.model.layers.cast_weight`, i.e. once
    per forward inside :func:`~megamythos.model.layers.weights_cast_once`. Uses torch._grouped_mm when it
    applies (no host sync), else one padded batched matmul (a single host sync for the capacity, independent
    of G).
    """
    dtype = matmul_dtype(x)
    x, weight = x.to(dtype), cast_weight(weight, dtype)
    if _grouped_mm_ok(x, weight):
        return _grouped_mm(x, weight.transpose(-2, -1), counts.cumsum(0).to(torch.int32))
    groups, n_rows = weight.shape[0], x.shape[0]
    starts = counts.cumsum(0) - counts
    group_of_row = torch.repeat_interleave(torch.arange(groups, device=x.device), counts, output_size=n_rows)
    slot = torch.arange(n_rows, device=x.device) - starts[group_of_row]
    capacity = int(counts.max().item()) if n_rows else 0
    padded = x.new_zeros(groups, max(capacity, 1), x.shape[-1])
    padded[group_of_row, slot] = x
    out = torch.bmm(padded, weight.transpose(-2, -1))
    return out[group_of_row, slot]


class Experts(nn.Module):
    """E SwiGLU experts stored fused: y_e(x) = down_e (silu(gate_e x) * up_e x)."""

    def __init__(self, n_experts: int, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.gate_up_proj = nn.Parameter(torch.empty(n_experts, 2 * hidden_dim, dim))
        self.down_proj = nn.Parameter(torch.empty(n_experts, dim, hidden_dim))

    def forward(self, x_sorted: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """x_sorted [N, H] grouped by expert with counts [E] -> [N, H]."""
        gate, up = grouped_matmul(x_sorted, self.gate_up_proj, counts).split(self.hidden_dim, dim=-1)
        return grouped_matmul(F.silu(gate) * up, self.down_proj, counts)


@dataclass(frozen=True)
class BalanceLoss:
    """Weighted balance losses of router logits [B, S, E] given the expert bias [E] (or None) -> fp32 scalar.

    Sequence-wise aux loss (DeepSeek-V3): per sequence, f_i = E/(K S) * #tokens routed to i (the top-k of s + b,
    as routed; V3's eq. 18 and Megatron count the top-k of s alone, see docs/model.md),
    P_i = mean_t s'_{t,i} with s' the scores normalised over experts; L_seq = coef * mean_b sum_i f_i P_i.
    Router z-loss: coef * mean_t logsumexp(logits_t)^2.
    """

    top_k: int
    score_func: str
    seq_aux_coef: float
    z_loss_coef: float

    @classmethod
    def from_config(cls, config: ModelConfig) -> BalanceLoss:
        return cls(config.num_experts_per_tok, config.score_func, config.seq_aux_loss_coef, config.router_z_loss_coef)

    def __call__(self, logits: torch.Tensor, expert_bias: torch.Tensor | None) -> torch.Tensor:
        if self.seq_aux_coef == 0 and self.z_loss_coef == 0:
            return logits.new_zeros((), dtype=torch.float32)
        bsz, seq, n_experts = logits.shape
        logits = logits.float()
        loss = logits.new_zeros(())
        if self.seq_aux_coef > 0:
            _, expert_ids, scores = route(logits.view(-1, n_experts), expert_bias, self.top_k, self.score_func,
                                          route_norm=False)
            scores = scores.view(bsz, seq, n_experts)
            scores = scores / scores.sum(dim=-1, keepdim=True)
            hits = torch.zeros(bsz, n_experts, device=logits.device).scatter_add_(
                1, expert_ids.view(bsz, seq * self.top_k), torch.ones(bsz, seq * self.top_k, device=logits.device))
            f = hits * n_experts / (self.top_k * seq)
            loss = loss + self.seq_aux_coef * (f * scores.mean(dim=1)).sum(dim=-1).mean()
        if self.z_loss_coef > 0:
            loss = loss + self.z_loss_coef * torch.logsumexp(logits, dim=-1).pow(2).mean()
        return loss


class MoEOutput(NamedTuple):
    """What an MoE layer returns: the output [B, S, H] and its balance loss (fp32 scalar).

    A NamedTuple, so ZeRO-3's module hooks see both tensors."""

    hidden: torch.Tensor
    aux_loss: torch.Tensor


class ExpertLoad(NamedTuple):
    """One MoE layer's aux-loss-free balancing buffers (the layer's own tensors, updated in place)."""

    tokens_per_expert: torch.Tensor  # [E] tokens routed to each expert since the last bias update
    expert_bias: torch.Tensor  # [E] selection bias b


class MoE(nn.Module):
    """Routed + shared experts on x [B, S, H] -> MoEOutput(hidden [B, S, H], balance loss)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.score_func = config.score_func
        self.route_norm = config.route_norm
        self.balance_loss = BalanceLoss.from_config(config)
        self.gate = nn.Linear(config.dim, config.n_experts, bias=False)
        self.gate.register_buffer("e_score_correction_bias", torch.zeros(config.n_experts, dtype=torch.float32))
        self.experts = Experts(config.n_experts, config.dim, config.expert_dim)
        self.shared_experts = (SwiGLU(config.dim, config.n_shared_experts * config.expert_dim)
                               if config.n_shared_experts > 0 else None)
        self.register_buffer("tokens_per_expert", torch.zeros(config.n_experts, dtype=torch.float32),
                             persistent=False)

    def expert_load(self) -> ExpertLoad:
        return ExpertLoad(self.tokens_per_expert, self.gate.e_score_correction_bias)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> MoE:
        """Module casts (``model.to(torch.bfloat16)``, ``.half()``) move the balancing buffers but keep them fp32,
        as DeepSpeed's bf16 engine does: in bf16 the bias, spaced 2**-8 at |b| >= 0.5, would not take the update
        rate's steps of 1e-3, and the counts would stop being whole numbers above 256."""
        buffers = ((self, "tokens_per_expert"), (self.gate, "e_score_correction_bias"))
        before = [getattr(owner, name) for owner, name in buffers]
        super()._apply(fn, recurse)
        for (owner, name), kept in zip(buffers, before):
            cast = getattr(owner, name)
            if cast.dtype != torch.float32:
                setattr(owner, name, kept.to(cast.device))
        return self

    def forward(self, hidden_states: torch.Tensor) -> MoEOutput:
        """x [B, S, H] -> (y [B, S, H], balance loss []), y_t = sum_{i in top-k(s_t + b)} w_{t,i} E_i(x_t)
        (+ shared(x_t)) with s_t the router's scores, b the expert bias and w :func:`route`'s weights."""
        bsz, seq, dim = hidden_states.shape
        x = hidden_states.reshape(-1, dim)
        logits = self.gate(x)
        expert_bias = self.gate.e_score_correction_bias
        weights, expert_ids, _ = route(logits, expert_bias, self.top_k, self.score_func, self.route_norm)
        flat_ids = expert_ids.reshape(-1)
        order = flat_ids.argsort(stable=True)
        counts = torch.zeros(self.gate.out_features, dtype=torch.int64, device=x.device).scatter_add_(
            0, flat_ids, torch.ones_like(flat_ids))  # bincount with a static shape, for torch.compile
        if self.training:  # activation-checkpoint recomputes undo their counts (expert_counts_frozen)
            with torch.no_grad():
                self.tokens_per_expert.add_(counts.to(self.tokens_per_expert.dtype))
        token_of = order // self.top_k
        expert_out = self.experts(x[token_of], counts)
        expert_out = expert_out * weights.reshape(-1)[order, None].to(expert_out.dtype)
        out = torch.zeros_like(x).index_add_(0, token_of, expert_out.to(x.dtype))
        out = out.view(bsz, seq, dim)
        if self.shared_experts is not None:
            out = out + self.shared_experts(hidden_states)
        return MoEOutput(out, self.balance_loss(logits.view(bsz, seq, -1), expert_bias))


# ------------------------------------------------------------------------------------ aux-loss-free balancing
_EXPERT_LOAD_READERS: dict[type[nn.Module], Callable[[Any], ExpertLoad]] = {MoE: MoE.expert_load}


def register_moe_layer(layer_type: type[nn.Module], expert_load: Callable[[Any], ExpertLoad]) -> None:
    """Treat modules of ``layer_type`` as MoE layers below; ``expert_load(layer)`` returns their buffers.

    The hook point for a parallel runtime that replaces :class:`MoE` by its own layer type after the model
    is built (see ``megamythos.parallel``); the model itself registers only :class:`MoE`.
    """
    _EXPERT_LOAD_READERS[layer_type] = expert_load


def expert_loads(model: nn.Module) -> dict[str, ExpertLoad]:
    """{module name: ExpertLoad} of every MoE layer in ``model`` (:class:`MoE` and registered types)."""
    return {name: read(module) for name, module in model.named_modules()
            if (read := _EXPERT_LOAD_READERS.get(type(module))) is not None}


def expert_counts_saved(model: nn.Module) -> Callable[[], None]:
    """Save the token counts of every MoE layer in ``model``; returns the function that puts them back (a
    forward whose tokens must not count: a recompute, a micro-batch skipped for its non-finite loss)."""
    saved = [(load.tokens_per_expert, load.tokens_per_expert.clone()) for load in expert_loads(model).values()]

    def restore() -> None:
        for counts, before in saved:
            counts.copy_(before)

    return restore


@contextmanager
def expert_counts_frozen(model: nn.Module) -> Iterator[None]:
    """Undo the token counting of every MoE layer in ``model`` on exit.

    Used as the recompute context of activation checkpointing: a recomputed forward routes the same tokens
    again, and only the original forward may count towards the aux-loss-free bias update.
    """
    restore = expert_counts_saved(model)
    try:
        yield
    finally:
        restore()


class ExpertBalance(NamedTuple):
    """What one aux-loss-free bias update saw in the last MoE layer (:func:`update_expert_bias`)."""

    stats: dict[str, float]  # load statistics (see update_expert_bias); empty for a model without MoE layers
    idle: tuple[int, ...]  # the experts no token reached in the step, in ascending order


@torch.no_grad()
def update_expert_bias(model: nn.Module, rate: float, group: Any | None = None) -> ExpertBalance:
    """DeepSeek-V3 aux-loss-free balancing, applied once per optimizer step.

    For every MoE layer: c = tokens_per_expert summed over ``group`` (all ranks by default, when
    torch.distributed is initialised); b <- b + rate * sign(mean(c) - c); counts reset to 0.
    Returns, of the last layer, load statistics: max/mean tokens per expert (counted over the step: every
    micro-batch, every loop of a shared block and every rank, so a tensor-parallel group counts its tokens once
    per rank), their ratio max/mean (1 = balanced, comparable across loops, batches and layouts), the number of
    experts no token reached in the step (``idle_experts``: a collapsed router shows there while the ratio may
    still look moderate) and the bias range; and which experts those idle ones are (the same on every rank of
    ``group``).
    """
    last = None
    for load in expert_loads(model).values():
        counts = load.tokens_per_expert.detach().float().clone()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts, op=dist.ReduceOp.SUM, group=group)
        bias = load.expert_bias
        mean = counts.mean()
        bias.add_((rate * torch.sign(mean - counts)).to(bias.dtype))
        load.tokens_per_expert.zero_()
        last = (counts, mean, bias)
    if last is None:
        return ExpertBalance({}, ())
    counts, mean, bias = last
    idle = counts == 0
    # one host sync for the statistics and the idle experts' mask
    max_load, mean_load, n_idle, bias_min, bias_max, *mask = torch.cat([torch.stack([
        counts.max(), mean, idle.sum().float(), bias.min().float(), bias.max().float()]), idle.float()]).tolist()
    return ExpertBalance({"max_load": max_load, "mean_load": mean_load,
                          "load_imbalance": max_load / mean_load if mean_load > 0 else 1.0,
                          "idle_experts": n_idle, "bias_min": bias_min, "bias_max": bias_max},
                         tuple(i for i, m in enumerate(mask) if m))


def expert_bias_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """{MoE module name: copy of its expert bias} for checkpoint client state."""
    return {name: load.expert_bias.detach().cpu().clone() for name, load in expert_loads(model).items()}


@torch.no_grad()
def load_expert_bias_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Restore biases saved by :func:`expert_bias_state`; a missing or extra layer is an error."""
    loads = expert_loads(model)
    if set(loads) != set(state):
        raise KeyError(f"expert-bias state has layers {sorted(state)} but the model has {sorted(loads)}")
    for name, tensor in state.items():
        bias = loads[name].expert_bias
        bias.copy_(tensor.to(device=bias.device, dtype=bias.dtype))
