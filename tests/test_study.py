"""Research code: the study runner trains, detects divergence and evaluates (a few steps on random tokens); the
dense baseline matches the looped model; the library stays independent of the research package."""
from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megamythos.model.params import count
from megamythos.research.baselines import DenseLM, dense_params, dense_train_flops_per_token, matching_dense_layers
from megamythos.research.study import (
    DEFAULT_RECIPE,
    EVAL_LOOPS,
    EXIT_THRESHOLDS,
    EXPERIMENTS,
    RunSpec,
    StudyError,
    StudySettings,
    base_config,
    build_model,
    loop_count,
    main,
    plot_experiment,
    run_experiment,
    run_steps,
    train_run,
)
from tests.helpers import corpus_prefix, small_config

LIBRARY = Path(__file__).resolve().parents[1] / "megamythos"


def test_study_runs_train_and_evaluate(tmp_path) -> None:
    settings = StudySettings(steps=4, batch_size=2, seq_len=16, warmup=1, eval_batches=1)
    config = base_config(300, settings)
    data = torch.randint(0, 300, (8, 2, 17))
    runs = [train_run(spec, config, settings, lambda step: data[step], [data[-1]])
            for spec in (EXPERIMENTS["depth"][1], EXPERIMENTS["dense"][0])]
    assert [len(r["eval"]) for r in runs] == [len(EVAL_LOOPS), 1]
    assert runs[1]["kind"] == "dense" and runs[0]["kind"] == "looped"
    assert runs[1]["params"] > 1.5 * runs[0]["params"]  # the dense baseline has twice the unique parameters
    sampled = [loop_count(EXPERIMENTS["depth"][1], config, settings.seed, step) for step in range(4)]
    truncated = [count(config.replace(backprop_loops=2), 16, n).train_flops_per_token for n in sampled]  # loops 1..n-2
    assert runs[0]["train_flops_per_token"] == pytest.approx(sum(truncated) / 4)  # over the loop counts it trained
    assert runs[0]["train_flops_per_token"] < count(config, 16, max(sampled)).train_flops_per_token
    exits = runs[0]["eval_exit"]
    assert len(exits) == 2 * len(EXIT_THRESHOLDS) and all(1 <= e["mean_depth"] <= e["loops"] for e in exits)
    report = {"experiment": "smoke", "settings": {"steps": 4}, "base_config": config.to_dict(), "runs": runs}
    plot_experiment(report, tmp_path / "smoke.png")
    assert (tmp_path / "smoke.png").stat().st_size > 0


def test_equal_flops_runs_record_and_spend_the_default_recipe_s_training_flops() -> None:
    """Found 2026-12-06: runs recorded their FLOPs per token at exactly the mean depth while the matching used the
    mean over the sampled loop counts (1.3% apart)."""
    settings = StudySettings(steps=40, batch_size=2, seq_len=16, warmup=1, eval_batches=1)
    config = base_config(300, settings)
    default = build_model(DEFAULT_RECIPE, config, settings)[1]["train_flops_per_token"] * settings.steps
    matched = [spec for spec in EXPERIMENTS["capacity"] if spec.equal_flops]
    assert matched
    for spec in matched:
        steps = run_steps(spec, config, settings)
        per_token = build_model(spec, config, dataclasses.replace(settings, steps=steps))[1]["train_flops_per_token"]
        assert abs(per_token * steps - default) <= per_token, spec.name  # within the rounding to whole steps


def test_divergence_is_detected_and_reported() -> None:
    settings = StudySettings(steps=6, batch_size=2, seq_len=16, warmup=1, eval_batches=1)
    config = base_config(300, settings)
    data = torch.randint(0, 300, (8, 2, 17))
    result = train_run(RunSpec("blowup", {"injection": "additive"}, lr=1e4), config, settings,
                       lambda step: data[step], [data[-1]])
    assert result["diverged_at"] is not None and "eval" not in result


