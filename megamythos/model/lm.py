"""MythosLM: Prelude (dense, once) -> Recurrent core (shared MoE block, T loops) -> Coda (dense, once) -> LM head."""
from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from megamythos.model.attention import LayerKVCache, build_attention
from megamythos.model.config import ModelConfig
from megamythos.model.layers import RMSNorm, SwiGLU
from megamythos.model.params import forward_flops_per_token
from megamythos.model.recurrent import RecurrentBlock, RecurrentCore, sample_loop_count
from megamythos.model.row_layout import IGNORE_INDEX, PackedDocuments, RowLayout, pads_only_row_ends

__all__ = ["IGNORE_INDEX", "DenseBlock", "MythosLM", "MythosOutput", "ModelKVCache", "compile_blocks",
           "sample_loop_count", "weight_decay_param_groups"]


class DenseBlock(nn.Module):
    """Pre-norm transformer block with a dense SwiGLU FFN: x + attn(norm x), then + ffn(norm x)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.dim, config.norm_eps)
        self.attn = build_attention(config)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.ffn = SwiGLU(config.dim, config.resolved_ffn_dim)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cache: LayerKVCache | None = None,
                absorb: bool = False, layout: RowLayout | None = None) -> torch.Tensor:
        """x [B, S, H] at ``positions`` [S] -> [B, S, H]; ``cache``, ``absorb`` and ``layout`` as the attention's."""
        x = x + self.attn(self.attn_norm(x), positions, cache, absorb, layout=layout)
        return x + self.ffn(self.ffn_norm(x))


def check_loop_count(n_loops: int | None) -> None:
    """Raise ``ValueError`` unless ``n_loops`` is None (the config's ``mean_loops``) or a whole number >= 1 (0 must
    not read as "unset", nor 2.5 or "8" as a count)."""
    if n_loops is not None and not (isinstance(n_loops, numbers.Integral) and n_loops >= 1):
        raise ValueError(f"n_loops={n_loops!r} must be >= 1, a whole number (None: the config's mean_loops)")


