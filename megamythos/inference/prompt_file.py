"""The prompts of ``generate --prompt-file FILE`` and the batches they run in.

``FILE`` ending in ``.jsonl`` (in any case) holds one JSON object per line with the prompt under ``"prompt"`` (a
prompt may then span lines: ``"def main():\\n    "``); any other file holds one prompt per line, its newline not
part of it. Every line is a prompt: a blank line, an empty ``"prompt"`` or an empty file is refused (naming the
line), so that the n-th result always belongs to the n-th line.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from megamythos.inference.loading import LoadError

PROMPT_KEY = "prompt"  # of each .jsonl line


@dataclass(frozen=True)
class Prompt:
    """One prompt of the file and the (1-based) line it came from."""

    line: int
    text: str


def _jsonl_prompt(path: Path, line: int, text: str) -> str:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise LoadError(f"--prompt-file {path} line {line} is not valid JSON ({err}); give one object "
                        f'{{"{PROMPT_KEY}": "..."}} per line') from err
    prompt = record.get(PROMPT_KEY) if isinstance(record, dict) else None
    if not isinstance(prompt, str):
        raise LoadError(f'--prompt-file {path} line {line} has no string "{PROMPT_KEY}"; give one object '
                        f'{{"{PROMPT_KEY}": "..."}} per line')
    return prompt


def read_prompts(path: str | Path) -> list[Prompt]:
    """Every prompt of ``path`` in file order (see the module docstring for the two formats). An unreadable or
    empty file, a line that is not a prompt and an empty prompt raise :class:`LoadError` naming the line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # \r\n and \r read as \n; a byte-order mark dropped
    except (OSError, UnicodeDecodeError) as err:
        raise LoadError(f"--prompt-file {path} cannot be read ({err}); give a UTF-8 text or .jsonl file") from err
    if not text:
        raise LoadError(f"--prompt-file {path} is empty; give one prompt per line")
    lines = text.removesuffix("\n").split("\n")  # not splitlines: a prompt may hold U+2028 and the like
    jsonl = path.suffix.lower() == ".jsonl"  # P.JSONL too: its lines were read as literal JSON text
    prompts = [Prompt(n, _jsonl_prompt(path, n, line) if jsonl else line) for n, line in enumerate(lines, 1)]
    for prompt in prompts:
        if not prompt.text:
            raise LoadError(f"--prompt-file {path} line {prompt.line} is an empty prompt; remove the line or give "
                            "text to continue (every line is one prompt)")
    return prompts


def plan_batches(lengths: Sequence[int], batch_size: int, max_seq_len: int, max_new_tokens: int) -> list[range]:
    """Consecutive index ranges of prompts of ``lengths`` tokens, at most ``batch_size`` each, in which every
    prompt gets the new tokens it would get alone: ``min(max_new_tokens, max_seq_len - length)``.

    A left-padded batch of width S (its longest prompt) generates at most ``max_seq_len - S`` tokens, so a shorter
    prompt joins a longer one only where that does not cut it short: ``max_seq_len - S >= max_new_tokens``, or
    every prompt of the batch has length S. Otherwise it starts the next batch."""
    batches: list[range] = []
    start = 0
    for i in range(1, len(lengths) + 1):
        if i < len(lengths) and i - start < batch_size:
            members = lengths[start:i + 1]
            if max_seq_len - max(members) >= max_new_tokens or min(members) == max(members):
                continue
        batches.append(range(start, i))
        start = i
    return batches