def test_dense_baseline_matches_params_or_flops() -> None:
    config = small_config(max_seq_len=32, n_experts=32, expert_dim=64)
    n_params = matching_dense_layers(config, "params", 32)
    n_flops = matching_dense_layers(config, "flops", 32)
    for tie in (True, False):
        variant = config.replace(tie_embeddings=tie)
        with torch.device("meta"):
            assert sum(p.numel() for p in DenseLM(variant, n_params).parameters()) == dense_params(variant, n_params)
    looped = count(config, seq_len=32)
    assert abs(dense_params(config, n_params) - looped.total) <= dense_params(config, 1) - dense_params(config, 0)
    assert dense_train_flops_per_token(config, n_flops, 32) <= looped.train_flops_per_token * 1.5
    assert n_params > n_flops  # the MoE holds many parameters a token never touches


def test_library_does_not_import_research() -> None:
    """megamythos/*.py, training and data never name the research package; the study pulls in no DeepSpeed."""
    library = [path for path in LIBRARY.rglob("*.py") if "research" not in path.relative_to(LIBRARY).parts]
    assert len(library) > 20
    offenders = [str(path) for path in library if "megamythos.research" in path.read_text()
                 or "from megamythos import research" in path.read_text()]
    assert offenders == []
    probe = "import sys, megamythos.research.study; print('deepspeed' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_short_training_on_text_keeps_tokens_iterating(corpus) -> None:
    """No collapse: after a short training of the study model on real text (~30 s), the early-exit rule still
    runs tokens for more than one loop. Measured 2026-12-01: 3.15 mean loops at threshold 0.05 and 1.64 at 0.1
    (Graves ACT, before this rule, ended at exactly 1: every token halted after the first loop)."""
    from megamythos.research.study import token_batches

    prefix = corpus_prefix(corpus)  # the tests' corpus at vocab 384, 30 files
    settings = StudySettings(steps=80, batch_size=4, seq_len=64, warmup=5, eval_batches=2, scale=0.5)
    batch_at, valid, vocab = token_batches(prefix, settings)
    result = train_run(EXPERIMENTS["depth"][1], base_config(vocab, settings), settings, batch_at, valid)
    mean_depth = {e["exit_threshold"]: e["mean_depth"] for e in result["eval_exit"] if e["loops"] == 4}
    assert mean_depth[0.05] > 2.5 and mean_depth[0.1] > 1.3, mean_depth
    full_depth = {e["loops"]: e["perplexity"] for e in result["eval"]}
    assert full_depth[4] < full_depth[1]  # and the loops it runs pay


def test_pondernet_halting_is_a_distribution_with_finite_kl() -> None:
    from megamythos.research.ponder import PRIOR_LAMBDA, halting_distribution, kl_to_prior, truncated_geometric

    logits = torch.cat((torch.randn(7, 3, 5) * 4, torch.full((1, 3, 5), float("nan"))))  # z_N is never read
    logits[0, 0, 0], logits[1, 0, 1] = 60.0, -60.0  # p exactly 0 after a certain halt; lambda = 0 at loop 2
    p = halting_distribution(logits)
    assert torch.allclose(p.sum(dim=0), torch.ones(3, 5)) and bool((p >= 0).all())
    prior = truncated_geometric(PRIOR_LAMBDA, 8)
    assert torch.isclose(prior.sum(), torch.tensor(1.0)) and 3.9 < float((prior * torch.arange(1, 9)).sum()) < 4.1
    kl = kl_to_prior(p, prior)
    assert torch.isfinite(kl) and kl > 0
    assert torch.isclose(kl_to_prior(prior.view(8, 1, 1).expand(8, 3, 5), prior), torch.tensor(0.0), atol=1e-6)


