"""Real multi-process DeepSpeed training over gloo on CPU: the tiny MythosLM on the small default corpus.

One launch per configuration, shared by the tests that check it (module-scoped fixtures; started together, two at
a time, by ``runs``). Losses are compared with a tolerance of 2e-5 (2e-4 under expert parallelism): reduction order
differs between layouts (observed differences ~1e-6, 5e-5 with EP), while the bugs these tests exist for (AutoEP
dropping the shared experts, the MLA k_pe gradient under TP) move the losses by 1e-3 or more within these 8 steps at
lr 1e-2.
"""
from __future__ import annotations

import math
import os
import re
import signal
import socket
import statistics
from collections import Counter
from pathlib import Path

import psutil
import pytest
import torch

from megamythos.checkpoint.files import read_latest
from megamythos.model.config import ModelConfig
from megamythos.model.params import count
from megamythos.training.monitor import STRAGGLER_STEPS
from tests.helpers import (
    REPO,
    LaunchPool,
    deepspeed_command,
    finish,
    free_port,
    launch_env,
    losses,
    metrics,
    one_error_line,
    requires_grouped_mm,
    run,
    run_single,
    spawn,
    start,
    tiny_args,
    trains,
    wait_for,
)

pytestmark = [pytest.mark.distributed, pytest.mark.launch]

ITERS = 8
TOL = 2e-5
EP_TOL = 2e-4  # expert parallelism regroups the routed tokens: a near-tie top-k flip moved a loss by 5e-5


def train(tmp: Path, corpus: Path, nproc: int, *extra: str, iters: int = ITERS,
          env: dict[str, str] | None = None) -> Path:
    """One launch into ``tmp``; returns ``tmp`` (metrics.jsonl, ckpt/, tb/, log.txt)."""
    run(nproc, [*tiny_args(corpus, iters), "--save", str(tmp / "ckpt"), "--metrics-file", str(tmp / "metrics.jsonl"),
                "--tensorboard-dir", str(tmp / "tb"), *extra], tmp / "log.txt", env=env)
    return tmp


def assert_same_losses(run_dir: Path, ref_dir: Path, tol: float = TOL) -> None:
    got, want = losses(run_dir / "metrics.jsonl"), losses(ref_dir / "metrics.jsonl")
    assert sorted(got) == sorted(want) == list(range(1, ITERS + 1))
    diffs = {i: abs(got[i] - want[i]) for i in want}
    assert max(diffs.values()) <= tol, f"loss differences per iteration: {diffs}"


def assert_same_grad_norms(run_dir: Path, ref_dir: Path, rel: float = 1e-4) -> None:
    """The ``grad-norm`` of every step (the norm DeepSpeed clips by) equals the reference's: each AutoTP shard, ZeRO-3
    partition and AutoEP expert counted once (ZeRO-0 bf16 under TP counted one rank's shards: 1.007 for 1.020)."""
    got, want = (sorted((m["iteration"], m["grad-norm"]) for m in metrics(d / "metrics.jsonl") if "grad-norm" in m)
                 for d in (run_dir, ref_dir))
    assert [i for i, _ in got] == [i for i, _ in want] == list(range(1, ITERS + 1))
    assert [n for _, n in got] == pytest.approx([n for _, n in want], rel=rel)


STAND_IN_APEX = '''"""A stand-in for NVIDIA apex (CUDA only): FusedAdam's constructor, torch's fused AdamW on CPU."""
import torch


class FusedAdam(torch.optim.AdamW):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, adam_w_mode=True):
        assert adam_w_mode, "AdamW wanted"
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=True)
'''

# Per-iteration activation checkpointing, which the test model (truncated backprop) does not do by default: the
# ZeRO-3, TP, TP + AutoEP, compiled and capacity runs recompute their loops in backward, as the presets with
# backprop through every loop train; the reference (conftest's tiny_run), the AutoEP runs (whose exported config
# is compared with the reference's) and the ZeRO-2 run keep their activations.
CHECKPOINT = ("--checkpoint-loops",)
CAPACITY_SCHEDULE = (1.0, 1.0, 0.5, 0.5, 0.25, 0.25)
CAPACITY = ("--override", "loop_capacity=" + ",".join(map(str, CAPACITY_SCHEDULE)), "--override",
            "capacity_router=learned", "--backprop-loops", "2", *CHECKPOINT)
# Rank 1 of the straggler run sleeps this long before each forward (tests/slow_rank/sitecustomize.py): a slow host.
# Long enough that a stall of the fast rank under the suite's load (0.5 s at one step of a CI run) still leaves rank
# 1 STRAGGLER_RATIO x slower, as the warning's streak of STRAGGLER_STEPS steps needs.
SLOW_SECONDS = 1.0
STRAGGLER_ITERS = STRAGGLER_STEPS + 2
EP2_ARGS = ("--ep", "2", "--micro-batch-size", "1", "--global-batch-size", "2", "--eval-interval", str(ITERS),
            "--eval-iters", "1")
