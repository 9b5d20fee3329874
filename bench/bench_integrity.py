"""What the integrity checks cost: checkpoint checksums (write and verify), the token-id check of a dataset, and
the same check with the dataset's block checksums verified in its pass.

    .venv/bin/python bench/bench_integrity.py [--gib 1] [--tokens 1e9] [--out bench/results/integrity.json]

Checksums: a directory holding ``--gib`` GiB of random bytes in 4 files (a checkpoint tag's shape: model states,
optimizer states, RNG, records), page cache warm, best of 3: :func:`write_checksums` and :func:`verify_checksums`
as resume, evaluate and export run them, beside a plain read of the same bytes. Token ids: a ``--tokens``-token
uint16 dataset, :meth:`IndexedDataset.check_token_ids` as it runs for a dataset without checksums, and
:func:`verified_token_range` (sha256 of every block of the ``.bin`` and ``.idx`` on up to 8 threads, and the token
range, in one pass) as the trainer's data scan and ``evaluate`` run it for one with them, page cache warm, best of 3.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from megamythos.checkpoint.checksums import verify_checksums, write_checksums
from megamythos.data.checksums import RECORD_KEY, hashing_threads
from megamythos.data.indexed_dataset import IndexedDataset, IndexedDatasetBuilder
from megamythos.data.metadata import verified_token_range
from megamythos.runtime.device import cpu_model


def best_seconds(fn, repeats: int = 3) -> float:  # noqa: ANN001 - any callable without arguments
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def read_all(directory: Path) -> None:
    for path in directory.iterdir():
        with open(path, "rb") as f:
            while f.read(1 << 20):
                pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=1.0, help="checkpoint size to hash")
    parser.add_argument("--tokens", type=float, default=1e9, help="dataset size for the token-id check")
    parser.add_argument("--out", default="bench/results/integrity.json")
    args = parser.parse_args(argv)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # before the work, not after it
    results: dict = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                     "environment": {"cpu": cpu_model(), "python": platform.python_version(),
                                     "load_avg": os.getloadavg()}}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        tag = Path(tmp) / "iter_0000001"
        tag.mkdir()
        total = int(args.gib * 2**30)
        rng = np.random.default_rng(0)
        for name, share in (("mp_rank_00_model_states.pt", 0.25), ("zero_pp_rank_0_optim_states.pt", 0.73),
                            ("rng_rank0.pt", 0.01), ("train_args.json", 0.01)):
            (tag / name).write_bytes(rng.bytes(int(total * share)))
        read_all(tag)  # warm the page cache
        gb = sum(p.stat().st_size for p in tag.iterdir()) / 1e9
        read = best_seconds(lambda: read_all(tag))
        write = best_seconds(lambda: write_checksums(tag))
        verify = best_seconds(lambda: verify_checksums(tag))
        results["checksums"] = {"gb": round(gb, 3), "read_s": round(read, 3), "write_s": round(write, 3),
                                "verify_s": round(verify, 3), "verify_gb_per_s": round(gb / verify, 2)}
        print(json.dumps(results["checksums"]), flush=True)

        prefix = str(Path(tmp) / "tokens_text_document")
        n = int(args.tokens)
        with IndexedDatasetBuilder(prefix, np.uint16) as builder:
            for start in range(0, n, 1 << 26):
                builder.add_document(rng.integers(0, 8192, min(1 << 26, n - start), dtype=np.uint16))
            record = {RECORD_KEY: builder.checksums().record()}
            builder.finalize()
        dataset = IndexedDataset(prefix)
        check = best_seconds(lambda: dataset.check_token_ids(8192, "rebuild it"))
        results["token_id_check"] = {"tokens": n, "bytes": n * 2, "seconds": round(check, 3),
                                     "tokens_per_s": round(n / check)}
        print(json.dumps(results["token_id_check"]), flush=True)
        verify = best_seconds(lambda: verified_token_range(dataset, record))
        results["dataset_checksums"] = {"tokens": n, "bytes": n * 2, "threads": hashing_threads(),
                                        "seconds": round(verify, 3), "gb_per_s": round(n * 2 / 1e9 / verify, 2)}
        print(json.dumps(results["dataset_checksums"]), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
