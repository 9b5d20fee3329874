"""Data-pipeline benchmark: preprocessing tokens/s against Megatron-LM's path, and random sample reads/s.

Run from the repository root (the megatron-core baseline runs in a separate virtualenv)::

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_data.py --megatron-python /work/bench-venv-data/bin/python

1. Builds (or reuses) the stdlib default corpus tokenizer and writes the stdlib sources as one JSONL file.
2. Baseline, in the megatron-core venv: Megatron's ``tools/preprocess_data.py`` loop with one worker
   (``multiprocessing.Pool(1)``, ``imap(encode, lines, 32)``, ``json.loads`` + ``encode_as_ids`` + eod per
   document, ``megatron.core.datasets.indexed_dataset.IndexedDatasetBuilder.add_document`` / ``finalize``).
3. Ours: :func:`megamythos.data.preprocess.preprocess` with the same model and input, 1 and N workers.
   Each configuration runs ``--repeats`` times interleaved; the best time counts (the machine is shared).
4. Checks that our ``.bin``/``.idx`` equal Megatron's byte for byte, that Megatron's ``IndexedDataset``
   reads our files back and that ours opens Megatron's.
5. Index builds without C++: blending indices for 1M samples; ``build_train_valid_test_datasets`` on our
   output (cache emptied first), then uniformly random ``ds[i]`` reads.

Results go to ``bench/results/data.json``. ``--no-megatron`` times ours alone (steps 3 and 5 without Megatron's
side, where no megatron-core venv is at hand); ``--max-files N`` and ``--vocab-size V`` make the corpus the first N
stdlib files with a V-piece tokenizer.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------- baseline (runs inside the megatron-core venv)
class _MegatronEncoder:
    """Megatron's ``tools/preprocess_data.py`` ``Encoder`` for one JSON key with a SentencePiece tokenizer."""

    model_path = ""

    def initializer(self) -> None:
        import sentencepiece

        _MegatronEncoder.sp = sentencepiece.SentencePieceProcessor(model_file=self.model_path)

    def encode(self, json_line: str) -> tuple[list[int], list[int], int]:
        text = json.loads(json_line)["text"]
        ids = _MegatronEncoder.sp.encode_as_ids(text)
        lens = [len(ids)] if ids else []
        if ids:
            ids.append(_MegatronEncoder.sp.eos_id())
            lens[-1] += 1
        return ids, lens, len(json_line)


def run_megatron_baseline(input_path: str, model_path: str, output_prefix: str, check_prefix: str) -> dict:
    """Megatron's one-worker preprocessing loop; then read ``check_prefix`` (ours) with Megatron's reader."""
    import multiprocessing

    import numpy
    import sentencepiece
    from megatron.core.datasets.indexed_dataset import DType, IndexedDataset, IndexedDatasetBuilder

    vocab_size = sentencepiece.SentencePieceProcessor(model_file=model_path).vocab_size()
    encoder = _MegatronEncoder()
    _MegatronEncoder.model_path = model_path
    start = time.perf_counter()
    with open(input_path, encoding="utf-8") as fin:
        pool = multiprocessing.Pool(1, initializer=encoder.initializer)
        builder = IndexedDatasetBuilder(output_prefix + ".bin", dtype=DType.optimal_dtype(vocab_size))
        documents = tokens = 0
        for ids, lens, _ in pool.imap(encoder.encode, fin, 32):
            builder.add_document(ids, lens)
            documents += 1
            tokens += len(ids)
        builder.finalize(output_prefix + ".idx")
        pool.close()
    seconds = time.perf_counter() - start
    theirs, ours = IndexedDataset(output_prefix), IndexedDataset(check_prefix)
    same = len(theirs) == len(ours) and all(numpy.array_equal(theirs[i], ours[i]) for i in range(len(ours)))
    return {"seconds": seconds, "documents": documents, "tokens": tokens, "megatron_reads_ours_equal": same}


