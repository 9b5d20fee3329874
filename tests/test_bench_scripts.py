"""The benchmark scripts of bench/ at their smallest settings, each in a subprocess as bench/README.md runs it: it
must finish and write the results keys the README cites, so a library change that breaks a script fails here
(nothing is timed). What needs a machine CI lacks is checked up to that point: bench_model.py's reference modes
say in one line that the reference is missing, gpu_check.py's numerics run on CPU, the GPU shell scripts are
parsed. The runs start together when the module's first test asks for them, two at a time (and the trainer
launches two at a time beside them); each test waits for its own."""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from megamythos.checkpoint.files import write_tokenizer_files
from megamythos.checkpoint.reader import CONFIG_FILE, MODEL_FILE
from megamythos.data.tokenizer import Tokenizer
from megamythos.errors import run_cli
from megamythos.model.lm import MythosLM
from megamythos.training.arguments import parse_args
from megamythos.training.launch import split_launcher_flags
from tests.helpers import (
    REPO,
    TINY_OVERRIDES,
    LaunchPool,
    corpus_prefix,
    free_port,
    launch_env,
    one_error_line,
    small_config,
    tiny_args,
    trains,
)

# What the reference's bench environment lacks of ours (it holds torch, numpy, transformers and open-mythos:
# bench/README.md, "Commands"); bench_model.py must run there.
NOT_IN_REFERENCE_ENV = ("psutil", "sentencepiece", "deepspeed", "datasets", "tensorboard", "matplotlib",
                        "zstandard", "pyarrow")
# bench_model.py's train-step modes that leave the reference out (ours_bf16 is ours_matched in bf16 weights;
# ours_bf16_compiled compiles for a minute), on a tiny preset shrunk further
OURS = "ours_matched,ours_bf16_autocast,ours_preset,dense_gpt"
SMALLER = ("--set", "vocab_size=512", "--set", "dim=64", "--set", "n_experts=4", "--set", "expert_dim=32")


