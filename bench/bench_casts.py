"""Weight casts per training step under bf16 autocast: the shared recurrent block with and without the cast cache.

A preset (``small`` by default) at batch 1 x 512 tokens, 4 loops, every loop under gradient and no activation
checkpointing, forward + loss + backward under ``torch.autocast("cpu", bfloat16)`` on fp32 weights (what a user
of the model class switches on). ``cached``: the plain forward, whose recurrent core opens
``megamythos.model.layers.weights_cast_once`` (each weight cast once per forward); ``uncached``: the same with
that cache switched off (``megamythos.model.recurrent.weights_cast_once`` patched to a no-op: each loop casts
again). Step times are interleaved
repetitions in one process (medians); ``aten::copy_`` calls and time come from ``torch.profiler`` on one more
step of each mode, with the costliest copies by input shape:

    OMP_NUM_THREADS=1 PYTHONPATH=. python bench/bench_casts.py --out bench/results/casts_small.json

``--modes uncached`` also runs on a checkout that predates the cache (the "before" figures; nothing to patch there).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import torch

import megamythos.model.recurrent as recurrent
from megamythos.model.config import get_preset
from megamythos.model.lm import MythosLM

Step = Callable[[], None]
MODES = ("uncached", "cached")


def make_step(model: MythosLM, ids: torch.Tensor, loops: int, cached: bool) -> Step:
    """One forward + backward under bf16 autocast; without ``cached`` the recurrent core's cast cache is off
    (``create``: checkouts before the cache have none to patch)."""
    def step() -> None:
        cache = (contextlib.nullcontext() if cached else
                 mock.patch.object(recurrent, "weights_cast_once", contextlib.nullcontext, create=True))
        with torch.autocast("cpu", dtype=torch.bfloat16), cache:
            out = model(ids, labels=ids, n_loops=loops)
        (out.loss + out.aux_loss).backward()
        model.zero_grad(set_to_none=True)

    return step


def copy_profile(step: Step, top: int) -> dict[str, Any]:
    """aten::copy_ calls and total ms of one ``step``, and the ``top`` costliest copies grouped by input shape."""
    with torch.profiler.profile(record_shapes=True) as prof:
        step()
    rows = [e for e in prof.key_averages(group_by_input_shape=True) if e.key == "aten::copy_"]
    rows.sort(key=lambda e: -e.cpu_time_total)
    return {"copy_calls": sum(e.count for e in rows), "copy_ms": sum(e.cpu_time_total for e in rows) / 1e3,
            "step_ms_profiled": sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e3,
            "top_copies": [{"calls": e.count, "ms": e.cpu_time_total / 1e3, "shape": e.input_shapes[0]}
                           for e in rows[:top]]}


def modes(text: str) -> str:
    """``--modes``: comma-separated names of :data:`MODES`, kept as given; any other name is argparse's error
    naming the flag (it would otherwise be timed as ``uncached``)."""
    unknown = [name for name in text.split(",") if name not in MODES]
    if unknown:
        raise argparse.ArgumentTypeError(f"no mode {', '.join(map(repr, unknown))}; choose from {','.join(MODES)}")
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--loops", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--modes", type=modes, default=",".join(MODES))
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        preset = get_preset(args.preset)
    except ValueError as err:  # the presets' ConfigError
        parser.error(f"argument --preset: {err}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # before the work, not after it
    torch.manual_seed(0)
    config = preset.replace(backprop_loops=0, checkpoint_loops=False, mean_loops=args.loops, max_loops=args.loops,
                            max_seq_len=max(args.seq, 2048))
    model = MythosLM(config).train()
    ids = torch.randint(0, config.vocab_size, (1, args.seq))
    steps = {mode: make_step(model, ids, args.loops, mode == "cached") for mode in args.modes.split(",")}
    for step in steps.values():
        step()
    seconds: dict[str, list[float]] = {mode: [] for mode in steps}
    names = list(steps)
    for r in range(args.rounds):
        for mode in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            steps[mode]()
            seconds[mode].append(time.perf_counter() - start)
    results = {mode: {"median_s": statistics.median(s), "samples_s": s, **copy_profile(steps[mode], 8)}
               for mode, s in seconds.items()}
    payload = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "args": vars(args), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "load_average": os.getloadavg(), "results": results}
    if {"uncached", "cached"} <= set(results):
        payload["paired_speedup"] = statistics.median(
            u / c for u, c in zip(seconds["uncached"], seconds["cached"]))
    Path(args.out).write_text(json.dumps(payload, indent=1))
    for mode, res in results.items():
        print(f"{mode}: {res['median_s']:.3f} s/step, aten::copy_ {res['copy_calls']} calls {res['copy_ms']:.0f} ms")


if __name__ == "__main__":
    main()