def test_short_pondernet_training_does_not_halt_everything_at_loop_one(corpus) -> None:
    """PonderNet (N = 8, beta = 0.01) after a short training on real text (~25 s): the halting mass and the
    halting step are not collapsed onto loop 1. Measured 2026-12-01 at these settings: mean p_1 = 0.23 (0.22 after
    400 steps; the prior's is 0.17) and 3.14 loops under halting by cumulative p > 0.5 (3.36 after 400 steps; the
    1000-step study run ends at p_1 = 0.15, 4.59 loops). A halting unit forced to lambda = 1 (the collapse: p_1 = 1,
    1 loop) fails the same bounds, so the test can fail."""
    from megamythos.research.ponder import PonderLM, evaluate_halting
    from megamythos.research.study import token_batches

    prefix = corpus_prefix(corpus)  # the tests' corpus at vocab 384, 30 files
    settings = StudySettings(steps=200, batch_size=4, seq_len=64, warmup=5, eval_batches=2, scale=0.5)
    batch_at, valid, vocab = token_batches(prefix, settings)
    spec = EXPERIMENTS["ponder"][0]
    assert spec.ponder_loops == 8
    result = train_run(spec, base_config(vocab, settings), settings, batch_at, valid)
    halting, p_mean = result["eval_ponder"], result["ponder_mean_halting_p"]
    assert abs(sum(p_mean) - 1) < 1e-4 and abs(sum(halting["exit_share"]) - 1) < 1e-4
    assert p_mean[0] < 0.4 and halting["mean_depth"] > 2.0, (p_mean, halting)

    collapsed = PonderLM(base_config(vocab, settings), 8)
    torch.nn.init.constant_(collapsed.halt.bias, 30.0)
    pairs = [(b[:, :-1], b[:, 1:]) for b in valid]
    halting, p_mean = evaluate_halting(collapsed, pairs)
    assert p_mean[0] > 0.99 and halting.mean_depth == 1.0


def test_a_study_of_some_runs_keeps_the_reports_other_runs(corpus, tmp_path) -> None:
    """--runs trains only the named runs (on the batches of the whole experiment) and keeps the other runs of the
    report in --out; a report of other settings is refused, not overwritten, and so is an unknown run."""
    prefix = corpus_prefix(corpus)
    settings = StudySettings(steps=3, batch_size=2, seq_len=16, warmup=1, eval_batches=1, scale=0.5)
    first, learned = "sampled_depth_tbptt", "capacity_6loops_learned_router_full_backprop"
    run_experiment("capacity", settings, prefix, str(tmp_path), [first])
    path = tmp_path / "study_capacity.json"
    annotated = {**json.loads(path.read_text()), "note": "how the first run was made"}
    path.write_text(json.dumps(annotated))
    before = annotated["runs"]
    assert [r["name"] for r in before] == [first]
    report = run_experiment("capacity", settings, prefix, str(tmp_path), [learned])
    assert [r["name"] for r in report["runs"]] == [first, learned]
    assert json.loads(path.read_text())["note"] == "how the first run was made"
    written = json.loads(path.read_text())["runs"]
    assert written[0] == before[0] and written[1]["name"] == learned and "eval" in written[1]
    assert written[1]["overrides"]["capacity_router"] == "learned"
    with pytest.raises(StudyError, match="--runs fixed: not a run of capacity; choose from sampled_depth_tbptt"):
        run_experiment("capacity", settings, prefix, str(tmp_path), ["fixed"])
    with pytest.raises(StudyError, match="holds a study of other settings, data or model; --runs would replace"):
        run_experiment("capacity", dataclasses.replace(settings, seed=7), prefix, str(tmp_path), [first])
    assert json.loads(path.read_text())["runs"] == written