class Started:
    """The background runs' processes, each leading a process group of its own (which Ctrl-C in the terminal
    never reaches). :meth:`end`, at the module's end, kills those still running, with their children, and starts
    no more: the runs that no test asked for (under ``-k``) or that none waits for any more (after a failure or
    Ctrl-C) neither hold the teardown up to their timeout nor go on in the background."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: list[subprocess.Popen] = []
        self.ended = False

    def popen(self, cmd: list[str], **kwargs: Any) -> subprocess.Popen | None:
        """``subprocess.Popen(cmd, **kwargs)`` in a session of its own; None once :meth:`end` was called."""
        with self._lock:
            if self.ended:
                return None
            self._procs.append(subprocess.Popen(cmd, start_new_session=True, **kwargs))
            return self._procs[-1]

    def end(self) -> None:
        with self._lock:
            self.ended = True
            for proc in self._procs:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):  # it ended since
                        os.killpg(proc.pid, signal.SIGKILL)


def bench(script: str, *args: str, blocked: tuple[str, ...] = (), timeout: float = 600,
          started: Started | None = None) -> subprocess.CompletedProcess:
    """``python bench/SCRIPT ARGS`` in the repository root, one thread, with the modules ``blocked`` unimportable
    (as in an environment without them); killed with its children after ``timeout`` seconds (never hangs CI), or
    by ``started`` (then a run it no longer starts returns -SIGKILL at once)."""
    path = str(REPO / "bench" / script)
    code = (f"import runpy, sys\nsys.modules.update(dict.fromkeys({blocked!r}))\n"
            f"sys.argv = {[path, *args]!r}\nrunpy.run_path({path!r}, run_name='__main__')")
    cmd = [sys.executable, "-c", code]
    proc = (started or Started()).popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                                        env=launch_env())
    if proc is None:
        return subprocess.CompletedProcess(cmd, -signal.SIGKILL, "", "not started: the module's tests had ended")
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def results(proc: subprocess.CompletedProcess, out: Path) -> dict[str, Any]:
    """The results file of a run that succeeded."""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def exported_model(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Tokenizer) -> Path:
    """An export directory (untrained weights, a few hundred K parameters, 128 positions) with its tokenizer, as
    ``megamythos.checkpoint.export`` writes one: what ``--load`` of generate, evaluate and the benchmarks reads."""
    from safetensors.torch import save_model

    out = tmp_path_factory.mktemp("export")
    model = MythosLM(small_config(vocab_size=tiny_tokenizer.vocab_size, max_seq_len=128))
    save_model(model, str(out / MODEL_FILE))
    model.config.to_json(out / CONFIG_FILE)
    write_tokenizer_files(out, tiny_tokenizer)
    return out


class Runs:
    """Benchmark runs in the background (``pool``), each writing into a folder of its own under ``root`` that the
    script has to make (``out``), their processes in ``started``."""

    def __init__(self, pool: LaunchPool, root: Path, started: Started) -> None:
        self.pool, self.root, self.started = pool, root, started

    def out(self, name: str) -> Path:
        return self.root / name / "results.json"

    def submit(self, name: str, script: str, *args: str, blocked: tuple[str, ...] = (),
               trainer: tuple[str, ...] = ()) -> None:
        """Queue ``bench(script, *args, --out ..., -- *trainer)``."""
        self.pool.submit(name, bench, script, *args, "--out", str(self.out(name)),
                         *(("--", *trainer) if trainer else ()), blocked=blocked, started=self.started)

    def results(self, name: str) -> dict[str, Any]:
        return results(self.pool.result(name), self.out(name))


@pytest.fixture(scope="module")
def bench_runs(tmp_path_factory: pytest.TempPathFactory, exported_model: Path) -> Iterator[Runs]:
    """Every run below that launches no trainer, queued at once (the longest first), two at a time: each is a
    process or a few that keep a core busy. When the module ends, what still runs is killed (``launched``'s runs
    too) and nothing more starts."""
    pool = LaunchPool(slots=2)
    queue = Runs(pool, tmp_path_factory.mktemp("bench"), Started())
    queue.submit("train_memory", "bench_train.py", "memory", "--loops", "1", "2", "--modes", "two-level",
                 "--batch", "1", "--seq", "16")
    queue.submit("casts", "bench_casts.py", "--preset", "tiny", "--seq", "32", "--loops", "2", "--rounds", "1")
    queue.submit("adaptive", "bench_adaptive.py", "--load", str(exported_model), "--reps", "1", "--train-reps", "1",
                 "--decode-tokens", "2")
    queue.submit("attention", "bench_attention.py", "--seq-lens", "128", "512", "--decode-lens", "128", "--reps",
                 "1", "--decode-reps", "1")
    queue.submit("model", "bench_model.py", "speed", "--modes", OURS, "--moe-expert-dims", "", *SMALLER,
                 "--batch", "1", "--seq", "32", "--loops", "2", "--rounds", "1", "--warmup", "1",
                 blocked=("open_mythos", *NOT_IN_REFERENCE_ENV))
    queue.submit("numerics", "gpu_check.py", "numerics", "--device", "cpu")
    data = ("--max-files", "30", "--vocab-size", "384", "--repeats", "1", "--work-dir", str(queue.root / "work"))
    queue.submit("data", "bench_data.py", "--no-megatron", *data)
    queue.submit("data_without_venv", "bench_data.py", "--megatron-python", str(queue.root / "no-venv/python"), *data)
    queue.submit("model_without_reference", "bench_model.py", "speed", blocked=("open_mythos",))  # default modes
    queue.submit("integrity", "bench_integrity.py", "--gib", "0.001", "--tokens", "1e5")
    yield queue
    queue.started.end()
    pool.close()


@pytest.fixture(scope="module")
@trains
def launched(tmp_path_factory: pytest.TempPathFactory, corpus: Path, launches: LaunchPool, tiny_run_started: Path,
             bench_runs: Runs) -> Runs:
    """The runs that launch the trainer, queued in ``launches`` after the shared tiny run (whose metrics file
    gpu_check.py summarizes), with ``bench_runs`` under way beside them: the tests' tiny model on their corpus."""
    queue = Runs(launches, tmp_path_factory.mktemp("bench_launches"), bench_runs.started)
    model = [word for key, value in TINY_OVERRIDES.items() for word in ("--override", f"{key}={value}")]
    queue.submit("comm", "bench_comm.py", "--variants", "zero3-replicated-core", "--port", str(free_port()),
                 "--data-dir", str(queue.root / "no-default-corpus"),
                 trainer=(*model, "--data-path", corpus_prefix(corpus)))
    trainer = tiny_args(corpus, 2)
    at = trainer.index("--train-iters")
    del trainer[at:at + 2]  # the script's own --iters
    queue.submit("train_throughput", "bench_train.py", "throughput", "--iters", "2", "--warmup", "0", "--threads",
                 "1", "--processes", "2", "--variant", "fp32=" + " ".join(trainer))
    return queue


