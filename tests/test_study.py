"""The study runner trains, detects divergence and evaluates (a few steps on random tokens)."""
from __future__ import annotations

import torch

from megamythos.study import EXPERIMENTS, EVAL_LOOPS, EXIT_THRESHOLDS, RunSpec, StudySettings, base_config, plot_experiment, train_run


def test_study_runs_train_and_evaluate(tmp_path) -> None:
    settings = StudySettings(steps=4, batch_size=2, seq_len=16, warmup=1, eval_batches=1)
    config = base_config(300, settings)
    data = torch.randint(0, 300, (8, 2, 17))
    runs = [train_run(spec, config, settings, lambda step: data[step], [data[-1]])
            for spec in (EXPERIMENTS["depth"][1], EXPERIMENTS["dense"][0])]
    assert [len(r["eval"]) for r in runs] == [len(EVAL_LOOPS), 1]
    assert runs[1]["kind"] == "dense" and runs[0]["kind"] == "looped"
    assert runs[1]["params"] > 1.5 * runs[0]["params"]  # the dense baseline has twice the unique parameters
    exits = runs[0]["eval_exit"]
    assert len(exits) == 2 * len(EXIT_THRESHOLDS) and all(1 <= e["mean_steps"] <= e["loops"] for e in exits)
    report = {"experiment": "smoke", "settings": {"steps": 4}, "base_config": config.to_dict(), "runs": runs}
    plot_experiment(report, tmp_path / "smoke.png")
    assert (tmp_path / "smoke.png").stat().st_size > 0


def test_divergence_is_detected_and_reported() -> None:
    settings = StudySettings(steps=6, batch_size=2, seq_len=16, warmup=1, eval_batches=1)
    config = base_config(300, settings)
    data = torch.randint(0, 300, (8, 2, 17))
    result = train_run(RunSpec("blowup", {"injection": "additive"}, lr=1e4), config, settings,
                       lambda step: data[step], [data[-1]])
    assert result["diverged_at"] is not None and "eval" not in result
