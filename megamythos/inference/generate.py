"""Autoregressive generation with a KV cache, free loop count and optional per-token early exit (state convergence).

    python -m megamythos.inference.generate --load runs/tiny/checkpoints --prompt "def main(" --max-new-tokens 64 \\
        [--loops N] [--temperature 0.8] [--top-k 50] [--top-p 0.95] [--seed 0] [--exit-threshold 0.1] [--tokenizer PATH]
    python -m megamythos.inference.generate --load runs/tiny/checkpoints --prompt-file prompts.jsonl \\
        [--batch-size 8] [--out results.jsonl [--overwrite]] [the options above]

``--load`` takes a checkpoint tag directory, a ``--save`` directory (its ``latest`` tag) or an export directory.
The prompt and then the continuation are streamed to stdout as tokens arrive; generation stops at
``--max-new-tokens``, the tokenizer's eos, or the model's context (``max_seq_len`` positions, prompt included:
the model never saw a position past it in training, so a longer ``--max-new-tokens`` stops there with one warning
line, and a prompt that fills the context, ``max_seq_len`` tokens or more, is refused: no room for a new token, the
rule of the Hugging Face export's ``generate()``). A JSON line with tokens/s, the mean loop count executed
per token and the forward FLOPs per token that implies goes to stderr. The same model, prompt, options and
``--seed`` give the same text.

``--prompt-file`` continues many prompts, ``--batch-size`` at a time in left-padded batches: one prompt per line,
or, for a ``.jsonl`` file (any case), one ``{"prompt": "..."}`` per line (a prompt with newlines). Every line is a
prompt (a blank one is refused, naming its line). Out comes one JSON line per prompt, in file order, to stdout or to
``--out`` (written under a temporary name and renamed once complete; an existing file is replaced only with
``--overwrite``): ``{"line", "prompt", "completion", "new_tokens", "stop"}``, ``new_tokens`` counting the eos
that ended it and ``stop`` one of ``eos``, ``max_tokens``, ``context``. The stderr line covers the whole run.
Greedy text (``--temperature 0``) equals the prompt's ``--prompt`` text, with or without the exit rule; sampled
text is reproducible for one file, ``--batch-size`` and ``--seed``, but depends on the batch size (a batch draws
its rows from one generator), so it differs from ``--prompt``'s.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from megamythos.data.atomic import OutputError, atomic_open, writable_parent
from megamythos.data.tokenizer import check_model_file
from megamythos.errors import ArgumentParser, checked_by, number, path_text, run_cli, utf8_text
from megamythos.inference.loading import LoadedModel, LoadError, load_model
from megamythos.inference.prompt_file import Prompt, plan_batches, read_prompts
from megamythos.model.config import ModelConfig
from megamythos.model.lm import ModelKVCache, MythosLM
from megamythos.model.sampling import SamplingConfig
from megamythos.runtime.device import default_device, resolve_device
from megamythos.runtime.host_memory import keep_freed_memory

logger = logging.getLogger(__name__)


@dataclass
class GenerationStats:
    """Per step t of a batch of B rows: ``row_loops[t]`` [B] the loops each row's token executed (a finished row's
    too), ``generating[t]`` [B] bool whether the row was still generating: a row that sampled eos at an earlier
    step yields eos as padding from then on, and its loops are no generated token's."""

    row_loops: list[torch.Tensor] = field(default_factory=list)
    generating: list[torch.Tensor] = field(default_factory=list)

    @property
    def loops_per_token(self) -> list[float]:
        """Per step, the loops executed averaged over the rows still generating (every step has one)."""
        return [float(loops[live].mean()) for loops, live in zip(self.row_loops, self.generating)]

    @property
    def mean_loops(self) -> float:
        """Loops executed per generated token: sum over the rows' generated tokens (each eos included, the
        padding after it not) / their number; 0 when none was generated."""
        tokens = sum(int(live.sum()) for live in self.generating)
        return sum(float(loops[live].sum()) for loops, live in zip(self.row_loops, self.generating)) / max(tokens, 1)