@pytest.mark.launch
def test_bench_comm(launched):
    data = launched.results("comm")
    variant = data["zero3-replicated-core"]
    assert len(variant["steps"]) == len(data["schedule"]) == 14
    assert [step["recurrent/loop-count"] for step in variant["steps"]] == data["schedule"]
    per_t = variant["per_T"]  # the README's table: calls / MiB of each collective, by T, after a change of T
    assert set(per_t) == {"T=1 changed", "T=4 changed", "T=8 changed", "T=8 unchanged"}
    for row in per_t.values():
        assert {f"{kind} {unit}" for kind in ("all-gather", "reduce-scatter", "all-to-all", "all-reduce")
                for unit in ("calls", "MiB")} <= set(row)
    assert per_t["T=8 changed"]["all-gather MiB"] == per_t["T=4 changed"]["all-gather MiB"] > 0  # core replicated
    assert not (launched.root / "no-default-corpus").exists()


@pytest.mark.launch
def test_bench_train_throughput(launched):
    data = launched.results("train_throughput")["throughput"]
    run = data["2_process_fp32"]
    assert {"tokens_per_sec_median", "iteration_seconds_median", "tflops_per_process_median", "mfu_median"} <= set(run)
    assert run["global_batch"] == 8 and run["iterations"] == 2 and run["lm_loss_last"] > 0
    assert "1_process_fp32" not in data and data["environment"]["cpu"]["model_name"]


def test_bench_train_memory(bench_runs):
    data = bench_runs.results("train_memory")["memory"]
    assert [(r["loops"], r["mode"]) for r in data["rows"]] == [(1, "two-level"), (2, "two-level")]
    assert all(r["peak_step_mib"] > 0 and r["step_s"] > 0 for r in data["rows"])
    assert data["ratio_T2_over_T1"]["two-level"] > 0 and data["environment"]["deepspeed"]


def test_bench_casts(bench_runs):
    data = bench_runs.results("casts")
    for mode in ("uncached", "cached"):
        assert {"median_s", "samples_s", "copy_calls", "copy_ms", "top_copies"} <= set(data["results"][mode])
    # the README's point: without the cache each loop casts the expert weights again
    assert data["results"]["cached"]["copy_calls"] < data["results"]["uncached"]["copy_calls"]
    assert data["paired_speedup"] > 0


def test_bench_adaptive(bench_runs):
    data = bench_runs.results("adaptive")
    rows = data["models"]["default_run"]
    assert [(r["exit_threshold"], r["loops"], r["task"]) for r in rows] == [
        (threshold, loops, task) for threshold, loops in ((0.2, 4), (0.2, 8), (0.1, 8), (0.05, 8))
        for task in ("forward", "decode8", "decode1")]
    for row in rows:  # the README's columns: mean loops (+ frozen), masked -> compact, ideal, share
        assert {"mean_loops", "frozen_loops", "every_ms", "masked_ms", "compact_ms", "masked_speedup",
                "compact_speedup", "flop_ideal", "share_of_ideal"} <= set(row)
        assert 0 <= row["frozen_loops"] <= row["loops"] - row["mean_loops"] + 1e-3  # a mean per token
    training = data["training"]
    assert {"tokens_per_s", "mean_depth", "train_flops_per_token"} <= set(training["default"])
    assert training["capacity"]["loop_capacity"] == [1.0, 1.0, 1.0, 0.5, 0.25, 0.25]
    assert set(training["capacity_over_default"]) == {"tokens_per_s", "train_flops_per_token"}
    assert data["environment"]["cpu"]["model_name"]


