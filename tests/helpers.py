"""Plain helpers and constants shared by the tests (fixtures live in conftest.py): small model configs, synthetic
documents and datasets, free ports, and real `deepspeed` launches of the trainer."""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from megamythos.data.indexed_dataset import IndexedDatasetBuilder
from megamythos.model.config import ModelConfig
from megamythos.model.moe import GROUPED_MM_KERNEL
from megamythos.training.rendezvous import port_free

REPO = Path(__file__).resolve().parents[1]
LAUNCHER = REPO / "launchers" / "pretrain.sh"
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]  # the user's documents

# dim 64, 4 heads, 4 experts (top-2) + 1 shared, vocab 384: a full MythosLM in a few hundred KB.
TINY_OVERRIDES = dict(vocab_size=384, dim=64, n_heads=4, n_experts=4, expert_dim=64, q_lora_rank=32,
                      kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16, ffn_dim=128)
VOCAB = TINY_OVERRIDES["vocab_size"]
# Tests of the MoE's fast path (no host sync, one graph, its FLOPs): before torch 2.9 the experts take the padded
# batched matmul, which syncs once per expert matmul (megamythos.model.moe.GROUPED_MM_KERNEL).
requires_grouped_mm = pytest.mark.skipif(not GROUPED_MM_KERNEL, reason="torch < 2.9 has no torch._grouped_mm kernel")
# The tests' corpus: the first 30 stdlib files of CPython 3.11.7 (data/README.md), the same under every Python.
CORPUS_ARCHIVE = REPO / "tests" / "data" / "stdlib-corpus.tar.xz"


# ------------------------------------------------------------------------------------------- model configs
def small_config(**overrides: object) -> ModelConfig:
    """A few-hundred-K-parameter config exercising every code path (MLA, MoE, LoRA)."""
    base = dict(vocab_size=97, dim=64, max_seq_len=64, n_heads=4, n_kv_heads=2, q_lora_rank=32, kv_lora_rank=16,
                qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16, prelude_layers=1, coda_layers=1,
                mean_loops=3, n_experts=8, n_shared_experts=1, num_experts_per_tok=2, expert_dim=32, lora_rank=4)
    base.update(overrides)
    return ModelConfig(**base)


def rope_by_hand(v: torch.Tensor, pos: int, theta: float) -> torch.Tensor:
    """Rotate-half RoPE of one vector v [d] at position pos, in fp64: pairs (i, i + d/2) by pos * theta^(-2i/d)."""
    half = v.shape[-1] // 2
    angle = pos * theta ** (-torch.arange(half, dtype=torch.float64) * 2 / v.shape[-1])
    a, b = v[:half], v[half:]
    return torch.cat((a * angle.cos() - b * angle.sin(), a * angle.sin() + b * angle.cos()))


def threshold_with_margin(changes: torch.Tensor) -> float:
    """Midway across the widest gap among the middle half of the sorted relative changes: about half the tokens
    exit there, and none lies near it (so that float noise between two computations cannot flip an exit)."""
    values = changes.flatten().sort().values
    quarter = len(values) // 4
    middle = values[quarter:len(values) - quarter]
    gap = int((middle[1:] - middle[:-1]).argmax())
    return float(middle[gap] + middle[gap + 1]) / 2


# ------------------------------------------------------------------------------------------- data
WORDS = ("def class return import from self lambda yield None True False print data value index token model "
         "naïve café über straße ünïcödé 東京 数据 привет мир αβγ λ → ≥ ✓").split()