# The module's training runs, name -> (processes, trainer flags, extra environment: "{out}" in a value is the run's
# directory), all started by ``runs`` in this order (the order the tests read them) and each awaited by the fixture
# of its name below.
RUNS = {
    "zero3": (2, ("--zero", "3", "--micro-batch-size", "1", "--global-batch-size", "2", "--save-interval", "2",
                  "--keep-last", "2", "--eval-interval", "4", "--eval-iters", "1", *CHECKPOINT,
                  "--loop-checkpoint-segment", "2", "--log-params-norm"), {}),
    "ep2": (2, ("--zero", "3", *EP2_ARGS), {}),
    "ep2_apex_eval2": (2, ("--zero", "3", *EP2_ARGS[:-4], "--eval-interval", "2", "--eval-iters", "2", "--adam-impl",
                           "apex"), {}),  # PYTHONPATH: the stand-in apex, written by ``runs``
    # both TP ranks see the same micro-batches: dp = 1, so a batch of 2 takes 2 accumulated micro-batches of 1
    "tp2": (2, ("--zero", "3", "--tp", "2", "--micro-batch-size", "1", "--global-batch-size", "2", *CHECKPOINT), {}),
    "tpep": (2, ("--zero", "3", "--tp", "2", "--ep", "2", "--micro-batch-size", "2", "--global-batch-size", "2",
                 *CHECKPOINT, "--log-params-norm"), {}),
    "compiled": (2, ("--zero", "3", "--micro-batch-size", "1", "--global-batch-size", "2", "--compile", *CHECKPOINT),
                 {"TORCH_LOGS": "graph_breaks,recompiles"}),
    "zero2": (1, ("--zero", "2", "--micro-batch-size", "2", "--global-batch-size", "2", "--log-params-norm"), {}),
    # loop capacity (6 loops cover the sampled counts at mean 3) ranked by the learned router, with backprop
    # through the last 2 loops and per-iteration checkpointing, alone and under ZeRO-3 + TP 2 + AutoEP 2 folded
    # onto two ranks
    "capacity_ref": (1, ("--zero", "0", "--micro-batch-size", "2", "--global-batch-size", "2", *CAPACITY), {}),
    "capacity_tpep": (2, ("--zero", "3", "--tp", "2", "--ep", "2", "--micro-batch-size", "2", "--global-batch-size",
                          "2", *CAPACITY), {}),
    # DeepSpeed keeps its experts in per-expert files; the norm of the gradients each step applies is recorded
    "ep2_zero0": (2, ("--zero", "0", *EP2_ARGS),
                  {"PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests' / 'clip_probe'}",
                   "MEGAMYTHOS_TEST_STEP_NORMS": "{out}/step_norms.txt"}),
    "straggler": (2, ("--zero", "3", "--micro-batch-size", "1", "--global-batch-size", "2", "--train-iters",
                      str(STRAGGLER_ITERS)),
                  {"PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests' / 'slow_rank'}", "MEGAMYTHOS_TEST_SLOW_RANK": "1",
                   "MEGAMYTHOS_TEST_SLOW_SECONDS": str(SLOW_SECONDS)}),
}



@pytest.fixture(scope="module")
@trains
def runs(tiny_run_started, launches: LaunchPool, tmp_path_factory, corpus) -> dict[str, Path]:
    """Starts every run of ``RUNS`` at once in conftest's ``launches`` (two at a time, behind the shared
    ``tiny_run``); returns {name: run directory}, finished or not."""
    dirs = {}
    for name, (nproc, flags, extra_env) in RUNS.items():
        out = dirs[name] = tmp_path_factory.mktemp(name)
        env = {**launch_env(), **{k: v.replace("{out}", str(out)) for k, v in extra_env.items()}} if extra_env else None
        if name == "ep2_apex_eval2":
            (out / "apex" / "optimizers").mkdir(parents=True)
            (out / "apex" / "__init__.py").write_text("")
            (out / "apex" / "optimizers" / "__init__.py").write_text(STAND_IN_APEX)
            env = {**launch_env(), "PYTHONPATH": f"{REPO}{os.pathsep}{out}"}
        launches.submit(f"distributed_train/{name}", train, out, corpus, nproc, *flags, env=env)
    return dirs


def finished(runs: dict[str, Path], launches: LaunchPool, name: str) -> Path:
    """The directory of run ``name`` once it has finished (re-raises its failure)."""
    launches.result(f"distributed_train/{name}")
    return runs[name]


@pytest.fixture(scope="module")
def ref(tiny_run: Path) -> Path:
    """1 process, ZeRO-0, micro batch 2: conftest's ``tiny_run`` (the same launch as ``train(..., 1, "--zero", "0",
    "--micro-batch-size", "2", "--global-batch-size", "2", "--log-params-norm")``, plus a checkpoint every 2
    iterations), shared with the tests of the evaluation, generation and Hugging Face command lines."""
    return tiny_run


@pytest.fixture(scope="module")
def zero3(runs, launches) -> Path:
    """2 processes, ZeRO-3, micro batch 1 each; checkpoints every 2 iterations (keep 2), validation every 4;
    two-level loop checkpointing (segments of 2 iterations) against the reference's kept activations."""
    return finished(runs, launches, "zero3")


@pytest.fixture(scope="module")
def ep2(runs, launches) -> Path:
    """2 processes, ZeRO-3, AutoEP 2; one validation at the end (checked against the exported model)."""
    return finished(runs, launches, "ep2")