def candidates(logits: torch.Tensor, vocab_limit: int | None) -> torch.Tensor:
    """logits [B, V] -> fp32 logits [B, V], -inf from id ``vocab_limit`` on (a padded vocabulary's ids, which the
    tokenizer cannot decode: what transformers' ``suppress_tokens`` does in the Hugging Face export)."""
    logits = logits.float()
    if vocab_limit is None or vocab_limit >= logits.shape[-1]:
        return logits
    padding = torch.arange(vocab_limit, logits.shape[-1], device=logits.device)
    return logits.index_fill(-1, padding, float("-inf"))


def sampling_logits(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """logits [B, V] -> fp32 logits [B, V] whose softmax is the distribution :func:`sample_next` draws from at
    ``cfg.temperature`` > 0 (-inf where a token is filtered out), computed as transformers' ``generate()`` computes
    its scores, to the bit: the ids from ``cfg.vocab_limit`` on suppressed (:func:`candidates`), logits / temperature
    (``TemperatureLogitsWarper``), then the ``top_k`` largest kept with every tie of the k-th
    (``TopKLogitsWarper``), then nucleus (top-p) filtering (``TopPLogitsWarper``): the least likely tokens whose
    probabilities total at most ``1 - top_p`` are dropped, the most likely always stays, so a token whose more
    likely ones already hold exactly ``top_p`` is dropped. A row whose maximum the division overflows (a temperature
    near 0: to +inf, or to -inf where every logit is negative; transformers' probabilities turn NaN) is instead
    shifted by its maximum (softmax is shift-invariant) and divided by at least fp32's smallest normal number: it
    samples its greedy token."""
    logits = candidates(logits, cfg.vocab_limit)
    scaled = logits / cfg.temperature
    shifted = (logits - logits.max(dim=-1, keepdim=True).values) / max(cfg.temperature, torch.finfo(torch.float32).tiny)
    logits = torch.where(scaled.amax(dim=-1, keepdim=True).isfinite(), scaled, shifted)  # +inf, or all -inf: NaN
    if cfg.top_k:
        kth = logits.topk(min(cfg.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1)  # ascending
        drop = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= 1 - cfg.top_p  # least likely, total <= 1 - top_p
        drop[:, -1] = False  # the most likely token always stays
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None) -> torch.Tensor:
    """logits [B, V] -> next token ids [B]: the most likely candidate (:func:`candidates`) at temperature 0, else a
    draw from the softmax of :func:`sampling_logits` (``torch.multinomial``, as transformers draws)."""
    if cfg.temperature == 0:
        return candidates(logits, cfg.vocab_limit).argmax(dim=-1)
    return torch.multinomial(sampling_logits(logits, cfg).softmax(dim=-1), 1, generator=generator).squeeze(-1)


def new_token_limit(max_seq_len: int, prompt_tokens: int, max_new_tokens: int) -> int:
    """How many of ``max_new_tokens`` fit the context: prompt plus new tokens stay within ``max_seq_len``
    positions. A prompt that fills the context (no room for a new token) raises :class:`LoadError`."""
    if prompt_tokens >= max_seq_len:
        raise LoadError(f"--prompt is {prompt_tokens} tokens but the model's context is {max_seq_len} positions "
                        "(max_seq_len): no room for a new token; shorten the prompt")
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
    ``eos_id`` from then on (transformers pads a finished row with its pad id instead); the stream ends when every
    row has.

    Prompts of different lengths come left-padded with their ``attention_mask`` [B, S] (1 = real, 0 = padding;
    :func:`left_pad`): each row then generates what it would alone. The mask grows by a real column per step.

    The prompt is prefilled in one forward; each new token but the last then runs one cached forward (n new tokens
    take n forwards, the cache ends at prompt + n - 1 positions, within ``max_seq_len``). With MLA the cache
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
        for step in range(steps):
            if stats is not None:
                stats.row_loops.append(out.stats["depth"][:, -1].float())  # the newest token's loops
                stats.generating.append(~finished)
            token = sample_next(out.logits[:, -1], cfg, generator)
            if cfg.eos_id is not None:
                token = token.masked_fill(finished, cfg.eos_id)
                finished |= token == cfg.eos_id
            yield token
            if step == steps - 1 or bool(finished.all()):  # the last token needs no forward: nothing reads it
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
    U+FFFD (an incomplete UTF-8 byte sequence under byte fallback) is held back until later tokens complete it, the
    prompt's own too (prompt ids that end inside a character: the new ids' text starts with that character).
    """

    def __init__(self, decode: Callable[[list[int]], str], prompt_ids: Sequence[int]) -> None:
        self.decode = decode
        self.ids = list(prompt_ids)
        self.shown = decode(self.ids).rstrip("\ufffd")

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


def continuation(decode: Callable[[list[int]], str], prompt_ids: Sequence[int], new_ids: Sequence[int]) -> str:
    """The text ``new_ids`` add to the prompt's: the decoded whole after the prompt's decoded text, or, where the
    new ids complete a character the prompt's ids end inside (its trailing U+FFFD rewritten), after the prompt's
    text without it. A U+FFFD that stays (a character of the prompt's text) is the prompt's, not the new ids'."""
    prompt = decode(list(prompt_ids))
    text = decode([*prompt_ids, *new_ids])
    kept = prompt if text.startswith(prompt) else prompt.rstrip("\ufffd")
    return text[len(kept):] if text.startswith(kept) else ""


@dataclass
class Completion:
    """One row of a batch: its new token ids (up to and with its eos), the loops each executed, why it stopped."""

    new_ids: list[int]
    loops: list[float]
    stop: str  # "eos", "max_tokens" (--max-new-tokens) or "context" (max_seq_len)


def complete_batch(model: MythosLM, prompts: Sequence[Sequence[int]], cfg: SamplingConfig,
                   generator: torch.Generator | None, device: str) -> list[Completion]:
    """Continue ``prompts`` (token ids) in one left-padded batch, each row cut after its eos. A row gets what it
    gets alone as long as the batch's width does not cut it short at the context
    (:func:`~megamythos.inference.prompt_file.plan_batches` groups prompts so)."""
    ids, mask = left_pad(prompts, device=device)
    stats = GenerationStats()
    steps = list(generate_stream(model, ids, cfg, generator, stats, mask))
    if not steps:
        return [Completion([], [], "max_tokens") for _ in prompts]  # --max-new-tokens 0: a prompt leaves room
    new, loops = torch.stack(steps, 1).tolist(), torch.stack(stats.row_loops, 1).tolist()
    done = []
    for row, row_loops in zip(new, loops):
        ended = cfg.eos_id is not None and cfg.eos_id in row
        n = row.index(cfg.eos_id) + 1 if ended else len(row)
        stop = "eos" if ended else "max_tokens" if n == cfg.max_new_tokens else "context"
        done.append(Completion(row[:n], row_loops[:n], stop))
    return done


PROMPT_FILE_BATCH = 8  # --batch-size's default


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(prog="python -m megamythos.inference.generate", description=__doc__)
    p.add_argument("--load", required=True, type=path_text,
                   help="checkpoint tag dir, --save dir (uses `latest`) or export dir")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", type=utf8_text,
                        help="text to continue, streamed with its continuation to stdout")
    source.add_argument("--prompt-file", type=path_text,
                        help="one prompt per line, or a .jsonl file with a \"prompt\" string per line; one JSON "
                             "line of results per prompt, in file order")
    p.add_argument("--batch-size", type=number(int, 1),
                   help=f"--prompt-file: prompts per left-padded batch (default {PROMPT_FILE_BATCH}; sampled text "
                        "depends on it, greedy does not)")
    p.add_argument("--out", type=path_text,
                   help="--prompt-file: write the JSON lines to this file (atomically) instead of stdout")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--loops", type=number(int, 1), help="recurrent iterations per token (default: the trained mean)")
    p.add_argument("--max-new-tokens", type=number(int, 0), default=SamplingConfig.max_new_tokens,
                   help="stop after this many tokens, at eos, or when prompt + new tokens fill the model's context "
                        "(max_seq_len; a warning says when that cut --max-new-tokens short)")
    p.add_argument("--temperature", type=number(float, 0), default=SamplingConfig.temperature, help="0 = greedy")
    p.add_argument("--top-k", type=number(int, 0), default=SamplingConfig.top_k, help="0 = off")
    p.add_argument("--top-p", type=number(float, 0, 1, low_open=True), default=SamplingConfig.top_p, help="1 = off")
    p.add_argument("--seed", type=number(int, 0, 2**63 - 1), default=0,
                   help="sampling seed, also of the initial states a state_init=noise model draws (same seed, "
                        "same text)")
    p.add_argument("--exit-threshold", type=float,
                   help="early exit: a token stops iterating once ||h_{t+1} - h_t|| / ||h_{t+1}|| falls below this; "
                        "0 = run every loop (default: the checkpoint config's exit_threshold, "
                        f"{ModelConfig.exit_threshold:g} unless trained with --override exit_threshold=...)")
    p.add_argument("--tokenizer", type=checked_by(check_model_file, path=True),
                   help="tokenizer .model (must be the one the model was trained with)")
    p.add_argument("--device", default=default_device(), help="cpu or cuda")
    args = p.parse_args(argv)
    if args.exit_threshold is not None and not args.exit_threshold >= 0:  # NaN too
        p.error(f"--exit-threshold must be >= 0 (0 = every loop), got {args.exit_threshold:g}")
    if args.prompt_file is None and (args.out is not None or args.overwrite or args.batch_size is not None):
        p.error("--out, --overwrite and --batch-size are for the results of --prompt-file; --prompt streams one "
                "continuation to stdout")
    if args.batch_size is None:
        args.batch_size = PROMPT_FILE_BATCH
    return args


