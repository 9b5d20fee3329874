"""Analytic parameter counts, FLOPs and KV-cache size of a configuration.

The command line is ``python -m megamythos.planning.plan``; memory and step time are in :mod:`megamythos.planning`.

Conventions: "active" counts the parameters one token touches in one pass with the recurrent block once and
K of E routed experts; "effective" counts the recurrent block once per loop. FLOPs are 2 per multiply-add,
training = forward + backward = 3x forward (per-iteration activation checkpointing adds one more forward of
the recurrent block, reported separately); attention scores/values use the causal average context S/2.
"""
from __future__ import annotations

from dataclasses import dataclass

from megamythos.model.config import ModelConfig

BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


def attention_params(c: ModelConfig) -> int:
    """Weights of one attention module (MLA or GQA), latent norms included."""
    if c.attn_type == "gqa":
        hd = c.resolved_head_dim
        return c.dim * c.n_heads * hd * 2 + c.dim * c.n_kv_heads * hd * 2
    q_out = c.n_heads * c.qk_head_dim
    q = c.dim * c.q_lora_rank + c.q_lora_rank + c.q_lora_rank * q_out if c.q_lora_rank else c.dim * q_out
    kv = c.dim * (c.kv_lora_rank + c.qk_rope_head_dim) + c.kv_lora_rank
    kv += c.kv_lora_rank * c.n_heads * (c.qk_nope_head_dim + c.v_head_dim)
    return q + kv + c.n_heads * c.v_head_dim * c.dim


def key_value_matmul_params(c: ModelConfig) -> int:
    """Weights of one attention module that make its keys and values (MLA: W_kva and W_kvb; GQA: W_k, W_v):
    the part every token computes even when only some tokens attend (compaction, loop capacity)."""
    if c.attn_type == "gqa":
        return 2 * c.dim * c.n_kv_heads * c.resolved_head_dim
    return (c.dim * (c.kv_lora_rank + c.qk_rope_head_dim)
            + c.kv_lora_rank * c.n_heads * (c.qk_nope_head_dim + c.v_head_dim))


def frozen_token_matmul_params(c: ModelConfig) -> int:
    """Weights of one iteration that a token which is not iterating (exited under early exit, left out by
    ``loop_capacity``) still multiplies while the other tokens of its batch iterate (compaction): its block input
    (the concat baseline's adapter W [h; e], [dim, 2 dim]; the other injections are elementwise) and its keys and
    values (:func:`key_value_matmul_params`), so the iterating tokens can attend to it."""
    return key_value_matmul_params(c) + (injection_params(c) if c.injection == "concat" else 0)


def attention_norm_params(c: ModelConfig) -> int:
    """The part of :func:`attention_params` that is vectors (latent RMSNorm weights): no matmul FLOPs."""
    return 0 if c.attn_type == "gqa" else c.kv_lora_rank + c.q_lora_rank


def swiglu_params(dim: int, hidden: int) -> int:
    """gate and up [hidden, dim], down [dim, hidden]."""
    return 3 * dim * hidden


def dense_block_params(c: ModelConfig) -> int:
    """Pre-norms (2 x dim), attention and the dense SwiGLU of one prelude/coda block."""
    return 2 * c.dim + attention_params(c) + swiglu_params(c.dim, c.resolved_ffn_dim)


def dense_block_matmul_params(c: ModelConfig) -> int:
    """Weights of one dense block that take part in matmuls (norm vectors excluded)."""
    return dense_block_params(c) - 2 * c.dim - attention_norm_params(c)


def attention_fwd_flops_per_token(c: ModelConfig, seq_len: int) -> float:
    """Scores and weighted values of one causal attention layer, averaged over positions (context S/2)."""
    if c.attn_type == "mla":
        score_width = c.n_heads * (c.qk_head_dim + c.v_head_dim)
    else:
        score_width = 2 * c.n_heads * c.resolved_head_dim
    return 2 * score_width * seq_len / 2