def run_megatron_index_check(spec_path: str) -> dict:
    """Build the GPT and blending indices with megatron-core's own code and compare with ours (saved by the caller).

    ``GPTDataset._build_document_sample_shuffle_indices`` is called on a stand-in ``self`` carrying only the
    attributes it reads (no cache directory), so the C++ ``build_sample_idx`` and Megatron's shuffles run as-is.
    """
    from types import SimpleNamespace

    import numpy
    from megatron.core.datasets import helpers
    from megatron.core.datasets.blended_megatron_dataset_config import (
        convert_split_vector_to_split_matrix,
        parse_and_normalize_split,
    )
    from megatron.core.datasets.gpt_dataset import GPTDataset
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from megatron.core.datasets.utils import Split

    with open(spec_path) as handle:
        spec = json.load(handle)
    indexed = IndexedDataset(spec["prefix"])  # keep it alive: its __del__ closes the mapping
    sizes = indexed.sequence_lengths
    matrix = convert_split_vector_to_split_matrix(parse_and_normalize_split(spec["split"]))
    results = {}
    for case in spec["gpt_cases"]:
        ours = numpy.load(case["npz"])
        split = Split(case["split_index"])
        beg, end = (int(round(b * float(len(sizes)))) for b in matrix[case["split_index"]])
        config = SimpleNamespace(defer_npy_index_mmap=False, fast_cache_load=False, path_to_cache=None, mock=True,
                                 sequence_length=spec["seq_length"], add_extra_token_to_sequence=1,
                                 random_seed=spec["seed"], drop_last_partial_validation_sequence=True)
        dataset = SimpleNamespace(sequence_lengths=sizes, path_prefix=spec["prefix"])
        fake = SimpleNamespace(config=config, dataset=dataset,
                               indices=numpy.arange(beg, end, dtype=numpy.int32), num_samples=case["num_samples"],
                               index_split=split, unique_description_hash="bench")
        fake._get_num_tokens_per_epoch = lambda f=fake: GPTDataset._get_num_tokens_per_epoch(f)
        fake._get_num_epochs = lambda n, f=fake: GPTDataset._get_num_epochs(f, n)
        arrays = dict(zip(("document_index", "sample_index", "shuffle_index"),
                          GPTDataset._build_document_sample_shuffle_indices(fake)))
        results[f"{split.name}_{case['num_samples']}"] = {
            "documents_equal": [beg, end] == ours["documents"].tolist(),
            **{f"{k}_equal": bool(numpy.array_equal(v, ours[k])) for k, v in arrays.items()},
        }
    blend = spec["blend"]
    dataset_index = numpy.zeros(blend["size"], dtype=numpy.int16)
    dataset_sample_index = numpy.zeros(blend["size"], dtype=numpy.int64)
    helpers.build_blending_indices(dataset_index, dataset_sample_index, numpy.array(blend["weights"]),
                                   len(blend["weights"]), blend["size"], False)
    ours = numpy.load(blend["npz"])
    results["blend"] = {"dataset_index_equal": bool(numpy.array_equal(dataset_index, ours["dataset_index"])),
                        "dataset_sample_index_equal": bool(numpy.array_equal(dataset_sample_index,
                                                                             ours["dataset_sample_index"]))}
    return results