def check_out(out: str, overwrite: bool) -> None:
    """Refuse an ``--out`` that is a directory, or an existing file without ``--overwrite``."""
    if Path(out).is_dir():
        raise OutputError(f"--out {out} is a directory; give a file path")
    if Path(out).exists() and not overwrite:
        raise OutputError(f"--out {out} exists; pass --overwrite to replace it, or choose another --out")
    writable_parent(out, "--out")


@contextmanager
def results_sink(out: str | None) -> Iterator[Callable[[str], object]]:
    """A writer of result lines: to stdout as they come, or to ``out``, which appears whole once all are written."""
    if out is None:
        def to_stdout(line: str) -> None:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

        yield to_stdout
        return
    with atomic_open(out, "wb") as handle:
        yield lambda line: handle.write(line.encode() + b"\n")


def summary(model: MythosLM, rows: Sequence[tuple[int, list[float]]], seconds: float) -> dict[str, float | None]:
    """Statistics of a run of ``rows`` (prompt tokens, loops executed per new token): tokens/s, the mean loops per
    new token and the forward FLOPs per token they imply (each prompt's at its length, weighted by its tokens)."""
    n = sum(len(loops) for _, loops in rows)
    flops = sum(len(loops) * model.forward_flops_per_token(length + len(loops), sum(loops) / len(loops))
                for length, loops in rows if loops)
    return {"prompt_tokens": sum(length for length, _ in rows), "new_tokens": n, "seconds": seconds,
            "tokens_per_s": n / seconds, "mean_loops": sum(sum(loops) for _, loops in rows) / n if n else None,
            "forward_flops_per_token": flops / n if n else None}  # no token generated: no loops run


