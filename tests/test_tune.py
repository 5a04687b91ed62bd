"""Optuna sweeps: the search space sets the config, trials run as submitit jobs, intermediate
scores are reported and prune laggards (their jobs are cancelled), the study lives in a
journal file, and the result table/plot are written."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import cloudpickle
import optuna
import pandas as pd
import pytest

import bench.studies.tune
from bench.config import PRESETS, apply_overrides
from bench.studies.tune import (
    INTERMEDIATE,
    SPACE,
    STOP,
    TrialPruned,
    _IntermediateScores,
    load_study,
    metric_mean,
    run_study,
    write_study_report,
)

cloudpickle.register_pickle_by_value(sys.modules[__name__])

TINY = ["n_effects=1", "eval.limit=1", "pretrain.steps=5", "teacher.steps=3", "distill.steps=4",
        "distill.checkpoint_every=2", "sampling.base_steps=2", "world.n_general=32",
        "world.n_train_per_effect=4", "world.n_test_per_category=1"]


def tiny(**fields):
    return replace(apply_overrides(PRESETS.get("smoke")(), TINY), method="ours", **fields)


def test_space_sets_the_distill_config() -> None:
    trial = optuna.trial.FixedTrial({"p_switch": 0.3, "tafm_weight": 2.0, "ts_weight": 0.5, "rank": 32, "lr": 3e-4})
    cfg = tiny()
    for name, param in SPACE.items():
        cfg = param.apply(cfg, param.suggest(trial))
    d = cfg.distill
    assert (d.p_switch, d.tafm_weight, d.ts_weight, d.rank, d.alpha, d.lr) == (0.3, 2.0, 0.5, 32, 32, 3e-4)


def test_metric_mean_uses_ok_rows_and_names_what_is_there() -> None:
    rows = pd.DataFrame({"metric": ["gt_psnr", "gt_psnr", "gt_psnr", "nfe"], "value": [10.0, 20.0, 99.0, 8.0],
                         "status": ["ok", "ok", "missing", "ok"]})
    assert metric_mean(rows, "gt_psnr") == 15.0
    with pytest.raises(ValueError, match="gt_psnr, nfe"):
        metric_mean(rows, "clip")


class FakeTrial:
    """Stands in for TrialJob: 'trains' 6 steps, scoring p_switch * step at each checkpoint."""

    def __call__(self, config_path: str, out: str, cache: str, metric: str, probe_limit: int = 2) -> float:
        p = json.loads(Path(config_path).read_text())["distill"]["p_switch"]
        for step in range(1, 7):
            time.sleep(0.15)  # the driver polls every 0.05 s: it sees each score while the job runs
            if (Path(config_path).parent / STOP).exists():  # what TrialJob's checkpoint callback does
                raise TrialPruned(f"stopped at step {step}")
            with open(Path(config_path).parent / INTERMEDIATE, "a") as f:
                f.write(json.dumps({"step": step, "value": p * step}) + "\n")
        return p * 6


def test_driver_reports_prunes_and_writes_table_and_plot(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(bench.studies.tune, "TrialJob", FakeTrial)
    out = tmp_path / "study"
    study = run_study(tiny(), out, str(tmp_path / "cache"), metric="gt_psnr", direction="maximize", trials=6,
                      parallel=1, space=["p_switch"], executor="local", poll_s=0.05, seed=3)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) >= 2
    for t in study.trials:
        assert t.intermediate_values, "every trial reported intermediate scores"
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert t.value == pytest.approx(t.params["p_switch"] * 6)
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    best = max(t.value for t in study.trials if t.value is not None)
    assert all(t.params["p_switch"] * 6 < best for t in pruned), "only laggards are pruned"

    again = load_study(out)   # the journal file holds the whole study
    assert len(again.trials) == 6 and again.user_attrs["metric"] == "gt_psnr"
    md, png = write_study_report(again, out)
    text = md.read_text()
    assert "Best: trial" in text and "p_switch" in text and png.stat().st_size > 10_000


class InstantTrial:
    """Stands in for TrialJob without intermediate scores: the objective is p_switch."""

    def __call__(self, config_path: str, out: str, cache: str, metric: str, probe_limit: int = 2) -> float:
        return json.loads(Path(config_path).read_text())["distill"]["p_switch"]


def test_resumed_study_continues_the_search_up_to_the_total(tmp_path: Path, monkeypatch) -> None:
    """--trials is the study's total, and a restart draws new parameters instead of replaying
    the first start's (the sampler used to be re-seeded identically on every start)."""
    monkeypatch.setattr(bench.studies.tune, "TrialJob", InstantTrial)
    out = tmp_path / "study"

    def start(trials: int):
        return run_study(tiny(), out, str(tmp_path / "cache"), metric="gt_psnr", direction="maximize",
                         trials=trials, parallel=1, space=["p_switch", "lr"], executor="debug", seed=3)

    first = [t.params for t in start(2).trials]
    study = start(4)                      # 2 done, total 4: two more
    assert len(study.trials) == 4
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert [t.params for t in study.trials[:2]] == first
    assert all(t.params not in first for t in study.trials[2:]), "a resumed study must not replay trials"
    assert study.trials[2].params != study.trials[3].params
    assert len(start(4).trials) == 4      # the total is reached: the same command runs nothing more