def expert_params(c: ModelConfig) -> int:
    """One routed expert (gate, up, down)."""
    return swiglu_params(c.dim, c.expert_dim)


def embedding_params(c: ModelConfig) -> int:
    """Token embeddings [V, dim], plus the LM head [V, dim] when it is not tied to them."""
    return c.vocab_size * c.dim * (1 if c.tie_embeddings else 2)


def injection_params(c: ModelConfig) -> int:
    """LTI: log_A, log_dt, B (dim each); additive: none; concat: the [dim, 2 dim] adapter."""
    return {"lti": 3 * c.dim, "additive": 0, "concat": 2 * c.dim * c.dim}[c.injection]


@dataclass(frozen=True)
class PartCounts:
    """Parameters of each part of :class:`~megamythos.model.lm.MythosLM`; every parameter is in exactly one part.

    Attention parts include their latent RMSNorms (MLA); ``*_norms`` are the pre-norms of the blocks (and the
    recurrent input norm), ``final_norm`` the one before the LM head.
    """

    embedding: int  # tok_embeddings (+ lm_head when untied)
    dense_attention: int  # prelude + coda
    dense_ffn: int  # prelude + coda SwiGLUs
    dense_norms: int
    recurrent_attention: int
    router: int  # [E, dim] gate
    routed_experts: int  # E x (gate, up, down)
    shared_experts: int  # one SwiGLU n_shared * expert_dim wide
    recurrent_norms: int  # input_norm, attn_norm, moe_norm
    injection: int
    lora: int  # per-loop LoRA down, up and scale table
    depth_router: int  # the learned capacity router's [max_loops, dim] table (capacity_router="learned")
    final_norm: int

    @property
    def prelude_coda(self) -> int:
        return self.dense_attention + self.dense_ffn + self.dense_norms

    @property
    def recurrent(self) -> int:
        return (self.recurrent_attention + self.router + self.routed_experts + self.shared_experts
                + self.recurrent_norms + self.injection + self.lora + self.depth_router)

    @property
    def total(self) -> int:
        return self.embedding + self.prelude_coda + self.recurrent + self.final_norm


def parts(c: ModelConfig) -> PartCounts:
    """Analytic per-part parameter counts of config ``c`` (what the meta-device model holds, tested so)."""
    n_dense = c.prelude_layers + c.coda_layers
    return PartCounts(
        embedding=embedding_params(c), dense_attention=n_dense * attention_params(c),
        dense_ffn=n_dense * swiglu_params(c.dim, c.resolved_ffn_dim), dense_norms=n_dense * 2 * c.dim,
        recurrent_attention=attention_params(c), router=c.dim * c.n_experts,
        routed_experts=c.n_experts * expert_params(c),
        shared_experts=swiglu_params(c.dim, c.n_shared_experts * c.expert_dim),
        recurrent_norms=3 * c.dim, injection=injection_params(c),
        lora=(2 * c.dim + c.resolved_max_loops) * c.lora_rank,
        depth_router=c.resolved_max_loops * c.dim if c.capacity_router == "learned" else 0, final_norm=c.dim)


@dataclass
class ParamReport:
    total: int
    embedding: int
    prelude_coda: int
    recurrent: int
    routed_experts: int
    active_per_token: int
    effective_per_token: int
    fwd_flops_per_token: float  # one forward at n_loops
    train_flops_per_token: float  # forward + backward (2x forward where gradients flow; model FLOPs, no recompute;
    # with loop_capacity only the tokens computed)
    recompute_flops_per_token: float  # what activation checkpointing of the loops with gradients adds
    kv_cache_bytes_per_token: int  # bf16 keys/values of each layer and loop (MLA: latent + rope key)