def stream_prompt(args: argparse.Namespace, loaded: LoadedModel, cfg: SamplingConfig,
                  generator: torch.Generator) -> list[tuple[int, list[float]]]:
    """Stream ``--prompt`` and its continuation to stdout; returns [(prompt tokens, loops per new token)]."""
    prompt_ids = loaded.tokenizer.encode_one(args.prompt)
    if not prompt_ids:
        raise LoadError("--prompt is empty: give at least one character to continue")
    max_seq_len = loaded.config.max_seq_len
    fits = new_token_limit(max_seq_len, len(prompt_ids), cfg.max_new_tokens)
    if fits < cfg.max_new_tokens:
        logger.warning("--max-new-tokens %d runs past the model's context of %d positions (prompt %d tokens): "
                       "stopping after %d new tokens", cfg.max_new_tokens, max_seq_len, len(prompt_ids), fits)
    streamer, stats = TextStreamer(loaded.tokenizer.decode, prompt_ids), GenerationStats()
    sys.stdout.write(streamer.shown)
    prompt = torch.tensor([prompt_ids], device=args.device)
    for token in generate_stream(loaded.model, prompt, cfg, generator, stats):
        sys.stdout.write(streamer.push(int(token[0])))
        sys.stdout.flush()
    sys.stdout.write(streamer.flush() + "\n")
    return [(len(prompt_ids), [float(loops[0]) for loops in stats.row_loops])]


