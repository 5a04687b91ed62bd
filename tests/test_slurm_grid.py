"""Grids on a real SLURM cluster (the one-node dev cluster of slurm/devcluster.sh) through
slurm/dispatch.py: stage arrays chained by dependencies, a failing and a cancelled array task
that do not take the others down, --status, --resubmit-failed, and a training job preempted
mid-run that is requeued and finishes with the uninterrupted result.

Without a cluster these tests skip, unless ``BENCH_START_SLURM=1`` or ``CI=true`` is set: then
the dev cluster is started and, under CI, a cluster that cannot start fails the tests.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from bench.cache import ArtifactCache
from bench.config import PRESETS, RunConfig, apply_overrides
from bench.store import ResultStore, cell_id
from slurm.dispatch import resubmit_failed, submit
from slurm.executors import SlurmConfig
from slurm.status import cell_status, failed_cells, print_status

pytestmark = pytest.mark.slurm

TINY = ["n_effects=1", "eval.limit=1", "pretrain.steps=5", "teacher.steps=3", "distill.steps=4",
        "sampling.base_steps=2", "world.n_general=32", "world.n_train_per_effect=4",
        "world.n_test_per_category=1"]
RESOURCES = SlurmConfig(time_min=20, cpus_per_task=1, array_parallelism=2)


def tiny(*extra: str, **fields) -> RunConfig:
    return replace(apply_overrides(PRESETS.get("smoke")(), [*TINY, *extra]), **fields)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("slurm-cache")


def _squeue_reason(job_id: str, want: str, timeout_s: float = 10) -> str:
    """The job's pending reason, polled until it is ``want`` (the scheduler sets it shortly
    after submission)."""
    deadline = time.monotonic() + timeout_s
    while True:
        reason = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%r"], capture_output=True,
                                text=True).stdout.strip()
        if reason == want or time.monotonic() > deadline:
            return reason
        time.sleep(0.2)


def test_grid_arrays_failed_and_cancelled_tasks_status_and_resubmit(slurm_cluster: str, tmp_path: Path,
                                                                   cache_dir: Path) -> None:
    out = tmp_path / "runs"
    ok = [tiny(seed=0), tiny(seed=1)]
    failing = tiny("eval.limit=0", seed=2)        # evaluation finds no test rows: the task fails
    cancelled = tiny(seed=3)                      # cancelled while it waits for its dependency
    sub = submit([*ok, failing, cancelled], out, cache_dir, executor="slurm", slurm=RESOURCES, name="mixed")
    jobs = {j["stage"]: j for j in sub.record["jobs"]}
    assert set(jobs) == {"base", "teachers", "cells", "report"}
    base_id = jobs["base"]["job_id"].split("_")[0]
    teachers_id = jobs["teachers"]["job_id"].split("_")[0]
    cells_id = jobs["cells"]["job_id"].split("_")[0]
    assert jobs["teachers"]["dependency"] == f"afterok:{base_id}"
    assert jobs["cells"]["dependency"] == f"afterok:{base_id}:{teachers_id}"
    assert jobs["report"]["dependency"] == f"afterany:{cells_id}"
    cells = sub.record["cells"]
    assert sorted(e["job_id"] for e in cells.values()) == [f"{cells_id}_{i}" for i in range(4)]  # ONE array

    victim = cells[cell_id(cancelled)]["job_id"]
    assert _squeue_reason(victim, "Dependency") == "Dependency"
    subprocess.run(["scancel", victim], check=True)
    t0 = time.monotonic()
    states = sub.wait(poll_s=2)
    print(f"\n[slurm] {slurm_cluster}: 4-cell grid + shared stages, submit-to-done {time.monotonic() - t0:.1f}s")

    assert [states[cell_id(c)] for c in ok] == ["done", "done"]
    assert states[cell_id(failing)] == "failed"
    assert states[cell_id(cancelled)] in ("gone", "cancelled")
    table = cell_status(out).set_index("cell")
    assert "no test rows" in table.loc[cell_id(failing), "note"]
    report = (out / "report.md").read_text()   # the report ran although tasks failed (afterany)
    assert cell_id(failing) in report and cell_id(cancelled) in report
    assert print_status(out) == 1

    again = resubmit_failed(out, slurm=RESOURCES, wait=True)
    assert sorted(again.record["cells"]) == sorted([cell_id(failing), cell_id(cancelled)])
    assert [j["stage"] for j in again.record["jobs"]] == ["cells", "cells", "report"]  # shared stages cached
    assert failed_cells(out) == [cell_id(failing)]
    assert ResultStore(out).read_all()["run"].nunique() == 3

    # the same cell run locally gives the rows the cluster wrote (what the report is built from)
    from bench.runner import run_cell

    local = run_cell(ok[0], tmp_path / "local", ArtifactCache(cache_dir, verbose=False))
    remote = ResultStore(out).read_cell(cell_id(ok[0]))
    key = ["effect", "sample", "metric"]
    # evaluation rows; the cost rows (one per artifact) come from the same cost.json files either way
    local, remote = (r[r.role != "cost"].sort_values(key).reset_index(drop=True) for r in (local, remote))
    assert local[key].equals(remote[key])
    np.testing.assert_array_equal(local["value"].to_numpy(), remote["value"].to_numpy())  # NaN == NaN


def _student_free_caches(cfg: RunConfig, cache_dir: Path, tmp_path: Path, *names: str) -> list[Path]:
    """Copies of the cache holding the cell's shared inputs (world, base, teacher and its
    outputs, built once) but no distilled student, one per name."""
    from bench.workspace import Workspace
    from methods.teachers import teacher_outputs

    ws = Workspace(cfg, ArtifactCache(cache_dir, verbose=False))
    teacher_outputs(ws, ws.bench.effects[0])
    caches = [tmp_path / name for name in names]
    for c in caches:
        shutil.copytree(cache_dir, c, ignore=shutil.ignore_patterns("collectionlora"))
    return caches


def test_preempted_training_requeues_and_matches_uninterrupted(slurm_cluster: str, tmp_path: Path,
                                                               cache_dir: Path) -> None:
    """Two identical cells in two copies of the cache, as one array: one runs through, the other
    is preempted (SIGTERM, then the USR2 submitit asked for) after its first DMD checkpoint;
    submitit requeues it, DMD resumes from the checkpoint, and the students are identical."""
    cfg = tiny("distill.steps=15", "distill.checkpoint_every=3", method="ours")
    caches = _student_free_caches(cfg, cache_dir, tmp_path, "plain", "preempted")
    subs = [submit([cfg], tmp_path / f"out-{c.name}", c, executor="slurm", slurm=RESOURCES, name=c.name)
            for c in caches]
    victim = subs[1].record["cells"][cell_id(cfg)]["job_id"]
    deadline = time.monotonic() + 600
    while not list(caches[1].glob("collectionlora/.work-*/ckpt-*.pt")):
        assert time.monotonic() < deadline, "no DMD checkpoint appeared"
        time.sleep(0.2)
    for sig in ("TERM", "USR2"):
        subprocess.run(["scancel", "--signal", sig, victim], check=True)
    for s in subs:
        assert set(s.wait(poll_s=2).values()) == {"done"}

    log_dir = Path(subs[1].record["cells"][cell_id(cfg)]["log_folder"])
    log = "".join(p.read_text() for p in log_dir.glob("*_log.*"))
    assert "requeueing" in log and "resumed from ckpt-" in log, log[-3000:]
    a, b = (load_file(next(c.glob("collectionlora/*/pytorch_lora_weights.safetensors"))) for c in caches)
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"\n[slurm] requeued vs uninterrupted student LoRA: max |diff| = {diff:.3g}")
    assert a.keys() == b.keys() and diff == 0.0
    rows = [ResultStore(tmp_path / f"out-{c.name}").read_cell(cell_id(cfg)) for c in caches]
    quality = [r[r.role != "cost"] for r in rows]
    np.testing.assert_array_equal(quality[0]["value"].to_numpy(), quality[1]["value"].to_numpy())  # NaN == NaN
    # the requeued build counted the same passes (its checkpoint carried the killed run's); seconds differ
    passes = [r[r.metric.isin(["train_forward", "train_backward"]) & r.artifact.str.startswith("collectionlora/")]
              .sort_values("metric")["value"].tolist() for r in rows]
    assert passes[0] == passes[1] and len(passes[0]) == 2


def test_two_task_job_trains_the_student_data_parallel(slurm_cluster: str, tmp_path: Path, cache_dir: Path) -> None:
    """``slurm.tasks_per_node=2``: the cell job runs as two SLURM tasks that join one gloo process
    group and train the DMD student together; it equals the one-task job's student, and only
    rank 0 writes rows."""
    cfg = tiny("distill.steps=6", "distill.checkpoint_every=3", "distill.batch_size=4", method="ours")
    caches = _student_free_caches(cfg, cache_dir, tmp_path, "one-task", "two-tasks")
    subs = [submit([cfg], tmp_path / f"out-{c.name}", c, executor="slurm", name=c.name,
                   slurm=replace(RESOURCES, tasks_per_node=tasks)) for c, tasks in zip(caches, (1, 2))]
    for s in subs:
        assert set(s.wait(poll_s=2).values()) == {"done"}
    log_dir = Path(subs[1].record["cells"][cell_id(cfg)]["log_folder"])
    assert len(list(log_dir.glob("*_1_log.out"))) == 1, "the job ran a second task"
    a, b = (load_file(next(c.glob("collectionlora/*/pytorch_lora_weights.safetensors"))) for c in caches)
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"\n[slurm] 2-task vs 1-task student LoRA: max |diff| = {diff:.3g}")
    assert a.keys() == b.keys() and diff < 1e-5
    assert len(ResultStore(tmp_path / "out-two-tasks").read_all()) == len(
        ResultStore(tmp_path / "out-one-task").read_all())


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v", "-s"]))
