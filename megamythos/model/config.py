"""Model configuration: one validated dataclass, JSON round-trip, and the named presets.

Every field is checked in ``__post_init__``; a bad value raises :class:`ConfigError` naming the field,
the value and what is allowed, so a typo in a JSON file fails before any tensor is allocated.
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megamythos.errors import UserError, read_json_object


class ConfigError(UserError, ValueError):
    """A configuration field holds a value the model cannot use."""


# what to do about a broken model config file (a checkpoint tag's model_config.json included)
CONFIG_FILE_REMEDY = ("it must hold the ModelConfig fields as one JSON object (ModelConfig.to_json writes one); "
                      "restore it, or use another checkpoint tag")


def _capacity_schedule(value: Any) -> tuple[float, ...]:
    """``loop_capacity`` as given (a tuple, a JSON list or an override's "1,1,0.5") -> a tuple of floats."""
    items = value.split(",") if isinstance(value, str) else (value,) if isinstance(value, (int, float)) else value
    try:
        return tuple(float(x) for x in items if not (isinstance(x, str) and not x.strip()))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"ModelConfig.loop_capacity={value!r} is invalid: give numbers such as 1,1,0.5") from err


def _is_number(value: Any) -> bool:
    """An int or float, not a bool (True is an int to Python, never a width or a rate here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require(ok: bool, field_name: str, value: Any, what: str) -> None:
    if not ok:
        raise ConfigError(f"ModelConfig.{field_name}={value!r} is invalid: {what}")


# bf16 has 8 significant bits: the largest bf16 value below 1.0 is 1 - 2**-8. A decay margin of at least this
# keeps the clamped A-bar below 1.0 after rounding to bf16 (a margin of 2**-9 or less rounds it to exactly 1.0
# and voids the contraction guarantee; those in between round to 1 - 2**-8, so the bound is conservative).
BF16_MIN_DECAY_MARGIN = 2.0 ** -8


@dataclass
class ModelConfig:
    """Hyper-parameters of :class:`megamythos.model.lm.MythosLM`.

    Shapes used in docstrings: B batch, S sequence, H = ``dim``, E = ``n_experts``, K = ``num_experts_per_tok``,
    F = ``expert_dim``, T = loop count.
    """

    # vocabulary and width
    vocab_size: int = 32000
    dim: int = 256
    max_seq_len: int = 512
    tie_embeddings: bool = True
    norm_eps: float = 1e-6
    init_std: float = 0.02

    # attention
    attn_type: str = "mla"  # "mla" (DeepSeek-V2 latent attention) or "gqa"
    n_heads: int = 8
    n_kv_heads: int = 2  # GQA only
    head_dim: int = 0  # GQA only; 0 -> dim // n_heads
    q_lora_rank: int = 64  # MLA; 0 -> full-rank query projection
    kv_lora_rank: int = 32  # MLA latent width cached per token
    qk_rope_head_dim: int = 16  # MLA: width of the ONE shared decoupled RoPE key
    qk_nope_head_dim: int = 32
    v_head_dim: int = 32
    rope_theta: float = 10000.0

    # depth: Prelude (dense, once) -> Recurrent block (shared, T times) -> Coda (dense, once)
    prelude_layers: int = 1
    coda_layers: int = 1
    ffn_dim: int = 0  # dense SwiGLU width of prelude/coda; 0 -> 8/3 * dim rounded up to 64
    mean_loops: int = 4  # trained mean recurrence depth (before sampled counts are clipped at max_loops)
    max_loops: int = 0  # cap on sampled depth and size of per-loop tables; 0 -> 2 * mean_loops
    loop_sigma: float = 0.5  # log-normal sigma of the sampled depth
    sample_depth: bool = True  # training samples each step's loop count; False: every step runs mean_loops
    backprop_loops: int = 0  # truncated BPTT: gradient through the last k iterations; 0 -> all
    # training-time adaptive depth (Mixture-of-Recursions-style, expert-choice): at loop t only the ceil(c_t * S)
    # tokens of each sequence that rank highest by capacity_router (among those still running) are computed,
    # the rest stay frozen; fixed per-loop token counts, so every rank runs the same shapes. c_0 = 1, non-increasing
    # in (0, 1], one entry per loop up to max_loops; e.g. "1,1,0.5,0.5,0.5,0.5,0.25,0.25". Empty: off.
    loop_capacity: tuple[float, ...] = ()
    # what ranks them: "change", the state change at loop t - 1 (no parameters); "learned", MoR's router, a
    # per-loop linear score of the state whose gate 2 sigmoid(score) scales every token's state update (in
    # training and at inference, with or without loop_capacity), so the router learns from the loss
    capacity_router: str = "change"

    # recurrence options
    injection: str = "lti"  # "lti" (stable, default); "additive" and "concat" are study baselines
    state_init: str = "embed"  # "embed": h0 = e; "noise": Huginn-style h0 ~ N(0, noise_std^2)
    noise_std: float = 1.0
    loop_embedding: bool = False  # sinusoidal loop-index signal added to the block input
    loop_embedding_dim: int = 0  # channels carrying it; 0 -> dim // 8
    lora_rank: int = 0  # per-loop LoRA adapter on the block output; 0 disables
    decay_margin: float = 1e-2  # delta: A-bar <= 1 - delta, also after bf16 rounding
    decay_floor: float = 1e-4  # epsilon: A-bar >= epsilon

    # adaptive depth at inference: a token exits once ||h_{t+1} - h_t|| / ||h_{t+1}|| < exit_threshold
    # the default of every inference path (forward in eval mode, generate, evaluate, the Hugging Face wrapper and
    # lm-eval), each overridable per call; 0 = every loop. Training runs every loop and logs where it would exit.
    exit_threshold: float = 0.2

    # mixture of experts in the recurrent block
    n_experts: int = 16
    n_shared_experts: int = 1
    num_experts_per_tok: int = 2
    expert_dim: int = 128
    score_func: str = "softmax"  # "softmax" or "sigmoid"
    route_norm: bool = True  # renormalise the K selected scores to sum to 1
    seq_aux_loss_coef: float = 1e-4  # DeepSeek-V3 sequence-wise balance loss; 0 disables
    router_z_loss_coef: float = 0.0
    expert_bias_update_rate: float = 1e-3  # aux-loss-free bias step (gamma)

    # memory
    checkpoint_loops: bool = False  # torch.utils.checkpoint(use_reentrant=False) per iteration
    # with checkpoint_loops, also checkpoint runs of this many iterations (two-level: O(sqrt k) saved states
    # instead of O(k), for one extra forward of the k iterations under gradient); 0 -> ceil(sqrt(k)), 1 -> off
    loop_checkpoint_segment: int = 1
    checkpoint_dense_blocks: bool = False  # the same for each prelude/coda block in training: keeps its input only

    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes carried through JSON

    def __post_init__(self) -> None:
        positive = ["vocab_size", "dim", "max_seq_len", "n_heads", "mean_loops", "n_experts",
                    "num_experts_per_tok", "expert_dim", "qk_nope_head_dim", "v_head_dim", "qk_rope_head_dim",
                    "kv_lora_rank"]
        for name in positive:
            value = getattr(self, name)
            _require(isinstance(value, int) and not isinstance(value, bool) and value > 0, name, value,
                     "must be a positive integer")
        non_negative = ["n_kv_heads", "head_dim", "q_lora_rank", "prelude_layers", "coda_layers", "ffn_dim",
                        "max_loops", "backprop_loops", "loop_embedding_dim", "lora_rank", "n_shared_experts",
                        "loop_checkpoint_segment"]
        for name in non_negative:
            value = getattr(self, name)
            _require(isinstance(value, int) and not isinstance(value, bool) and value >= 0, name, value,
                     "must be a non-negative integer")
        for name in (f.name for f in dataclasses.fields(self) if f.type == "bool"):  # a JSON "false" is truthy
            _require(isinstance(getattr(self, name), bool), name, getattr(self, name), "must be true or false")
        _require(isinstance(self.extra, dict), "extra", self.extra, "must be a dict (free-form notes)")
        for name in ("decay_margin", "decay_floor"):
            _require(_is_number(getattr(self, name)), name, getattr(self, name), "must be a number")
        _require(self.attn_type in ("mla", "gqa"), "attn_type", self.attn_type, "choose 'mla' or 'gqa'")
        _require(self.injection in ("lti", "additive", "concat"), "injection", self.injection,
                 "choose 'lti', 'additive' or 'concat'")
        _require(self.state_init in ("embed", "noise"), "state_init", self.state_init,
                 "choose 'embed' or 'noise'")
        _require(self.score_func in ("softmax", "sigmoid"), "score_func", self.score_func,
                 "choose 'softmax' or 'sigmoid'")
        _require(self.num_experts_per_tok <= self.n_experts, "num_experts_per_tok", self.num_experts_per_tok,
                 f"top-k cannot exceed n_experts={self.n_experts}")
        if self.attn_type == "gqa":
            _require(self.n_kv_heads > 0 and self.n_heads % self.n_kv_heads == 0, "n_kv_heads", self.n_kv_heads,
                     f"must divide n_heads={self.n_heads}")
            _require(self.head_dim > 0 or self.dim % self.n_heads == 0, "head_dim", self.head_dim,
                     f"0 needs dim={self.dim} divisible by n_heads={self.n_heads}")
            _require(self.resolved_head_dim % 2 == 0, "head_dim", self.resolved_head_dim, "RoPE needs an even width")
        _require(self.qk_rope_head_dim % 2 == 0, "qk_rope_head_dim", self.qk_rope_head_dim, "RoPE needs an even width")
        _require(self.max_loops == 0 or self.max_loops >= self.mean_loops, "max_loops", self.max_loops,
                 f"must be 0 or >= mean_loops={self.mean_loops}")
        self.loop_capacity = _capacity_schedule(self.loop_capacity)
        capacity = self.loop_capacity
        _require(not capacity or (capacity[0] == 1.0 and all(0 < c <= 1 for c in capacity)
                                  and all(a >= b for a, b in zip(capacity, capacity[1:]))),
                 "loop_capacity", self.loop_capacity,
                 "must be non-increasing numbers in (0, 1] starting at 1 (a token's state change, which ranks "
                 "the tokens, exists only after its first loop), e.g. 1,1,0.5,0.25; empty: off")
        _require(not capacity or len(capacity) >= self.resolved_max_loops, "loop_capacity", self.loop_capacity,
                 f"needs one entry per loop up to max_loops={self.resolved_max_loops} (the most loops a training "
                 "step samples)")
        _require(self.capacity_router in ("change", "learned"), "capacity_router", self.capacity_router,
                 "choose 'change' (the state change ranks the tokens) or 'learned' (a learned router)")
        _require(self.backprop_loops <= self.resolved_max_loops, "backprop_loops", self.backprop_loops,
                 f"cannot exceed max_loops={self.resolved_max_loops}")
        _require(BF16_MIN_DECAY_MARGIN <= self.decay_margin < 1.0, "decay_margin", self.decay_margin,
                 "must lie in [2**-8, 1): the bound 1 - delta may not exceed 1 - 2**-8, the largest bf16 below 1")
        _require(0.0 < self.decay_floor < 1.0 - self.decay_margin, "decay_floor", self.decay_floor,
                 "must lie in (0, 1 - decay_margin)")
        for name in ("exit_threshold", "seq_aux_loss_coef", "router_z_loss_coef", "expert_bias_update_rate",
                     "noise_std", "loop_sigma"):
            value = getattr(self, name)
            _require(_is_number(value) and math.isfinite(value) and value >= 0, name, value,
                     "must be a finite number >= 0")
        for name in ("norm_eps", "init_std", "rope_theta"):
            value = getattr(self, name)
            _require(_is_number(value) and math.isfinite(value) and value > 0, name, value,
                     "must be a finite number > 0")
        if self.loop_embedding:
            _require(0 < self.resolved_loop_embedding_dim <= self.dim and self.resolved_loop_embedding_dim % 2 == 0,
                     "loop_embedding_dim", self.loop_embedding_dim, f"must be even and at most dim={self.dim}")

    # ------------------------------------------------------------------ derived sizes
    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.dim // self.n_heads

    @property
    def resolved_ffn_dim(self) -> int:
        return self.ffn_dim or 64 * math.ceil(8 * self.dim / 3 / 64)

    @property
    def training_seq_len(self) -> int:
        """The training length where none is given (the planner, FLOP counts, GPU launches): ``max_seq_len``
        capped at 4096, so the 1M-context presets train and are planned at 4096."""
        return min(self.max_seq_len, 4096)

    @property
    def resolved_max_loops(self) -> int:
        return self.max_loops or 2 * self.mean_loops

    @property
    def resolved_loop_embedding_dim(self) -> int:
        return self.loop_embedding_dim or max(2, (self.dim // 8) // 2 * 2)

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    def training_refusal(self) -> str | None:
        """Why the trainer refuses this model, which loads all the same (models trained so before must stay
        readable), or None; the planner refuses it with the same line. Either refusal is a routed weight of 1
        whatever the scores, so the router would get no gradient from the loss: top-1 routing with ``route_norm``
        (the one weight renormalised), or one routed expert scored by softmax (a softmax over one logit is 1)."""
        if self.route_norm and self.num_experts_per_tok == 1:
            return ("top-1 routing (num_experts_per_tok=1) with route_norm=true: renormalising the one routed weight "
                    "makes it 1, so the router would get no gradient from the loss; pass --override route_norm=false")
        if self.n_experts == 1 and self.score_func == "softmax":
            return ("one routed expert (n_experts=1) with score_func=softmax: a softmax over one expert is 1, so the "
                    "router would get no gradient from the loss; pass --override score_func=sigmoid (a gated expert) "
                    "or more experts")
        return None

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"ModelConfig has no field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_json(cls, path_or_text: str | Path, remedy: str = CONFIG_FILE_REMEDY) -> ModelConfig:
        """Load from a JSON string (text starting with ``{``) or a JSON file path; a missing, empty or invalid
        file, or one whose fields the model cannot use, raises :class:`ConfigError` naming it (and, but for the
        fields, ``remedy``: what to do about it where the file came from)."""
        text = str(path_or_text)
        if text.lstrip().startswith("{"):
            try:
                return cls.from_dict(json.loads(text))
            except json.JSONDecodeError as err:
                raise ConfigError(f"model config is not valid JSON: {err}") from err
        path = Path(path_or_text)
        if not path.is_file():
            raise ConfigError(f"model config file {path} {'is not a file' if path.exists() else 'does not exist'}; "
                              f"{remedy}")
        data = read_json_object(path, ConfigError, remedy)
        try:
            return cls.from_dict(data)
        except (ConfigError, TypeError) as err:  # TypeError: a value of the wrong JSON type, e.g. "dim": "64"
            raise ConfigError(f"{path}: {err}") from err

    def replace(self, **changes: Any) -> ModelConfig:
        """A validated copy with ``changes`` applied (a field it does not have: :class:`ConfigError` naming it)."""
        return self.from_dict({**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, **changes})


def _scaled(**fields: Any) -> dict[str, Any]:
    """A GPU-scale preset: a 32k vocabulary and RoPE base 1e4 unless ``fields`` say otherwise."""
    return {"vocab_size": 32000, "rope_theta": 10000.0, **fields}


PRESETS: dict[str, dict[str, Any]] = {
    # CPU default: ~8M parameters, trains in minutes on two cores. Truncated backprop through the last 2 loops:
    # the default run's measured recipe (docs/results.md: depth then pays >= 2% and 2x depth is no worse).
    "tiny": dict(vocab_size=8192, dim=256, n_heads=8, n_kv_heads=2, max_seq_len=512, mean_loops=4,
                 prelude_layers=1, coda_layers=1, kv_lora_rank=64, q_lora_rank=128, qk_rope_head_dim=16,
                 qk_nope_head_dim=32, v_head_dim=32, n_experts=16, n_shared_experts=1, num_experts_per_tok=2,
                 expert_dim=256, lora_rank=4, backprop_loops=2),
    # One GPU: ~110M parameters.
    "small": _scaled(dim=768, n_heads=12, n_kv_heads=4, max_seq_len=2048, mean_loops=8,
                     prelude_layers=2, coda_layers=2, kv_lora_rank=256, q_lora_rank=384, qk_rope_head_dim=32,
                     qk_nope_head_dim=64, v_head_dim=64, n_experts=32, n_shared_experts=2, num_experts_per_tok=4,
                     expert_dim=768, lora_rank=8),
    "1b": _scaled(dim=2048, n_heads=16, n_kv_heads=4, max_seq_len=4096, mean_loops=16,
                  prelude_layers=2, coda_layers=2, kv_lora_rank=256, q_lora_rank=512, qk_rope_head_dim=32,
                  qk_nope_head_dim=64, v_head_dim=64, n_experts=64, n_shared_experts=2, num_experts_per_tok=4,
                  expert_dim=2048, lora_rank=8),
    "3b": _scaled(dim=3072, n_heads=24, n_kv_heads=6, max_seq_len=4096, mean_loops=16,
                  prelude_layers=2, coda_layers=2, kv_lora_rank=384, q_lora_rank=768, qk_rope_head_dim=32,
                  qk_nope_head_dim=96, v_head_dim=96, n_experts=64, n_shared_experts=2, num_experts_per_tok=4,
                  expert_dim=4096, lora_rank=8),
    "10b": _scaled(dim=4096, n_heads=32, n_kv_heads=8, max_seq_len=8192, mean_loops=24,
                   prelude_layers=2, coda_layers=2, kv_lora_rank=512, q_lora_rank=1024, qk_rope_head_dim=64,
                   qk_nope_head_dim=128, v_head_dim=128, n_experts=128, n_shared_experts=2, num_experts_per_tok=4,
                   expert_dim=5632, lora_rank=16),
    "50b": _scaled(dim=6144, n_heads=48, n_kv_heads=8, max_seq_len=8192, mean_loops=32,
                   prelude_layers=3, coda_layers=3, kv_lora_rank=512, q_lora_rank=1536, qk_rope_head_dim=64,
                   qk_nope_head_dim=128, v_head_dim=128, n_experts=256, n_shared_experts=4, num_experts_per_tok=4,
                   expert_dim=9728, lora_rank=32),
    "100b": _scaled(dim=8192, n_heads=64, n_kv_heads=8, max_seq_len=1000000, mean_loops=32,
                    prelude_layers=4, coda_layers=4, kv_lora_rank=512, q_lora_rank=2048, qk_rope_head_dim=64,
                    qk_nope_head_dim=128, v_head_dim=128, n_experts=256, n_shared_experts=4, num_experts_per_tok=8,
                    expert_dim=13568, lora_rank=64, rope_theta=1e6),
    "500b": _scaled(dim=12288, n_heads=96, n_kv_heads=16, max_seq_len=1000000, mean_loops=48,
                    prelude_layers=4, coda_layers=4, kv_lora_rank=1024, q_lora_rank=3072, qk_rope_head_dim=64,
                    qk_nope_head_dim=128, v_head_dim=128, n_experts=512, n_shared_experts=8, num_experts_per_tok=8,
                    expert_dim=23040, lora_rank=128, vocab_size=100000, rope_theta=1e6),
    "1t": _scaled(dim=16384, n_heads=128, n_kv_heads=16, max_seq_len=1000000, mean_loops=64,
                  prelude_layers=6, coda_layers=6, kv_lora_rank=1024, q_lora_rank=4096, qk_rope_head_dim=64,
                  qk_nope_head_dim=128, v_head_dim=128, n_experts=512, n_shared_experts=8, num_experts_per_tok=8,
                  expert_dim=34560, lora_rank=256, vocab_size=100000, rope_theta=2e6),
}
DEFAULT_PRESET = "tiny"  # the trainer's and the planner's --preset


def parse_override(text: str) -> tuple[str, Any]:
    """``FIELD=VALUE`` -> (field, value); VALUE becomes a bool (true/false), int, float or stays a string.

    The one parser of model-field overrides on every command line (the trainer's ``--override``, the
    benchmarks' ``--set``); :meth:`ModelConfig.from_dict` then checks the field name and the value.
    """
    key, sep, raw = text.partition("=")
    if not (sep and key):
        raise ConfigError(f"expected FIELD=VALUE, got {text!r}")
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return key, lowered == "true"
    for cast in (int, float):
        try:
            return key, cast(raw)
        except ValueError:
            pass
    return key, raw


def field_overrides(items: Sequence[str], aliases: Mapping[str, Any]) -> dict[str, Any]:
    """The model fields a command line sets: each ``--override FIELD=VALUE`` of ``items`` (the last of a field
    wins) and each flag that aliases a field (``aliases``: field -> the flag's value, None where not given; the
    trainer's ``--mean-loops`` for ``mean_loops``). The trainer's reading, which the planner applies to the trainer
    flags it prints; a malformed item, or a flag and an ``--override`` that set one field to two values, raises
    :class:`ConfigError` in one line."""
    try:
        fields = dict(parse_override(item) for item in items)
    except ConfigError as err:
        raise ConfigError(f"--override: {err}") from err
    for name, value in aliases.items():
        if value is not None and fields.setdefault(name, value) != value:
            raise ConfigError(f"--{name.replace('_', '-')} {value} and --override {name}={fields[name]} set the "
                              "same field to different values; give one")
    return fields


def get_preset(name: str, **overrides: Any) -> ModelConfig:
    """The named preset as a validated :class:`ModelConfig`, with ``overrides`` applied."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return ModelConfig.from_dict({**PRESETS[name], **overrides})