class ModelKVCache:
    """Decode cache of the whole model: one LayerKVCache per prelude layer, per loop index, per coda layer.

    The loop count is fixed when the cache is made: every token must be cached at every loop index.
    """

    def __init__(self, config: ModelConfig, n_loops: int) -> None:
        check_loop_count(n_loops)
        self.n_loops = n_loops
        self.prelude = [LayerKVCache() for _ in range(config.prelude_layers)]
        self.loops = [LayerKVCache() for _ in range(n_loops)]
        self.coda = [LayerKVCache() for _ in range(config.coda_layers)]

    @property
    def length(self) -> int:
        return self.loops[0].length

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep batch rows ``rows`` [B'] of every layer's cache, in that order (repeats allowed: beam search)."""
        for layer in (*self.prelude, *self.loops, *self.coda):
            layer.select_rows(rows)

    def crop(self, length: int) -> None:
        """Forget every token after the first ``length``, at every layer and loop index: the cache then holds what
        a forward of those ``length`` tokens alone leaves (a token's keys/values depend only on the tokens before
        it; an exited token's deeper keys/values come from its frozen state, so no per-token exit state remains)."""
        if length < 0:
            raise ValueError(f"cannot crop the cache to {length} tokens")
        for layer in (*self.prelude, *self.loops, *self.coda):
            layer.crop(length)


class MythosOutput(NamedTuple):
    """logits [B, S, V]; loss: mean next-token CE (None without labels; aux_loss not included); aux_loss: weighted
    MoE balance terms; stats: detached diagnostics over the T loops run (fewer than asked once every token exited):
    n_loops (T), state_norm [T], rho — max rho(A_bar) as this forward computed it, depth [B, S] and mean_depth —
    iterations each token executed, relative_change [T, B, S] — the exit signal, active_share [T] — share of tokens
    computed per loop, router_gate [T] — mean learned-router gate (only with ``capacity_router="learned"``).
    A NamedTuple, so ZeRO-3's module hooks see the tensors inside it."""

    logits: torch.Tensor
    loss: torch.Tensor | None
    aux_loss: torch.Tensor
    stats: dict[str, torch.Tensor]


class TokenCrossEntropy(nn.Module):
    """Mean next-token cross-entropy in fp32 over the scored labels: logits [..., V] (any float dtype), labels [...]
    (-100 = ignored) -> [] = sum_i CE_i / max(n_scored, 1). With no label scored (``--eod-mask-loss`` on a batch of
    end-of-document tokens alone) it is 0 with a zero gradient, not the 0/0 = NaN of PyTorch's mean, as
    Megatron's ``sum(loss * mask) / mask.sum()`` would be with the count clamped.

    A module of its own so that :func:`compile_blocks` compiles it: fused, the fp32 upcast, log-softmax and its
    backward run as single passes over the [N, V] logits instead of materialising fp32 copies of them."""

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        labels = labels.reshape(-1)
        total = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels, ignore_index=IGNORE_INDEX,
                                reduction="sum")
        return total / (labels != IGNORE_INDEX).sum().clamp(min=1)


class MythosLM(nn.Module):
    """Recurrent-depth MoE language model; see the package docstring for the data flow."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.prelude = nn.ModuleList(DenseBlock(config) for _ in range(config.prelude_layers))
        self.recurrent = RecurrentCore(config)
        self.coda = nn.ModuleList(DenseBlock(config) for _ in range(config.coda_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.token_loss = TokenCrossEntropy()
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_embeddings.weight
        self.apply(self._init_weights)
        self.recurrent.reset_parameters()

    def _init_weights(self, module: nn.Module) -> None:
        """N(0, init_std) everywhere; output projections scaled by 1/sqrt(2 * effective depth) (GPT-2)."""
        cfg = self.config
        out_std = cfg.init_std / math.sqrt(2 * (cfg.prelude_layers + cfg.coda_layers + cfg.mean_loops))
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=cfg.init_std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        for name, param in module.named_parameters(recurse=False):
            if name == "gate_up_proj":
                nn.init.normal_(param, std=cfg.init_std)
            elif name == "down_proj":
                nn.init.normal_(param, std=out_std)
        for name in ("wo", "w_down"):
            child = getattr(module, name, None)
            if isinstance(child, nn.Linear):
                nn.init.normal_(child.weight, std=out_std)

    def forward_flops_per_token(self, seq_len: int, loops: float, frozen_loops: float = 0.0) -> float:
        """Inference forward FLOPs per token at ``loops`` executed and ``frozen_loops`` frozen iterations per token
        on average (:func:`~megamythos.model.params.forward_flops_per_token`)."""
        return forward_flops_per_token(self.config, seq_len, loops, frozen_loops)

    def spectral_radius(self) -> torch.Tensor:
        """max rho(A_bar) in fp32 as forward computes it: A_bar is diagonal and positive, so its largest entry
        (the state-transition spectral radius for the additive/concat baselines). Reads the parameters
        directly; under ZeRO-3 (partitioned parameters) use a forward's ``stats["rho"]``."""
        return self.recurrent.injection.spectral_radius()

    def prelude_states(self, input_ids: torch.Tensor, positions: torch.Tensor, cache: ModelKVCache | None = None,
                       absorb: bool = False, layout: RowLayout | None = None) -> torch.Tensor:
        """input_ids [B, S] -> x [B, S, H]: token embeddings through the prelude blocks (the recurrent core's
        input, which the core normalises itself)."""
        x = self.tok_embeddings(input_ids)
        for i, block in enumerate(self.prelude):
            x = self.run_dense_block(block, x, positions, cache.prelude[i] if cache else None, absorb, layout)
        return x

    def coda_logits(self, h: torch.Tensor, positions: torch.Tensor, cache: ModelKVCache | None = None,
                    absorb: bool = False, layout: RowLayout | None = None) -> torch.Tensor:
        """Final recurrent states [..., S, H] (in the model's dtype) -> logits [..., S, V] through the coda
        blocks, the final norm and the LM head."""
        x = h
        for i, block in enumerate(self.coda):
            x = self.run_dense_block(block, x, positions, cache.coda[i] if cache else None, absorb, layout)
        return self.lm_head(self.norm(x))

    def run_dense_block(self, block: nn.Module, x: torch.Tensor, positions: torch.Tensor,
                        cache: LayerKVCache | None, absorb: bool, layout: RowLayout | None = None) -> torch.Tensor:
        """One prelude/coda block on x [B, S, H]; with ``checkpoint_dense_blocks`` in training a non-reentrant
        activation checkpoint (its input kept, the block recomputed in backward)."""
        if self.config.checkpoint_dense_blocks and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, positions, cache, absorb, layout, use_reentrant=False)
        return block(x, positions, cache, absorb, layout)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, n_loops: int | None = None,
                backprop_loops: int | None = None, cache: ModelKVCache | None = None, absorb: bool = False,
                exit_threshold: float | None = None, attention_mask: torch.Tensor | None = None,
                documents: PackedDocuments | None = None) -> MythosOutput:
        """input_ids [B, S] -> MythosOutput.

        labels [B, S] are the next tokens aligned with input positions (-100 = ignored). n_loops defaults to
        ``mean_loops`` (or the cache's count), backprop_loops to the config's. With ``cache`` the tokens
        continue the cached sequence; ``absorb`` selects MLA's absorbed decode path. ``exit_threshold`` > 0
        (inference only) lets each token stop iterating once its state's relative change falls below it; 0 runs
        every loop; None is the config's ``exit_threshold`` in eval mode and 0 in training mode.
        ``attention_mask`` [B, L] (L = cached + new tokens, 1 = real, 0 = padding) computes each row's real tokens
        as that row alone (:mod:`~megamythos.model.row_layout`); padding never iterates (depth 0) and its logits
        are unspecified. None, or all ones, is the unpadded forward; so is a mask of right padding in training
        (:meth:`layout_of`), where padding elsewhere is refused.
        ``documents`` (no cache, no attention_mask): samples packing documents ended by its eod id, with
        Megatron's per-row positions, block-causal attention and eod loss mask as it asks
        (:class:`~megamythos.model.row_layout.PackedDocuments`); None is the plain causal forward.
        """
        cfg = self.config
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids of shape {list(input_ids.shape)} must be [batch, seq] token ids (one "
                             "sequence: ids[None])")
        if labels is not None and labels.shape != input_ids.shape:
            raise ValueError(f"labels of shape {list(labels.shape)} must have the shape of input_ids "
                             f"{list(input_ids.shape)}: the next token at each input position (-100: not scored)")
        check_loop_count(n_loops)
        if backprop_loops is not None and not (isinstance(backprop_loops, numbers.Integral) and backprop_loops >= 0):
            raise ValueError(f"backprop_loops={backprop_loops!r} must be >= 0, a whole number (0: through every loop; "
                             "None: the config's backprop_loops)")
        if exit_threshold is None:
            exit_threshold = 0.0 if self.training else cfg.exit_threshold
        if not exit_threshold >= 0:  # NaN too: it compares false, so it would run every loop unsaid
            raise ValueError(f"exit_threshold={exit_threshold} must be >= 0 (0 = every loop)")
        if cache is not None:
            if n_loops is not None and n_loops != cache.n_loops:
                raise ValueError(f"n_loops={n_loops} differs from the cache's {cache.n_loops}")
            n_loops = cache.n_loops
        n_loops = n_loops or cfg.mean_loops
        backprop_loops = cfg.backprop_loops if backprop_loops is None else backprop_loops
        start = cache.length if cache is not None else 0
        positions = torch.arange(start, start + input_ids.shape[1], device=input_ids.device)
        layout = None if attention_mask is None else self.layout_of(attention_mask, input_ids, start)
        if documents is not None:
            if cache is not None or attention_mask is not None:
                raise ValueError("documents lays out whole packed samples: give it without a cache or attention_mask")
            layout = documents.layout(input_ids)
            labels = None if labels is None else documents.scored(input_ids, labels)

        x = self.prelude_states(input_ids, positions, cache, absorb, layout)
        result = self.recurrent(x, positions, n_loops, backprop_loops, cache.loops if cache else None, absorb,
                                exit_threshold, layout)
        logits = self.coda_logits(result.state.to(x.dtype), positions, cache, absorb, layout)
        loss = self.token_loss(logits, labels) if labels is not None else None
        return MythosOutput(logits=logits, loss=loss, aux_loss=result.aux_loss, stats=result.stats)

    def layout_of(self, attention_mask: torch.Tensor, input_ids: torch.Tensor, cached: int) -> RowLayout | None:
        """The :class:`RowLayout` of ``attention_mask`` [B, cached + S] for input_ids [B, S]; None when every token is
        real (the unpadded forward), or in training when padding only ends rows (right padding: causal attention
        keeps every real token from the padding after it, so the unpadded forward computes each row's real tokens
        as that row alone; the padding's labels are the caller's to set to -100). Checks the shape, that padding
        before a real token comes at inference only (and, in training, without ``loop_capacity``, whose ranking
        padding would enter) and leaves a new token real (up to three host syncs)."""
        batch, seq = input_ids.shape
        if attention_mask.shape != (batch, cached + seq):
            raise ValueError(f"attention_mask of shape {list(attention_mask.shape)} must be [batch, cached + new "
                             f"tokens] = {[batch, cached + seq]}: 1 at real tokens, 0 at padding")
        if bool(attention_mask.bool().all()):
            return None
        if self.training:
            if cached == 0 and not self.config.loop_capacity and pads_only_row_ends(attention_mask):
                return None
            raise ValueError("an attention_mask with padding before a real token is inference-only (model.eval()): "
                             "in training pad on the right (a tokenizer's padding_side='right') and give the padding "
                             "the label -100" + (", or train without loop_capacity, whose ranking padding would enter"
                                                 if self.config.loop_capacity else ""))
        if not bool(attention_mask[:, cached:].bool().any()):
            raise ValueError("attention_mask marks every new token as padding: give at least one real token")
        return RowLayout.of(attention_mask, seq)