@pytest.fixture(scope="module")
def ep2_apex_eval2(runs, launches) -> Path:
    """``ep2`` with two changes that must not change its training: ``--adam-impl apex`` (apex needs CUDA, so a
    stand-in with apex's constructor and torch's AdamW maths is put on the path) and a validation every 2 steps."""
    return finished(runs, launches, "ep2_apex_eval2")


@pytest.fixture(scope="module")
def tp2(runs, launches) -> Path:
    """2 processes, ZeRO-3, TP 2 (dp 1: micro batch 1 x accumulation 2)."""
    return finished(runs, launches, "tp2")


@pytest.fixture(scope="module")
def tpep(runs, launches) -> Path:
    """2 processes, ZeRO-3, TP 2 and EP 2 folded onto the same two ranks, micro batch 2."""
    return finished(runs, launches, "tpep")


@pytest.fixture(scope="module")
def compiled(runs, launches) -> Path:
    """2 processes, ZeRO-3, ``--compile``, with Dynamo's graph-break and recompile logs."""
    return finished(runs, launches, "compiled")


@pytest.fixture(scope="module")
def zero2(runs, launches) -> Path:
    """1 process, ZeRO-2, micro batch 2 (as ``ref``, but a ZeRO-2 checkpoint)."""
    return finished(runs, launches, "zero2")


@pytest.fixture(scope="module")
def straggler(runs, launches) -> Path:
    """2 processes, ZeRO-3, STRAGGLER_ITERS steps; rank 1 sleeps SLOW_SECONDS before each forward."""
    return finished(runs, launches, "straggler")


def test_grad_norm_at_zero0_in_fp32_is_the_one_zero2_reports(ref, zero2):
    """DeepSpeed's plain optimizer of ZeRO-0 in fp32 computes no gradient norm (its ZeRO, bf16 and fp16 ones do), so
    the trainer computes it: every step logs the norm DeepSpeed reports for the same run under ZeRO-2. Found
    2026-12-06: grad-norm was NaN in TensorBoard, metrics.jsonl and the console line of every ZeRO-0 fp32 run."""
    got, want = ({m["iteration"]: m["grad-norm"] for m in metrics(run_dir / "metrics.jsonl") if "grad-norm" in m}
                 for run_dir in (ref, zero2))
    assert sorted(got) == sorted(want) == list(range(1, ITERS + 1))
    assert all(math.isfinite(norm) and norm > 0 for norm in got.values()), got
    assert got == pytest.approx(want, rel=1e-4), (got, want)
    assert "grad norm: nan" not in (ref / "log.txt").read_text()


def params_norms(run_dir: Path) -> dict[int, float]:
    """{iteration: params-norm} of a run's metrics file."""
    return {m["iteration"]: m["params-norm"] for m in metrics(run_dir / "metrics.jsonl") if "params-norm" in m}


