"""The divergence guard: a finite lm loss far above a uniform guess, or a spike over the running median for
``--spike-patience`` steps, stops the run (exit 2, one line naming the step, the loss, the threshold and the last
good checkpoint, which ``latest`` names) or, under ``--on-divergence rollback``, reloads that checkpoint and skips
the samples read since, at most ``--max-rollbacks`` times.

The defaults are checked against recorded loss curves (bench/results/divergence.json, the study's results) rather
than long runs; two launches cover the trainer: a learning rate that diverges finitely, and one poisoned batch.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from megamythos.checkpoint.files import LATEST, TAG_RE, CheckpointError, read_latest, tag_for
from megamythos.data.indexed_dataset import IndexedDatasetBuilder
from megamythos.errors import run_cli
from megamythos.training.arguments import TrainArgs, parse_args
from megamythos.training.checkpointing import check_run_dirs
from megamythos.training.divergence import Divergence, DivergenceError, DivergenceGuard, step_back
from megamythos.training.pretrain import Trainer
from tests.helpers import REPO, VOCAB, corpus_prefix, metrics, run, run_single, shm_buffers_left, tiny_args

RECORD = REPO / "bench" / "results" / "divergence.json"


def default_guard(vocab_size: int) -> DivergenceGuard:
    args = TrainArgs()
    return DivergenceGuard(vocab_size, args.divergence_factor, args.spike_factor, args.spike_window,
                           args.spike_patience)


def first_divergence(guard: DivergenceGuard, losses: list[float]) -> Divergence | None:
    return next((d for i, loss in enumerate(losses, 1) if (d := guard.observe(loss, i))), None)


# ---------------------------------------------------------------------------------------------- the guard
def test_defaults_never_fire_on_the_default_run_or_the_study():
    """The 400 losses of the default run (2026-12-05) and every training curve of the study (every steps/50-th
    loss) pass the defaults, with the margins the defaults were chosen by."""
    run_record = json.loads(RECORD.read_text())["default_run"]
    losses = run_record["lm_loss"]
    assert len(losses) == 400 and first_divergence(default_guard(8192), losses) is None
    args = TrainArgs()
    assert max(losses) / math.log(8192) * 1.9 < args.divergence_factor  # the highest loss is ~1.01 x ln(vocab)
    assert run_record["max_ratio_to_window_median"] * 1.1 < args.spike_factor
    assert max(run_record["longest_run_above_ratio"].values()) < args.spike_patience
    studies = sorted((REPO / "bench" / "results" / "study").rglob("study_*.json"))
    assert studies
    for path in studies:
        study = json.loads(path.read_text())
        for spec in study["runs"]:
            guard = default_guard(study["base_config"]["vocab_size"])
            assert first_divergence(guard, spec["train_loss_curve"]) is None, (path, spec["name"])


def test_a_loss_above_the_ceiling_stops_at_once():
    guard = DivergenceGuard(8192, divergence_factor=2.0, spike_factor=0, spike_window=5, spike_patience=3)
    assert first_divergence(guard, [9.0, 8.0, 17.9]) is None
    diverged = guard.observe(490.0, 4)
    assert diverged == Divergence(4, 490.0, 2.0 * math.log(8192), "2 x ln(vocab 8192) (--divergence-factor)", 4)
    assert diverged.describe() == "iteration 4: lm loss 490 > 18.0218 = 2 x ln(vocab 8192) (--divergence-factor)"


def test_a_spike_counts_after_the_window_fills_and_stops_after_patience_steps():
    guard = DivergenceGuard(8192, divergence_factor=0, spike_factor=1.5, spike_window=3, spike_patience=2)
    assert guard.ceiling == math.inf
    assert first_divergence(guard, [9.0, 4.0, 4.0]) is None  # 9 > 1.5 x ...: no window yet
    assert guard.spike_threshold() == pytest.approx(6.0)
    assert guard.observe(6.5, 4) is None and guard.spiking  # one spike step: no checkpoint until it ends
    assert guard.observe(4.2, 5) is None and not guard.spiking  # a short spike is forgiven and stays out of the window
    assert list(guard.window) == [4.0, 4.0, 4.2]
    assert guard.observe(7.0, 6) is None
    diverged = guard.observe(30.0, 7)
    assert (diverged.iteration, diverged.since, diverged.threshold) == (7, 6, pytest.approx(6.0))
    assert diverged.describe().endswith("(--spike-factor, --spike-window) for 2 steps in a row since iteration 6")
    guard.restart()  # after a rollback: the streak is over, the window stays
    assert not guard.spiking and guard.observe(4.1, 6) is None


def test_one_spike_gives_one_divergence():
    """A loss sequence that spikes once for ``patience`` steps and recovers fires once."""
    guard = DivergenceGuard(384, divergence_factor=2.0, spike_factor=1.5, spike_window=4, spike_patience=2)
    losses = [5.9, 5.5, 5.2, 5.0, 4.9, 8.0, 9.0, 4.8, 4.7, 4.8, 4.6]
    fired = [d.iteration for i, loss in enumerate(losses, 1) if (d := guard.observe(loss, i))]
    assert fired == [7]


def make_tags(save: Path, iterations: list[int], latest: int) -> None:
    for it in iterations:
        (save / tag_for(it)).mkdir(parents=True)
    (save / f"{tag_for(latest)}_universal_model").mkdir()
    (save / LATEST).write_text(tag_for(latest))


def test_step_back_drops_the_checkpoint_whose_weights_gave_the_first_bad_loss(tmp_path):
    """The loss of iteration t is that of the weights saved at t - 1: a divergence first seen at iteration 5 moves
    the checkpoints of iterations 4 and later (5 here: a partial save newer than ``latest``) aside, where nothing
    resumes them but nothing is lost; a tag whose checksums fail is passed over."""
    make_tags(tmp_path, [2, 3, 4, 5], latest=4)
    assert step_back(tmp_path, first_bad=5) == tmp_path / tag_for(3)
    assert read_latest(tmp_path) == tag_for(3)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        tag_for(2), tag_for(3), f"{tag_for(4)}.diverged", f"{tag_for(5)}.diverged", LATEST]
    assert step_back(tmp_path, first_bad=9) == tmp_path / tag_for(3)  # nothing to drop
    (tmp_path / tag_for(3) / "checksums.json").write_text('{"algorithm": "sha256", "files": {"x.pt": {}}}')
    assert step_back(tmp_path, first_bad=9) == tmp_path / tag_for(2)  # iter 3 fails its checksums (x.pt missing)
    assert step_back(tmp_path, first_bad=3) is None  # no checkpoint before iteration 2: none is left
    assert not any(TAG_RE.match(p.name) for p in tmp_path.iterdir()) and not (tmp_path / LATEST).exists()


def test_a_spike_right_after_a_rollback_keeps_the_tag_it_reloaded(tmp_path):
    """Found 2026-12-06: after a rollback to iteration 3, a spike at iteration 4 blamed the weights of iteration 3,
    which had given good losses before, and moved that tag aside too; a few such spikes emptied the folder."""
    make_tags(tmp_path, [2, 3, 4], latest=4)
    assert step_back(tmp_path, first_bad=5) == tmp_path / tag_for(3)  # the first divergence: 4 goes
    assert step_back(tmp_path, first_bad=4, reloaded=3) == tmp_path / tag_for(3)  # right after the rollback to 3
    assert read_latest(tmp_path) == tag_for(3) and (tmp_path / tag_for(3)).is_dir()
    assert step_back(tmp_path, first_bad=4) == tmp_path / tag_for(2)  # what it did before


def test_a_folder_holding_only_tags_moved_aside_is_not_started_over(tmp_path):
    """Found 2026-12-06: a divergence before any checkpoint it could go back to moved every tag aside and removed
    `latest`; the same command then started the run over from iteration 1 in the same folder, without a word."""
    (tmp_path / f"{tag_for(25)}.diverged").mkdir()
    check_run_dirs(str(tmp_path), str(tmp_path), verify=False)  # a partial tag (no checksums.json) holds nothing
    (tmp_path / f"{tag_for(25)}.diverged" / "checksums.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"holds no `latest`, only checkpoints moved aside \(iter_0000025"
                                              r"\.diverged; a divergence"):
        check_run_dirs(str(tmp_path), str(tmp_path), verify=False)


def test_a_start_says_which_tags_were_moved_aside_and_their_bytes(tmp_path, caplog):
    """--keep-last never prunes tags moved aside, each a whole checkpoint: every start names them and their size."""
    from megamythos.training.checkpointing import warn_of_tags_aside

    aside = tmp_path / f"{tag_for(25)}.diverged"
    aside.mkdir()
    (aside / "checksums.json").write_text(json.dumps(
        {"algorithm": "sha256", "files": {"mp_rank_00_model_states.pt": {"size": 2 * 10**9, "sha256": "0"}}}))
    warn_of_tags_aside(tmp_path)
    assert "holds 1 checkpoint(s) moved aside after a divergence or a step back, 2.0 GB in all" in caplog.text
    assert caplog.text.rstrip().endswith("iter_0000025.diverged; delete them once they are no longer needed")


def test_a_resume_after_a_rollback_reads_on_in_the_order_of_the_first_launch(tmp_path):
    """A rollback moves the data position past the samples read since its checkpoint, so a checkpoint saved after it
    has consumed more samples than its steps read. Found 2026-12-07: a resume of such a checkpoint (the same
    command) built its training set for those extra samples on top of the rollbacks' whole headroom, over another
    number of epochs or another last-epoch split, so it read another sample order from there on and warned
    ``the training set was built again ... resume with the saved --train-iters and --global-batch-size``, which
    it had. The set is now the first launch's, which the rollbacks' headroom already sized for those samples."""
    from megamythos.data.pretraining import DataSources, order_fingerprint

    prefix = str(tmp_path / "docs")
    rng = np.random.default_rng(0)
    with IndexedDatasetBuilder(prefix, np.uint16) as builder:  # 4 documents of 40 tokens: 19 samples of 8 an epoch
        for _ in range(4):
            builder.add_document(rng.integers(0, 50, 40))
        builder.finalize()
    args = parse_args(["--data-path", prefix, "--seq-length", "8", "--eval-interval", "0", "--split", "100,0,0",
                       "--data-cache-dir", str(tmp_path / "cache"), "--on-divergence", "rollback",
                       "--max-rollbacks", "1", "--save-interval", "1", "--spike-patience", "1"])

    def training_set(total_iters: int, iteration: int, consumed: int, rollbacks: int):
        trainer = SimpleNamespace(args=args, layout=SimpleNamespace(global_batch_size=4), total_iters=total_iters,
                                  iteration=iteration, consumed=consumed, rollbacks=rollbacks,
                                  sources=DataSources([prefix]), rank=0)
        trainer.rollback_headroom = lambda *done: Trainer.rollback_headroom(trainer, *done)
        trainer.train_samples_asked = lambda: Trainer.train_samples_asked(trainer)
        trainer.warn_of_rereads = lambda *held_out: None
        return Trainer.datasets(trainer)[0]

    for total_iters in range(3, 12):  # the set spans 2 to 4 epochs
        first = training_set(total_iters, 0, 0, 0)
        resumed = training_set(total_iters, 2, 12, 1)  # saved at step 2 after a rollback skipped 4 samples
        assert order_fingerprint(resumed, 12) == order_fingerprint(first, 12), total_iters
        assert len(resumed) == len(first), total_iters


def test_the_stop_line_names_the_last_good_checkpoint_or_none():
    diverged = Divergence(7, 25.0, 18.0, "2 x ln(vocab 8192) (--divergence-factor)", 7)
    trainer = SimpleNamespace(args=SimpleNamespace(save=None, on_divergence="rollback", max_rollbacks=3),
                              rollbacks=0, last_good=None)
    with pytest.raises(DivergenceError) as err:
        Trainer.on_divergence(trainer, diverged)
    assert str(err.value) == ("training diverged at iteration 7: lm loss 25 > 18 = 2 x ln(vocab 8192) "
                              "(--divergence-factor); last good checkpoint: none saved; start again with a lower "
                              "--lr or a longer --warmup")


@pytest.mark.parametrize("argv, flag", [
    (["--divergence-factor", "-1"], "--divergence-factor"),
    (["--divergence-factor", "0.5"], "--divergence-factor"),
    (["--spike-factor", "1"], "--spike-factor"),
    (["--spike-window", "0"], "--spike-window"),
    (["--spike-patience", "0"], "--spike-patience"),
    (["--max-rollbacks", "0"], "--max-rollbacks"),
    (["--on-divergence", "retry"], "--on-divergence"),
])
def test_bad_divergence_flags_are_one_line_exit_2(argv, flag, capsys):
    def main() -> int:
        parse_args(argv)
        return 0

    try:
        code = run_cli(main, log_format=None)
    except SystemExit as exit_:  # argparse's own refusal (a value outside the choices)
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and flag in err, err


# ---------------------------------------------------------------------------------------------- launches
STOP_LINE = re.compile(r"^error: training diverged at iteration (\d+): lm loss (\S+) > (\S+) = 2 x ln\(vocab 384\) "
                       r"\(--divergence-factor\) after 1 rollback \(--max-rollbacks 1\); last good checkpoint: "
                       r"(\S+) \(`latest`\); resume from it with a lower --lr or a longer --warmup$")


@pytest.mark.launch
@pytest.mark.distributed
def test_a_finitely_diverging_lr_rolls_back_once_then_stops_with_latest_before_it(corpus, tmp_path):
    """lr 3 warmed up over 20 steps: on the test model the loss passes 2 x ln(384) = 11.9 within a few steps,
    finite (measured 2026-12-04 on two ranks: 9.4 at step 4, 21.7 at step 6). Both ranks roll back once, diverge
    again on the next samples and stop with one line; `latest` names weights whose next loss was below the
    ceiling."""
    save = tmp_path / "ckpt"
    text = run(2, [*tiny_args(corpus, 12, lr=3.0), "--warmup", "20", "--save", str(save), "--save-interval", "1",
                   "--on-divergence", "rollback", "--max-rollbacks", "1", "--metrics-file",
                   str(tmp_path / "metrics.jsonl")], tmp_path / "log.txt", expect_rc=2)
    assert "Traceback" not in text
    # found 2026-12-07: rank 1, killed by DeepSpeed's runner while it let rank 0 say the error, left its 66 MB
    # shm buffer in /dev/shm until a later launch removed it
    assert not shm_buffers_left(text)
    lines = [line for line in text.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, text[-4000:]
    match = STOP_LINE.match(lines[0])
    assert match, lines[0]
    iteration, loss, threshold, good = int(match[1]), float(match[2]), float(match[3]), Path(match[4])
    assert math.isfinite(loss) and loss > threshold == pytest.approx(2 * math.log(VOCAB), abs=1e-3)
    assert good.parent == save and read_latest(save) == good.name
    saved = sorted(int(p.name[5:]) for p in save.glob("iter_???????"))
    assert saved and max(saved) == int(good.name[5:]) < iteration - 1
    rollback = next(m for m in metrics(tmp_path / "metrics.jsonl") if "rollback" in m)
    assert rollback["rollback"] == 1 and rollback["resumed_iteration"] < rollback["iteration"] - 1
    assert rollback["consumed_samples"] == 8 * rollback["iteration"]  # global batch 8: nothing read is reused


def poison_dataset(prefix: Path) -> str:
    """Documents of uniformly random token ids: a sample of them costs ~ln(vocab), far above a trained batch."""
    rng = np.random.default_rng(0)
    with IndexedDatasetBuilder(str(prefix), np.uint16) as builder:
        for _ in range(20):
            builder.add_document(rng.integers(3, VOCAB, 100))
        builder.finalize()
    return str(prefix)


@pytest.mark.launch
def test_a_poisoned_batch_is_rolled_back_once_and_training_completes(corpus, tmp_path):
    """One sample per step, 1 in 10 from random tokens: Megatron's blending rule puts them at samples 1, 11, 21.
    Sample 1 comes before the window fills; sample 11 (step 12, loss 6.6 against a median of 4.9) is a spike:
    the checkpoint of step 11 (whose weights met it) is dropped, step 10's reloaded and the data resumes after
    sample 11, so the run finishes its 16 steps without meeting another."""
    save, tb = tmp_path / "ckpt", tmp_path / "tb"
    data = ["0.9", corpus_prefix(corpus), "0.1", poison_dataset(tmp_path / "poison")]
    run(1, [*tiny_args(corpus, 16), "--data-path", *data, "--micro-batch-size", "1", "--global-batch-size", "1",
            "--spike-window", "5", "--spike-factor", "1.2", "--spike-patience", "1", "--on-divergence", "rollback",
            "--max-rollbacks", "2", "--save", str(save), "--save-interval", "1", "--keep-last", "2",
            "--metrics-file", str(tmp_path / "metrics.jsonl"), "--tensorboard-dir", str(tb)], tmp_path / "log.txt")
    records = metrics(tmp_path / "metrics.jsonl")
    rollbacks = [m for m in records if "rollback" in m]
    assert [(m["iteration"], m["resumed_iteration"], m["consumed_samples"], m["checkpoint"]) for m in rollbacks] == [
        (12, 10, 12, str(save / tag_for(10)))]
    steps = [(m["iteration"], m["consumed_samples"]) for m in records if "lm loss" in m]
    assert steps[-6:] == [(11, 13), (12, 14), (13, 15), (14, 16), (15, 17), (16, 18)]
    assert read_latest(save) == tag_for(16)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tb))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("rollbacks")] == [(12, 1.0)]


@pytest.mark.launch
def test_a_spike_right_after_a_resume_is_judged_against_the_losses_before_it(corpus, tmp_path):
    """The poisoned run above, stopped by ``--exit-interval`` at step 11 and resumed with the same command: step
    12's spike is judged against the good losses its checkpoint recorded, and rolled back as in one launch. Found
    2026-12-07: a resumed run's spike window started empty, so no spike was judged for ``--spike-window`` steps after
    each launch (a job chunked by its time limit was blind that long every time) and this one trained through it."""
    save = tmp_path / "ckpt"
    data = ["0.9", corpus_prefix(corpus), "0.1", poison_dataset(tmp_path / "poison")]
    command = [*tiny_args(corpus, 16), "--data-path", *data, "--micro-batch-size", "1", "--global-batch-size", "1",
               "--spike-window", "5", "--spike-factor", "1.2", "--spike-patience", "1", "--on-divergence",
               "rollback", "--max-rollbacks", "2", "--save", str(save), "--load", str(save), "--save-interval", "1",
               "--keep-last", "2", "--eval-interval", "0", "--metrics-file", str(tmp_path / "metrics.jsonl")]
    for launch in ([*command, "--exit-interval", "11"], command):
        out = run_single(launch, tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
    rollbacks = [m for m in metrics(tmp_path / "metrics.jsonl") if "rollback" in m]
    assert [(m["iteration"], m["resumed_iteration"], m["consumed_samples"]) for m in rollbacks] == [(12, 10, 12)]
    assert read_latest(save) == tag_for(16)