def test_a_missing_wikitext_folder_or_unknown_run_is_one_error_line(tmp_path, capsys) -> None:
    assert main(["depth", "--corpus", "wikitext2", "--wikitext-dir", str(tmp_path / "nope"),
                 "--work-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: --wikitext-dir '{tmp_path / 'nope'}' is not a directory holding wikitext-2's valid.txt and "
        "test.txt: pass the folder that holds them"]
    assert main(["depth", "--runs", "fixed", "--work-dir", str(tmp_path / "corpus")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: --runs fixed: not a run of depth; choose from fixed_depth, sampled_depth_tbptt"]
    assert not (tmp_path / "corpus").exists()  # refused before the corpus is built


def test_each_run_s_loss_curve_is_plotted_at_its_own_steps() -> None:
    """The plot used the report's step count for every run: runs at equal FLOPs (1670, 2253 steps) were drawn
    on the 2000-step axis (found 2026-12-06)."""
    from megamythos.research.study import loss_curve_steps

    assert loss_curve_steps({"steps": 2253, "train_loss_curve": [0.0] * 51}, 2000)[-1] == 2250
    assert loss_curve_steps({"steps": 1670, "train_loss_curve": [0.0] * 51, "train_loss_curve_stride": 33},
                            2000)[-1] == 1650
    assert loss_curve_steps({"train_loss_curve": [0.0] * 51}, 2000)[-1] == 2000  # a report before runs kept steps


def test_an_out_folder_that_cannot_hold_the_report_is_refused_before_anything_runs(corpus, tmp_path, capsys,
                                                                                  monkeypatch) -> None:
    """Found 2026-12-06: ``--out X`` with a file X/stdlib was a FileExistsError traceback, and a folder
    X/stdlib/study_depth.json an IsADirectoryError traceback once the first run had trained."""
    from megamythos.research import study

    monkeypatch.setattr(study, "prepare_corpus", lambda *_: pytest.fail("the corpus was built"))
    monkeypatch.setattr(study, "train_run", lambda *_: pytest.fail("a run was trained"))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "stdlib").write_text("")
    assert main(["depth", "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: --out {tmp_path / 'out'}: cannot create {tmp_path / 'out' / 'stdlib'} "
        f"({tmp_path / 'out' / 'stdlib'}: File exists)"]
    (tmp_path / "report" / "study_depth.json").mkdir(parents=True)
    settings = StudySettings(steps=2, batch_size=2, seq_len=16, warmup=1, eval_batches=1, scale=0.5)
    with pytest.raises(StudyError, match=r"study_depth.json is a folder, where the study writes its report"):
        run_experiment("depth", settings, corpus_prefix(corpus), str(tmp_path / "report"))


def fake_run(spec: RunSpec, *_: object) -> dict:
    """What :func:`train_run` returns, less the evaluation: a report's run without training."""
    return {"name": spec.name, "train_loss_curve": [2.0, 1.0], "train_loss_curve_stride": 1, "steps": 2,
            "final_train_loss": 1.0, "diverged_at": None}


def test_a_study_does_not_replace_a_report_of_other_settings(corpus, tmp_path, monkeypatch) -> None:
    """Found 2026-12-06: without --runs, a study replaced the report in --out run by run whatever it held, so
    ``--out bench/results/study --steps 20`` (the docs' command, scaled down) overwrote the published 2M-token
    results. A rerun of the same study still replaces its report."""
    from megamythos.research import study

    monkeypatch.setattr(study, "train_run", fake_run)
    prefix = corpus_prefix(corpus)
    settings = StudySettings(steps=3, batch_size=2, seq_len=16, warmup=1, eval_batches=1, scale=0.5)
    run_experiment("depth", settings, prefix, str(tmp_path))
    path = tmp_path / "study_depth.json"
    before = path.read_text()
    with pytest.raises(StudyError, match="holds a study of other settings, data or model; this study would "
                                         "replace it: pass another --out, or move that report away first"):
        run_experiment("depth", dataclasses.replace(settings, steps=2), prefix, str(tmp_path))
    assert path.read_text() == before
    assert len(run_experiment("depth", settings, prefix, str(tmp_path))["runs"]) == 2  # a rerun replaces it


def test_a_killed_study_leaves_a_report_that_names_its_missing_runs(corpus, tmp_path, monkeypatch) -> None:
    """Found 2026-12-06: a study killed during its second run left a JSON of its first run only, with nothing to
    tell it from a complete report, beside the plot of the study before it in --out (the plot was drawn at the
    end only). Now the report and its plot are rewritten together before the first run and after each, and
    ``runs_pending`` names the runs the report lacks; ``--runs`` of those completes it."""
    from megamythos.research import study

    plotted: list[list[str]] = []
    draw = study.plot_experiment
    monkeypatch.setattr(study, "plot_experiment",
                        lambda report, path: (plotted.append([r["name"] for r in report["runs"]]), draw(report, path)))

    def killed_at_the_second_run(spec: RunSpec, *args: object) -> dict:
        if spec.name == "sampled_depth_tbptt":
            raise KeyboardInterrupt
        return fake_run(spec)

    monkeypatch.setattr(study, "train_run", killed_at_the_second_run)
    prefix = corpus_prefix(corpus)
    settings = StudySettings(steps=3, batch_size=2, seq_len=16, warmup=1, eval_batches=1, scale=0.5)
    with pytest.raises(KeyboardInterrupt):
        run_experiment("depth", settings, prefix, str(tmp_path))
    report = json.loads((tmp_path / "study_depth.json").read_text())
    assert [r["name"] for r in report["runs"]] == plotted[-1] == ["fixed_depth"]
    assert report["runs_pending"] == ["sampled_depth_tbptt"]
    monkeypatch.setattr(study, "train_run", fake_run)
    report = run_experiment("depth", settings, prefix, str(tmp_path), report["runs_pending"])
    assert [r["name"] for r in report["runs"]] == plotted[-1] == ["fixed_depth", "sampled_depth_tbptt"]
    assert json.loads((tmp_path / "study_depth.json").read_text())["runs_pending"] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study_depth.json", "study_depth.png"]


def test_a_study_stopped_by_ctrl_c_names_the_missing_runs_and_the_command_to_add_them(corpus, tmp_path, monkeypatch,
                                                                                     caplog, capsys) -> None:
    """Found 2026-12-07: Ctrl-C during a study's runs ended with ``error: interrupted`` alone, though its report's
    ``runs_pending`` knew which runs were missing. Now one line names them and the command (the study's own, its
    ``--runs`` replaced) that adds them."""
    from megamythos.research import study

    def killed_at_the_second_run(spec: RunSpec, *args: object) -> dict:
        if spec.name == "sampled_depth_tbptt":
            raise KeyboardInterrupt
        return fake_run(spec)

    monkeypatch.setattr(study, "train_run", killed_at_the_second_run)
    monkeypatch.setattr(study, "prepare_corpus", lambda *_: corpus_prefix(corpus))
    argv = ["depth", "--out", str(tmp_path / "out"), "--work-dir", str(tmp_path / "work"), "--steps", "3",
            "--scale", "0.5", "--runs", "fixed_depth,sampled_depth_tbptt"]
    with caplog.at_level("WARNING"):
        assert main(argv) == 130
    assert capsys.readouterr().err.splitlines()[-1] == "error: interrupted"
    report = tmp_path / "out" / "stdlib" / "study_depth.json"
    assert (f"{report} lacks the runs sampled_depth_tbptt; to add them: python -m megamythos.research.study "
            f"{' '.join(argv[:-2])} --runs sampled_depth_tbptt") in caplog.text


def test_a_study_inside_its_warmup_is_warned(caplog) -> None:
    """Found 2026-12-07: ``--steps 20`` trained every run inside the study's 30 warmup steps (the LR rising to
    the end, never decaying) without a word; the trainer warns of its --warmup alike."""
    with caplog.at_level("WARNING"):
        assert main(["depth", "--steps", "30", "--runs", "none"]) == 2
    assert "--steps 30 is not above the study's 30 warmup steps: each run's LR rises for the whole run" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert main(["depth", "--steps", "31", "--runs", "none"]) == 2
    assert "warmup" not in caplog.text


def test_help_names_the_command_to_type(capsys) -> None:
    """Found 2026-12-06: ``--help`` began ``usage: study.py``, a file no one runs, as no other command line does."""
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("usage: python -m megamythos.research.study [-h]")


def test_a_wikitext_study_without_its_text_is_refused_before_any_folder_is_made(tmp_path, capsys) -> None:
    """Found 2026-12-06: ``study capacity --corpus wikitext2`` without ``--wikitext-dir`` (as results.md's
    ``--corpus {stdlib,wikitext2}`` reads) was refused only after it had made --work-dir and an empty
    ``--out``/wikitext2 folder."""
    for flags, says in [([], "needs --wikitext-dir DIR"),
                        (["--wikitext-dir", str(tmp_path)], "is not a directory holding wikitext-2's valid.txt")]:
        assert main(["capacity", "--corpus", "wikitext2", "--work-dir", str(tmp_path / "work"),
                     "--out", str(tmp_path / "out"), *flags]) == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert says in line
        assert not (tmp_path / "work").exists() and not (tmp_path / "out").exists()


def test_a_wikitext_folder_without_corpus_wikitext2_is_refused_not_ignored(tmp_path, capsys, monkeypatch) -> None:
    """Found 2026-12-07: ``--wikitext-dir DIR`` without ``--corpus wikitext2`` trained on the default stdlib
    corpus, the folder unread."""
    from megamythos.research import study

    monkeypatch.setattr(study, "prepare_corpus", lambda *_: pytest.fail("the corpus was built"))
    assert main(["depth", "--wikitext-dir", str(tmp_path), "--work-dir", str(tmp_path / "work"),
                 "--out", str(tmp_path / "out")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "--wikitext-dir is read with --corpus wikitext2 only" in line
    assert not (tmp_path / "work").exists() and not (tmp_path / "out").exists()


def test_a_wikitext_corpus_built_from_other_files_is_refused_not_reused(tmp_path, monkeypatch, caplog) -> None:
    """Found 2026-12-06: the wikitext-2 corpus in --work-dir was reused whatever --wikitext-dir said (only the
    tokenizer's and the index's existence were checked), so a study of another folder's valid.txt and test.txt
    trained and evaluated on the first folder's text without a word."""
    from megamythos.data import preprocess, tokenizer
    from megamythos.research.study import prepare_corpus

    built: list[str] = []

    def fake_build(name: str, path: str) -> None:
        built.append(name)
        Path(path).write_text("")

    monkeypatch.setattr(tokenizer, "train_tokenizer", lambda texts, config: fake_build("tokenizer",
                                                                                        config.model_prefix + ".model"))
    monkeypatch.setattr(preprocess, "preprocess",
                        lambda config: fake_build("data", config.output_prefix + "_text_document.idx"))
    folders = {}
    for name, text in (("a", "one text"), ("b", "another text")):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        for split in ("valid.txt", "test.txt"):
            (folders[name] / split).write_text(f"{text} ({split})\n")
    work = tmp_path / "work"
    work.mkdir()
    prefix = prepare_corpus("wikitext2", str(work), str(folders["a"]))
    assert built == ["tokenizer", "data"]
    with pytest.raises(StudyError, match=f"--work-dir {work} holds a wikitext2 corpus built from other files than "
                                         f"{folders['b'] / 'valid.txt'}, {folders['b'] / 'test.txt'}; pass another "
                                         f"--work-dir, or remove {work / 'wikitext2'}\\* to build it again"):
        prepare_corpus("wikitext2", str(work), str(folders["b"]))
    shutil.copytree(folders["a"], tmp_path / "moved")
    assert prepare_corpus("wikitext2", str(work), str(tmp_path / "moved")) == prefix  # the same text, reused
    assert built == ["tokenizer", "data"]
    (work / "wikitext2.sources.json").unlink()  # a corpus built before the record was kept
    assert prepare_corpus("wikitext2", str(work), str(folders["b"])) == prefix
    assert "was built before its source files were recorded; taking it to be built from" in caplog.text
    with pytest.raises(StudyError, match="built from other files"):
        prepare_corpus("wikitext2", str(work), str(folders["a"]))


def test_studies_of_other_runs_into_one_report_keep_each_other_s_runs(corpus, tmp_path, monkeypatch) -> None:
    """Found 2026-12-06: two studies of ``--runs A`` and ``--runs B`` at once into one --out (as the seed-1235
    capacity runs were made) each wrote the runs it had read at its start plus its own, so the one that ended
    last dropped the other's run (those reports were merged by hand). Now each write reads the report again."""
    from megamythos.research import study

    prefix = corpus_prefix(corpus)
    settings = StudySettings(steps=3, batch_size=2, seq_len=16, warmup=1, eval_batches=1, scale=0.5)

    def meanwhile_another_study(spec: RunSpec, *_: object) -> dict:
        if spec.name == "fixed_depth":  # the other study starts and ends while this run trains
            monkeypatch.setattr(study, "train_run", fake_run)
            run_experiment("depth", settings, prefix, str(tmp_path), ["sampled_depth_tbptt"])
        return fake_run(spec)

    monkeypatch.setattr(study, "train_run", meanwhile_another_study)
    report = run_experiment("depth", settings, prefix, str(tmp_path), ["fixed_depth"])
    assert [r["name"] for r in report["runs"]] == ["fixed_depth", "sampled_depth_tbptt"]
    assert json.loads((tmp_path / "study_depth.json").read_text())["runs_pending"] == []


def test_pondernet_halting_flops_count_the_halted_tokens_keys_and_values() -> None:
    """Found 2026-12-06: PonderNet's halting row gave the forward FLOPs of its mean loops alone, leaving out the
    keys/values of halted tokens at the later loops of their batch, which the exit rule's rows count (evaluate)."""
    from megamythos.research.ponder import PonderLM, evaluate_halting

    torch.manual_seed(0)
    model = PonderLM(base_config(300, StudySettings(seq_len=32, scale=0.5)), 8)
    torch.nn.init.normal_(model.halt.weight, std=3.0)  # tokens halt at different loops
    inputs, targets = torch.randint(0, 300, (2, 2, 32)).unbind(0)
    _, depth = model.halting_forward(inputs)
    frozen = float((depth.max() - depth).mean())
    assert frozen > 0.5
    halting, _ = evaluate_halting(model, [(inputs, targets)])
    assert halting.forward_flops_per_token == pytest.approx(model.forward_flops_per_token(32, halting.mean_depth,
                                                                                          frozen))


def test_a_report_names_the_code_environment_and_data_that_made_it(corpus, tmp_path, monkeypatch) -> None:
    """Found 2026-12-07: a report recorded the settings and the data's path only, not the code, torch, threads
    (2 threads give other last bits than 1) nor the data's bytes, so ``--runs`` merged runs of another dataset at
    the same path (the stdlib corpus is rebuilt in place from another Python's stdlib) without a word, and refused
    the same dataset named ``./data/study`` instead of ``data/study``."""
    import os
    import re

    from megamythos.data import read_dataset_metadata
    from megamythos.research import study

    monkeypatch.setattr(study, "train_run", fake_run)
    prefix = corpus_prefix(corpus)
    settings = StudySettings(steps=3, batch_size=2, seq_len=16, warmup=1, eval_batches=1, scale=0.5)
    report = run_experiment("depth", settings, prefix, str(tmp_path), ["fixed_depth"])
    (run,) = report["runs"]
    code = r"[0-9a-f]{40}(\+modified)?" if (Path(study.__file__).parents[2] / ".git").exists() else "unknown"
    assert re.fullmatch(code, run["environment"]["code"])
    assert run["environment"]["torch"] == torch.__version__
    assert run["environment"]["threads"] == torch.get_num_threads() and run["environment"]["device"] == "cpu"
    assert report["data"]["checksums"] == read_dataset_metadata(prefix)["checksums"] is not None
    respelled = os.path.join(os.path.dirname(prefix), ".", os.path.basename(prefix))  # the same files
    report = run_experiment("depth", settings, respelled, str(tmp_path), ["sampled_depth_tbptt"])
    assert [r["name"] for r in report["runs"]] == ["fixed_depth", "sampled_depth_tbptt"]
    path = tmp_path / "study_depth.json"
    other = json.loads(path.read_text())
    other["data"]["checksums"]["bin"] = ["0" * 64]  # another dataset at the same path
    path.write_text(json.dumps(other))
    with pytest.raises(StudyError, match="holds a study of other settings, data or model"):
        run_experiment("depth", settings, respelled, str(tmp_path), ["fixed_depth"])


def test_an_installed_copy_in_another_repository_records_no_commit(tmp_path: Path) -> None:
    """Found 2026-12-07 (review): a copy of megamythos installed into a virtual environment inside some git
    repository (``.venv/`` ignored there) recorded that repository's commit, and its edits as ``+modified``, as the
    code of each run: a commit that says nothing of the code that ran. Only a file git tracks names a commit."""
    import types

    from megamythos.research import study

    repo = tmp_path / "project"
    copy = repo / ".venv" / "site-packages" / "megamythos" / "research" / "study.py"
    copy.parent.mkdir(parents=True)
    shutil.copy(study.__file__, copy)
    (repo / ".gitignore").write_text(".venv/\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["add", ".gitignore"], ["commit", "-qm", "a project of the user's"]):
        subprocess.run([*git, *args], check=True)
    installed = types.FunctionType(study.code_version.__code__, {**vars(study), "__file__": str(copy)})
    assert installed() == "unknown"
