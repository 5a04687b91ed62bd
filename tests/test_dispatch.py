"""Dispatching cells as submitit jobs without a cluster: configs shipped as files, stage
planning (cached artifacts and finished cells are not resubmitted), sbatch resources, the
debug/local executors, status and resubmission, the cache lock under concurrent jobs, and a
training job that is preempted, requeued and finishes with the uninterrupted result."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import cloudpickle
import numpy as np
import pandas as pd
import pytest
import submitit
import torch
from safetensors.torch import load_file

from bench.cache import ArtifactCache, ArtifactSpec
from bench.config import PRESETS, RunConfig, apply_overrides, to_dict
from bench.store import COLUMNS, ResultStore, cell_id
from slurm.dispatch import CellJob, config_from_dict, load_config, plan, resubmit_failed, submit
from slurm.executors import SlurmConfig, slurm_parameters
from slurm.status import cell_status, failed_cells, print_status

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # job functions defined here

# The smoke preset made tiny: 1 effect, a few steps per stage, one test sample per category.
TINY = ["n_effects=1", "eval.limit=1", "pretrain.steps=5", "teacher.steps=3", "distill.steps=4",
        "sampling.base_steps=2", "world.n_general=32", "world.n_train_per_effect=4",
        "world.n_test_per_category=1"]


def tiny(*extra: str, **fields) -> RunConfig:
    return replace(apply_overrides(PRESETS.get("smoke")(), [*TINY, *extra]), **fields)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


# ---------------------------------------------------------------------------------- fast units


def test_config_json_round_trip_is_exact() -> None:
    cfg = tiny("distill.dmd_sigma_range=0.1,0.9", "eval.limit=None", components_off=("aop", "ts"), method="ours")
    back = config_from_dict(RunConfig, json.loads(json.dumps(to_dict(cfg))))
    assert back == cfg and cell_id(back) == cell_id(cfg)
    assert isinstance(back.distill.dmd_sigma_range, tuple) and isinstance(back.distill.lr, float)
    assert back.eval.limit is None and back.components_off == ("aop", "ts")


def test_config_from_dict_rejects_unknown_keys() -> None:
    d = to_dict(tiny())
    d["distill"]["p_swtich"] = 0.3
    with pytest.raises(ValueError, match="p_swtich"):
        config_from_dict(RunConfig, d)


def test_sbatch_script_carries_resources_array_and_dependency(tmp_path: Path) -> None:
    from submitit.slurm.slurm import _make_sbatch_string

    cfg = SlurmConfig(partition="gpu", time_min=30, gpus_per_node=2, cpus_per_task=8, mem_gb=16, account="acc",
                      qos="high", constraint="h100", array_parallelism=3, setup=("module load cuda",))
    text = _make_sbatch_string(command="python -m x", folder=tmp_path / "%j", map_count=8,
                               **slurm_parameters(cfg, job_name="bench-cells", dependency="afterok:11:12"))
    for line in ["--partition=gpu", "--time=30", "--gpus-per-node=2", "--cpus-per-task=8", "--mem=16384MB",
                 "--account=acc", "--qos=high", "--constraint=h100", "--array=0-7%3",
                 "--dependency=afterok:11:12", "--kill-on-invalid-dep=yes", "--signal=USR2@90", "--requeue"]:
        assert f"#SBATCH {line}\n" in text, line
    assert "module load cuda" in text
    report = slurm_parameters(cfg, job_name="bench-report", cpu_only=True)
    assert "gpus_per_node" not in report and report["cpus_per_task"] == 1


def test_slurm_overrides_on_the_cli() -> None:
    from bench.run import _slurm_config, build_parser

    args = build_parser().parse_args(["--executor", "slurm", "teacher.steps=3", "slurm.partition=gpu",
                                      "slurm.mem_gb=32", "slurm.setup=module load cuda,source env.sh"])
    cfg = _slurm_config(args)
    assert cfg.partition == "gpu" and cfg.mem_gb == 32.0
    assert cfg.setup == ("module load cuda", "source env.sh")
    assert args.overrides == ["teacher.steps=3"]
    with pytest.raises(ValueError, match="partition"):
        _slurm_config(build_parser().parse_args(["slurm.partiton=gpu"]))


def test_plan_submits_only_missing_stages_and_unfinished_cells(tmp_path: Path) -> None:
    from bench.grids import GRIDS

    cache, out = tmp_path / "cache", tmp_path / "out"
    base = tiny(n_effects=2)
    cells = GRIDS.get("methods")(base) + GRIDS.get("ablation")(base)   # 'ours' full is in both
    p = plan(cells, out, cache)
    assert len(p.cells) == 8 and not p.done
    assert {s: len(t) for s, t in p.shared.items()} == {"base": 1, "teachers": 2, "lightning": 1}
    assert all(t.args[2] for t in p.shared["teachers"].values()), "ours/fm_all_in_1 need the teacher outputs"
    for t in p.cells:  # the job gets a path; the file holds exactly the cell's config
        assert Path(t.args[0]).parent.name == t.cell == cell_id(load_config(t.args[0]))

    # artifacts found in the cache and finished cells are not submitted again
    for stage, kind in (("base", "base"), ("lightning", "lightning")):
        for key in p.shared[stage]:
            (cache / kind / key).mkdir(parents=True)
            (cache / kind / key / "DONE").write_text("")
    done = p.cells[0].cell
    rows = pd.DataFrame([{c: 0 for c in COLUMNS}])
    ResultStore(out).write_rows(done, rows)
    p2 = plan(cells, out, cache)
    assert {s: len(t) for s, t in p2.shared.items()} == {"base": 0, "teachers": 2, "lightning": 0}
    assert p2.done == [done] and len(p2.cells) == 7


def test_plan_builds_a_missing_synthetic_world_so_cached_teachers_are_not_resubmitted(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cells = [tiny(n_effects=2, method="base")]
    first = plan(cells, tmp_path / "out", cache)
    assert len(first.shared["teachers"]) == 2
    for key in first.shared["teachers"]:  # the teachers are built ...
        (cache / "teachers" / key).mkdir(parents=True)
        (cache / "teachers" / key / "DONE").write_text("")
    shutil.rmtree(cache / "world")  # ... and the world is gone (a new world version keeps its teachers)
    again = plan(cells, tmp_path / "out2", cache)
    assert not again.shared["teachers"], "a cached teacher must not become a job"
    assert any((cache / "world").iterdir())


def _storage_rows(cell) -> pd.DataFrame:  # noqa: ANN001 -- a stand-in for DeploymentCell.run
    ident = {c: "" for c in COLUMNS} | {"run": cell_id(cell), "ablation": "none", "components": "{}",
                                        "preset": cell.preset, "n_effects": cell.n_effects, "sample": 0,
                                        "synthetic": False, "seed": cell.seed, "status": "ok",
                                        "higher_is_better": False, "metric": "storage_bytes", "router": ""}
    return pd.DataFrame([ident | {"method": "baseline", "value": 1e3 * cell.n_effects},
                         ident | {"method": "ours", "value": 1e3}])


def test_deployment_cell_needs_no_training_stage_and_is_rebuilt_from_its_config(tmp_path: Path) -> None:
    from bench.cells import DeploymentCell
    from slurm.dispatch import load_cell

    base = tiny(n_effects=1, method="lightning")
    dep = DeploymentCell(base=base, n_effects=3, capacity=2, routers=("exact",))
    p = plan([dep], tmp_path / "a", tmp_path / "cache")
    assert [t.cell for t in p.cells] == [cell_id(dep)] and p.cells[0].label.startswith("deployment N=3")
    assert not any(p.shared.values()), "a measurement cell trains nothing: no base/teacher/lightning job"
    rebuilt = load_cell(p.cells[0].args[0])
    assert isinstance(rebuilt, DeploymentCell) and rebuilt == dep and cell_id(rebuilt) == cell_id(dep)

    # beside a training cell only the training cell's stages are planned
    p = plan([dep, base], tmp_path / "b", tmp_path / "cache")
    assert {s: len(t) for s, t in p.shared.items()} == {"base": 1, "teachers": 1, "lightning": 1}
    assert isinstance(load_cell(p.cells[1].args[0]), RunConfig)


# ---------------------------------------------------------------------- debug / local executors


@pytest.mark.e2e
def test_debug_executor_grid_failed_cell_status_and_resubmit(tmp_path: Path, cache_dir: Path, monkeypatch,
                                                             capsys) -> None:
    import bench.runner

    out = tmp_path / "runs"
    cells = [tiny(seed=0), tiny(seed=1)]
    bad = cell_id(cells[1])
    real_run_cell = bench.runner.run_cell

    def flaky(cfg, *a, **k):
        if cell_id(cfg) == bad:
            raise RuntimeError("node lost (injected)")
        return real_run_cell(cfg, *a, **k)

    monkeypatch.setattr(bench.runner, "run_cell", flaky)
    sub = submit(cells, out, cache_dir, executor="debug", name="two")
    stages = [j["stage"] for j in sub.record["jobs"]]
    assert stages == ["base", "teachers", "cells", "cells", "report"]

    table = cell_status(out).set_index("cell")
    assert table.loc[cell_id(cells[0]), "state"] == "done"
    assert table.loc[bad, "state"] == "failed" and "node lost (injected)" in table.loc[bad, "note"]
    assert failed_cells(out) == [bad]
    assert bad in (out / "report.md").read_text()
    assert print_status(out) == 1

    monkeypatch.setattr(bench.runner, "run_cell", real_run_cell)
    again = resubmit_failed(out)
    assert [j["stage"] for j in again.record["jobs"]] == ["cells", "report"]   # shared artifacts cached
    assert list(again.record["cells"]) == [bad]
    assert set(cell_status(out)["state"]) == {"done"} and print_status(out) == 0
    assert ResultStore(out).read_all()["run"].nunique() == 2
    # another run sharing the directory has written a cell it has not started: the directory's
    # status says so, this grid's (its own cells) is still a success
    other = tiny(seed=2)
    ResultStore(out).write_config(cell_id(other), other)
    assert print_status(out) == 1 and print_status(out, only={cell_id(c) for c in cells}) == 0
    assert ResultStore(out).read_error(bad) is None


def _build_once(cache: str, counter: str) -> str:
    def build(d: Path) -> None:
        with open(counter, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(1.0)
        (d / "value.txt").write_text("42")

    return str(ArtifactCache(cache, verbose=False).get_or_build(ArtifactSpec("shared", {"k": 1}), build))


def test_concurrent_jobs_build_a_shared_artifact_once(tmp_path: Path) -> None:
    executor = submitit.LocalExecutor(tmp_path / "logs" / "%j")
    executor.update_parameters(timeout_min=2)
    counter = tmp_path / "builds.txt"
    with executor.batch():
        jobs = [executor.submit(_build_once, str(tmp_path / "cache"), str(counter)) for _ in range(3)]
    paths = {job.result() for job in jobs}
    assert len(paths) == 1 and Path(paths.pop(), "value.txt").read_text() == "42"
    assert len(counter.read_text().split()) == 1, "three jobs, one build"


def _task_pid(job) -> int | None:  # noqa: ANN001
    """The job's task process (child of submitit's local controller)."""
    pid = job._process.pid
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


@pytest.mark.e2e
def test_preempted_training_job_requeues_and_matches_uninterrupted(tmp_path: Path, cache_dir: Path) -> None:
    """USR2 (what SLURM sends on preemption/timeout) in the middle of DMD: submitit checkpoints
    the call, the job restarts, training resumes from the trainer's checkpoint, and the student
    LoRA equals the one of a job that was never interrupted."""
    from bench.workspace import Workspace
    from methods.teachers import teacher_outputs

    cfg = tiny("distill.steps=12", "distill.checkpoint_every=3", method="ours")
    ws = Workspace(cfg, ArtifactCache(cache_dir, verbose=False))
    teacher_outputs(ws, ws.bench.effects[0])   # world, base, teacher and its outputs: shared inputs
    caches = {}
    for name in ("plain", "preempted"):
        caches[name] = tmp_path / f"cache-{name}"
        shutil.copytree(cache_dir, caches[name], ignore=shutil.ignore_patterns("collectionlora"))
    cid = cell_id(cfg)
    executor = submitit.LocalExecutor(tmp_path / "logs" / "%j", max_num_timeout=3)
    executor.update_parameters(timeout_min=20)
    jobs = {}
    for name, cache in caches.items():   # both as jobs: fresh processes, same conditions
        store = ResultStore(tmp_path / f"out-{name}")
        store.write_config(cid, cfg)
        jobs[name] = executor.submit(CellJob(), str(store.cell_dir(cid) / "config.json"), str(store.out), str(cache))
    deadline = time.monotonic() + 600
    while not list(caches["preempted"].glob("collectionlora/.work-*/ckpt-*.pt")):
        assert time.monotonic() < deadline and not jobs["preempted"].done(), "no DMD checkpoint appeared"
        time.sleep(0.1)
    pid = _task_pid(jobs["preempted"])
    assert pid is not None
    os.kill(pid, signal.SIGUSR2)
    assert {name: job.result()["cell"] for name, job in jobs.items()} == {"plain": cid, "preempted": cid}
    job = jobs["preempted"]
    log = Path(job.paths.stdout).read_text() + Path(job.paths.stderr).read_text()
    assert "requeueing" in log and "resumed from ckpt-" in log, log[-2000:]

    a, b = (load_file(next(c.glob("collectionlora/*/pytorch_lora_weights.safetensors"))) for c in caches.values())
    assert a.keys() == b.keys()
    # bit-identical in our runs; float summation may depend on buffer alignment (MKL), hence the tolerance
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    rows = [ResultStore(tmp_path / f"out-{n}").read_cell(cid) for n in caches]
    quality = [r[r.role != "cost"] for r in rows]  # the seconds of training differ between the two runs
    np.testing.assert_allclose(quality[0]["value"].to_numpy(), quality[1]["value"].to_numpy(), atol=1e-4,
                               equal_nan=True)
    # the requeued build counted the same passes (its checkpoint carried the killed run's)
    passes = [r[r.metric.isin(["train_forward", "train_backward"]) & r.artifact.str.startswith("collectionlora/")]
              .sort_values("metric")["value"].tolist() for r in rows]
    assert passes[0] == passes[1] and len(passes[0]) == 2


def test_debug_executor_runs_a_deployment_cell_and_resubmits_it_after_a_failure(tmp_path: Path,
                                                                                monkeypatch) -> None:
    """The submitted grid path (``--executor debug``): the cell job rebuilds the DeploymentCell from
    config.json, a failed measurement is named by --status and resubmitted as a DeploymentCell."""
    from bench.cells import DeploymentCell

    dep = DeploymentCell(base=tiny(), n_effects=3, capacity=2)
    out = tmp_path / "runs"

    def lost(self, out, cache):  # noqa: ANN001
        raise RuntimeError("GPU fell off the bus (injected)")

    monkeypatch.setattr(DeploymentCell, "run", lost)
    sub = submit([dep], out, tmp_path / "cache", executor="debug", name="deployment")
    assert [j["stage"] for j in sub.record["jobs"]] == ["cells", "report"]
    assert failed_cells(out) == [cell_id(dep)]
    assert "fell off the bus" in cell_status(out).set_index("cell").loc[cell_id(dep), "note"]

    monkeypatch.setattr(DeploymentCell, "run", lambda self, out, cache: _storage_rows(self))
    again = resubmit_failed(out)
    assert [j["stage"] for j in again.record["jobs"]] == ["cells", "report"]
    assert set(cell_status(out)["state"]) == {"done"} and print_status(out) == 0
    report = (out / "report.md").read_text()
    assert "Storage ↓" in report.split("## 3.")[1] and "None: every cell finished" in report


def _stamp(folder: str, i: int) -> str:
    import os

    start = time.time()
    time.sleep(1.5)
    Path(folder, f"{i}.json").write_text(json.dumps({"start": start, "end": time.time(),
                                                     "threads": os.environ.get("BENCH_THREADS")}))
    return str(i)


@pytest.mark.e2e
def test_local_jobs_run_at_most_parallel_at_once_with_their_share_of_the_cores(tmp_path: Path, monkeypatch) -> None:
    """``bench.run --jobs 2``: five local jobs, never more than two at a time (submitit alone
    would start all five), each told to use its share of the cores when the user set no threads."""
    from bench.threads import usable_cores
    from slurm.dispatch import Submission, Task, _run_local

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("BENCH_THREADS", raising=False)
    sub = Submission(tmp_path / "record.json", {"jobs": [], "cells": {}})
    tasks = [Task("teachers", f"job {i}", ("x",)) for i in range(5)]
    failed = _run_local(sub, tmp_path, SlurmConfig(), [("teachers", _stamp, [(str(tmp_path), i) for i in range(5)],
                                                        tasks)], parallel=2, poll_s=0.1)
    assert failed == [] and len(sub.record["jobs"]) == 5
    spans = [json.loads((tmp_path / f"{i}.json").read_text()) for i in range(5)]
    at_once = max(sum(s["start"] <= t["start"] < s["end"] for s in spans) for t in spans)
    assert at_once == 2
    assert {s["threads"] for s in spans} == {str(max(1, usable_cores() // 2))}
