"""Depth-extrapolation evaluation: finite losses that improve with training, files written."""
from __future__ import annotations

import csv
import json

import pytest
import torch

from megamythos.inference.evaluate import (
    EvalConfig,
    LoopEval,
    evaluate_loops,
    parse_args,
    write_results,
    write_tensorboard,
)
from megamythos.model.lm import MythosLM
from tests.helpers import small_config


def test_losses_finite_and_improve_with_training_and_files_written(tmp_path) -> None:
    model = MythosLM(small_config())
    batches = [(t[:, :-1], t[:, 1:]) for t in (torch.randint(0, 97, (2, 17)) for _ in range(2))]
    before = evaluate_loops(model, batches, [1, 3, 6])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(15):
        for inputs, targets in batches:
            out = model(inputs, labels=targets)
            (out.loss + out.aux_loss).backward()
            opt.step()
            opt.zero_grad()
    after = evaluate_loops(model, batches, [1, 3, 6]) + evaluate_loops(model, batches, [6], exit_threshold=1e9)
    assert all(torch.isfinite(torch.tensor(r.loss)) for r in after)
    assert after[1].loss < before[1].loss - 0.5
    assert evaluate_loops(model, batches, [3])[0].loss == after[1].loss  # deterministic
    assert after[-1].mean_depth == 1 and after[-1].exit_share == [1.0] + [0.0] * 5  # every token exits at once
    assert after[2].mean_depth == 6 and after[2].exit_share[-1] == 1.0
    assert after[-1].forward_flops_per_token == after[0].forward_flops_per_token < after[2].forward_flops_per_token
    paths = write_results(after, tmp_path, trained_loops=3)
    rows = list(csv.DictReader(paths["csv"].open()))
    assert [int(r["loops"]) for r in rows] == [1, 3, 6, 6]
    assert json.loads(paths["json"].read_text())["trained_loops"] == 3
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"


def test_a_noise_initialised_model_evaluates_the_same_every_time_and_leaves_the_callers_generator() -> None:
    """A state_init=noise model draws h_0 from torch's generators: each loop count's pass seeds them with 0, so a
    second evaluation gives the same losses and the caller's next draw is what it would have been. Before, each
    evaluation drew other noise (another perplexity for the same checkpoint and data)."""
    torch.manual_seed(0)
    model = MythosLM(small_config(state_init="noise", noise_std=1.0))
    batches = [(t[:, :-1], t[:, 1:]) for t in (torch.randint(0, 97, (2, 17)) for _ in range(2))]
    state = torch.get_rng_state()
    first = evaluate_loops(model, batches, [1, 3])
    after_first = torch.rand(1)
    torch.set_rng_state(state)
    assert torch.rand(1) == after_first  # the evaluation drew nothing from the caller's generator
    torch.manual_seed(123)
    assert [r.loss for r in evaluate_loops(model, batches, [1, 3])] == [r.loss for r in first]


def test_a_padded_batch_scores_only_its_real_tokens() -> None:
    """Sequences of different lengths in one batch, targets right-padded with -100 (MythosLM's label convention):
    the same loss, token count and depths as each sequence alone. Before, the padding counted as scored tokens
    (loss 4.35 instead of 7.07 on the default run's checkpoint)."""
    torch.manual_seed(0)
    model = MythosLM(small_config())
    seqs = [torch.randint(0, 97, (n,)) for n in (17, 9, 4)]
    inputs = torch.nn.utils.rnn.pad_sequence([s[:-1] for s in seqs], batch_first=True, padding_value=5)
    targets = torch.nn.utils.rnn.pad_sequence([s[1:] for s in seqs], batch_first=True, padding_value=-100)
    for threshold in (0.0, 0.3):
        padded = evaluate_loops(model, [(inputs, targets)], [3], threshold)[0]
        alone = evaluate_loops(model, [(s[None, :-1], s[None, 1:]) for s in seqs], [3], threshold)[0]
        assert padded.tokens == alone.tokens == 16 + 8 + 3
        assert abs(padded.loss - alone.loss) < 1e-5
        assert abs(padded.mean_depth - alone.mean_depth) < 1e-5
    with pytest.raises(ValueError, match="no token to score"):
        evaluate_loops(model, [(inputs, torch.full_like(targets, -100))], [1])


def test_forward_flops_of_batches_of_different_lengths_are_each_batchs_own() -> None:
    """The FLOPs per position were computed at the last batch's length for every batch (found 2026-12-06): a long
    batch then a short one read as if both were short. Each batch counts at its own length, weighted by its
    positions."""
    torch.manual_seed(0)
    model = MythosLM(small_config())
    long, short = torch.randint(0, 97, (2, 33)), torch.randint(0, 97, (2, 5))
    for threshold in (0.0, 0.3):
        each = [evaluate_loops(model, [(b[:, :-1], b[:, 1:])], [3], threshold)[0] for b in (long, short)]
        both = evaluate_loops(model, [(b[:, :-1], b[:, 1:]) for b in (long, short)], [3], threshold)[0]
        expected = (each[0].forward_flops_per_token * 64 + each[1].forward_flops_per_token * 8) / 72
        assert abs(both.forward_flops_per_token - expected) < 1e-6 * expected


def test_the_plot_draws_each_curve_in_loop_order(tmp_path, monkeypatch) -> None:
    """``--loops 8,1,4`` drew the perplexity line back and forth in the order given (found 2026-12-06)."""
    import matplotlib.axes

    drawn, plot = [], matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda ax, x, *args, **kwargs: drawn.append(list(x)) or plot(ax, x, *args, **kwargs))
    results = [LoopEval(n, threshold, 1.0, 2.7, n, [], 1.0, 10) for threshold in (0.0, 0.2) for n in (8, 1, 4)]
    write_results(results, tmp_path, trained_loops=4)
    assert drawn == [[1, 4, 8], [1, 4, 8]]


def test_a_new_evaluation_replaces_the_scalars_of_the_last_one_in_its_default_directory(tmp_path) -> None:
    """Evaluating a checkpoint again (other --loops, or --test-set) replaced depth_eval.{csv,json,png} but added
    a second event file beside the first in their tensorboard/, so TensorBoard drew both evaluations' points at the
    same loop counts (found 2026-12-07, a new user's first hour). The default directory's events now hold the
    rows its files hold; a --tensorboard-dir of the user's is added to, never cleared."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def steps(log_dir):
        events = EventAccumulator(str(log_dir))
        events.Reload()
        return sorted(e.step for e in events.Scalars("depth-eval/ppl"))

    first = [LoopEval(n, 0.0, 1.0, 2.7, n, [], 1.0, 10) for n in (1, 4, 8)]
    again = [LoopEval(1, 0.0, 2.0, 7.4, 1, [], 1.0, 10)]
    for replace, expected in ((True, [1]), (False, [1, 1, 4, 8])):
        log_dir = tmp_path / str(replace)
        write_tensorboard(first, log_dir)
        write_tensorboard(again, log_dir, replace=replace)
        assert steps(log_dir) == expected



@pytest.mark.parametrize("cuda", [True, False])
def test_an_eval_config_runs_on_the_device_the_command_line_runs_on(cuda: bool, monkeypatch) -> None:
    """Found 2026-12-07: ``EvalConfig.device`` defaulted to ``cpu`` while ``--device`` defaults to ``cuda`` where
    torch sees a CUDA device, so an API caller on a GPU machine evaluated on the CPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    given = parse_args(["--load", "ckpt"]).device
    assert EvalConfig(load="ckpt", loops=[1], data_path=[]).device == given == ("cuda" if cuda else "cpu")