def test_params_norm_is_the_norm_of_the_weights_saved_after_the_step(ref, tmp_path):
    """``--log-params-norm`` (Megatron's flag): each step logs the L2 norm of all the model's weights after its
    optimizer step, to TensorBoard (``params-norm`` and its ``vs samples`` twin), the metrics file and the console
    line (``params norm``): at every saved step, the norm of the parameters of the checkpoint saved there."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from megamythos.checkpoint.reader import checkpoint_model

    logged = params_norms(ref)
    assert sorted(logged) == list(range(1, ITERS + 1)) and len(set(logged.values())) == ITERS, logged
    for iteration in (2, 4, 6, 8):
        model = checkpoint_model(ref / "ckpt" / f"iter_{iteration:07d}", tmp_path)
        want = math.sqrt(sum(float(p.detach().double().square().sum()) for p in model.parameters()))
        assert logged[iteration] == pytest.approx(want, rel=1e-6), (iteration, logged[iteration], want)
    acc, twins = EventAccumulator(str(ref / "tb")), EventAccumulator(str(ref / "tb" / "samples"))
    acc.Reload()
    twins.Reload()
    assert [e.value for e in acc.Scalars("params-norm")] == pytest.approx([logged[i] for i in sorted(logged)])
    assert [e.step for e in twins.Scalars("params-norm vs samples")] == [2 * i for i in range(1, ITERS + 1)]
    assert f"params norm: {logged[ITERS]:.6g} |" in (ref / "log.txt").read_text()


def test_params_norm_counts_each_weight_once_under_zero2_zero3_tp_and_ep(ref, zero2, zero3, tpep):
    """The norm is that of the whole model whatever holds it: under ZeRO-3 each rank holds a partition of each
    weight, under AutoTP a shard of the split weights (the others whole on every rank), under AutoEP half the
    experts; the same training on 1 process at ZeRO-0 logs the same norms."""
    want = params_norms(ref)
    assert sorted(want) == list(range(1, ITERS + 1))
    for run_dir, rel in ((zero2, 1e-6), (zero3, 1e-6), (tpep, 1e-5)):
        assert params_norms(run_dir) == pytest.approx(want, rel=rel), run_dir.name


def test_loop_capacity_computes_the_scheduled_tokens_alike_under_zero3_tp_and_ep(ref, runs, launches) -> None:
    capacity, spread = finished(runs, launches, "capacity_ref"), finished(runs, launches, "capacity_tpep")
    assert_same_losses(spread, capacity, EP_TOL)
    config = ModelConfig.from_json(next((capacity / "ckpt").glob("iter_*/model_config.json")))
    assert config.loop_capacity == CAPACITY_SCHEDULE and config.backprop_loops == 2
    assert config.capacity_router == "learned"
    steps = [r for r in metrics(capacity / "metrics.jsonl") if "recurrent/loop-count" in r]
    assert len(steps) == ITERS and len({r["recurrent/loop-count"] for r in steps}) > 1
    for record in steps:
        loops = int(record["recurrent/loop-count"])
        assert record["recurrent/active-share"] == list(CAPACITY_SCHEDULE[:loops])  # 32 tokens: exact shares
        assert record["recurrent/mean-depth"] == pytest.approx(sum(CAPACITY_SCHEDULE[:loops]))
        assert len(record["recurrent/router-gate"]) == loops and all(0 < g < 2 for g in record["recurrent/router-gate"])
        assert "recurrent/exit-mean-loops" not in record  # tokens left out of a loop read as exits one loop late
        # the FLOPs behind TFLOP/s and MFU count only the tokens computed
        flops_per_token = record["tflops"] * 1e12 / record["tokens-per-sec"]
        assert flops_per_token == pytest.approx(count(config, 32, loops).train_flops_per_token, rel=1e-6)
        if loops > 2:
            assert flops_per_token < count(config.replace(loop_capacity=()), 32, loops).train_flops_per_token


def test_zero3_two_ranks_matches_zero0_one_rank(ref, zero3):
    """Also: ZeRO-3 sees every tensor the model returns (NamedTuple outputs, no unknown output types) and
    fetches every parameter the model uses within a module call (none is read outside its forward)."""
    assert_same_losses(zero3, ref)
    assert_same_grad_norms(zero3, ref)
    assert "unknown inputs or outputs type" not in (zero3 / "log.txt").read_text()


def test_expert_parallel_matches_no_expert_parallel(ref, ep2):
    assert "tp 1, ep 2, dp 2" in (ep2 / "log.txt").read_text()
    assert "1 AutoEP layer(s)" in (ep2 / "log.txt").read_text()
    assert_same_losses(ep2, ref, tol=EP_TOL)
    assert_same_grad_norms(ep2, ref, rel=1e-3)


def test_apex_adam_is_handed_to_deepspeed_with_expert_groups(ep2, ep2_apex_eval2):
    """``--adam-impl apex`` under ZeRO-3 + AutoEP: DeepSpeed steps the client FusedAdam over the groups our factory
    built (expert parameters split off, per-group weight decay kept) and trains exactly as with its own AdamW."""
    text = (ep2_apex_eval2 / "log.txt").read_text()
    # decay and no-decay dense parameters, and the experts (no norms or biases among them: all decay)
    assert "optimizer: apex FusedAdam (AdamW mode) over 3 parameter groups" in text
    assert "optimizer: FusedAdam (--adam-impl apex)" in text
    assert "optimizer: AdamW (--adam-impl auto)" in (ep2 / "log.txt").read_text()
    assert losses(ep2_apex_eval2 / "metrics.jsonl") == losses(ep2 / "metrics.jsonl")


def test_validation_leaves_the_expert_counts_alone(ep2, ep2_apex_eval2):
    """AutoEP's layer counts the tokens it routes in every forward, validation included; the trainer's validation
    must not move the aux-loss-free bias update: with a validation every 2 steps, the expert loads the updates
    used (``moe/mean-load``, ``moe/max-load``) equal those of the run that validates only at the end."""
    assert sum("lm loss validation" in m for m in metrics(ep2_apex_eval2 / "metrics.jsonl")) == ITERS // 2

    def loads(run_dir: Path) -> dict[int, tuple[float, float]]:
        return {m["iteration"]: (m["moe/mean-load"], m["moe/max-load"]) for m in metrics(run_dir / "metrics.jsonl")
                if "moe/mean-load" in m}

    assert loads(ep2_apex_eval2) == loads(ep2) and len(loads(ep2)) == ITERS


def test_zero0_in_fp32_clips_by_the_global_gradient_norm_under_expert_parallelism(runs, launches):
    """ZeRO-0 in fp32 with AutoEP 2 (dp 2): before every step the optimizer holds the gradients clipped by the whole
    model's norm, the ``grad-norm`` the step logs (each expert counted once): norm x min(1, clip / (norm + 1e-6)).
    Found 2026-12-07: DeepSpeed's engine clipped there by the mean of the two ranks' own norms, each without the
    other rank's experts (1.48695 for a norm of 1.48725), so the steps applied gradients of norm up to 1.00024."""
    run_dir = finished(runs, launches, "ep2_zero0")
    norms = [m["grad-norm"] for m in metrics(run_dir / "metrics.jsonl") if "grad-norm" in m]
    applied = [float(line) for line in (run_dir / "step_norms.txt").read_text().split()]
    assert len(norms) == len(applied) == ITERS
    assert sum(norm > 1 for norm in norms) >= ITERS // 2, norms  # --clip-grad 1 (the default) clips these steps
    assert applied == pytest.approx([norm * min(1.0, 1.0 / (norm + 1e-6)) for norm in norms], rel=1e-6, abs=0)


