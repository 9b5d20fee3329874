"""Autoregressive generation with a KV cache, free loop count and optional per-token early exit (state convergence).

    python -m megamythos.inference.generate --load runs/tiny/checkpoints --prompt "def main(" --max-new-tokens 64 \\
        [--loops N] [--temperature 0.8] [--top-k 50] [--top-p 0.95] [--seed 0] [--exit-threshold 0.1] [--tokenizer PATH]

``--load`` takes a checkpoint tag directory, a ``--save`` directory (its ``latest`` tag) or an export directory.
The prompt and then the continuation are streamed to stdout as tokens arrive; generation stops at
``--max-new-tokens``, the tokenizer's eos, or the model's context (``max_seq_len`` positions, prompt included:
the model never saw a position past it in training, so a longer ``--max-new-tokens`` stops there with one warning
line, and a prompt longer than the context is refused). A JSON line with tokens/s, the mean loop count executed
per token and the forward FLOPs per token that implies goes to stderr. The same model, prompt, options and
``--seed`` give the same text.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from megamythos.errors import ArgumentParser, number, run_cli
from megamythos.inference.loading import LoadError, load_model
from megamythos.model.config import ModelConfig
from megamythos.model.lm import ModelKVCache, MythosLM
from megamythos.runtime.device import resolve_device
from megamythos.runtime.host_memory import keep_freed_memory

logger = logging.getLogger(__name__)


@dataclass
class SamplingConfig:
    """temperature 0 means greedy; top_k 0 and top_p 1 disable those filters."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    n_loops: int | None = None
    exit_threshold: float | None = None  # > 0: a token exits once its state's relative change falls below it;
    # 0: every loop; None: the model config's exit_threshold
    absorb: bool = True
    eos_id: int | None = None
    vocab_limit: int | None = None  # ids from here on are never sampled: a padded vocabulary's, past the tokenizer's

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 0")
        if self.n_loops is not None and self.n_loops < 1:
            raise ValueError(f"n_loops={self.n_loops} must be >= 1 (None: the model config's mean_loops)")
        if not self.temperature >= 0:  # NaN too
            raise ValueError(f"temperature={self.temperature} must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must lie in (0, 1]")
        if self.exit_threshold is not None and not self.exit_threshold >= 0:
            raise ValueError(f"exit_threshold={self.exit_threshold} must be >= 0")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0")


@dataclass
class GenerationStats:
    loops_per_token: list[float] = field(default_factory=list)

    @property
    def mean_loops(self) -> float:
        return sum(self.loops_per_token) / max(len(self.loops_per_token), 1)