def test_bench_attention(bench_runs):
    data = bench_runs.results("attention")
    cells = [(r["preset"], r["dtype"], r["phase"], r["q_len"], r["kv_len"]) for r in data["rows"]]
    assert cells == [(preset, dtype, phase, q_len, kv_len) for preset in ("tiny", "small") for dtype in ("bf16", "fp32")
                     for phase, q_len, kv_len in (("train_fwd_bwd", 128, 128), ("train_fwd_bwd", 512, 512),
                                                  ("decode", 1, 128))]
    assert all(r["matmul_ms"] > 0 and r["sdpa_ms"] > 0 and r["matmul_over_sdpa"] > 0 for r in data["rows"])
    assert data["environment"]["host_memory"] and data["environment"]["cpu"]["model_name"]


def test_bench_model_times_ours_without_the_reference_in_its_environment(bench_runs):
    data = bench_runs.results("model")
    assert data["environment"]["cpu"]["model_name"] and data["environment"]["open_mythos"] is None
    train = data["train"]
    assert train["shape"]["executed_loops_per_step"] == 2 and "reference" not in train["configs"]
    for mode in OURS.split(","):
        assert train["results"][mode]["tokens_per_s"] > 0 and train["results"][mode]["gflops_per_s"] > 0
    assert {"matmul_1024", "matmul_1024_bf16"} <= set(train["results"])
    assert set(train["aten_ops_per_step"]) == {"ours_matched", "ours_bf16_autocast", "ours_preset"}
    assert {"ratio", "paired_ratio", "goal", "met"} <= set(train["vs_dense_equal_flops"])
    assert abs(train["vs_dense_equal_flops"]["flops_ratio"] - 1) < 0.01
    assert data["moe"] == []