def test_tensor_parallel_matches_no_tensor_parallel(ref, tp2):
    assert "tp 2, ep 1, dp 1, ZeRO-3, micro 1 x accum 2" in (tp2 / "log.txt").read_text()
    assert_same_losses(tp2, ref)
    assert_same_grad_norms(tp2, ref)


def test_tensor_and_expert_parallel_folded_matches(ref, tpep):
    assert "tp 2, ep 2, dp 1" in (tpep / "log.txt").read_text()
    assert "1 AutoEP layer(s)" in (tpep / "log.txt").read_text()
    # DeepSpeed cannot convert its checkpoints (test_elastic.py): the run says so before its first step
    assert "cannot convert a ZeRO-3 checkpoint of --tp 2 with --ep 2" in (tpep / "log.txt").read_text()
    assert_same_losses(tpep, ref, tol=EP_TOL)
    assert_same_grad_norms(tpep, ref, rel=1e-3)


@requires_grouped_mm
def test_compile_under_zero3_matches_eager_without_graph_breaks(ref, compiled):
    """``--compile`` under ZeRO-3: the recurrent core and each prelude/coda block are ZeRO-3 leaves (fetched whole,
    no hooks inside), so Dynamo logs no graph break, and in training the only recompile is the recurrent block's
    no-grad graph of truncated BPTT (grad mode is part of a graph's guards), never one for another loop index or
    loop count (every step here samples another). The test evaluation at the end of the run adds one recompile per
    compiled function and rank, for eval mode (a module's ``training`` flag and grad mode are guards). The losses
    equal the eager 1-process reference (measured: 7e-7)."""
    text = (compiled / "log.txt").read_text()
    assert "compiling blocks ['prelude.0', 'recurrent.block', 'coda.0', 'token_loss']" in text
    assert "Graph break" not in text, text[-4000:]
    recompiles = Counter(re.search(r"^\[rank(\d+)\].*Recompiling function \w+ in (\S+)", line).groups()
                         for line in text.splitlines() if "Recompiling function" in line)
    reasons = [m.group(1).strip() for line in text.splitlines()
               if (m := re.search(r"\[__recompiles\]\s+- \d+/\d+: (.*)$", line))]
    # the log reaches the ranks (at least the no-grad graph), so "no graph break" above says something
    assert any("recurrent.py" in where for _, where in recompiles), recompiles
    assert all(n <= (2 if "recurrent.py" in where else 1) for (_, where), n in recompiles.items()), recompiles
    eval_mode = re.compile(r"self\.\S+\.training == True\s+#.*")
    assert reasons and all(r == "GLOBAL_STATE changed: grad_mode" or eval_mode.fullmatch(r) for r in reasons), reasons
    assert_same_losses(compiled, ref)