def count(c: ModelConfig, seq_len: int | None = None, n_loops: int | None = None) -> ParamReport:
    """Analytic counts for config ``c`` at sequence length ``seq_len`` (default max_seq_len, capped at 4096
    for FLOPs so the 1M-context presets report a training-length figure) and ``n_loops`` (default mean)."""
    loops = n_loops or c.mean_loops
    seq = seq_len or c.training_seq_len
    p = parts(c)
    inactive = (c.n_experts - c.num_experts_per_tok) * expert_params(c)
    active = p.total - inactive
    rec_active = p.recurrent - inactive
    effective = p.total - p.recurrent + loops * rec_active

    # matmul weights touched per token (norm vectors, LTI vectors and the LoRA scale table
    # excluded; the LM head is a matmul; the depth router's row of the loop)
    n_attn_layers = c.prelude_layers + c.coda_layers + loops
    dense_mm = (c.prelude_layers + c.coda_layers) * dense_block_matmul_params(c)
    rec_mm = (p.recurrent_attention - attention_norm_params(c) + p.router
              + c.num_experts_per_tok * expert_params(c) + p.shared_experts
              + (p.injection if c.injection == "concat" else 0) + 2 * c.dim * c.lora_rank
              + (c.dim if p.depth_router else 0))
    head_mm = c.vocab_size * c.dim
    attn_fwd = attention_fwd_flops_per_token(c, seq)
    loop_fwd = 2 * rec_mm + attn_fwd
    outside_loops = 2 * (dense_mm + head_mm) + (c.prelude_layers + c.coda_layers) * attn_fwd
    fwd = outside_loops + loops * loop_fwd
    # training with loop_capacity c_t computes c_t of the tokens at loop t, and keys/values (with the concat
    # adapter) for every token (and the learned router's ranking score for every token where c_t < 1); past the
    # schedule (deeper than training runs, e.g. an inference depth) its last entry holds
    kv_fwd = 2 * frozen_token_matmul_params(c)
    ranking = 2 * c.dim if p.depth_router else 0
    capacity = (c.loop_capacity + c.loop_capacity[-1:] * loops) if c.loop_capacity else (1.0,) * loops
    trained_loops = [capacity[t] * (loop_fwd - kv_fwd) + kv_fwd for t in range(loops)]
    ranked = [ranking if capacity[t] < 1 else 0 for t in range(loops)]  # no gradient: forward only
    # backward (2x forward) only where gradients flow: truncated BPTT runs the first loops - k without them
    with_grad = min(c.backprop_loops or loops, loops)
    train = 3 * (outside_loops + sum(trained_loops)) - 2 * sum(trained_loops[:loops - with_grad]) + sum(ranked)
    recompute = sum(trained_loops[loops - with_grad:])  # the ranking runs outside each loop's checkpoint
    per_layer_kv = (c.kv_lora_rank + c.qk_rope_head_dim if c.attn_type == "mla"
                    else 2 * c.n_kv_heads * c.resolved_head_dim)
    return ParamReport(total=p.total, embedding=p.embedding, prelude_coda=p.prelude_coda, recurrent=p.recurrent,
                       routed_experts=p.routed_experts, active_per_token=active, effective_per_token=effective,
                       fwd_flops_per_token=fwd, train_flops_per_token=train, recompute_flops_per_token=recompute,
                       kv_cache_bytes_per_token=per_layer_kv * n_attn_layers * BYTES["bf16"])


def forward_flops_per_token(c: ModelConfig, seq_len: int, loops: float, frozen_loops: float = 0.0) -> float:
    """Inference forward FLOPs per token when tokens run ``loops`` recurrent iterations on average (a mean
    over tokens, e.g. under early exit) and sit ``frozen_loops`` iterations on average exited while their batch
    iterates on (:func:`megamythos.model.recurrent.computed_iterations`):

        F = F_1 + (loops - 1) (F_2 - F_1) + frozen_loops * 2 * frozen_token_matmul_params

    with F_n = ``count(c, seq_len, n).fwd_flops_per_token``: linear in the loop count, plus the keys/values (and
    the concat adapter) an exited token's frozen state is multiplied through at each such iteration."""
    one, two = (count(c, seq_len, n).fwd_flops_per_token for n in (1, 2))
    return one + (loops - 1) * (two - one) + frozen_loops * 2 * frozen_token_matmul_params(c)