def test_a_laggard_is_pruned_and_its_job_stops_quietly(tmp_path: Path, monkeypatch, capfd) -> None:
    """MedianPruner after two complete trials: a third whose intermediate scores trail theirs
    shows state PRUNED (parameters fixed through optuna's enqueue_trial), and its local job stops
    at its next checkpoint without a traceback in the driver's terminal."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    monkeypatch.setattr(bench.studies.tune, "TrialJob", FakeTrial)
    out = tmp_path / "study"
    out.mkdir()
    storage = JournalStorage(JournalFileBackend(str(out / "study.journal")))
    queued = optuna.create_study(study_name="tune", storage=storage, direction="maximize")
    for p in (0.9, 0.8, 0.1):
        queued.enqueue_trial({"p_switch": p})
    study = run_study(tiny(), out, str(tmp_path / "cache"), metric="gt_psnr", direction="maximize", trials=3,
                      parallel=1, space=["p_switch"], executor="local", poll_s=0.05)
    states = {t.params["p_switch"]: t.state for t in study.trials}
    assert states == {0.9: optuna.trial.TrialState.COMPLETE, 0.8: optuna.trial.TrialState.COMPLETE,
                      0.1: optuna.trial.TrialState.PRUNED}
    laggard = study.trials[2]
    assert laggard.intermediate_values  # pruned on a reported score (optuna keeps the last as its value)
    assert max(laggard.intermediate_values) < 6, "pruned before its last step"
    cell = out / "cells" / laggard.user_attrs["cell"]
    deadline = time.time() + 30
    while len(_lines(cell / INTERMEDIATE)) < 6 and time.time() < deadline and not _job_ended(out, laggard):
        time.sleep(0.1)
    assert len(_lines(cell / INTERMEDIATE)) < 6, "the pruned job stopped itself before its last step"
    assert "Traceback" not in capfd.readouterr().err


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _job_ended(out: Path, trial) -> bool:  # noqa: ANN001
    logs = list((out / "slurm" / "trials").glob(f"{trial.user_attrs['job']}*/*_log.err"))
    return any("TrialPruned" in p.read_text() for p in logs)


def test_a_trial_stops_at_its_first_checkpoint_after_the_driver_pruned_it(tmp_path: Path) -> None:
    from types import SimpleNamespace

    scores = _IntermediateScores(None, "gt_psnr", tmp_path / INTERMEDIATE, limit=1)
    (tmp_path / STOP).write_text("")
    with pytest.raises(TrialPruned, match="DMD step 4"):
        scores.on_checkpoint(SimpleNamespace(step=4), tmp_path / "ckpt")
    assert not (tmp_path / INTERMEDIATE).exists()  # no score reported after the prune


@pytest.mark.e2e
def test_tune_cli_runs_real_trials_with_intermediate_scores(tmp_path: Path, capsys) -> None:
    out = tmp_path / "tune"
    # one draw per sample, as the intermediate scores take: the last checkpoint is the final student
    argv = ["--preset", "smoke", "--trials", "2", "--executor", "debug", "--space", "p_switch,lr", "--out", str(out),
            "--cache", str(tmp_path / "cache"), *[o for o in TINY], "eval.draws=1"]
    assert bench.studies.tune.main(argv) == 0
    study = load_study(out)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    for t in study.trials:
        assert sorted(t.intermediate_values) == [2, 4]      # DMD checkpoints at steps 2 and 4
        rows = pd.read_parquet(out / "cells" / t.user_attrs["cell"] / "rows.parquet")
        assert t.value == pytest.approx(metric_mean(rows, "gt_mode_psnr"))  # the default objective
        # scored mid-training by the cell's own evaluation: at step 4 it is the stored student's score
        assert t.intermediate_values[4] == pytest.approx(t.value, rel=1e-4)
    assert (out / "tune.png").exists() and "Best: trial" in capsys.readouterr().out


def test_tune_takes_the_cell_flags_of_bench_run():
    """``--effects N`` chose N effects in bench.run but crashed the tuner (an int has no isdigit):
    both CLIs now declare the cell flags once (bench.runner.add_cell_arguments)."""
    from bench.runner import resolve_config
    from bench.studies.tune import build_parser

    cfg = resolve_config(build_parser().parse_args(["--effects", "2", "--limit", "1", "--seed", "3"]))
    assert (cfg.method, cfg.n_effects, cfg.eval.limit, cfg.seed) == ("ours", 2, 1, 3)
