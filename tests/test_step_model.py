"""The step model's predicted collective bytes against the trainer's measured ones (2 CPU ranks, ZeRO-3, EP 2,
TP 2, the CPU template's leaf blocks), the ZeRO-3 gathers of the recurrent block bounded in T, and the analytic
properties of the model."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from megamythos.model.config import get_preset
from megamythos.model.params import count
from megamythos.planning.layout import ParallelLayout, reduces_in_fp32, zero_buffers
from megamythos.planning.memory import memory_plan
from megamythos.planning.plan import main as params_main
from megamythos.planning.step_model import KINDS, Cluster, StepSettings, step_plan
from megamythos.training.arguments import parse_args
from tests.helpers import REPO, LaunchPool, metrics, one_error_line, plain_zero3_template, run, tiny_args, trains

ITERS = 4
LAYOUTS = {  # name: (trainer flags, step-model layout for 2 ranks, fp32, seq 32)
    "zero3": (["--zero", "3"], dict(world_size=2, zero=3, global_batch_size=2)),
    "ep2": (["--zero", "3", "--ep", "2"], dict(world_size=2, ep=2, zero=3, global_batch_size=2)),
    "tp2": (["--zero", "3", "--tp", "2"], dict(world_size=2, tp=2, zero=3, global_batch_size=2)),
    "zero3-leaf": (["--zero", "3"], dict(world_size=2, zero=3, global_batch_size=2, replicate_core=False,
                                         leaf_blocks=True)),
}


def trainer_config(corpus: Path):
    """The model config exactly as the trainer resolves it from ``tiny_args``."""
    args = parse_args(tiny_args(corpus, ITERS))
    return get_preset(args.preset, **{"max_seq_len": args.seq_length, **args.model_overrides()})


def train(out: Path, corpus: Path, name: str) -> None:
    """A 2-rank run of layout ``name``: the CPU template (leaf blocks) or, for the others, that template without
    its leaf modules (DeepSpeed's hook on every submodule, the path the large layouts run)."""
    template = REPO / "ds_configs" / "cpu-debug.json"
    if not LAYOUTS[name][1].get("leaf_blocks"):
        template = out / "ds_config.json"
        template.write_text(json.dumps(plain_zero3_template()))
    run(2, [*tiny_args(corpus, ITERS), *LAYOUTS[name][0], "--ds-config", str(template), "--micro-batch-size", "1",
            "--global-batch-size", "2", "--metrics-file", str(out / "metrics.jsonl"), "--save", str(out / "ckpt"),
            "--tensorboard-dir", str(out / "tb")], out / "log.txt")


@pytest.fixture(scope="module")
@trains
def runs(launches: LaunchPool, tmp_path_factory, corpus) -> dict[str, Path]:
    """Starts the 2-rank launch of every layout at once in conftest's ``launches`` (two at a time); returns
    {layout name: run directory}, finished or not."""
    dirs = {}
    for name in LAYOUTS:
        dirs[name] = tmp_path_factory.mktemp(name)
        launches.submit(f"step_model/{name}", train, dirs[name], corpus, name)
    return dirs


@pytest.fixture(scope="module", params=list(LAYOUTS))
def measured(request, runs, launches: LaunchPool) -> tuple[str, list[dict], Path]:
    """(layout name, metrics records of its steps, TensorBoard directory) of one 2-rank launch."""
    name = request.param
    launches.result(f"step_model/{name}")
    out = runs[name]
    return name, [m for m in metrics(out / "metrics.jsonl") if "comm/all-gather-bytes" in m], out / "tb"


@pytest.mark.distributed
@pytest.mark.launch
def test_predicted_bytes_match_measured_within_10_percent(measured, corpus):
    """Summed over the steps after the first (each runs a T other than its predecessor's), per collective kind
    that carries at least 1% of the traffic."""
    name, steps, _ = measured
    assert [int(s["iteration"]) for s in steps] == list(range(1, ITERS + 1))
    loops = [int(s["recurrent/loop-count"]) for s in steps]
    assert all(a != b for a, b in zip(loops, loops[1:])), loops  # every step after the first changed T
    config = trainer_config(corpus)
    layout, settings = ParallelLayout(**LAYOUTS[name][1]), StepSettings(seq_len=32, weight_bytes=4, act_bytes=4)
    got = {k: sum(s[f"comm/{k}-bytes"] for s in steps[1:]) for k in KINDS}
    want = {k: sum(step_plan(config, layout, settings, n_loops=t).bytes_by_kind()[k] for t in loops[1:])
            for k in KINDS}
    total = sum(got.values())
    for kind in KINDS:
        if max(got[kind], want[kind]) < 0.01 * total:
            continue
        assert abs(got[kind] - want[kind]) <= 0.10 * got[kind], (name, kind, got, want)


@pytest.mark.distributed
@pytest.mark.launch
def test_zero3_gathers_of_the_recurrent_block_do_not_grow_with_loops(measured):
    """Replicated core or leaf blocks: all-gather bytes of a step after a change of T do not depend on T (issue
    goal: the largest T within 1.5x of T = 1). DeepSpeed's default gathers the block for every use: ~3T times."""
    name, steps, _ = measured
    if name == "tp2":  # dp = 1: ZeRO has nothing to gather, whatever T (DeepSpeed skips a gather of one rank)
        assert all(s["comm/all-gather-bytes"] == 0 for s in steps), [s["comm/all-gather-bytes"] for s in steps]
        return
    by_loops = {int(s["recurrent/loop-count"]): s["comm/all-gather-bytes"] for s in steps[1:]}
    assert max(by_loops) >= 4 and 1 in by_loops, by_loops
    assert by_loops[max(by_loops)] <= 1.5 * by_loops[1], by_loops


@pytest.mark.distributed
@pytest.mark.launch
def test_comm_scalars_reach_tensorboard_every_step(measured):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, steps, tb = measured
    acc = EventAccumulator(str(tb))
    acc.Reload()
    for kind in KINDS:
        for unit in ("bytes", "calls"):
            events = acc.Scalars(f"comm/{kind}-{unit}")
            assert [e.step for e in events] == list(range(1, ITERS + 1))
            logged = [s[f"comm/{kind}-{unit}"] for s in steps]
            assert [e.value for e in events] == pytest.approx(logged, rel=1e-6)


def test_replicated_core_is_gathered_once_per_step_and_partitioned_core_per_use():
    config = get_preset("tiny").replace(checkpoint_loops=True)
    settings = StepSettings(seq_len=64)
    gathers = {(replicate, t): step_plan(config, ParallelLayout(world_size=2, zero=3, replicate_core=replicate),
                                         settings, n_loops=t).bytes_by_kind()["all-gather"]
               for replicate in (True, False) for t in (1, 8)}
    assert gathers[(True, 1)] == gathers[(True, 8)]
    assert gathers[(False, 8)] > 5 * gathers[(False, 1)] / 2  # (1 + r) T + k = 3 T gathers of the block


def test_leaf_blocks_gather_the_model_once_per_step_whatever_the_loops():
    config = get_preset("tiny").replace(checkpoint_loops=True)
    layout = ParallelLayout(world_size=2, zero=3, replicate_core=False, leaf_blocks=True)
    plans = [step_plan(config, layout, StepSettings(seq_len=64, weight_bytes=4), n_loops=t).bytes_by_kind()
             for t in (1, 8)]
    assert plans[0]["all-gather"] == plans[1]["all-gather"] == plans[0]["reduce-scatter"]  # every weight once


def test_bf16_gradients_are_reduced_in_fp32_wherever_ranks_sum_them():
    """The trainer asks DeepSpeed for fp32 gradient reductions under bf16 where more than two ranks sum them
    (:func:`megamythos.planning.layout.reduces_in_fp32`): twice the bytes of the bf16 weights they reduce."""
    config = get_preset("tiny")
    for zero, kind in ((3, "reduce-scatter"), (2, "all-reduce")):
        layout = ParallelLayout(world_size=4, zero=zero)
        bf16, fp32 = (step_plan(config, layout, StepSettings(seq_len=64, weight_bytes=w)).bytes_by_kind()
                      for w in (2, 4))
        assert bf16[kind] == fp32[kind] > 0 and 2 * bf16["all-gather"] == fp32["all-gather"] > 0, zero
    two = [step_plan(config, ParallelLayout(world_size=2), StepSettings(seq_len=64, weight_bytes=w)).bytes_by_kind()
           for w in (2, 4)]
    assert 2 * two[0]["reduce-scatter"] == two[1]["reduce-scatter"] > 0  # two ranks' bf16 sum: rounded once anyway


def test_tp_collectives_stay_inside_a_node_and_ep_crosses_nodes():
    layout = ParallelLayout(world_size=1024, tp=8, ep=128, global_batch_size=1024)  # accumulation 8
    plan = step_plan(get_preset("1t").replace(checkpoint_loops=True), layout)
    links = {c.group: c.link for c in plan.collectives}
    assert links["tp (activations)"] == "nvlink"
    assert links["ep (tokens)"] == "nvlink+infiniband" and links["dp (rest)"] == "infiniband"
    assert plan.step_seconds > plan.compute_seconds and 0 < plan.mfu < Cluster().mfu


def test_faster_infiniband_shortens_the_predicted_step():
    config = get_preset("1t").replace(checkpoint_loops=True)
    layout = ParallelLayout(world_size=1024, tp=8, ep=128, global_batch_size=1024)
    slow, fast = (step_plan(config, layout, cluster=Cluster(ib_gbs=bw)).step_seconds for bw in (25.0, 100.0))
    assert fast < slow


def test_tp_ranks_each_run_the_compute_autotp_does_not_shard():
    """AutoTP shards attention and the dense SwiGLU only: the experts and the LM head run on every TP rank. What the
    model charges for them moves exactly with the FLOPs ``params.count`` gives the expert width and the vocabulary
    (so nothing AutoTP shards is counted as replicated, and nothing replicated is left out)."""
    base = get_preset("tiny").replace(checkpoint_loops=True, loop_checkpoint_segment=1)  # 1 recompute forward
    layouts = [ParallelLayout(world_size=8, tp=tp, global_batch_size=8) for tp in (1, 2)]
    seconds_per_flop_per_gpu = 1 / (Cluster().peak_tflops * 1e12 * Cluster().mfu) / 8

    def tp2_extra_and_executed(c) -> tuple[float, float]:
        one, two = (step_plan(c, layout, StepSettings(seq_len=128)) for layout in layouts)
        report = count(c, 128)
        executed = (report.train_flops_per_token + report.recompute_flops_per_token) * one.tokens_per_step
        return two.compute_seconds - one.compute_seconds, executed * seconds_per_flop_per_gpu

    for changed in (base.replace(expert_dim=2 * base.expert_dim), base.replace(vocab_size=2 * base.vocab_size)):
        (extra0, executed0), (extra1, executed1) = map(tp2_extra_and_executed, (base, changed))
        assert extra0 > 0 and extra1 - extra0 == pytest.approx(executed1 - executed0, rel=1e-9)


def test_the_1t_launcher_runs_the_fastest_layout_that_fits_with_a_margin():
    """``launchers/pretrain_1t.sh`` says its layout was chosen with the step model: among TP 1-8 and EP 64-512 on
    1024 GPUs, those whose memory plan leaves 10% of a 141 GB part (none fits 80 GB), it is within 0.5% of the
    fastest."""
    config = get_preset("1t").replace(checkpoint_loops=True, loop_checkpoint_segment=0, checkpoint_dense_blocks=True)
    template = REPO / "ds_configs" / "1t.json"
    buffers = zero_buffers(json.loads(template.read_text())["zero_optimization"], template)
    step, fits = {}, {}
    for tp in (1, 2, 4, 8):
        for ep in (64, 128, 256, 512):
            layout = ParallelLayout(world_size=1024, tp=tp, ep=ep, global_batch_size=1024)
            plan = memory_plan(config, 1024, tp, ep, 3, 1, 4096, replicated_core=True, buffers=buffers,
                               fp32_reduce=reduces_in_fp32(layout, bf16=True))
            assert plan.total_gib > 80e9 / 2**30
            fits[tp, ep] = plan.total_gib <= 0.9 * 141e9 / 2**30
            step[tp, ep] = step_plan(config, layout).step_seconds
    text = (REPO / "launchers" / "pretrain_1t.sh").read_text()
    chosen = (int(re.search(r'--tp "\$\{TP:-(\d+)\}"', text)[1]), int(re.search(r'--ep "\$\{EP:-(\d+)\}"', text)[1]))
    assert fits[chosen] and step[chosen] <= 1.005 * min(t for key, t in step.items() if fits[key]), (chosen, step)


def test_params_cli_plan_prints_collectives_step_time_and_memory(capsys):
    assert params_main(["--preset", "1t", "--gpus", "1024", "--tp", "8", "--ep", "128", "--grad-accum", "8",
                        "--plan", "--ib-gbs", "50", "--nvlink-gbs", "450"]) == 0
    out = capsys.readouterr().out
    for text in ("memory per GPU", "compute", "all-gather", "reduce-scatter", "all-to-all", "all-reduce",
                 "infiniband", "nvlink", "step time", "tokens/s", "MFU"):
        assert text in out, text


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "ds_configs").glob("*.json")))
def test_the_plan_s_layout_is_the_one_the_trainer_builds_from_the_same_flags(name: str, tmp_path, capsys) -> None:
    """Found 2026-12-07: ``plan --gpus N --ds-config F`` read only ZeRO++ options and buffer sizes from F, so it
    planned ZeRO-3, tp 1, ep 1, micro-batch 1 and a replicated core where the trainer given the same flags takes F's
    stage, AutoTP/AutoEP sizes, batch sizes and leaf modules (single-node-8gpu.json on 8 ranks: the plan's ep 1,
    micro 1 x accumulation 1 against the trainer's ep 8, micro 4 x accumulation 8), and a replicated core where the
    trainer's ``--compile`` (after ``--``) makes ZeRO-3's blocks leaf modules."""
    from megamythos.planning.plan import plan
    from megamythos.training.ds_config import load_template, resolve_layout

    path = str(REPO / "ds_configs" / name)
    compared = 0
    for world in (1, 2, 4, 8):
        for flags in ([], ["--ep", "2"], ["--zero", "2", "--micro-batch-size", "2"], ["--", "--compile"]):
            argv = ["--preset", "small", "--gpus", str(world), "--ds-config", path, "--json", *flags]
            trainer_flags = [flag for flag in flags if flag != "--"]  # --compile: the trainer's, after -- in a plan
            try:
                trainer = resolve_layout(load_template(path), parse_args(["--ds-config", path, *trainer_flags]),
                                         world)
            except ValueError as refused:  # a layout the trainer refuses: the plan refuses it alike
                with pytest.raises(ValueError, match=re.escape(str(refused))):
                    plan(argv)
                continue
            planned = plan(argv)["layout"]
            assert {k: planned[k] for k in trainer.__dataclass_fields__} == vars(trainer), (world, flags)
            assert planned["grad_accum"] == trainer.grad_accum
            compared += 1
    assert compared >= 3
    malformed = tmp_path / name  # the layout keys the plan now reads are checked as the trainer checks them
    malformed.write_text(json.dumps({**load_template(path), "tensor_parallel": {"autotp_size": "2"}}))
    assert params_main(["--gpus", "2", "--ds-config", str(malformed)]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: --ds-config {malformed}: tensor_parallel.autotp_size must be a positive integer, got '2'")


@pytest.mark.parametrize("text, message", [('{"bf16": true}', "bf16 must be an object, got True"),
                                           ('{"bf16": {"enabled": "false"}}',
                                            "bf16.enabled must be true or false, got 'false'")])
def test_a_malformed_bf16_section_is_the_trainer_s_one_line_in_the_planner(text: str, message: str, tmp_path,
                                                                           capsys) -> None:
    """Found 2026-12-07 (review): the plan, which now takes the trainer's precision from ``--ds-config``, read
    ``"bf16": true`` as an AttributeError traceback (exit 1) and ``"enabled": "false"`` as bf16, where the
    trainer refuses both in one line."""
    path = tmp_path / "ds.json"
    path.write_text(text)
    assert params_main(["--gpus", "2", "--ds-config", str(path)]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"error: --ds-config {path}: {message}"


def test_the_plan_s_precision_is_the_one_the_trainer_trains_in(tmp_path) -> None:
    """Found 2026-12-07: ``plan --gpus N --ds-config F`` planned bf16 weights, gradients and activations and a bf16
    step where F turns bf16 off (``"bf16": {"enabled": false}``) or the trainer's ``--no-bf16`` follows ``--``, and
    the trainer trains in fp32. The plan now takes the trainer's precision: fp32 weights, gradients, start-up copy,
    activations and collectives, and under ZeRO-3 no fp32 master copy beside the Adam moments."""
    from megamythos.planning.plan import plan
    from megamythos.training.ds_config import bf16_enabled, load_template

    bf16_path = REPO / "ds_configs" / "single-node-8gpu.json"  # ZeRO-3, bf16
    fp32_path = tmp_path / "fp32.json"
    fp32_path.write_text(json.dumps({**load_template(bf16_path), "bf16": {"enabled": False}}))
    plans = {}
    for path, trainer_flags in ((bf16_path, []), (fp32_path, []), (fp32_path, ["--bf16"]), (bf16_path, ["--no-bf16"])):
        planned = plan(["--preset", "small", "--gpus", "8", "--ds-config", str(path), "--plan", "--json", "--",
                        *trainer_flags])
        bf16 = bf16_enabled(load_template(path), parse_args(["--ds-config", str(path), *trainer_flags]).bf16)
        assert planned["layout"]["dtype"] == ("bf16" if bf16 else "fp32"), (path, trainer_flags)
        assert planned["step_plan"]["layout"]["weight_bytes"] == (2 if bf16 else 4)
        plans.setdefault(bf16, planned)
    bf16_plan, fp32_plan = plans[True], plans[False]
    fp32_mem, bf16_mem = fp32_plan["memory_plan"], bf16_plan["memory_plan"]
    for key in ("weights_gib", "startup_device_gib"):
        assert fp32_mem[key] == pytest.approx(2 * bf16_mem[key]), key
    assert fp32_mem["optimizer_gib"] == pytest.approx(8 / 12 * bf16_mem["optimizer_gib"])
    assert fp32_mem["grads_gib"] > bf16_mem["grads_gib"]  # bf16's partitions sum 8 micro-batches in fp32 already
    assert fp32_mem["activations_gib"] > bf16_mem["activations_gib"]
    assert fp32_plan["step_plan"]["step_seconds"] > bf16_plan["step_plan"]["step_seconds"]


def test_the_plan_s_peak_follows_its_precision(tmp_path) -> None:
    """Found 2026-12-07: ``--peak-tflops`` defaulted to the H100's dense bf16 figure (989) in an fp32 plan too, whose
    matmuls the trainer runs in FP32 (67): its compute time and step time were about 15x too short. An fp32 plan
    now takes the FP32 figure unless --peak-tflops is given; a bf16 plan keeps 989 (the figures of the docs)."""
    from megamythos.planning.plan import plan
    from megamythos.training.ds_config import load_template

    bf16_path = REPO / "ds_configs" / "single-node-8gpu.json"
    fp32_path = tmp_path / "fp32.json"
    fp32_path.write_text(json.dumps({**load_template(bf16_path), "bf16": {"enabled": False}}))

    def planned(path: Path, *flags: str) -> dict:
        return plan(["--preset", "small", "--gpus", "8", "--ds-config", str(path), "--plan", "--json", *flags])

    bf16, fp32 = planned(bf16_path)["step_plan"], planned(fp32_path)["step_plan"]
    assert (bf16["cluster"]["peak_tflops"], fp32["cluster"]["peak_tflops"]) == (989.0, 67.0)
    assert fp32["compute_seconds"] == pytest.approx(bf16["compute_seconds"] * 989 / 67)
    assert planned(fp32_path, "--peak-tflops", "494.5")["step_plan"]["cluster"]["peak_tflops"] == 494.5


def test_a_step_deeper_than_training_runs_is_refused_and_a_deeper_count_warned(capsys, caplog) -> None:
    """Found 2026-12-07: ``plan --loops L --plan`` with L above the model's max_loops (2 x mean_loops) timed a
    training step of L loops, which the trainer never runs (it clips each step's sampled count at max_loops). The
    step model now refuses it naming --loops and the range; without --plan the counts (effective parameters, KV
    cache: an inference at L loops, which evaluate and generate may run) come with a warning."""
    deepest = get_preset("tiny").resolved_max_loops
    plan = ["--preset", "tiny", "--gpus", "2", "--plan"]
    assert params_main([*plan, "--loops", str(deepest)]) == 0
    capsys.readouterr()
    assert params_main([*plan, "--loops", str(deepest + 1)]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith(
        f"error: --loops {deepest + 1} is above the model's max_loops {deepest}, where training clips each step's "
        f"sampled loop count: no training step runs {deepest + 1} loops; give --loops 1 to {deepest} with --plan")
    with caplog.at_level("WARNING"):
        assert params_main(["--preset", "tiny", "--loops", str(deepest + 1)]) == 0
    assert "the training FLOPs/token are of a step the trainer never runs" in caplog.text


def test_the_plan_is_of_the_model_the_trainer_flags_after_the_dashes_make(tmp_path) -> None:
    """Found 2026-12-08 (feature combinations): ``plan --hostfile F ... -- --mean-loops 48 --override dim=8192``
    printed a command that trained that model while the plan sized the preset. Every trainer flag after ``--``
    that sets a model field (``--override F=V``, ``--override=F=V``, ``--mean-loops``, ``--backprop-loops``; the
    last of a field wins, as in the trainer) now makes the model planned, with or without --hostfile."""
    from megamythos.model.params import count
    from megamythos.planning.plan import plan

    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node1 slots=8\n")
    base = ["--preset", "small", "--gpus", "8", "--ds-config", str(REPO / "ds_configs" / "multi-node.json"), "--json"]
    trainer = ["--", "--override", "dim=512", "--override", "dim=1024", "--override=n_heads=16", "--mean-loops", "6",
               "--backprop-loops", "3"]
    expected = count(get_preset("small", dim=1024, n_heads=16, mean_loops=6, backprop_loops=3))
    for where in ([], ["--hostfile", str(hostfile)]):
        planned = plan([*base, *where, *trainer])
        assert planned["total"] == expected.total, where
        assert planned["effective_per_token"] == expected.effective_per_token, where
    assert plan(base)["total"] == count(get_preset("small")).total



@pytest.mark.parametrize("trainer", [["--mean-loops", "6", "--override", "mean_loops=4"],
                                     ["--override=backprop_loops=1", "--backprop-loops", "3"]])
def test_the_plan_refuses_a_field_the_trainer_flags_after_the_dashes_set_twice(trainer, capsys) -> None:
    """Found 2026-12-08 (review): the trainer refuses a field that its alias flag and ``--override`` set to two
    values, but the plan took the flag's (``-- --mean-loops 6 --override mean_loops=4`` planned 6 loops): a plan of
    a command that never trains. The plan now refuses it with the trainer's line."""
    from megamythos.training.arguments import ArgumentError, parse_args

    with pytest.raises(ArgumentError) as refused:
        parse_args(trainer)
    assert params_main(["--preset", "tiny", "--gpus", "1", "--", *trainer]) == 2
    assert capsys.readouterr().err.strip().endswith(str(refused.value))


def test_the_plan_reads_no_prefix_of_a_trainer_flag_after_the_dashes() -> None:
    """Found 2026-12-08 (review): the plan read ``-- --mean 6`` as ``--mean-loops 6`` and planned 6 loops, where the
    trainer takes no prefix of a flag (it refuses ``--mean``)."""
    from megamythos.planning.plan import plan

    assert plan(["--preset", "tiny", "--gpus", "1", "--json", "--", "--mean", "6"])["effective_per_token"] == (
        count(get_preset("tiny")).effective_per_token)


@pytest.mark.parametrize("value, message", [("abc", "'abc' is not an integer"), ("0", "must be >= 1, got 0")])
def test_a_bad_trainer_loop_flag_after_the_dashes_is_one_line_as_the_trainer_s(value, message, capsys) -> None:
    """Found 2026-12-08 (review): ``plan ... -- --mean-loops abc`` printed an argparse usage block of a ``plan.py``
    with ``--override OVERRIDE`` flags, and ``--mean-loops 0`` a ModelConfig line: the trainer's is one line."""
    with pytest.raises(SystemExit) as exited:  # as the planner's own flags
        params_main(["--preset", "tiny", "--gpus", "1", "--", "--mean-loops", value])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.strip() == one_error_line(err) and f"argument --mean-loops: {message}" in err