def save_our_indices(prefix: str, work_dir: str, seq_length: int, seed: int) -> str:
    """Our GPT indices (6 epochs of train with and without a separately shuffled final epoch; 1 of valid) and
    blending indices, saved for :func:`run_megatron_index_check`; returns the spec path."""
    import numpy as np

    from megamythos.data.blended_dataset import build_blending_indices
    from megamythos.data.gpt_dataset import build_gpt_indices, parse_split, split_bounds
    from megamythos.data.indexed_dataset import IndexedDataset

    split = "969,30,1"
    sizes = IndexedDataset(prefix).sizes
    bounds = split_bounds(parse_split(split), len(sizes))
    per_epoch = (int(sizes[bounds[0]:bounds[1]].sum()) - 1) // seq_length
    cases = []
    for split_index, num_samples in ((0, 5 * per_epoch + 9 * per_epoch // 10), (0, 5 * per_epoch + per_epoch // 10),
                                     (1, 200)):
        documents = np.arange(bounds[split_index], bounds[split_index + 1], dtype=np.int32)
        path = os.path.join(work_dir, f"gpt_{split_index}_{num_samples}.npz")
        np.savez(path, documents=np.array(bounds[split_index:split_index + 2]),
                 **build_gpt_indices(sizes, documents, num_samples, seq_length, seed))
        cases.append({"split_index": split_index, "num_samples": num_samples, "npz": path})
    blend_path = os.path.join(work_dir, "blend.npz")
    np.savez(blend_path, **build_blending_indices([0.7, 0.3], 100_000))
    spec = {"prefix": prefix, "split": split, "seq_length": seq_length, "seed": seed, "gpt_cases": cases,
            "blend": {"weights": [0.7, 0.3], "size": 100_000, "npz": blend_path}}
    spec_path = os.path.join(work_dir, "index_check.json")
    with open(spec_path, "w") as handle:
        json.dump(spec, handle)
    return spec_path


# ---------------------------------------------------------------- ours
def write_corpus_jsonl(path: str, max_files: int | None) -> int:
    """The stdlib sources (the first ``max_files`` if given) that decode as UTF-8 and are not blank, one JSON
    document per line; returns bytes."""
    from megamythos.data.default_corpus import stdlib_sources
    from megamythos.data.sources import iter_file_records, parse_record

    with open(path, "w", encoding="utf-8") as out:
        for source in stdlib_sources(max_files):
            for record in iter_file_records(source, ("text",)):
                parsed = parse_record(record, ("text",))
                if parsed.texts is not None and not parsed.replaced:  # no U+FFFD for invalid bytes
                    out.write(json.dumps({"text": parsed.texts[0]}) + "\n")
    return os.path.getsize(path)


def time_ours(input_path: str, model_path: str, output_prefix: str, workers: int) -> dict:
    from megamythos.data.preprocess import PreprocessConfig, preprocess

    stats = preprocess(PreprocessConfig(inputs=[input_path], output_prefix=output_prefix, tokenizer_model=model_path,
                                        workers=workers, append_eod=True, overwrite=True))
    return {"seconds": stats.seconds, "documents": stats.documents, "tokens": stats.tokens}


def bench_random_reads(prefix: str, seq_length: int, num_samples: int, reads: int, cache_dir: str) -> dict:
    import numpy as np

    from megamythos.data.gpt_dataset import build_train_valid_test_datasets

    start = time.perf_counter()
    train, _, _ = build_train_valid_test_datasets([prefix], "969,30,1", seq_length, 1234, (num_samples, 0, 0),
                                                  cache_dir)
    build = time.perf_counter() - start
    order = np.random.default_rng(0).integers(0, len(train), size=reads)
    start = time.perf_counter()
    total = 0
    for i in order:
        total += train[int(i)]["tokens"].size
    seconds = time.perf_counter() - start
    return {"seq_length": seq_length, "num_samples": len(train), "index_build_seconds": build, "reads": reads,
            "reads_per_s": reads / seconds, "tokens_per_s": total / seconds}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megatron-python", default="/work/bench-venv-data/bin/python",
                        help="python of a virtualenv with megatron-core installed")
    parser.add_argument("--no-megatron", action="store_true", help="time ours alone, without Megatron's side")
    parser.add_argument("--work-dir", default="/tmp/megamythos-bench-data")
    parser.add_argument("--max-files", type=int, default=None, help="the first N stdlib files (default: all)")
    parser.add_argument("--vocab-size", type=int, default=8192, help="pieces of the corpus's tokenizer")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "data.json"))
    parser.add_argument("--run-megatron-baseline", nargs=4, metavar=("INPUT", "MODEL", "OUT", "CHECK"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--run-megatron-index-check", metavar="SPEC", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_megatron_baseline:
        print(json.dumps(run_megatron_baseline(*args.run_megatron_baseline)))
        return
    if args.run_megatron_index_check:
        print(json.dumps(run_megatron_index_check(args.run_megatron_index_check)))
        return

    megatron = not args.no_megatron
    if megatron and not os.access(args.megatron_python, os.X_OK):
        print(f"error: --megatron-python {args.megatron_python} is no executable python; make the megatron-core "
              "venv (bench/README.md, \"Data pipeline\") or pass --no-megatron to time ours alone", file=sys.stderr)
        sys.exit(2)
    sys.path.insert(0, ROOT)
    import logging

    from megamythos.data.default_corpus import ensure_default_dataset

    logging.basicConfig(level=logging.ERROR)
    os.makedirs(args.work_dir, exist_ok=True)
    _, model = ensure_default_dataset(os.path.join(args.work_dir, "default"), args.vocab_size, args.max_files)
    corpus = os.path.join(args.work_dir, "stdlib.jsonl")
    corpus_bytes = write_corpus_jsonl(corpus, args.max_files)
    ours_prefix = os.path.join(args.work_dir, "ours")
    megatron_prefix = os.path.join(args.work_dir, "megatron_text_document")
    runs: dict[str, list[dict]] = {**({"megatron_1_worker": []} if megatron else {}), "ours_1_worker": [],
                                   f"ours_{args.workers}_workers": []}
    for _ in range(args.repeats):
        runs["ours_1_worker"].append(time_ours(corpus, model, ours_prefix, 1))
        runs[f"ours_{args.workers}_workers"].append(time_ours(corpus, model, ours_prefix, args.workers))
        if not megatron:
            continue
        cmd = [args.megatron_python, os.path.abspath(__file__), "--run-megatron-baseline", corpus, model,
               megatron_prefix, ours_prefix + "_text_document"]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ,
                                                                                  "OMP_NUM_THREADS": "1"})
        runs["megatron_1_worker"].append(json.loads(done.stdout.strip().splitlines()[-1]))
    best = {name: min(r, key=lambda x: x["seconds"]) for name, r in runs.items()}
    for result in best.values():
        result["tokens_per_s"] = result["tokens"] / result["seconds"]
    from megamythos.data.blended_dataset import build_blending_indices
    from megamythos.data.indexed_dataset import IndexedDataset

    start = time.perf_counter()
    build_blending_indices([0.7, 0.3], 1_000_000)
    blend_seconds = time.perf_counter() - start
    results = {
        "corpus": {"jsonl_bytes": corpus_bytes, "documents": best["ours_1_worker"]["documents"],
                   "tokens": best["ours_1_worker"]["tokens"], "tokenizer": os.path.basename(model)},
        "cpu_count": os.cpu_count(), "load_average_at_end": os.getloadavg(),
        "preprocess": best, "all_runs": runs}
    if megatron:
        spec = save_our_indices(ours_prefix + "_text_document", args.work_dir, 1024, 1234)
        done = subprocess.run([args.megatron_python, os.path.abspath(__file__), "--run-megatron-index-check", spec],
                              check=True, capture_output=True, text=True)
        baseline = best["megatron_1_worker"]["tokens_per_s"]
        results.update({
            "speedup_vs_megatron": {name: r["tokens_per_s"] / baseline for name, r in best.items()},
            "bin_idx_byte_identical_to_megatron": all(
                open(ours_prefix + "_text_document" + ext, "rb").read() == open(megatron_prefix + ext, "rb").read()
                for ext in (".bin", ".idx")),
            "megatron_reads_ours_equal": best["megatron_1_worker"]["megatron_reads_ours_equal"],
            "ours_reads_megatron": len(IndexedDataset(megatron_prefix)) == best["ours_1_worker"]["documents"],
            "indices_equal_megatron_core": json.loads(done.stdout.strip().splitlines()[-1])})
    shutil.rmtree(os.path.join(args.work_dir, "cache"), ignore_errors=True)  # time the index build, not a hit
    results.update({
        "blend_index_build_seconds_1M_samples_2_datasets": blend_seconds,
        "random_reads": [bench_random_reads(ours_prefix + "_text_document", s, n, 20_000,
                                            os.path.join(args.work_dir, "cache"))
                         for s, n in ((1024, 50_000), (4096, 10_000))]})
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(results, handle, indent=2)
    print(json.dumps({k: v for k, v in results.items() if k != "all_runs"}, indent=2))


if __name__ == "__main__":
    main()