def sample_next(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None) -> torch.Tensor:
    """logits [B, V] -> next token ids [B] with temperature, top-k and nucleus (top-p) filtering. The logits are
    shifted by their maximum before the division (softmax is shift-invariant) and divided by at least fp32's
    smallest normal number, so that a temperature near 0 samples the greedy token instead of overflowing. Only the
    first ``cfg.vocab_limit`` ids are candidates."""
    logits = logits[:, :cfg.vocab_limit]
    if cfg.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float()
    temperature = max(cfg.temperature, torch.finfo(torch.float32).tiny)
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / temperature
    if cfg.top_k:
        kth = logits.topk(min(cfg.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs > cfg.top_p  # keep the smallest prefix reaching top_p
        logits = logits.scatter(1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


def new_token_limit(max_seq_len: int, prompt_tokens: int, max_new_tokens: int) -> int:
    """How many of ``max_new_tokens`` fit the context: prompt plus new tokens stay within ``max_seq_len``
    positions. A prompt longer than the context raises :class:`LoadError`."""
    if prompt_tokens > max_seq_len:
        raise LoadError(f"--prompt is {prompt_tokens} tokens but the model's context is {max_seq_len} positions "
                        "(max_seq_len); shorten the prompt")
    return min(max_new_tokens, max_seq_len - prompt_tokens)


def left_pad(prompts: Sequence[Sequence[int] | torch.Tensor], pad_id: int = 0,
             device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts of different lengths -> (ids [B, S] left-padded with ``pad_id``, attention_mask [B, S]: 1 at the
    prompts' tokens, 0 at the padding), S the longest prompt: what :func:`generate` takes for a mixed batch."""
    rows = [torch.as_tensor(p, dtype=torch.long, device=device).flatten() for p in prompts]
    if not rows or min(len(r) for r in rows) == 0:
        raise ValueError("left_pad needs at least one prompt, each of at least one token")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, width - len(row):], mask[i, width - len(row):] = row, 1
    return ids, mask


def check_left_padded(prompt_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
    """Generation continues each row from its last token: ``attention_mask`` must have the prompts' shape and
    mark every row's last token real (left padding). One host sync."""
    if attention_mask.shape != prompt_ids.shape:
        raise ValueError(f"attention_mask of shape {list(attention_mask.shape)} must have the prompts' shape "
                         f"{list(prompt_ids.shape)}")
    if not bool(attention_mask[:, -1].bool().all()):
        raise ValueError("attention_mask marks a prompt's last token as padding: pad the prompts on the left "
                         "(left_pad), so that each row continues from its own last token")


@torch.no_grad()
def generate_stream(model: MythosLM, prompt_ids: torch.Tensor, cfg: SamplingConfig,
                    generator: torch.Generator | None = None, stats: GenerationStats | None = None,
                    attention_mask: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
    """Yield next-token ids [B] one step at a time for prompt_ids [B, S]: at most ``cfg.max_new_tokens``, and no
    more than fit the model's context (:func:`new_token_limit`). A row that has sampled ``cfg.eos_id`` yields
    ``eos_id`` from then on (as transformers pads a finished row); the stream ends when every row has.

    Prompts of different lengths come left-padded with their ``attention_mask`` [B, S] (1 = real, 0 = padding;
    :func:`left_pad`): each row then generates what it would alone. The mask grows by a real column per step.

    The prompt is prefilled in one forward; each new token then runs one cached forward. With MLA the cache
    holds the kv latent and the shared RoPE key only, and ``absorb`` decodes in latent space.
    """
    steps = new_token_limit(model.config.max_seq_len, prompt_ids.shape[1], cfg.max_new_tokens)
    if attention_mask is not None:
        check_left_padded(prompt_ids, attention_mask)
    was_training = model.training
    model.eval()
    try:
        n_loops = cfg.n_loops or model.config.mean_loops
        cache = ModelKVCache(model.config, n_loops)
        out = model(prompt_ids, cache=cache, absorb=cfg.absorb, exit_threshold=cfg.exit_threshold,
                    attention_mask=attention_mask)
        finished = torch.zeros(prompt_ids.shape[0], dtype=torch.bool, device=prompt_ids.device)
        for _ in range(steps):
            if stats is not None:
                stats.loops_per_token.append(float(out.stats["depth"][:, -1].mean()))  # the newest token's loops
            token = sample_next(out.logits[:, -1], cfg, generator)
            if cfg.eos_id is not None:
                token = token.masked_fill(finished, cfg.eos_id)
                finished |= token == cfg.eos_id
            yield token
            if bool(finished.all()):
                return
            if attention_mask is not None:
                attention_mask = torch.cat((attention_mask, attention_mask.new_ones(attention_mask.shape[0], 1)), 1)
            out = model(token[:, None], cache=cache, absorb=cfg.absorb, exit_threshold=cfg.exit_threshold,
                        attention_mask=attention_mask)
    finally:
        model.train(was_training)


def generate(model: MythosLM, prompt_ids: torch.Tensor, cfg: SamplingConfig,
             generator: torch.Generator | None = None,
             attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, GenerationStats]:
    """prompt_ids [B, S] -> (prompt followed by the generated ids [B, S + n], stats); prompts of different
    lengths left-padded with their ``attention_mask`` (:func:`left_pad`), the padding kept in the result."""
    stats = GenerationStats()
    new = list(generate_stream(model, prompt_ids, cfg, generator, stats, attention_mask))
    if not new:
        return prompt_ids, stats
    return torch.cat((prompt_ids, torch.stack(new, dim=1)), dim=1), stats


class TextStreamer:
    """Text chunks of a growing id sequence: each :meth:`push` returns what the new token adds to the decoded text.

    Decoding the whole sequence each time keeps multi-token characters and SentencePiece spacing right; a trailing
    U+FFFD (an incomplete UTF-8 byte sequence under byte fallback) is held back until later tokens complete it.
    """

    def __init__(self, decode: Callable[[list[int]], str], prompt_ids: Sequence[int]) -> None:
        self.decode = decode
        self.ids = list(prompt_ids)
        self.shown = decode(self.ids)

    def _advance(self, hold_incomplete: bool) -> str:
        text = self.decode(self.ids)
        if not text.startswith(self.shown):  # the new token rewrote held-back bytes: wait for more
            return ""
        end = len(text.rstrip("\ufffd")) if hold_incomplete else len(text)
        new = text[len(self.shown):end]
        self.shown += new
        return new

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        return self._advance(hold_incomplete=True)

    def flush(self) -> str:
        """Whatever was held back (call once generation ended)."""
        return self._advance(hold_incomplete=False)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(prog="python -m megamythos.inference.generate", description=__doc__)
    p.add_argument("--load", required=True, help="checkpoint tag dir, --save dir (uses `latest`) or export dir")
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--loops", type=number(int, 1), help="recurrent iterations per token (default: the trained mean)")
    p.add_argument("--max-new-tokens", type=number(int, 0), default=SamplingConfig.max_new_tokens,
                   help="stop after this many tokens, at eos, or when prompt + new tokens fill the model's context "
                        "(max_seq_len; a warning says when that cut --max-new-tokens short)")
    p.add_argument("--temperature", type=number(float, 0), default=SamplingConfig.temperature, help="0 = greedy")
    p.add_argument("--top-k", type=number(int, 0), default=SamplingConfig.top_k, help="0 = off")
    p.add_argument("--top-p", type=number(float, 0, 1, low_open=True), default=SamplingConfig.top_p, help="1 = off")
    p.add_argument("--seed", type=number(int, 0, 2**63 - 1), default=0, help="sampling seed (same seed, same text)")
    p.add_argument("--exit-threshold", type=float,
                   help="early exit: a token stops iterating once ||h_{t+1} - h_t|| / ||h_{t+1}|| falls below this; "
                        "0 = run every loop (default: the checkpoint config's exit_threshold, "
                        f"{ModelConfig.exit_threshold:g} unless trained with --override exit_threshold=...)")
    p.add_argument("--tokenizer", help="tokenizer .model (must be the one the model was trained with)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    args = p.parse_args(argv)
    if args.exit_threshold is not None and not args.exit_threshold >= 0:  # NaN too
        p.error(f"--exit-threshold must be >= 0 (0 = every loop), got {args.exit_threshold:g}")
    return args


def run(args: argparse.Namespace) -> dict[str, float]:
    """Stream the prompt and its continuation to stdout; returns the generation statistics."""
    if resolve_device(args.device).type == "cpu":  # before the first tensors
        logger.info("host memory: %s", keep_freed_memory())
    loaded = load_model(args.load, args.tokenizer, args.device)
    prompt_ids = loaded.tokenizer.encode_one(args.prompt)
    if not prompt_ids:
        raise LoadError("--prompt is empty: give at least one character to continue")
    if args.loops is not None and args.loops < 1:
        raise LoadError(f"--loops must be >= 1, got {args.loops}")
    try:
        cfg = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                             top_p=args.top_p, n_loops=args.loops, exit_threshold=args.exit_threshold,
                             eos_id=loaded.tokenizer.eos_id, vocab_limit=loaded.tokenizer.vocab_size)
    except ValueError as err:
        raise LoadError(f"bad sampling option: {err}") from err
    max_seq_len = loaded.config.max_seq_len
    fits = new_token_limit(max_seq_len, len(prompt_ids), cfg.max_new_tokens)
    if fits < cfg.max_new_tokens:
        logger.warning("--max-new-tokens %d runs past the model's context of %d positions (prompt %d tokens): "
                       "stopping after %d new tokens", cfg.max_new_tokens, max_seq_len, len(prompt_ids), fits)
    generator = torch.Generator(args.device).manual_seed(args.seed)
    streamer, stats = TextStreamer(loaded.tokenizer.decode, prompt_ids), GenerationStats()
    sys.stdout.write(streamer.shown)
    start = time.perf_counter()
    prompt = torch.tensor([prompt_ids], device=args.device)
    for token in generate_stream(loaded.model, prompt, cfg, generator, stats):
        sys.stdout.write(streamer.push(int(token[0])))
        sys.stdout.flush()
    sys.stdout.write(streamer.flush() + "\n")
    seconds = time.perf_counter() - start
    n = len(stats.loops_per_token)
    return {"prompt_tokens": len(prompt_ids), "new_tokens": n, "seconds": seconds, "tokens_per_s": n / seconds,
            "mean_loops": stats.mean_loops if n else None, "loops": cfg.n_loops or loaded.config.mean_loops,
            "exit_threshold": loaded.config.exit_threshold if cfg.exit_threshold is None else cfg.exit_threshold,
            "forward_flops_per_token": (loaded.model.forward_flops_per_token(len(prompt_ids) + n, stats.mean_loops)
                                        if n else None)}  # no token generated: no loops run


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, generate, report statistics on stderr; user errors exit 2 with one line on stderr."""
    def go() -> int:
        print(json.dumps(run(parse_args(argv))), file=sys.stderr, flush=True)
        return 0

    return run_cli(go)


if __name__ == "__main__":
    sys.exit(main())