def encode_prompts(path: str, prompts: Sequence[Prompt], loaded: LoadedModel,
                   max_new_tokens: int) -> list[list[int]]:
    """The token ids of each prompt of ``--prompt-file``; one that encodes to nothing or fills the context (no room
    for a new token, as :func:`new_token_limit`) raises naming its line. One warning names the prompts the context
    cuts short of ``max_new_tokens``."""
    max_seq_len = loaded.config.max_seq_len
    encoded = [loaded.tokenizer.encode_one(prompt.text) for prompt in prompts]
    for prompt, ids in zip(prompts, encoded):
        if not ids:
            raise LoadError(f"--prompt-file {path} line {prompt.line} encodes to no tokens; give text to continue")
        if len(ids) >= max_seq_len:
            raise LoadError(f"--prompt-file {path} line {prompt.line} is {len(ids)} tokens but the model's context "
                            f"is {max_seq_len} positions (max_seq_len): no room for a new token; shorten that prompt")
    cut = [prompt.line for prompt, ids in zip(prompts, encoded) if len(ids) + max_new_tokens > max_seq_len]
    if cut:
        logger.warning("--max-new-tokens %d runs past the model's context of %d positions for %d of %d prompts "
                       "(lines %s): they stop there", max_new_tokens, max_seq_len, len(cut), len(prompts),
                       ", ".join(map(str, cut[:5])) + (", ..." if len(cut) > 5 else ""))
    return encoded


def complete_file(args: argparse.Namespace, prompts: Sequence[Prompt], loaded: LoadedModel, cfg: SamplingConfig,
                  generator: torch.Generator) -> list[tuple[int, list[float]]]:
    """Continue ``prompts`` (those of ``--prompt-file``) in batches of ``--batch-size``; one JSON line per prompt, in
    file order, to stdout or ``--out``. Returns [(prompt tokens, loops per new token)] per prompt."""
    encoded = encode_prompts(args.prompt_file, prompts, loaded, cfg.max_new_tokens)
    rows = []
    with results_sink(args.out) as write:
        for batch in plan_batches([len(ids) for ids in encoded], args.batch_size, loaded.config.max_seq_len,
                                  cfg.max_new_tokens):
            done = complete_batch(loaded.model, [encoded[i] for i in batch], cfg, generator, args.device)
            for i, completion in zip(batch, done):
                text = continuation(loaded.tokenizer.decode, encoded[i], completion.new_ids)
                write(json.dumps({"line": prompts[i].line, "prompt": prompts[i].text, "completion": text,
                                  "new_tokens": len(completion.new_ids), "stop": completion.stop}))
                rows.append((len(encoded[i]), completion.loops))
    return rows


def run(args: argparse.Namespace) -> dict[str, float | None]:
    """Generate for ``--prompt`` or ``--prompt-file``; returns the statistics of the whole run."""
    if args.out is not None:
        check_out(args.out, args.overwrite)  # before loading, not after generating
    prompts = None if args.prompt_file is None else read_prompts(args.prompt_file)  # before the model loads
    if resolve_device(args.device).type == "cpu":  # before the first tensors
        logger.info("host memory: %s", keep_freed_memory())
    loaded = load_model(args.load, args.tokenizer, args.device)
    try:
        cfg = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                             top_p=args.top_p, n_loops=args.loops, exit_threshold=args.exit_threshold,
                             eos_id=loaded.tokenizer.eos_id, vocab_limit=loaded.tokenizer.vocab_size)
    except ValueError as err:
        raise LoadError(f"bad sampling option: {err}") from err
    generator = torch.Generator(args.device).manual_seed(args.seed)
    torch.manual_seed(args.seed)  # a state_init=noise model draws its initial states from torch's default generators
    start = time.perf_counter()
    if prompts is None:
        rows = stream_prompt(args, loaded, cfg, generator)
    else:
        rows = complete_file(args, prompts, loaded, cfg, generator)
    stats = summary(loaded.model, rows, time.perf_counter() - start)
    return {**stats, "prompts": len(rows), "loops": cfg.n_loops or loaded.config.mean_loops,
            "exit_threshold": loaded.config.exit_threshold if cfg.exit_threshold is None else cfg.exit_threshold}


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, generate, report statistics on stderr; user errors exit 2 with one line on stderr."""
    def go() -> int:
        print(json.dumps(run(parse_args(argv))), file=sys.stderr, flush=True)
        return 0

    return run_cli(go)


if __name__ == "__main__":
    sys.exit(main())
