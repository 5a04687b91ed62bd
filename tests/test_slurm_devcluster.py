"""End-to-end tests against a real SLURM cluster (the one-node dev cluster of slurm/devcluster.sh).

Without a cluster these tests skip, unless ``BENCH_START_SLURM=1`` or ``CI=true`` is set:
then the dev cluster is started (``devcluster.sh up``, needs root) and, under CI, a cluster
that cannot start fails the tests instead of skipping them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest

submitit = pytest.importorskip("submitit")

pytestmark = pytest.mark.slurm

# The job functions below live in this test module, which the worker cannot import
# (tests/ is not a package and not on the worker's sys.path): pickle them by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

PARTITION = os.environ.get("BENCH_SLURM_PARTITION", "debug")


def _executor(folder: Path, **extra) -> "submitit.AutoExecutor":
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    executor.update_parameters(
        slurm_partition=PARTITION,
        timeout_min=2,
        cpus_per_task=1,
        slurm_array_parallelism=2,
        **extra,
    )
    return executor


# ---------------------------------------------------------------- job functions (run on the node)


def square_task(x: int) -> dict:
    time.sleep(0.5)
    return {
        "x": x,
        "y": x * x,
        "array_task": os.environ.get("SLURM_ARRAY_TASK_ID"),
        "python": sys.executable,
    }


def maybe_fail(x: int) -> int:
    if x == 1:
        raise ValueError(f"boom on purpose (x={x})")
    return x + 100


def stamp_task(name: str, workdir: str, sleep_s: float) -> tuple[float, float]:
    start = time.time()
    time.sleep(sleep_s)
    end = time.time()
    Path(workdir, f"{name}.txt").write_text(f"{start} {end}\n")
    return start, end


class CountTo(submitit.helpers.Checkpointable):
    """Counts to ``total`` keeping its progress in a file, so a requeued run resumes."""

    def __call__(self, workdir: str, total: int, step_s: float = 0.5) -> dict:
        wd = Path(workdir)
        progress = wd / "progress.txt"
        done = int(progress.read_text()) if progress.exists() else 0
        with open(wd / "starts.txt", "a") as f:
            f.write(f"{done} {os.environ.get('SLURM_RESTART_COUNT', '0')}\n")
        while done < total:
            time.sleep(step_s)
            done += 1
            tmp = wd / "progress.tmp"
            tmp.write_text(str(done))
            tmp.replace(progress)
        starts = (wd / "starts.txt").read_text().split("\n")
        return {"done": done, "starts": [line for line in starts if line]}


# ---------------------------------------------------------------- tests


def test_map_array_results(slurm_cluster: str, tmp_path: Path) -> None:
    executor = _executor(tmp_path)
    t0 = time.monotonic()
    jobs = executor.map_array(square_task, [0, 1, 2, 3])
    results = [job.result() for job in jobs]
    elapsed = time.monotonic() - t0
    print(f"\n[slurm] {slurm_cluster}: map_array of 4 tasks, submit-to-done {elapsed:.1f}s")
    assert [r["y"] for r in results] == [0, 1, 4, 9]
    assert sorted(r["array_task"] for r in results) == ["0", "1", "2", "3"]
    assert all(r["python"] == sys.executable for r in results)
    array_id = jobs[0].job_id.split("_")[0]
    assert [job.job_id for job in jobs] == [f"{array_id}_{i}" for i in range(4)]


def test_failing_array_task(slurm_cluster: str, tmp_path: Path) -> None:
    executor = _executor(tmp_path)
    jobs = executor.map_array(maybe_fail, [0, 1, 2])
    for job in jobs:
        job.wait()
    assert jobs[0].result() == 100
    assert jobs[2].result() == 102
    exc = jobs[1].exception()
    assert exc is not None
    assert "boom on purpose" in str(exc)
    with pytest.raises(submitit.core.utils.FailedJobError, match="boom on purpose"):
        jobs[1].result()


def test_dependency_chain(slurm_cluster: str, tmp_path: Path) -> None:
    job_a = _executor(tmp_path).submit(stamp_task, "a", str(tmp_path), 3.0)
    executor_b = _executor(
        tmp_path, slurm_additional_parameters={"dependency": f"afterok:{job_a.job_id}"}
    )
    job_b = executor_b.submit(stamp_task, "b", str(tmp_path), 0.0)
    for _ in range(10):  # the pending reason is set by the scheduler right after submission
        reason = subprocess.run(
            ["squeue", "--noheader", "--jobs", job_b.job_id, "--format=%r"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if reason == "Dependency":
            break
        time.sleep(0.2)
    assert reason == "Dependency", f"job B should wait on A, squeue reason: {reason!r}"
    a_start, a_end = job_a.result()
    b_start, b_end = job_b.result()
    print(f"\n[slurm] A ran {a_start:.2f}-{a_end:.2f}, B started {b_start - a_end:.2f}s after A ended")
    assert b_start >= a_end
    file_a = tmp_path.joinpath("a.txt").read_text().split()
    file_b = tmp_path.joinpath("b.txt").read_text().split()
    assert float(file_b[0]) >= float(file_a[1])


def test_checkpoint_requeue(slurm_cluster: str, tmp_path: Path) -> None:
    """Preempt a running Checkpointable job the way SLURM does (SIGTERM, then the USR2 the
    job asked for with --signal): submitit checkpoints, runs `scontrol requeue`, and the
    job resumes from the progress file."""
    total = 16
    executor = _executor(tmp_path)
    t0 = time.monotonic()
    job = executor.submit(CountTo(), str(tmp_path), total)
    progress = tmp_path / "progress.txt"
    deadline = time.monotonic() + 60
    while not (progress.exists() and int(progress.read_text() or 0) >= 3):
        assert time.monotonic() < deadline, "job did not make progress within 60s"
        assert not job.done(), "job finished before it could be interrupted"
        time.sleep(0.2)
    for sig in ("TERM", "USR2"):
        subprocess.run(["scancel", "--signal", sig, job.job_id], check=True)
    result = job.result()
    elapsed = time.monotonic() - t0
    print(f"\n[slurm] checkpoint/requeue job done in {elapsed:.1f}s, starts: {result['starts']}")
    assert result["done"] == total
    starts = [line.split() for line in result["starts"]]
    assert len(starts) >= 2, f"job ran only once: {starts}"
    assert int(starts[0][0]) == 0
    assert 0 < int(starts[-1][0]) < total, "the requeued run should resume from saved progress"
    assert int(starts[-1][1]) >= 1, "SLURM_RESTART_COUNT should count the requeue"
