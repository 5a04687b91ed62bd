"""What a user sees when something goes wrong or takes long: one ``error:`` line for a known
error (the traceback behind ``--debug``), every missing input at once, Ctrl-C that says how to
go on, progress lines in logs, and threads chosen on purpose."""

from __future__ import annotations

import io
import time

import pytest

import bench.run as cli
import bench.runner
from bench.errors import MissingInputsError
from bench.progress import progress
from bench.threads import choose_threads


def test_missing_dataset_and_weights_are_reported_together_in_one_error(tmp_path, capsys):
    argv = ["--preset", "qwen-image-edit", "--method", "base", "--out", str(tmp_path / "runs"),
            "--cache", str(tmp_path / "cache"), f"backbone.path={tmp_path / 'no-weights'}"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("error: 2 inputs of this run are missing")
    assert "dataset:" in err and "world.root=PATH" in err
    assert "backbone weights:" in err and "hf download" in err
    assert not (tmp_path / "runs").exists()  # nothing started


def test_debug_shows_the_traceback_of_a_known_error(tmp_path):
    argv = ["--preset", "qwen-image-edit", "--method", "base", "--out", str(tmp_path / "runs"),
            "--cache", str(tmp_path / "cache"), f"backbone.path={tmp_path / 'no-weights'}", "--debug"]
    with pytest.raises(MissingInputsError):
        cli.main(argv)


def test_a_known_error_during_a_run_is_one_line_and_exit_1(tmp_path, capsys, monkeypatch):
    def fails(*args, **kwargs):
        raise FileNotFoundError("/data/teacher_07.safetensors: no such file")

    monkeypatch.setattr(bench.runner, "run_cell", fails)
    assert cli.main(["--preset", "smoke", "--out", str(tmp_path), "--cache", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: /data/teacher_07.safetensors: no such file  (--debug: traceback)"]


def test_a_bad_value_is_a_usage_error(tmp_path, capsys):
    assert cli.main(["--preset", "smoke", "--out", str(tmp_path), "distill.steps=0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: config key 'distill.steps'") and "Traceback" not in err


def test_ctrl_c_says_what_is_kept_and_how_to_resume(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench.runner, "run_cell", interrupted)
    assert cli.main(["--preset", "smoke", "--out", str(tmp_path / "runs"), "--cache", str(tmp_path / "c")]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and str(tmp_path / "c") in err and "same command again" in err


def test_progress_outside_a_terminal_is_whole_lines_at_an_interval(monkeypatch):
    monkeypatch.setenv("BENCH_PROGRESS_EVERY", "0.05")
    log = io.StringIO()  # not a TTY, like a SLURM log or nohup.out
    bar = progress(total=40, desc="teacher palette_00", stream=log)
    for step in range(40):
        time.sleep(0.005)
        bar.update(1)
        bar.set_postfix(loss=f"{1 / (step + 1):.3f}")  # a refresh per step must not be a line per step
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and all(lines)
    assert 2 <= len(lines) < 20
    assert lines[-1].startswith("teacher palette_00: 40/40 (100 %)") and "ETA" in lines[-1] and "loss=" in lines[-1]


def test_progress_lines_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("BENCH_PROGRESS_EVERY", "0")
    log = io.StringIO()
    for _ in progress(range(5), desc="eval", stream=log):
        pass
    assert log.getvalue() == ""


def test_thread_choice_respects_the_user_before_slurm_and_load(monkeypatch):
    for var in ("BENCH_THREADS", "OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr("os.getloadavg", lambda: (1.7, 1.0, 1.0))
    assert choose_threads() == (1, "2 cores, load 1.7")      # a busy 2-core machine: one thread
    monkeypatch.setattr("os.getloadavg", lambda: (0.1, 0.1, 0.1))
    assert choose_threads()[0] == 2                         # a quiet one: both cores
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "4")
    assert choose_threads() == (4, "SLURM_CPUS_PER_TASK")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")              # the user's setting wins over SLURM's
    assert choose_threads() == (1, "OMP_NUM_THREADS")
    assert choose_threads(3) == (3, "--threads")
    with pytest.raises(ValueError, match="--threads"):
        choose_threads(0)


def test_waiting_for_jobs_logs_a_line_at_an_interval(monkeypatch, capsys, tmp_path):
    from slurm import dispatch
    from slurm.status import JobState

    polls = iter([True, True, True, False])
    monkeypatch.setattr(dispatch, "record_job_states",
                        lambda record: {"1_0": JobState("RUNNING" if next(polls) else "COMPLETED")})
    monkeypatch.setattr(dispatch, "cell_status", lambda out: {"cell": [], "state": []})
    monkeypatch.setenv("BENCH_PROGRESS_EVERY", "0.001")
    sub = dispatch.Submission(tmp_path / "record.json", {"out": str(tmp_path)})
    sub.wait(poll_s=0.01)
    out = capsys.readouterr().out
    assert "[dispatch] waiting" in out and "1 RUNNING" in out
