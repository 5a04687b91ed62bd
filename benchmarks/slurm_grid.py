"""SLURM targets of issue 6 on the one-node dev cluster (slurm/devcluster.sh):

1. a smoke grid of >= 8 cells (the ``methods`` and ``ablation`` grids together) submitted as
   stage arrays (base -> teachers + Lightning -> ONE array of cells -> report) finishes with all
   rows present; prints the submit-to-done time;
2. a training job preempted after its first DMD checkpoint (SIGTERM, then the USR2 submitit
   asked for) is requeued, resumes, and finishes with the same student LoRA and result rows as
   an uninterrupted job; a second uninterrupted job gives the run-to-run noise floor.

Usage:  python benchmarks/slurm_grid.py [--workdir DIR] [key=value ...]
The cluster is started if none answers (needs root); stop it with ``bash slurm/devcluster.sh stop``.
The smoke preset is made smaller (see GRID) so the grid fits a few minutes on 2 busy cores.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench.config import PRESETS, apply_overrides
from bench.grids import GRIDS
from bench.store import ResultStore, cell_id
from slurm.devcluster import cluster_available, ensure_cluster
from slurm.dispatch import submit
from slurm.executors import SlurmConfig

GRID = ["n_effects=2", "eval.limit=1", "pretrain.steps=20", "teacher.steps=10", "distill.steps=10",
        "lightning.steps=10", "fm_all.steps=10", "sampling.base_steps=4", "world.n_general=64",
        "world.n_train_per_effect=8", "world.n_test_per_category=1"]
RESOURCES = SlurmConfig(time_min=30, cpus_per_task=1, array_parallelism=2)


def grid_target(base, work: Path) -> Path:  # noqa: ANN001
    cells = {cell_id(c): c for c in GRIDS.get("methods")(base) + GRIDS.get("ablation")(base)}
    out, cache = work / "grid", work / "cache"
    print(f"\n== 1. smoke grid: {len(cells)} cells (methods + ablation), preset smoke + {' '.join(GRID)}")
    t0 = time.perf_counter()
    sub = submit(list(cells.values()), out, cache, executor="slurm", slurm=RESOURCES, name="smoke-grid")
    t_submit = time.perf_counter() - t0
    states = sub.wait(poll_s=2)
    elapsed = time.perf_counter() - t0
    store = ResultStore(out)
    rows = store.read_all()
    stages: dict[str, int] = {}
    for j in sub.record["jobs"]:
        stages[j["stage"]] = stages.get(j["stage"], 0) + 1
    arrays = sorted({j["job_id"].split("_")[0] for j in sub.record["jobs"] if j["stage"] == "cells"})
    present = [cid for cid in cells if store.is_done(cid)]
    print("stages (tasks): " + ", ".join(f"{s} {n}" for s, n in stages.items()) + f"; cells array job(s): {arrays}")
    print(f"cells with rows: {len(present)}/{len(cells)} ({len(rows)} rows); states: {sorted(set(states.values()))}")
    print(f"submit took {t_submit:.1f}s; SUBMIT-TO-DONE {elapsed:.1f}s")
    from reports.tables import means_table

    print(means_table(rows))
    if len(present) != len(cells):
        raise SystemExit("FAILED: not every cell has rows")
    return cache


def requeue_target(base, work: Path, grid_cache: Path, distill_steps: int) -> None:  # noqa: ANN001
    cfg = replace(base, method="ours", components_off=(),
                  distill=replace(base.distill, steps=distill_steps, checkpoint_every=max(1, distill_steps // 5)))
    print(f"\n== 2. requeue: 'ours' with {distill_steps} DMD steps, checkpoint every {cfg.distill.checkpoint_every}")
    runs = ("plain", "plain2", "preempted")
    caches = {r: work / f"cache-{r}" for r in runs}
    for c in caches.values():  # the same world, base, teachers and teacher outputs; no student yet
        shutil.copytree(grid_cache, c, ignore=shutil.ignore_patterns("collectionlora", "lightning", "fm_all_in_1"))
    t0 = time.perf_counter()
    subs = {r: submit([cfg], work / f"out-{r}", caches[r], executor="slurm", slurm=RESOURCES, name=r)
            for r in runs}
    victim = subs["preempted"].record["cells"][cell_id(cfg)]["job_id"]
    while not list(caches["preempted"].glob("collectionlora/.work-*/ckpt-*.pt")):
        if time.perf_counter() - t0 > 900:
            raise SystemExit("FAILED: no DMD checkpoint within 15 min")
        time.sleep(0.2)
    ckpts = sorted(p.name for p in caches["preempted"].glob("collectionlora/.work-*/ckpt-*.pt"))
    for sig in ("TERM", "USR2"):
        subprocess.run(["scancel", "--signal", sig, victim], check=True)
    print(f"preempted job {victim} after {ckpts[-1]} ({time.perf_counter() - t0:.1f}s after submission)")
    done = {}
    for r in runs:
        states = subs[r].wait(poll_s=2)
        done[r] = time.perf_counter() - t0
        if set(states.values()) != {"done"}:
            raise SystemExit(f"FAILED: {r}: {states}")
    log_dir = Path(subs["preempted"].record["cells"][cell_id(cfg)]["log_folder"])
    log = "".join(p.read_text() for p in sorted(log_dir.glob("*_log.*")))
    resumed = [line for line in log.splitlines() if "resumed from ckpt-" in line]
    print(f"requeued: {'requeueing' in log}; {resumed[0].strip() if resumed else 'NOT RESUMED'}")

    from safetensors.torch import load_file

    loras = {r: load_file(next(caches[r].glob("collectionlora/*/pytorch_lora_weights.safetensors"))) for r in runs}
    rows = {r: ResultStore(work / f"out-{r}").read_cell(cell_id(cfg)) for r in runs}

    def diff(a: str, b: str) -> float:
        return max((loras[a][k] - loras[b][k]).abs().max().item() for k in loras[a])

    same_rows = np.array_equal(rows["preempted"]["value"].to_numpy(), rows["plain"]["value"].to_numpy(), equal_nan=True)
    print(f"student LoRA max|diff|: preempted vs plain {diff('preempted', 'plain'):.3g}; "
          f"plain2 vs plain (noise floor) {diff('plain2', 'plain'):.3g}")
    print(f"result rows identical (preempted vs plain): {same_rows}; "
          f"max |row diff| {(rows['preempted']['value'] - rows['plain']['value']).abs().max():.3g}")
    print("done after submission: " + ", ".join(f"{r} {t:.1f}s" for r, t in done.items()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default="/tmp/bench-slurm-grid", help="runs and caches (wiped first)")
    p.add_argument("--distill-steps", type=int, default=20, help="DMD steps of the requeue target")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="more overrides of the smoke preset")
    args = p.parse_args(argv)
    ok, reason = cluster_available()
    if not ok:
        print(f"no cluster ({reason}); starting the dev cluster")
        ensure_cluster(start=True)
    print(f"cluster: {cluster_available()[1]}")
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    base = apply_overrides(PRESETS.get("smoke")(), [*GRID, *args.overrides])
    cache = grid_target(base, work)
    requeue_target(base, work, cache, args.distill_steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