def _no_decay(name: str, param: torch.Tensor) -> bool:
    return (param.ndim < 2 or "tok_embeddings" in name or "lm_head" in name
            or name.startswith("recurrent.injection."))


def weight_decay_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on matrices; none on 1-D parameters (norms, biases, the LTI vectors), the embedding, an
    untied ``lm_head`` and the state injection (the concat baseline's [I | I]-initialised adapter)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if _no_decay(name, param) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def compile_blocks(model: nn.Module, **options: object) -> list[str]:
    """torch.compile the forward of every prelude/coda block, of the shared recurrent block and of the token loss,
    in place.

    Only each block's ``forward`` is compiled, not its ``__call__``: hooks on the block stay eager around the
    graph (hooks on its submodules, as ZeRO-3 registers them, would break it into pieces). The recurrent block
    is compiled once and reused at every loop index: the loop index t, the loop count and the per-loop LoRA /
    loop-index signal live in :class:`RecurrentCore`, outside the block, so they never specialise its graph
    (truncated BPTT adds one no-grad graph). ``options`` go to ``torch.compile``. Returns the module names.
    """
    names = []
    for name, module in model.named_modules():
        if isinstance(module, (DenseBlock, RecurrentBlock, TokenCrossEntropy)):
            module.forward = torch.compile(module.forward, **options)
            names.append(name)
    return names
