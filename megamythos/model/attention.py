"""Causal self-attention: DeepSeek-V2 Multi-head Latent Attention (MLA) and grouped-query attention (GQA).

Both take x [B, S, H] plus the absolute ``positions`` [S] of those tokens, an optional :class:`LayerKVCache` and,
for a padded batch at inference, a :class:`~megamythos.model.row_layout.RowLayout` (per-row RoPE positions and a key
mask); local head counts are always inferred from projection shapes (``view(B, S, -1, d)``),
so tensor parallelism can column-shard the head projections and row-shard ``wo`` without model changes.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from megamythos.model.config import ModelConfig
from megamythos.model.layers import RMSNorm, apply_rope, rope_cos_sin
from megamythos.model.row_layout import RowLayout
from megamythos.model.token_subset import TokenSubset


class LayerKVCache:
    """Per-layer decode cache: a tuple of tensors [B, L, ...] grown along dim 1.

    MLA stores (c_kv [B, L, kv_lora_rank], k_pe [B, L, rope_dim]) — kv_lora_rank + rope_dim values per token;
    GQA stores (k [B, L, n_kv, d], v [B, L, n_kv, d]).
    """

    def __init__(self) -> None:
        self.tensors: tuple[torch.Tensor, ...] | None = None

    @property
    def length(self) -> int:
        return 0 if self.tensors is None else self.tensors[0].shape[1]

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep batch rows ``rows`` [B'] of the cached tensors, in that order."""
        if self.tensors is not None:
            self.tensors = tuple(t.index_select(0, rows.to(t.device)) for t in self.tensors)

    def crop(self, length: int) -> None:
        """Keep the first ``length`` cached tokens (all of them when fewer are cached): what a rejected draft
        leaves (assisted decoding)."""
        if self.tensors is not None:
            self.tensors = tuple(t[:, :length] for t in self.tensors)

    def append(self, *new: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Append ``new`` (one [B, S, ...] tensor per cached tensor) along the sequence dim and return the full
        cached tensors [B, L + S, ...]."""
        if self.tensors is None:
            self.tensors = tuple(t.detach() for t in new)
        else:
            self.tensors = tuple(torch.cat((old, t.detach()), dim=1) for old, t in zip(self.tensors, new))
        return self.tensors


def causal_mask(q_len: int, kv_len: int, device: torch.device) -> torch.Tensor | None:
    """Boolean [q_len, kv_len] mask (True = attend) for queries at the last q_len of kv_len positions."""
    if q_len == 1:
        return None
    q_pos = torch.arange(kv_len - q_len, kv_len, device=device)[:, None]
    return torch.arange(kv_len, device=device)[None, :] <= q_pos


def attention_layout(positions: torch.Tensor, kv_len: int, cached: bool, queries: TokenSubset | None,
                     layout: RowLayout | None = None) -> tuple[torch.Tensor | None, bool]:
    """(mask, causal) for queries at ``positions`` [S] against ``kv_len`` keys: every token of the batch with no
    cache (the kernel's own causal flag), after a cache (an explicit [S, kv_len] mask), or only the ``queries``
    subset (its padded [B, 1, W, kv_len] mask). None for one position, which sees every key. A padded batch, or
    packed documents with their own attention, take the ``layout``'s mask ([B, 1, S or W, kv_len]) in every
    case."""
    if layout is not None and layout.mask is not None:
        return layout.query_mask(queries), False
    seq = positions.shape[0]
    if queries is not None and seq > 1:
        return queries.attention_mask(positions, kv_len), False
    return (causal_mask(seq, kv_len, positions.device), False) if cached else (None, seq > 1)


def rope_positions(positions: torch.Tensor, layout: RowLayout | None) -> torch.Tensor:
    """What RoPE rotates the new tokens by: the batch's ``positions`` [S], or a padded batch's (packed documents')
    per row [B, S]."""
    return positions if layout is None or layout.positions is None else layout.positions


def rope_at(cos: torch.Tensor, sin: torch.Tensor, queries: TokenSubset) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE tables [S, d/2] (shared by the batch) or [B, S, d/2] (per row) at the ``queries``' tokens -> [N, d/2]."""
    index = queries.col if cos.dim() == 2 else (queries.row, queries.col)
    return cos[index], sin[index]


def masked_scores(scores: torch.Tensor, mask: torch.Tensor | None, causal: bool, scale: float) -> torch.Tensor:
    """Raw scores q k^T [..., S, L] (any float dtype) -> fp32 ``scores * scale`` with -inf where a query may not
    attend (``mask`` False, or a key after the query when ``causal``; queries are the last S of L positions).

    One pass, ``bias + scale * scores`` with an fp32 0 / -inf bias [S, L] (or the mask's shape) broadcast over the
    batch and heads: the same values as casting, scaling and ``masked_fill`` (0 + x and -inf + x are exact), and
    the same gradient (softmax gives masked scores zero gradient), in one elementwise pass instead of three.
    """
    q_len, kv_len = scores.shape[-2:]
    if causal:
        bias = torch.full((q_len, kv_len), float("-inf"), device=scores.device).triu(kv_len - q_len + 1)
    elif mask is not None:
        bias = torch.zeros(mask.shape, device=scores.device).masked_fill_(~mask, float("-inf"))
    else:
        return scores.float() * scale
    return torch.add(bias, scores, alpha=scale)


@functools.lru_cache(maxsize=1)
def _flash_attn_func() -> Callable[..., torch.Tensor] | None:
    """flash-attn's ``flash_attn_func`` when the optional CUDA extra is installed, else None (lazy import)."""
    try:
        from flash_attn import flash_attn_func  # type: ignore[import-not-found]
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return None
    return flash_attn_func


# Up to this many scores per (batch, head) the explicit-matmul path is used for bf16 on CPU; beyond, SDPA's flash
# kernel, which never materialises the S x L scores. Causal self-attention (the training forward, prefill without a
# cache) runs the matmul path in query blocks and keeps it up to _CAUSAL_MATMUL_MAX_SCORES; a mask (cached prefill,
# token subsets) up to _MATMUL_ATTENTION_MAX_SCORES. A single query (decode) takes the matmul path in bf16 and fp32
# at any cache length; fp32 with several queries takes SDPA. Beyond the causal switch the matmul path's kept fp32 +
# bf16 probabilities (6 bytes a score, about half of S x S) grow past what SDPA keeps (O(S)). The switch points are
# the crossovers bench/bench_attention.py finds at the tiny and small presets' head shapes (bench/README.md,
# "Attention kernel per shape").
_MATMUL_ATTENTION_MAX_SCORES = 256 * 256
_CAUSAL_MATMUL_MAX_SCORES = 1024 * 1024
# Causal attention over more queries than this runs in blocks of this many queries; under torch.compile in
# blocks of _COMPILED_CAUSAL_QUERY_BLOCK: fused by inductor, smaller blocks win by skipping more masked scores,
# while eager pays a dispatch per block (measured per mode in bench/README.md, "Attention kernel per shape").
_CAUSAL_QUERY_BLOCK = 256
_COMPILED_CAUSAL_QUERY_BLOCK = 128


def causal_query_block() -> int:
    """Queries per block of causal :func:`matmul_attention`: smaller when torch.compile traces the call."""
    return _COMPILED_CAUSAL_QUERY_BLOCK if torch.compiler.is_compiling() else _CAUSAL_QUERY_BLOCK


def _softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool,
                       scale: float) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v for [B, h, S, d] inputs: two batched matmuls, fp32 scores and softmax."""
    scores = masked_scores(torch.matmul(q, k.transpose(-2, -1)), mask, causal, scale)
    return torch.matmul(scores.softmax(dim=-1).to(v.dtype), v)


def matmul_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool,
                     scale: float) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v with two batched matmuls and an fp32 softmax, for [B, S, h, d] inputs.

    On CPU this beats SDPA's flash kernel on short sequences (one matmul per head instead of the flash kernel's
    blocked loop), for a single query in bf16 and fp32, and for causal bf16 attention up to ~1024 tokens; it
    needs no padding of v. Causal: query i (at position L - S + i) attends to keys 0..L - S + i. Over more than
    :func:`causal_query_block` = b causal queries it runs per query block: the block [s, s + b) attends to keys
    0..L - S + s + b - 1 only, so of the S x L scores only the blocks on and below the diagonal are computed and
    kept for backward ((n + 1) / 2n of them for S = L = n b), each block's fp32 scores stay small, and every row
    sees the same keys as in one pass (the keys it skips are the ones the causal mask gives weight 0).
    """
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    q_len, kv_len, block = q.shape[2], k.shape[2], causal_query_block()
    if not causal or q_len <= block:
        return _softmax_attention(q, k, v, mask, causal, scale).transpose(1, 2)
    past = kv_len - q_len
    outs = [_softmax_attention(q[:, :, s:s + block], k[:, :, :past + s + block], v[:, :, :past + s + block],
                               None, True, scale) for s in range(0, q_len, block)]
    return torch.cat(outs, dim=2).transpose(1, 2)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool,
           scale: float) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v for q [B, S, h, dq], k [B, L, h, dq], v [B, L, h, dv] -> [B, S, h, dv].

    Kernel by device, dtype and shape: flash-attn on CUDA in half precision when it is installed; on CPU
    :func:`matmul_attention` for one query (decode) in any dtype and in bf16 up to
    ``_CAUSAL_MATMUL_MAX_SCORES`` scores per head for causal self-attention, ``_MATMUL_ATTENTION_MAX_SCORES``
    with a mask; else PyTorch SDPA. For
    the fused kernels the narrower of the query/key and value widths (MLA: v_head_dim < or > nope + rope) is
    zero-padded and the output sliced back, since they (flash-attn, SDPA's flash path with causal skipping) need
    equal widths (:func:`equal_widths`); the math is unchanged.
    """
    max_scores = _CAUSAL_MATMUL_MAX_SCORES if causal and mask is None else _MATMUL_ATTENTION_MAX_SCORES
    if q.device.type == "cpu" and (q.shape[1] == 1 or (
            q.dtype == torch.bfloat16 and q.shape[1] * k.shape[1] <= max_scores)):
        return matmul_attention(q, k, v, mask, causal, scale)
    # not under torch.compile, which traces the cached import attempt as a graph break (SDPA's flash path instead)
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and mask is None and not torch.compiler.is_compiling():
        flash = _flash_attn_func()
        if flash is not None:
            return flash(*equal_widths(q, k, v), softmax_scale=scale, causal=causal)[..., :v.shape[-1]]
    return sdpa_attention(q, k, v, mask, causal, scale)


def equal_widths(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k [..., dq] and v [..., dv] zero-padded to one width max(dq, dv), as the fused kernels need: v padded
    when narrower (its extra output channels are 0, sliced off by the caller), q and k when narrower (the padding
    adds 0 to every score q . k, and the kernels take the scale of the real width as an argument)."""
    dq, dv = q.shape[-1], v.shape[-1]
    if dv < dq:
        return q, k, F.pad(v, (0, dq - dv))
    if dq < dv:
        return F.pad(q, (0, dv - dq)), F.pad(k, (0, dv - dq)), v
    return q, k, v


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool,
                   scale: float) -> torch.Tensor:
    """PyTorch SDPA for [B, S, h, d] inputs (the query/key or value width padded to the other,
    :func:`equal_widths`, the output sliced back to v's)."""
    q_, k_, v_ = (x.transpose(1, 2) for x in equal_widths(q, k, v))
    out = F.scaled_dot_product_attention(q_, k_, v_, attn_mask=mask, is_causal=causal and mask is None, scale=scale)
    return out.transpose(1, 2)[..., :v.shape[-1]]


class MLA(nn.Module):
    """DeepSeek-V2 Multi-head Latent Attention with ONE shared decoupled RoPE key.

    q = W_qb RMSNorm(W_qa x)  -> per head [nope | rope]           (W_q x when q_lora_rank == 0)
    [c_kv | k_pe] = W_kva x;  c_kv <- RMSNorm(c_kv)               c_kv: kv_lora_rank, k_pe: rope dim, shared
    [k_nope | v] = W_kvb c_kv -> per head                          k = [k_nope | rope(k_pe)]
    out = W_o attention(q, k, v)
    The cache keeps only c_kv and rope(k_pe). ``absorb=True`` folds W_kvb into the query/output side
    (q_lat = q_nope W_UK, out = (P c_kv) W_UV) so decode never expands the latent to per-head keys.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.nope_dim, self.rope_dim, self.v_dim = config.qk_nope_head_dim, config.qk_rope_head_dim, config.v_head_dim
        self.kv_lora_rank = config.kv_lora_rank
        self.rope_theta = config.rope_theta
        self.scale = 1.0 / math.sqrt(self.nope_dim + self.rope_dim)
        q_out = config.n_heads * (self.nope_dim + self.rope_dim)
        if config.q_lora_rank > 0:
            self.wq_a = nn.Linear(config.dim, config.q_lora_rank, bias=False)
            self.q_norm = RMSNorm(config.q_lora_rank, config.norm_eps)
            self.wq_b = nn.Linear(config.q_lora_rank, q_out, bias=False)
        else:
            self.wq = nn.Linear(config.dim, q_out, bias=False)
        self.wkv_a = nn.Linear(config.dim, self.kv_lora_rank + self.rope_dim, bias=False)
        self.kv_norm = RMSNorm(self.kv_lora_rank, config.norm_eps)
        self.wkv_b = nn.Linear(self.kv_lora_rank, config.n_heads * (self.nope_dim + self.v_dim), bias=False)
        self.wo = nn.Linear(config.n_heads * self.v_dim, config.dim, bias=False)

    def _query(self, x: torch.Tensor) -> torch.Tensor:
        q = self.wq_b(self.q_norm(self.wq_a(x))) if hasattr(self, "wq_a") else self.wq(x)
        return q.view(x.shape[0], x.shape[1], -1, self.nope_dim + self.rope_dim)

    def _latent(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the cache holds for x [B, S, H]: (c_kv [B, S, kv_lora_rank], rope(k_pe) [B, S, r])."""
        c_kv, k_pe = self.wkv_a(x).split([self.kv_lora_rank, self.rope_dim], dim=-1)
        return self.kv_norm(c_kv), apply_rope(k_pe.unsqueeze(2), cos, sin).squeeze(2)

    def extend_cache(self, x: torch.Tensor, positions: torch.Tensor, cache: LayerKVCache,
                     layout: RowLayout | None = None) -> None:
        """Append the cache entry of x [B, S, H] at ``positions`` [S] without attending (a token that exited
        earlier, at a deeper loop index)."""
        cos, sin = rope_cos_sin(rope_positions(positions, layout), self.rope_dim, self.rope_theta)
        cache.append(*self._latent(x, cos, sin))

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cache: LayerKVCache | None = None,
                absorb: bool = False, queries: TokenSubset | None = None,
                layout: RowLayout | None = None) -> torch.Tensor:
        """x [B, S, H] at ``positions`` [S] -> [B, S, H]; with ``queries`` only those tokens attend -> [1, N, H]
        (keys/values still come from every token of x and the cache); ``layout``: a padded batch's positions and
        key mask."""
        bsz, seq, _ = x.shape
        cos, sin = rope_cos_sin(rope_positions(positions, layout), self.rope_dim, self.rope_theta)
        c_kv, k_pe = self._latent(x, cos, sin)
        if cache is not None:
            c_kv, k_pe = cache.append(c_kv, k_pe)
        mask, causal = attention_layout(positions, c_kv.shape[1], cache is not None, queries, layout)
        if queries is not None:
            x, (cos, sin) = queries.gather(x), rope_at(cos, sin, queries)
        q_nope, q_pe = self._query(x).split([self.nope_dim, self.rope_dim], dim=-1)
        q_pe = apply_rope(q_pe, cos, sin)
        if queries is not None:
            q_nope, q_pe = queries.pad(q_nope), queries.pad(q_pe)
        if absorb:
            out = self._absorbed_attention(q_nope, q_pe, c_kv, k_pe, mask, causal)
        else:
            kv = self.wkv_b(c_kv).view(bsz, c_kv.shape[1], -1, self.nope_dim + self.v_dim)
            k_nope, v = kv.split([self.nope_dim, self.v_dim], dim=-1)
            k = torch.cat((k_nope, k_pe.unsqueeze(2).expand(-1, -1, k_nope.shape[2], -1)), dim=-1)
            q = torch.cat((q_nope, q_pe), dim=-1)
            out = attend(q, k, v, mask, causal, self.scale)
        if queries is not None:
            out = queries.unpad(out)
        return self.wo(out.flatten(-2))

    def _absorbed_attention(self, q_nope: torch.Tensor, q_pe: torch.Tensor, c_kv: torch.Tensor,
                            k_pe: torch.Tensor, mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
        """Attention in latent space: scores = (q_nope W_UK) c_kv^T + q_pe k_pe^T; out = (P c_kv) W_UV."""
        w = self.wkv_b.weight.view(-1, self.nope_dim + self.v_dim, self.kv_lora_rank)  # [h, nope+v, r]
        w_uk, w_uv = w.split([self.nope_dim, self.v_dim], dim=1)
        q_lat = torch.einsum("bshn,hnr->bshr", q_nope, w_uk)
        scores = torch.einsum("bshr,blr->bhsl", q_lat, c_kv) + torch.einsum("bshp,blp->bhsl", q_pe, k_pe)
        probs = masked_scores(scores, mask, causal, self.scale).softmax(dim=-1).to(c_kv.dtype)
        out_lat = torch.einsum("bhsl,blr->bshr", probs, c_kv)
        return torch.einsum("bshr,hvr->bshv", out_lat, w_uv)


class GQA(nn.Module):
    """Grouped-query attention with RoPE: n_heads query heads share n_kv_heads key/value heads."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.head_dim = config.resolved_head_dim
        self.rope_theta = config.rope_theta
        self.wq = nn.Linear(config.dim, config.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(config.dim, config.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(config.dim, config.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(config.n_heads * self.head_dim, config.dim, bias=False)

    def _keys_values(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rope(k), v), each [B, S, n_kv, d], for x [B, S, H]: what the cache holds."""
        bsz, seq, _ = x.shape
        k = apply_rope(self.wk(x).view(bsz, seq, -1, self.head_dim), cos, sin)
        return k, self.wv(x).view(bsz, seq, -1, self.head_dim)

    def extend_cache(self, x: torch.Tensor, positions: torch.Tensor, cache: LayerKVCache,
                     layout: RowLayout | None = None) -> None:
        """Append the cache entry of x [B, S, H] at ``positions`` [S] without attending (a token that exited
        earlier, at a deeper loop index)."""
        cos, sin = rope_cos_sin(rope_positions(positions, layout), self.head_dim, self.rope_theta)
        cache.append(*self._keys_values(x, cos, sin))

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cache: LayerKVCache | None = None,
                absorb: bool = False, queries: TokenSubset | None = None,
                layout: RowLayout | None = None) -> torch.Tensor:
        """x [B, S, H] at ``positions`` [S] -> [B, S, H]; with ``queries`` only those tokens attend -> [1, N, H]
        (keys/values still come from every token of x and the cache); ``layout``: a padded batch's positions and
        key mask."""
        del absorb  # only meaningful for MLA
        cos, sin = rope_cos_sin(rope_positions(positions, layout), self.head_dim, self.rope_theta)
        k, v = self._keys_values(x, cos, sin)
        if cache is not None:
            k, v = cache.append(k, v)
        mask, causal = attention_layout(positions, k.shape[1], cache is not None, queries, layout)
        if queries is not None:
            x, (cos, sin) = queries.gather(x), rope_at(cos, sin, queries)
        q = apply_rope(self.wq(x).view(x.shape[0], x.shape[1], -1, self.head_dim), cos, sin)
        if queries is not None:
            q = queries.pad(q)
        groups = q.shape[2] // k.shape[2]
        k, v = k.repeat_interleave(groups, dim=2), v.repeat_interleave(groups, dim=2)
        out = attend(q, k, v, mask, causal, 1.0 / math.sqrt(self.head_dim))
        if queries is not None:
            out = queries.unpad(out)
        return self.wo(out.flatten(-2))


def build_attention(config: ModelConfig) -> nn.Module:
    """The attention ``config.attn_type`` names (:class:`MLA` or :class:`GQA`): x [B, S, H] -> [B, S, H]."""
    return MLA(config) if config.attn_type == "mla" else GQA(config)