def test_checkpoints_keep_last_k_and_latest(zero3):
    ckpt = zero3 / "ckpt"
    assert sorted(p.name for p in ckpt.iterdir() if p.is_dir()) == ["iter_0000006", "iter_0000008"]
    assert (ckpt / "latest").read_text() == "iter_0000008"
    for tag in ("iter_0000006", "iter_0000008"):
        assert {"rng_rank0.pt", "rng_rank1.pt", "model_config.json"} <= {p.name for p in (ckpt / tag).iterdir()}
    assert not [p for p in ckpt.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_tensorboard_has_megatron_and_recurrent_tags(zero3):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc, twins = EventAccumulator(str(zero3 / "tb")), EventAccumulator(str(zero3 / "tb" / "samples"))
    acc.Reload()
    twins.Reload()
    assert set(twins.Tags()["scalars"]) == {"lm loss vs samples", "learning-rate vs samples", "grad-norm vs samples",
                                            "params-norm vs samples", "tokens-per-sec vs samples",
                                            "loss-scale vs samples", "batch-size vs samples", "world-size vs samples",
                                            "lm loss validation vs samples", "lm loss validation ppl vs samples"}
    tags = set(acc.Tags()["scalars"])
    expected = {"lm loss", "learning-rate", "grad-norm", "params-norm", "tokens-per-sec", "tflops", "mfu", "loss-scale",
                "lm loss validation", "lm loss validation ppl", "recurrent/max-rho", "recurrent/exit-mean-loops",
                "recurrent/exit-share/loop-01", "recurrent/loop-count", "recurrent/state-norm/loop-00", "moe/max-load",
                "moe/mean-load", "moe/load-imbalance", "moe/idle-experts", "moe/bias-min", "moe/bias-max",
                "memory/rss-GiB", "memory/max-rss-GiB"}
    assert expected <= tags, f"missing {sorted(expected - tags)}"
    assert [e.step for e in acc.Scalars("lm loss")] == list(range(1, ITERS + 1))
    assert [e.step for e in twins.Scalars("lm loss vs samples")] == [2 * i for i in range(1, ITERS + 1)]
    assert [e.step for e in acc.Scalars("lm loss validation")] == [4, 8]
    # Megatron's batch-size and world-size, and the tokens --train-tokens counts (seq 32, global batch 2)
    assert {(e.step, e.value) for e in acc.Scalars("batch-size")} == {(i, 2.0) for i in range(1, ITERS + 1)}
    assert {e.value for e in acc.Scalars("world-size")} == {2.0}
    assert [e.value for e in acc.Scalars("trained-tokens")] == [64.0 * i for i in range(1, ITERS + 1)]
    assert [e.value for e in acc.Scalars("consumed-tokens")] == [64.0 * i for i in range(1, ITERS + 1)]
    # the seconds of each save (every 2 iterations) and validation (every 4), as Megatron's timers log them
    assert [e.step for e in acc.Scalars("save-checkpoint-time")] == [2, 4, 6, 8]
    assert [e.step for e in acc.Scalars("eval-time")] == [4, 8]
    assert all(e.value > 0 for e in acc.Scalars("save-checkpoint-time") + acc.Scalars("eval-time"))
    loops = [e.value for e in acc.Scalars("recurrent/loop-count")]
    assert all(1 <= n <= 6 for n in loops) and len(set(loops)) > 1, loops  # sampled per step, capped at max_loops
    exit_loops = [e.value for e in acc.Scalars("recurrent/exit-mean-loops")]
    assert all(1 <= m <= n for m, n in zip(exit_loops, loops)), (exit_loops, loops)
    shares = [r["recurrent/exit-share"] for r in metrics(zero3 / "metrics.jsonl") if "recurrent/exit-share" in r]
    assert len(shares) == ITERS and all(abs(sum(s) - 1) < 1e-6 for s in shares)  # a distribution per step
    assert not any("recurrent/active-share" in r for r in metrics(zero3 / "metrics.jsonl"))  # no loop capacity
    assert all(0 < e.value < 1 for e in acc.Scalars("recurrent/max-rho"))
    rss, peak = ([e.value for e in acc.Scalars(f"memory/{tag}-GiB")] for tag in ("rss", "max-rss"))
    assert all(0.05 < r < 64 and 0.9 * r < p for r, p in zip(rss, peak, strict=True)), (rss, peak)  # GiB per rank
    log = (zero3 / "log.txt").read_text()
    assert f"iteration {ITERS:8d}/{ITERS:8d}" in log and "checkpoints: " in log and "memory (GiB): " in log


def test_two_ranks_log_min_and_max_step_compute_time_and_the_slowest_rank(zero3):
    """Megatron's minmax timers for a world of 2: every step's record (and TensorBoard) holds the min and max over
    ranks of the step compute time and the rank of the max; the console line shows them."""
    steps = [r for r in metrics(zero3 / "metrics.jsonl") if "lm loss" in r]
    assert len(steps) == ITERS
    for r in steps:
        assert 0 < r["timers/step-compute-min"] <= r["timers/step-compute-max"] <= r["iteration-time"] * 1.5, r
        assert r["timers/slowest-rank"] in (0, 1)
    assert "step compute min/max (ms): " in (zero3 / "log.txt").read_text()


def test_checkpoint_of_another_model_is_refused_at_start(zero3, corpus, tmp_path):
    out = run_single([*tiny_args(corpus, ITERS), "--override", "n_experts=8", "--load", str(zero3 / "ckpt")], tmp_path)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "was written for a different model (n_experts: checkpoint 4 vs run 8)" in out.stderr


def test_resume_after_kill_reproduces_uninterrupted_run(zero3, tmp_path, corpus):
    args = [*tiny_args(corpus, ITERS), "--zero", "3", "--micro-batch-size", "1", "--global-batch-size", "2",
            "--save-interval", "2", "--save", str(tmp_path / "ckpt"), "--eval-interval", "4", "--eval-iters", "1"]
    killed_metrics = tmp_path / "killed.jsonl"
    proc = start(2, [*args, "--metrics-file", str(killed_metrics)], tmp_path / "killed.txt")
    wait_for(lambda: max(losses(killed_metrics), default=0) >= 5, proc, "iteration 5")
    os.killpg(proc.pid, signal.SIGKILL)
    finish(proc, tmp_path / "killed.txt")
    reached = max(losses(killed_metrics))
    assert reached < ITERS, "the run finished before it was killed"
    latest = int((tmp_path / "ckpt" / "latest").read_text().removeprefix("iter_"))
    assert 4 <= latest <= reached

    resumed = tmp_path / "resumed.jsonl"
    run(2, [*args, "--metrics-file", str(resumed)], tmp_path / "resumed.txt")  # --load defaults to --save
    got = losses(resumed)
    assert sorted(got) == list(range(latest + 1, ITERS + 1))
    want = losses(zero3 / "metrics.jsonl")
    assert {i: got[i] for i in got} == {i: want[i] for i in got}  # bitwise: same data, RNG, biases, optimizer
    val_got = [m["lm loss validation"] for m in metrics(resumed) if "lm loss validation" in m]
    val_want = [m["lm loss validation"] for m in metrics(zero3 / "metrics.jsonl") if "lm loss validation" in m]
    assert val_got == val_want[-len(val_got):]


def test_sigterm_saves_a_checkpoint_and_exits_zero(tmp_path, corpus):
    log, metrics_file = tmp_path / "log.txt", tmp_path / "metrics.jsonl"
    proc = start(2, [*tiny_args(corpus, 500), "--zero", "3", "--micro-batch-size", "1", "--global-batch-size", "2",
                     "--save", str(tmp_path / "ckpt"), "--metrics-file", str(metrics_file)], log)
    wait_for(lambda: max(losses(metrics_file), default=0) >= 2, proc, "iteration 2")
    ranks = [p for p in psutil.Process(proc.pid).children(recursive=True)
             if " -m megamythos.training.pretrain" in " ".join(p.cmdline())]
    assert len(ranks) == 2
    for p in ranks:  # what SLURM does at the end of a job step: every task gets SIGTERM
        p.send_signal(signal.SIGTERM)
    text = finish(proc, log)
    assert proc.returncode == 0, text[-4000:]
    last = max(losses(metrics_file))
    assert last < 500
    assert (tmp_path / "ckpt" / "latest").read_text() == f"iter_{last:07d}"
    assert "stopping at iteration" in text


def test_sigterm_to_one_rank_during_a_long_validation_saves_at_once(tmp_path, corpus):
    """A SIGTERM to rank 1 alone while both ranks validate (``--eval-iters`` large enough to take an hour):
    the validation is abandoned on both ranks within a micro-batch, the step before it is saved, exit code 0."""
    log, metrics_file, save = tmp_path / "log.txt", tmp_path / "metrics.jsonl", tmp_path / "ckpt"
    proc = start(2, [*tiny_args(corpus, 4), "--zero", "3", "--micro-batch-size", "1", "--global-batch-size", "2",
                     "--eval-interval", "2", "--eval-iters", "100000", "--save", str(save),
                     "--metrics-file", str(metrics_file)], log)
    wait_for(lambda: max(losses(metrics_file), default=0) >= 2, proc, "iteration 2")  # then its validation starts
    ranks = sorted((p for p in psutil.Process(proc.pid).children(recursive=True)
                    if " -m megamythos.training.pretrain" in " ".join(p.cmdline())), key=lambda p: p.pid)
    assert len(ranks) == 2
    rank1 = next(p for p in ranks if p.environ().get("RANK") == "1")
    rank1.send_signal(signal.SIGTERM)
    text = finish(proc, log, timeout=120)
    assert proc.returncode == 0, text[-4000:]
    assert "validation at iteration 2 abandoned after" in text
    assert read_latest(save) == "iter_0000002"
    assert not any("lm loss validation" in m for m in metrics(metrics_file))


def test_two_nodes_through_the_hostfile_path(zero3, tmp_path, corpus):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")
    port = str(free_port())
    args = [*tiny_args(corpus, ITERS), "--zero", "3", "--micro-batch-size", "1", "--global-batch-size", "2",
            "--metrics-file", str(tmp_path / "metrics.jsonl"), "--save", str(tmp_path / "ckpt"), "--eval-interval", "4",
            "--eval-iters", "1"]
    procs = [start(1, args, tmp_path / f"node{r}.txt", ["--hostfile", str(hostfile), "--node-rank", str(r),
                                                          "--master-addr", "127.0.0.1", "--master-port", port])
             for r in (0, 1)]
    for r, proc in enumerate(procs):
        text = finish(proc, tmp_path / f"node{r}.txt")
        assert proc.returncode == 0, text[-4000:]
    assert "world 2" in (tmp_path / "node0.txt").read_text()
    assert_same_losses(tmp_path, zero3, tol=1e-6)


def test_two_nodes_given_other_flags_are_refused_at_start_up(tmp_path, corpus):
    """Found 2026-12-07: each node runs its own `deepspeed --no_ssh --node_rank R` command, and nothing compared
    them. Node 1 with another --seed and --global-batch-size: rank 1 met an index cache it did not find (read as a
    cache_dir that is not shared), said nothing on its node, and rank 0 blamed `a rank of this job (on another node)
    ended during a collective`; --global-batch-size alone hung in the first step. Now both ranks refuse at start-up,
    rank 0 in one line naming rank 1, its host and the flags, before any step or file of the run, and node 1's
    first rank says its own error on its node."""
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")
    port = str(free_port())
    args = [*tiny_args(corpus, ITERS), "--zero", "3", "--micro-batch-size", "1", "--global-batch-size", "2",
            "--save", str(tmp_path / "ckpt"), "--distributed-timeout-minutes", "1"]  # a hang fails within a minute
    node_flags = [[], ["--seed", "8", "--global-batch-size", "4"]]
    procs = [spawn(deepspeed_command(["--hostfile", str(hostfile), "--no_ssh", "--node_rank", str(r), "--master_addr",
                                      "127.0.0.1", "--master_port", port], [*args, *node_flags[r]]),
                   tmp_path / f"node{r}.txt") for r in (0, 1)]
    texts = [finish(proc, tmp_path / f"node{r}.txt", timeout=300) for r, proc in enumerate(procs)]
    assert [proc.returncode for proc in procs] == [2, 2], texts[0][-4000:]
    refusal = (f"rank 1 (host {socket.gethostname()}) was started with other trainer flags than rank 0 (host "
               f"{socket.gethostname()}): --global-batch-size 4 (rank 0: 2), --seed 8 (rank 0: 7); run the same "
               "command, with the same RUN_DIR, on every node")
    assert one_error_line(texts[0]) == f"error: {refusal}"
    # node 1 says it too: an error only its rank met (its own input) was said on no node before
    assert one_error_line(texts[1]) == f"error: rank 1: {refusal}"
    assert not (tmp_path / "ckpt" / "metrics.jsonl").exists() and read_latest(tmp_path / "ckpt") is None


@pytest.mark.parametrize("name", ["ep2", "ep2_zero0"])
def test_export_round_trip(ref, runs, launches, name, tmp_path, corpus):
    """Export the AutoEP checkpoint of ZeRO-3, and of ZeRO-0, whose experts DeepSpeed keeps in per-expert files
    beside the model states (found 2026-12-06: one of them was read as the client state, and the tag went through
    ds_to_universal, which failed): MythosLM with the exported weights reproduces the validation loss the engine
    computed at the last step, and agrees with the export of the ZeRO-0 reference run."""
    from megamythos.checkpoint.export import main as export_main
    from megamythos.checkpoint.reader import load_exported
    from megamythos.data.pretraining import DataSources, build_datasets, collate
    from megamythos.model.config import ModelConfig
    from megamythos.model.lm import MythosLM
    from megamythos.training.arguments import parse_args

    ep2 = finished(runs, launches, name)
    assert export_main([str(ep2 / "ckpt"), str(tmp_path / "ep2")]) == 0
    assert export_main([str(ref / "ckpt"), str(tmp_path / "ref")]) == 0
    exported, reference = load_exported(tmp_path / "ep2").eval(), load_exported(tmp_path / "ref").eval()
    assert exported.config == reference.config == ModelConfig.from_json(tmp_path / "ep2" / "config.json")

    args = parse_args([*tiny_args(corpus, ITERS), *EP2_ARGS])
    prefix = next((corpus).glob("*_text_document.bin")).with_suffix("")
    _, valid, _ = build_datasets(args.data_recipe(), DataSources([str(prefix)]), ITERS, global_batch=2)
    tokens, labels = collate([valid[0], valid[1]])  # the two ranks' first validation micro-batches
    with torch.no_grad():
        per_rank = [exported(tokens[i:i + 1], labels=labels[i:i + 1], n_loops=exported.config.mean_loops).loss
                    for i in range(2)]
    logged = [m["lm loss validation"] for m in metrics(ep2 / "metrics.jsonl") if "lm loss validation" in m]
    assert logged and abs(float(sum(per_rank)) / 2 - logged[-1]) < 1e-5

    got, want = exported.state_dict(), reference.state_dict()  # the ZeRO-0 export reads the module state directly
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in want.items()}
    with torch.no_grad():  # same training with and without EP: the same model up to the drift EP_TOL allows
        ref_loss = reference(tokens, labels=labels, n_loops=reference.config.mean_loops).loss
    assert abs(float(ref_loss) - logged[-1]) < 5e-3
    torch.manual_seed(7)  # the trainer's --seed: the initial weights
    init = MythosLM(exported.config).state_dict()
    for name in ("recurrent.block.moe.experts.gate_up_proj", "recurrent.block.moe.experts.down_proj",
                 "recurrent.block.moe.gate.weight", "recurrent.block.moe.shared_experts.w_up.weight"):
        assert (got[name] - init[name]).abs().max() > 1e-3, f"{name} did not train under expert parallelism"
    assert got["recurrent.block.moe.gate.e_score_correction_bias"].abs().max() > 0  # biases from client state