def synthetic_documents(n: int, seed: int = 0) -> list[str]:
    """``n`` varied multi-line documents: prose, code-like indentation, digits, non-Latin scripts."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        lines = []
        for _ in range(rng.randint(1, 6)):
            indent = " " * (4 * rng.randint(0, 2))
            words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))
            lines.append(f"{indent}{words} = {rng.randint(0, 10**6)}")
        docs.append(f"# doc {i}\n" + "\n".join(lines) + "\n")
    return docs


def write_jsonl(path: Path, docs: list[str], key: str = "text") -> Path:
    path.write_text("".join(json.dumps({key: d}) + "\n" for d in docs), encoding="utf-8")
    return path


def make_dataset(path, num_docs: int, seed: int = 0, base: int = 0) -> str:
    """An indexed dataset whose tokens encode their document id: doc d holds ``base + d`` repeated."""
    rng = np.random.default_rng(seed)
    prefix = str(path)
    with IndexedDatasetBuilder(prefix, np.int32) as builder:
        for d in range(num_docs):
            builder.add_document(np.full(int(rng.integers(1, 30)), base + d))
        builder.finalize()
    return prefix


def build_corpus(out: Path) -> Path:
    """The tests' corpus (``CORPUS_ARCHIVE``) built in ``out`` as the default corpus is (vocab ``VOCAB``, one
    document per file); returns ``out``."""
    from megamythos.data.default_corpus import ensure_source_dataset

    with tarfile.open(CORPUS_ARCHIVE) as archive:
        archive.extractall(out / "sources", filter="data")
    files = sorted(str(p) for p in (out / "sources").rglob("*.py"))
    ensure_source_dataset(files, str(out / f"stdlib_v{VOCAB}_n{len(files)}"), VOCAB)
    return out


def corpus_texts() -> list[str]:
    """The texts of the tests' corpus (``CORPUS_ARCHIVE``), in the order ``build_corpus`` reads them."""
    with tarfile.open(CORPUS_ARCHIVE) as archive:
        members = sorted((m for m in archive.getmembers() if m.isfile()), key=lambda m: m.name)
        return [archive.extractfile(m).read().decode() for m in members]


def corpus_prefix(corpus: Path) -> str:
    """The data prefix (``..._text_document``) of the tests' corpus in ``corpus``."""
    return str(next(corpus.glob("*_text_document.bin")).with_suffix(""))


def console_scripts() -> dict[str, str]:
    """setup.py's console scripts: {name: "module:function"}."""
    text = (REPO / "setup.py").read_text()
    return dict(re.findall(r'"(megamythos-[\w-]+) = ([\w.]+:\w+)"', text))


def one_error_line(output: str) -> str:
    """The single ``error:`` line of a failed command (no traceback)."""
    assert "Traceback" not in output, output[-3000:]
    lines = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, f"expected one error line:\n{output[-3000:]}"
    return lines[0]


# ------------------------------------------------------------------------------------------- trainer launches
LAUNCH_FIXTURES: set[Callable] = set()


def trains(fixture: Callable) -> Callable:
    """Registers a fixture that launches the trainer: conftest.py refuses, at collection, a test that uses one
    (directly or through another fixture) without the ``launch`` marker. Put it under ``@pytest.fixture``. The
    registry holds the fixture functions, not their names: a same-named fixture of another file is another one."""
    LAUNCH_FIXTURES.add(fixture)
    return fixture


def plain_zero3_template() -> dict:
    """``ds_configs/cpu-debug.json`` without its leaf modules: ZeRO-3 with DeepSpeed's hook on every submodule and
    the recurrent core replicated, the path the large layouts run and the step model counts."""
    template = json.loads((REPO / "ds_configs" / "cpu-debug.json").read_text())
    del template["zero_optimization"]["leaf_module"]
    return template


def tiny_args(data_dir: Path, iters: int, lr: float = 1e-2) -> list[str]:
    """Trainer flags of the tiny test model on the tests' corpus built in ``data_dir`` (lr high enough to expose
    drift)."""
    args = []
    for key, value in TINY_OVERRIDES.items():
        args += ["--override", f"{key}={value}"]
    return args + ["--mean-loops", "3", "--seq-length", "32", "--data-path", corpus_prefix(data_dir),
                   "--split", "90,10,0", "--train-iters", str(iters),
                   "--lr", str(lr), "--min-lr", str(lr / 10), "--warmup", "1", "--peak-tflops", "1", "--seed", "7",
                   "--no-bf16"]


_PORTS_GIVEN: set[int] = set()
_PORTS_LOCK = threading.Lock()


def dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def free_port() -> int:
    """A free TCP port for a launch's rendezvous, never one this session handed out before (launches run side by
    side: see LaunchPool), from a block of 1000 of this pytest-xdist worker's own, below Linux's ephemeral range
    (32768-60999) where ``bind(0)`` and gloo's connections take theirs: no two launches of the session, in one
    worker or across workers, rendezvous on one port."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    first = 20000 + 1000 * worker
    with _PORTS_LOCK:  # LaunchPool's threads ask at the same time
        for port in range(first, first + 1000):
            if port not in _PORTS_GIVEN and port != 29500 and port_free(port):
                _PORTS_GIVEN.add(port)
                return port
    raise RuntimeError(f"no free port left in {first}-{first + 999}")


def launch_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = "1"
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".torch_extensions"))
    env["PYTHONPATH"] = str(REPO)
    return env


def start(nproc: int, args: list[str], log: Path, launcher_args: list[str] | None = None,
          env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``launchers/pretrain.sh`` (the deepspeed launcher) in its own process group."""
    cmd = ["bash", str(LAUNCHER), "--num-gpus", str(nproc), *(launcher_args or ["--master-port", str(free_port())]),
           *args]
    return spawn(cmd, log, env)


def spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``cmd`` in the repository root, in its own process group, output to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    out = open(log, "w")
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env or launch_env(), cwd=REPO,
                            start_new_session=True)


def deepspeed_command(launcher_args: list[str], args: list[str]) -> list[str]:
    """The design's form: ``deepspeed [launcher flags] launchers/pretrain.sh [trainer flags]``."""
    return ["deepspeed", *launcher_args, str(LAUNCHER), *args]


def finish(proc: subprocess.Popen, log: Path, timeout: float = 600) -> str:
    """Wait for a launch; return its log. A launch that outlives ``timeout`` is killed (never hangs CI)."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return log.read_text()


def run(nproc: int, args: list[str], log: Path, expect_rc: int = 0, env: dict[str, str] | None = None) -> str:
    """Launch, wait, check the exit code; returns the log."""
    proc = start(nproc, args, log, env=env)
    text = finish(proc, log)
    assert proc.returncode == expect_rc, f"exit code {proc.returncode}, expected {expect_rc}:\n{text[-6000:]}"
    return text


def run_single(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """The trainer in one process without a launcher (a world of one)."""
    return subprocess.run([sys.executable, "-m", "megamythos.training.pretrain", *args], capture_output=True,
                          text=True, env={**launch_env(), "MASTER_PORT": str(free_port())}, cwd=cwd, timeout=600)


def wait_for(predicate: Callable[[], bool], proc: subprocess.Popen, what: str, timeout: float = 600) -> None:
    """Poll until ``predicate`` holds (event-driven; the timeout only guards against a hang)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"run ended before {what}"
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


class LaunchPool:
    """Runs jobs (trainer launches, which mostly wait on their subprocesses) in background threads, at most ``slots``
    at a time, in the order submitted, so that the independent launches of a module overlap: the launch chain leaves
    a core idle much of the time (two 2-rank launches side by side took 1.2x one alone on 2 cores). ``result`` waits
    for a job and re-raises its failure in the test that asks for it."""

    def __init__(self, slots: int = 2) -> None:
        self._executor = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="launch")
        self._jobs: dict[str, Future] = {}

    def submit(self, key: str, fn: Callable, *args, **kwargs) -> None:
        """Queue ``fn(*args, **kwargs)`` under ``key``; a key already queued is left alone. A job may wait for the
        result of a job submitted before it (FIFO: that one has a slot first)."""
        if key not in self._jobs:
            self._jobs[key] = self._executor.submit(fn, *args, **kwargs)

    def result(self, key: str):
        return self._jobs[key].result()

    def close(self) -> None:
        """Drop the jobs not started; wait for those running (each launch is killed after its own timeout)."""
        self._executor.shutdown(wait=True, cancel_futures=True)


def shm_buffers_left(log: str) -> list[str]:
    """The DeepSpeed shm allreduce buffers (``megamythos.training.shm``) still in /dev/shm of the launch whose
    output is ``log`` (its rendezvous port, from the ``deepspeed --master_port N`` line the launcher logs)."""
    from megamythos.training.shm import PREFIX, SHM

    port = re.search(r"--master_port (\d+)", log)
    assert port, log[-3000:]
    return sorted(p.name for p in SHM.glob(f"{PREFIX}{os.getuid()}_*_{port[1]}_*"))


def metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def losses(path: Path) -> dict[int, float]:
    """{iteration: lm loss} of a run's metrics file (the last record wins)."""
    return {m["iteration"]: m["lm loss"] for m in metrics(path) if "lm loss" in m}