def load_script(script: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """bench/SCRIPT imported as a module (not run), in ``sys.modules`` for the test."""
    spec = importlib.util.spec_from_file_location(f"bench_{Path(script).stem}", REPO / "bench" / script)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_bench_model_says_in_one_line_that_the_reference_is_missing(bench_runs, tmp_path, monkeypatch, capsys):
    proc = bench_runs.pool.result("model_without_reference")
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_error_line(proc.stderr)
    assert "--modes reference,reference_bf16_autocast and --moe-expert-dims 256,128,64" in line, line
    assert "open_mythos" in line and "bench/README.md" in line, line
    assert not bench_runs.out("model_without_reference").exists()
    bench_model = load_script("bench_model.py", monkeypatch)
    monkeypatch.setattr(bench_model, "om", None)
    monkeypatch.setattr(bench_model, "REFERENCE_IMPORT_ERROR", "No module named 'open_mythos'", raising=False)
    out = tmp_path / "model.json"
    for args, error in ((["params"], "params (it counts the reference's presets) needs the reference package"),
                        (["speed", "--modes", "ours_matched,reference", "--moe-expert-dims", ""],
                         "--modes reference needs the reference package open_mythos"),
                        (["speed", "--modes", "ours_matched,ours_bf61"], "--modes: no mode 'ours_bf61'"),
                        (["speed", "--modes", "ours_matched", "--moe-expert-dims", "", "--device", "cuda:99"],
                         "--device cuda:99")):
        assert run_cli(lambda args=args: bench_model.main([*args, "--out", str(out)]), log_format=None) == 2
        assert error in one_error_line(capsys.readouterr().err)
    assert not out.exists()


def test_gpu_check_numerics_on_cpu(bench_runs):
    data = bench_runs.results("numerics")["numerics"]
    assert data["device"] == "cpu" and data["dtype"] == "bfloat16" and data["passed"]
    assert set(data["errors"]) == {"attention", "moe", "rms_norm"}
    assert all(0 <= error <= data["tolerance"] for errors in data["errors"].values() for error in errors.values())


@pytest.mark.launch
def test_gpu_check_summarize_reads_a_trainer_metrics_file(tmp_path, tiny_run):
    out = tmp_path / "results" / "gpu_check.json"
    out.parent.mkdir()
    out.write_text(json.dumps({"numerics": {"passed": True}}))  # gpu_check.sh's first step wrote its part
    data = results(bench("gpu_check.py", "summarize", "--metrics", str(tiny_run / "metrics.jsonl"), "--warmup", "2",
                         "--out", str(out)), out)
    summary = data["train_small_bf16_compile"]
    assert data["numerics"] == {"passed": True} and summary["steps"] == 8 and summary["warmup_excluded"] == 2
    for key in ("tokens_per_sec_median", "tflops_median", "mfu_median", "iteration_s_median", "peak_memory_gib",
                "lm_loss_last"):
        assert summary[key] > 0, key


def shell_commands(script: Path, program: str) -> list[list[str]]:
    """The words of each call of ``program`` in shell ``script`` (continuation lines joined; ``${VAR:-default}``
    as its default, any other expansion as a path in a temporary folder)."""
    text = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", script.read_text().replace("\\\n", " "))
    text = re.sub(r"\$(\(mktemp -d\)|\w+)", "/tmp/x", text)
    return [shlex.split(line.split(program, 1)[1].split("|")[0]) for line in text.splitlines() if program in line]


def test_gpu_shell_scripts_parse_and_give_the_trainer_flags_it_has():
    """Neither needs a GPU to be read: bash parses them, and the trainer parses what they pass it (a renamed
    trainer flag would otherwise surface only on a lent GPU)."""
    for script in ("gpu_check.sh", "gpu_session.sh"):
        proc = subprocess.run(["bash", "-n", str(REPO / "bench" / script)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    commands = [words for script in ("gpu_check.sh", "gpu_session.sh")
                for words in shell_commands(REPO / "bench" / script, "launchers/pretrain.sh")]
    assert len(commands) == 2
    for words in commands:
        launcher, trainer = split_launcher_flags(words)
        assert launcher == {"num_gpus": "1"}
        args = parse_args(trainer)
        assert args.bf16 and args.preset == "small"


def test_bench_data_without_megatron(bench_runs):
    proc = bench_runs.pool.result("data_without_venv")
    assert proc.returncode == 2 and "--no-megatron" in one_error_line(proc.stderr)
    assert not bench_runs.out("data_without_venv").exists()
    data = bench_runs.results("data")
    assert set(data["preprocess"]) == set(data["all_runs"]) == {"ours_1_worker", "ours_2_workers"}
    assert data["corpus"]["documents"] == 30 and data["corpus"]["tokenizer"] == "stdlib_v384_n30_tokenizer.model"
    for best in data["preprocess"].values():
        assert best["tokens"] == data["corpus"]["tokens"] and best["tokens_per_s"] > 0
    assert [r["seq_length"] for r in data["random_reads"]] == [1024, 4096]
    assert all(r["reads_per_s"] > 0 and r["index_build_seconds"] >= 0 for r in data["random_reads"])
    assert data["blend_index_build_seconds_1M_samples_2_datasets"] > 0


def test_bench_integrity(bench_runs):
    data = bench_runs.results("integrity")
    assert {"gb", "read_s", "write_s", "verify_s", "verify_gb_per_s"} <= set(data["checksums"])
    assert data["token_id_check"]["tokens"] == 100_000 and data["token_id_check"]["tokens_per_s"] > 0
    assert data["dataset_checksums"]["bytes"] == 200_000 and data["dataset_checksums"]["gb_per_s"] > 0


def test_bench_casts_and_train_refuse_a_mistyped_mode_or_variant_before_the_work(tmp_path, monkeypatch, capsys):
    """Found 2026-12-07: bench_casts.py timed a mistyped ``--modes`` name as ``uncached`` under that name, and an
    unknown ``--preset`` was a traceback; bench_train.py's ``--variant`` without ``=`` was a traceback, one name
    given twice kept only its last flags, and a ``--warmup`` of all the ``--iters`` failed after every launch."""
    out = tmp_path / "out" / "results.json"
    casts = load_script("bench_casts.py", monkeypatch)
    for flags, says in ((["--modes", "cached,cahced"], "argument --modes: no mode 'cahced'"),
                        (["--preset", "tinny"], "argument --preset: unknown preset 'tinny'")):
        monkeypatch.setattr(sys, "argv", ["bench_casts.py", "--preset", "tiny", "--seq", "32", "--loops", "1",
                                          "--rounds", "1", *flags, "--out", str(out)])
        with pytest.raises(SystemExit) as exit_:
            casts.main()
        assert exit_.value.code == 2 and says in capsys.readouterr().err
    train = load_script("bench_train.py", monkeypatch)
    monkeypatch.setattr(train, "launch_throughput", lambda *_: pytest.fail("a variant was launched"))
    for flags, says in ((["--variant", "fp32"], "argument --variant: 'fp32' is not NAME=FLAGS"),
                        (["--variant", "a=--bf16", "--variant", "a=--no-bf16"], "the name 'a' is given twice"),
                        (["--iters", "2", "--warmup", "2"], "argument --warmup: 2 leaves none of the 2 --iters")):
        with pytest.raises(SystemExit) as exit_:
            train.main(["throughput", *flags, "--out", str(out)])
        assert exit_.value.code == 2 and says in capsys.readouterr().err
    assert not out.parent.exists()


def test_bench_adaptive_and_gpu_check_say_in_one_line_what_input_is_missing(tmp_path, monkeypatch, capsys):
    """Found 2026-12-07: a missing ``--load`` of bench_adaptive.py (after it had made the --out folder), a missing
    ``--metrics`` file of gpu_check.py summarize and a ``--device`` this machine lacks were tracebacks."""
    out = tmp_path / "out" / "results.json"
    adaptive, gpu_check = load_script("bench_adaptive.py", monkeypatch), load_script("gpu_check.py", monkeypatch)
    for main, args, says in (
            (adaptive.main, ["--load", str(tmp_path / "nope")], f"{tmp_path / 'nope'} does not exist"),
            (gpu_check.main, ["summarize", "--metrics", str(tmp_path / "nope")], "--metrics"),
            (gpu_check.main, ["numerics", "--device", "cuda:99"], "--device cuda:99")):
        assert run_cli(lambda main=main, args=args: main([*args, "--out", str(out)]), log_format=None) == 2
        assert says in one_error_line(capsys.readouterr().err)
    assert not out.parent.exists()


def test_bench_train_refuses_an_out_file_it_cannot_merge_into_before_the_work(tmp_path, monkeypatch, capsys):
    """Found 2026-12-07: bench_train.py read the ``--out`` file it merges into only after the measurements (a
    throughput run: ~25 min), and one holding no JSON object was a traceback that lost them."""
    train = load_script("bench_train.py", monkeypatch)
    monkeypatch.setattr(train, "memory", lambda *_: pytest.fail("measured"))
    for text, says in (("not json", "holds no results to merge into"), ("[1]", "holds JSON that is not an object")):
        out = tmp_path / "results.json"
        out.write_text(text)
        with pytest.raises(SystemExit) as exit_:
            train.main(["memory", "--loops", "1", "--modes", "none", "--out", str(out)])
        assert exit_.value.code == 2 and f"argument --out: {out} {says}" in capsys.readouterr().err
        assert out.read_text() == text