def test_export_of_a_zero2_checkpoint_equals_the_zero0_one(ref, zero2, tmp_path):
    """ZeRO-1/2 checkpoints carry no universal-checkpoint info of their own (DeepSpeed's ds_to_universal asserted
    on it); the export injects the default and reads the same weights as from the ZeRO-0 run's module state."""
    from megamythos.checkpoint.export import main as export_main
    from megamythos.checkpoint.reader import load_exported

    assert_same_losses(zero2, ref)
    assert export_main([str(zero2 / "ckpt"), str(tmp_path / "zero2")]) == 0
    assert export_main([str(ref / "ckpt"), str(tmp_path / "ref")]) == 0
    got, want = load_exported(tmp_path / "zero2").state_dict(), load_exported(tmp_path / "ref").state_dict()
    assert got.keys() == want.keys()
    diffs = {name: float((got[name] - want[name]).abs().max()) for name in want}
    assert max(diffs.values()) < 1e-5, diffs  # measured 5e-7


def test_a_slow_rank_is_timed_as_the_slowest_and_named_once_with_its_host(straggler):
    """Rank 1 computes SLOW_SECONDS longer per step: it is the slowest rank of every step, the fastest rank's time
    leaves out the wait for it in the collectives (so max - min is about SLOW_SECONDS), and one warning names
    rank 1 and its host."""
    steps = [r for r in metrics(straggler / "metrics.jsonl") if "lm loss" in r]
    assert len(steps) == STRAGGLER_ITERS
    assert [r["timers/slowest-rank"] for r in steps] == [1.0] * STRAGGLER_ITERS
    gaps = [r["timers/step-compute-max"] - r["timers/step-compute-min"] for r in steps]
    assert statistics.median(gaps) > 0.7 * SLOW_SECONDS, gaps
    log = (straggler / "log.txt").read_text()
    warnings = [line for line in log.splitlines() if "is a straggler" in line]
    assert len(warnings) == 1 and f"rank 1 on host {socket.gethostname()} is a straggler" in warnings[0], warnings
    assert "(rank 1)" in log.split(f"iteration {STRAGGLER_ITERS:8d}/")[1].splitlines()[0]
