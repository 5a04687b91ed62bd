"""Submit run cells as jobs: shared artifacts first, one array of cells, then a report.

Stages, each ONE submitit array (``executor.batch()``); on SLURM they are chained with
dependencies so a whole grid is one submission, elsewhere they run one after the other:

  base       the pretrained base of each distinct world/backbone/pretrain config
  teachers   each effect's teacher LoRA, plus its cached base_pred outputs where a method
             anchors on them (TA-FM / TS, FM all-in-1)                  afterok:base
  lightning  the Lightning LoRA (methods lightning, fm_all_in_1)         afterok:base
  cells      one task per cell: distillation (``method.prepare``, checkpointed, requeued on
             timeout/preemption) + evaluation + atomic rows              afterok:teachers:lightning
  report     markdown report of every row, failed cells named            afterany:cells

Distillation and evaluation share one job per cell: the distilled LoRA is a cache artifact,
so a requeue during evaluation does not retrain; splitting them would double job start-up
(importing torch is most of a small job) for no gain on the synthetic world.

A stage item whose output exists (``ArtifactCache.exists`` through a cache that refuses to
build, ``ResultStore.is_done``) is not submitted. Anything not prebuilt here (e.g. a method the
``SHARED_NEEDS`` table does not know) is built by the cell job itself under the cache's file
lock, so the table only saves time; it never decides correctness.

With the ``local`` executor (subprocesses of this machine, submitit's ``LocalExecutor``) at most
``parallel`` jobs run at once (default: this machine's usable cores), each with its share of
the cores as torch threads unless the user set them; teachers and Lightning need only the base,
so they share one pool instead of waiting for each other (``bench.run --jobs N``).

Measurement cells (``bench.cells.DeploymentCell``: deployment cost) train nothing, so they need
no shared stage; they run in the cells array like the others.

Jobs receive the path of the cell's resolved ``config.json`` (written before submission, with the
cell's kind and its grid's tags: bench/store.py), never a pickled config; ``load_cell`` rebuilds
the RunConfig or DeploymentCell from it. Each
submission is recorded in ``<out>/submissions/<time>-<name>.json`` (job id and log folder per
cell and per artifact); ``python -m bench.run --status OUT`` reads it.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import traceback
import types
import typing
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import submitit

from bench.cache import ArtifactCache, atomic_write
from bench.cells import Cell, DeploymentCell, describe, is_measurement
from bench.config import RunConfig, config_hash
from bench.grids import GridCell
from bench.progress import log_interval
from bench.store import ResultStore, cell_id
from slurm.executors import SlurmConfig, check_kind, make_executor, slurm_config_from_dict
from slurm.status import cell_status, failed_cells, load_records, print_status, record_job_states

SHARED_STAGES: tuple[str, ...] = ("base", "teachers", "lightning")
# The local executor's second pool, longest job first: Lightning (1,024 CPU s on the default
# preset) last left one core idle for its whole run after the teachers (86-108 CPU s each) were done.
LOCAL_POOL: tuple[str, ...] = ("lightning", "teachers")

# Shared artifacts each method's cell needs before it starts (methods not listed: teachers).
SHARED_NEEDS: dict[str, frozenset[str]] = {
    "base": frozenset({"teachers"}),
    "lightning": frozenset({"teachers", "lightning"}),
    "fm_all_in_1": frozenset({"teachers", "teacher_outputs", "lightning"}),
    "ours": frozenset({"teachers", "teacher_outputs"}),
    **{m: frozenset({"teachers", "lightning"}) for m in ("merge_linear", "merge_ties", "merge_dare")},
}


# --------------------------------------------------------------------------------------------
# configs from config.json


def config_from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a (nested, frozen) config dataclass from ``dataclasses.asdict`` / JSON output.

    Lists become tuples where the field is a tuple, ints become floats where it is a float;
    an unknown key fails (a config written by another version of the code must not be
    silently reinterpreted).
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {unknown}; valid: {', '.join(sorted(names))}")
    return cls(**{k: _coerce(hints[k], v, f"{cls.__name__}.{k}") for k, v in data.items()})


def _coerce(hint: Any, value: Any, where: str) -> Any:
    if value is None:
        return None
    if dataclasses.is_dataclass(hint):
        return config_from_dict(hint, value)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where) if len(inner) == 1 else value
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, where) for v in value)
        if args and len(args) != len(value):
            raise ValueError(f"{where}: expected {len(args)} items, got {value!r}")
        return tuple(_coerce(a, v, where) for a, v in zip(args, value)) if args else tuple(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def load_config(path: str | Path) -> RunConfig:
    return config_from_dict(RunConfig, json.loads(Path(path).read_text()))


def load_cell(path: str | Path) -> Cell:
    """A grid cell from its stored ``config.json``: a ``DeploymentCell`` (measurement) or a
    ``RunConfig``, as the store recorded its kind."""
    store, cid = ResultStore.of_config(path)
    data = json.loads(Path(path).read_text())
    if store.kind(cid) == "deployment":
        return DeploymentCell.from_dict(data, lambda d: config_from_dict(RunConfig, d))
    return config_from_dict(RunConfig, data)


# --------------------------------------------------------------------------------------------
# job callables (pickled by reference: tiny; they receive paths)


def job_threads() -> None:
    """The cores SLURM gave the job, unless the user chose (bench/threads.py); quiet warnings."""
    from bench.runner import quiet_expected_warnings
    from bench.threads import set_threads

    quiet_expected_warnings()
    print(set_threads(), flush=True)


def _job_setup() -> None:
    """Threads, and the process group when the job runs several tasks (``slurm.tasks_per_node``):
    every task is a torch.distributed rank that trains data-parallel; rank 0 writes."""
    from methods import distributed

    job_threads()
    distributed.init()


class _Requeueable(submitit.helpers.Checkpointable):
    """On timeout/preemption submitit calls ``checkpoint``: the same call is requeued and the
    training it runs resumes from its own checkpoints (``ArtifactCache.work_dir``)."""

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        print(f"[dispatch] {type(self).__name__} interrupted: requeueing; training resumes from "
              "its last checkpoint", flush=True)
        return super().checkpoint(*args, **kwargs)


class ArtifactJob(_Requeueable):
    """Builds one shared artifact (base, teacher [+ outputs], Lightning) into the cache."""

    def __call__(self, stage: str, config_path: str, cache: str, index: int = -1,
                 outputs: bool = False) -> str:
        from bench.workspace import Workspace
        from methods.distill import lightning_lora
        from methods.teachers import teacher_outputs

        _job_setup()
        ws = Workspace(load_config(config_path), ArtifactCache(cache))
        if stage == "base":
            return str(ws.base_dir)
        if stage == "lightning":
            return str(lightning_lora(ws))
        if stage == "teachers":
            effect = ws.bench.effects[index]
            bb = ws.load_backbone()
            path = ws.teacher_dir(effect, bb)
            if outputs:
                teacher_outputs(ws, effect, bb)
            return str(path)
        raise ValueError(f"unknown stage {stage!r}; valid: {', '.join(SHARED_STAGES)}")


class CellJob(_Requeueable):
    """One grid cell (training run or measurement): ``bench.runner.run_cell`` on the cell stored at
    ``config_path``."""

    def __call__(self, config_path: str, out: str, cache: str, force: bool = False) -> dict:
        from bench.runner import run_cell

        _job_setup()
        cell = load_cell(config_path)
        cid = cell_id(cell)
        if Path(config_path).parent.name != cid:
            raise RuntimeError(f"{config_path} hashes to cell {cid}: the config was edited after "
                               "submission or written by another version of the code")
        store = ResultStore(out)
        store.clear_error(cid)
        try:
            rows = run_cell(cell, Path(out), ArtifactCache(cache), force=force)
        except BaseException:
            store.write_error(cid, traceback.format_exc())
            raise
        return {"cell": cid, "rows": None if rows is None else len(rows)}  # None: not rank 0


def write_report(out: str, cache: str | None = None) -> str:
    """The report stage: ``python -m bench.report OUT --cache CACHE`` (the cache holds the
    synthetic EffectBench its image grids read)."""
    import subprocess

    cmd = [sys.executable, "-m", "bench.report", str(out)] + (["--cache", cache] if cache else [])
    subprocess.run(cmd, check=True)
    return str(out)


# --------------------------------------------------------------------------------------------
# planning: which stage items are missing


class _Missing(Exception):
    def __init__(self, kind: str, key: str) -> None:
        super().__init__(f"{kind} {key} is not in the cache")
        self.kind, self.key = kind, key


class ProbeCache(ArtifactCache):
    """An ``ArtifactCache`` that never builds: asking for a missing artifact raises ``_Missing``
    with its key. Running the real code paths against it tells exactly what a job would build."""

    def get_or_build(self, spec, build):  # noqa: ANN001
        if self.exists(spec):
            return self.path(spec)
        raise _Missing(spec.kind, spec.key)


def _probe(fn) -> str | None:  # noqa: ANN001
    """None when the artifact exists, else the cache key it would be built under."""
    try:
        fn()
    except _Missing as missing:
        return missing.key
    return None


@dataclass
class Task:
    stage: str
    label: str
    args: tuple          # arguments of the job callable
    cell: str | None = None


@dataclass
class Plan:
    cells: list[Task] = field(default_factory=list)      # cells to run
    done: list[str] = field(default_factory=list)        # cells finished before (skipped)
    shared: dict[str, dict[str, Task]] = field(default_factory=lambda: {s: {} for s in SHARED_STAGES})
    cached: int = 0                                      # shared items found in the cache


def plan(cells: list[Cell], out: Path, cache_root: Path, *, force: bool = False,
         tags: Mapping[str, Sequence[str]] | None = None) -> Plan:
    """Write each cell's config.json (and add its ``tags[cell_id]``, finished or not) and find
    the missing shared artifacts (a measurement cell trains nothing: it needs no shared stage)."""
    from bench.workspace import Workspace
    from methods.distill import lightning_lora
    from methods.teachers import teacher_outputs

    store, probe, p = ResultStore(out), ProbeCache(cache_root, verbose=False), Plan()
    unique: dict[str, Cell] = {}
    for cfg in cells:
        unique.setdefault(cell_id(cfg), cfg)
    for cid, cfg in unique.items():
        if (tags or {}).get(cid):
            store.tag(cid, tags[cid])
        if store.is_done(cid) and not force:
            p.done.append(cid)
            continue
        path = str(store.write_config(cid, cfg))
        p.cells.append(Task("cells", describe(cfg), (path,), cell=cid))
        if is_measurement(cfg):
            continue

        ws = Workspace(cfg, probe)
        needs = SHARED_NEEDS.get(cfg.method, frozenset({"teachers"}))
        items: list[tuple[str, str | None, Task]] = [
            ("base", _probe(lambda: ws.base_dir), Task("base", f"base {ws.base_key}", (path,)))]
        if "lightning" in needs:
            key = _probe(lambda: lightning_lora(ws))
            items.append(("lightning", key, Task("lightning", f"lightning {key}", (path,))))
        if "teachers" in needs:
            outputs = "teacher_outputs" in needs
            if cfg.world.kind == "synthetic" and _probe(lambda: ws.dataset_root) is not None:
                # Built here, once (about 30 s; every job needs it): without it no teacher can be
                # probed, so each would be a job of its own -- a process start apiece -- even when
                # it is shipped or cached (50 cached teachers: ~7 min of job starts on 2 cores).
                Workspace(cfg, ArtifactCache(cache_root)).dataset_root  # noqa: B018 -- builds it
            if _probe(lambda: ws.dataset_root) is None:
                for i, e in enumerate(ws.bench.effects):
                    key = _probe(lambda: ws.teacher_dir(e))
                    want = key is not None or (outputs and _probe(lambda: teacher_outputs(ws, e)) is not None)
                    key = key or config_hash("teacher", config_hash(cfg.world), ws.base_key, cfg.teacher, e.lora_name)
                    items.append(("teachers", key if want else None,
                                  Task("teachers", f"teacher {e.lora_name}", (path, i, outputs))))
            else:  # no world yet: every teacher is missing; the effect is known by its index
                for i in range(cfg.n_effects):
                    key = config_hash("teacher", config_hash(cfg.world), ws.base_key, cfg.teacher, i)
                    items.append(("teachers", key, Task("teachers", f"teacher #{i}", (path, i, outputs))))
        for stage, key, task in items:
            if key is None:
                p.cached += 1
            elif key in p.shared[stage]:  # several cells need it: build once, with outputs if any needs them
                old = p.shared[stage][key]
                if stage == "teachers" and task.args[2] and not old.args[2]:
                    p.shared[stage][key] = task
            else:
                p.shared[stage][key] = task
    return p


# --------------------------------------------------------------------------------------------
# submission


@dataclass
class Submission:
    record_path: Path
    record: dict
    jobs: list[submitit.Job] = field(default_factory=list)

    def wait(self, poll_s: float = 3.0, timeout_s: float | None = None) -> dict[str, str]:
        """Block until no job of this submission is queued or running; returns cell -> state."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        started = last_line = time.monotonic()
        while True:
            states = record_job_states(self.record)
            if not any(s.active for s in states.values()):
                break
            if log_interval() > 0 and time.monotonic() - last_line >= log_interval():
                last_line = time.monotonic()  # a line where a silent wait would leave the log empty
                counts = Counter(s.state for s in states.values())
                print(f"[dispatch] waiting {last_line - started:.0f}s: "
                      + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())), flush=True)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"submission {self.record_path.name} still running after {timeout_s}s")
            time.sleep(poll_s)
        table = cell_status(Path(self.record["out"]))
        return dict(zip(table["cell"], table["state"]))


def submit(cells: list[Cell], out: str | Path, cache: str | Path | None = None, *,
           executor: str = "slurm", slurm: SlurmConfig = SlurmConfig(), name: str = "run",
           force: bool = False, wait: bool = False,
           tags: Mapping[str, Sequence[str]] | None = None, parallel: int | None = None) -> Submission:
    """Submit ``cells`` (a grid) stage by stage; see the module docstring. ``tags`` (cell id ->
    the report tables its grid feeds) are stored with the cells.

    On SLURM this returns once everything is queued (``wait=True``: once it finished). The
    ``local`` and ``debug`` executors have no dependencies, so this runs the stages in order
    and returns when all are done; ``local`` runs at most ``parallel`` jobs at once (default:
    the usable cores).
    """
    kind = check_kind(executor)
    if kind == "local":
        from bench.threads import usable_cores

        parallel = parallel or usable_cores()
    out = Path(out).resolve()
    cache_root = ArtifactCache(cache).root.resolve()
    p = plan(cells, out, cache_root, force=force, tags=tags)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    record_path = out / "submissions" / f"{stamp}-{name}.json"
    record: dict[str, Any] = {
        "name": name, "executor": kind, "created": datetime.now().isoformat(timespec="seconds"),
        "out": str(out), "cache": str(cache_root), "force": force,
        "slurm": dataclasses.asdict(slurm), "python": sys.executable,
        "skipped": {"cells_done": p.done, "artifacts_cached": p.cached},
        "jobs": [], "cells": {},
    }
    sub = Submission(record_path, record)
    _write_record(sub)
    print(f"[dispatch] {name}: {len(p.cells)} cells to run ({len(p.done)} finished before), shared: "
          + ", ".join(f"{len(p.shared[s])} {s}" for s in SHARED_STAGES) + f" ({p.cached} cached); "
          f"executor {kind}, logs {out / 'slurm'}", flush=True)

    array_ids: dict[str, str] = {}   # stage -> SLURM array job id
    failed_shared: list[str] = []

    def shared_args(stage: str) -> list[tuple]:
        return [(stage, t.args[0], str(cache_root), *t.args[1:]) for t in p.shared[stage].values()]

    if kind == "local":  # the base first; then teachers and Lightning, which need only the base, in one pool
        for stages in (("base",), LOCAL_POOL):
            failed_shared += _run_local(sub, out, slurm, [(s, ArtifactJob(), shared_args(s),
                                                           list(p.shared[s].values())) for s in stages], parallel)
    else:
        for stage in SHARED_STAGES:
            tasks = list(p.shared[stage].values())
            if not tasks:
                continue
            dep = _afterok([array_ids["base"]]) if stage != "base" and "base" in array_ids else None
            jobs = _submit_stage(sub, kind, out, slurm, stage, ArtifactJob(), shared_args(stage), tasks,
                                 dependency=dep)
            array_ids[stage] = _array_id(jobs[0])
            if kind != "slurm":
                failed_shared += _wait_local(jobs, tasks)

    if p.cells:
        if failed_shared:  # like SLURM's kill-on-invalid-dep: cells whose inputs failed do not start
            print(f"[dispatch] shared stage failed ({', '.join(failed_shared)}): cells not started; "
                  f"fix it and rerun, or --resubmit-failed", file=sys.stderr)
            for t in p.cells:
                record["cells"][t.cell] = {"job_id": None, "state": "DEPENDENCY_FAILED", "label": t.label,
                                           "config": t.args[0], "log_folder": None}
            _write_record(sub)
        else:
            dep = _afterok(list(array_ids.values())) if array_ids else None
            args = [(t.args[0], str(out), str(cache_root), force) for t in p.cells]
            if kind == "local":
                _run_local(sub, out, slurm, [("cells", CellJob(), args, p.cells)], parallel)
            else:
                jobs = _submit_stage(sub, kind, out, slurm, "cells", CellJob(), args, p.cells, dependency=dep)
                array_ids["cells"] = _array_id(jobs[0])
                if kind != "slurm":
                    _wait_local(jobs, p.cells)
    if p.cells or not (out / "report.md").exists():
        dep = f"afterany:{array_ids['cells']}" if "cells" in array_ids and kind == "slurm" else None
        report = Task("report", "report", (str(out),))
        jobs = _submit_stage(sub, kind, out, slurm, "report", write_report, [(str(out), str(cache_root))], [report],
                             dependency=dep, cpu_only=True)
        if kind != "slurm":
            _wait_local(jobs, [report])
    if kind == "slurm":
        print(f"[dispatch] submitted; follow with: python -m bench.run --status {out}", flush=True)
        if wait:
            sub.wait()
    return sub


def _submit_stage(sub: Submission, kind: str, out: Path, slurm: SlurmConfig, stage: str, fn: Any,
                  args: list[tuple], tasks: list[Task], *, dependency: str | None,
                  cpu_only: bool = False) -> list[submitit.Job]:
    """ONE array for the stage (``executor.batch()``); the record is updated at once."""
    executor = make_executor(kind, out / "slurm" / stage, slurm, job_name=f"bench-{stage}",
                             dependency=dependency if kind == "slurm" else None, cpu_only=cpu_only)
    with executor.batch():
        jobs = [executor.submit(fn, *a) for a in args]
    _record_jobs(sub, stage, jobs, tasks, dependency)
    ids = sorted({_array_id(j) for j in jobs})
    print(f"[dispatch] stage {stage}: {len(jobs)} task(s) as job {', '.join(ids)}"
          + (f" ({dependency})" if dependency and kind == "slurm" else ""), flush=True)
    return jobs


def _record_jobs(sub: Submission, stage: str, jobs: list[submitit.Job], tasks: list[Task],
                 dependency: str | None = None) -> None:
    for job, task in zip(jobs, tasks):
        entry = {"stage": stage, "label": task.label, "job_id": str(job.job_id),
                 "log_folder": str(job.paths.folder), "dependency": dependency, "cell": task.cell}
        sub.record["jobs"].append(entry)
        if task.cell is not None:
            sub.record["cells"][task.cell] = {"job_id": str(job.job_id), "label": task.label,
                                             "config": task.args[0], "log_folder": str(job.paths.folder)}
    sub.jobs += jobs
    _write_record(sub)


def _run_local(sub: Submission, out: Path, slurm: SlurmConfig, stages: list[tuple[str, Any, list[tuple], list[Task]]],
               parallel: int, poll_s: float = 0.5) -> list[str]:
    """Run the jobs of ``stages`` (each: name, job function, argument tuples, tasks; none needs
    another's output) as local subprocesses, at most ``parallel`` at a time: submitit's
    LocalExecutor starts every job it is given at once, which on a small machine makes N jobs
    take turns on the cores. Each job gets ``cores // parallel`` torch threads unless the user
    chose (``BENCH_THREADS`` / ``OMP_NUM_THREADS``; bench/threads.py). Returns the labels of the
    jobs that failed."""
    import os
    from unittest import mock  # patch.dict: set an environment variable for one call, then restore it

    from bench.threads import choose_threads, usable_cores

    pending = [(stage, fn, a, t) for stage, fn, args, tasks in stages for a, t in zip(args, tasks)]
    if not pending:
        return []
    executors: dict[str, submitit.Executor] = {}
    running: list[tuple[submitit.Job, Task]] = []
    failed: list[str] = []
    chosen = choose_threads()[1] in ("BENCH_THREADS", "OMP_NUM_THREADS")  # the user's setting wins (bench/threads.py)
    share = None if chosen else str(max(1, usable_cores() // parallel))
    print(f"[dispatch] {len(pending)} local job(s) of {', '.join(s for s, *_ in stages)}, {parallel} at a time"
          + (f", {share} thread(s) each" if share else ""), flush=True)
    while pending or running:
        while pending and len(running) < parallel:
            stage, fn, a, task = pending.pop(0)
            if stage not in executors:
                executors[stage] = make_executor("local", out / "slurm" / stage, slurm, job_name=f"bench-{stage}")
            # the job's controller starts now and inherits this process's environment
            with mock.patch.dict(os.environ, {"BENCH_THREADS": share} if share else {}):
                job = executors[stage].submit(fn, *a)
            _record_jobs(sub, stage, [job], [task])
            running.append((job, task))
        finished = [(job, task) for job, task in running if job.done()]
        for job, task in finished:
            running.remove((job, task))
            failed += _wait_local([job], [task])
        if not finished:
            time.sleep(poll_s)
    return failed


def _wait_local(jobs: list[submitit.Job], tasks: list[Task]) -> list[str]:
    """Wait for local/debug jobs; returns the labels of those that failed (and says why)."""
    failed = []
    for job, task in zip(jobs, tasks):
        exc = job.exception()  # waits; runs the job in-process for the debug executor
        if exc is not None:
            failed.append(task.label)
            last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            print(f"[dispatch] FAILED {task.stage} {task.label}: {last}", file=sys.stderr, flush=True)
    return failed


def _array_id(job: submitit.Job) -> str:
    return str(job.job_id).split("_")[0]


def _afterok(ids: list[str]) -> str:
    return "afterok:" + ":".join(ids)


def _write_record(sub: Submission) -> None:
    atomic_write(sub.record_path, json.dumps(sub.record, indent=2, sort_keys=True, default=str))


# --------------------------------------------------------------------------------------------
# CLI glue (bench.run --executor debug|slurm)


def run_cli(cells: list[GridCell], out: Path, cache: str | None, *, executor: str, slurm: SlurmConfig,
            name: str, force: bool, wait: bool, parallel: int | None = None) -> int:
    started = time.perf_counter()
    submit([c.cell for c in cells], out, cache, executor=executor, slurm=slurm, name=name, force=force,
           wait=wait, tags={cell_id(c.cell): c.tags for c in cells}, parallel=parallel)
    if executor == "slurm" and not wait:
        return 0
    print(f"\n{name}: done in {time.perf_counter() - started:.1f}s")
    return print_status(out, only={cell_id(c.cell) for c in cells})


def resubmit_failed(out: str | Path, *, executor: str | None = None, slurm=None, wait: bool = False):  # noqa: ANN001
    """Resubmit only the failed cells, with the executor and resources of their last submission
    (unless given). Returns the new Submission, or None when nothing failed."""
    out = Path(out)
    cids = failed_cells(out)
    if not cids:
        print(f"{out}: no failed cells")
        return None
    records = load_records(out)
    last = records[-1] if records else {}
    cfgs = [load_cell(ResultStore(out).config_path(cid)) for cid in cids]
    slurm = slurm or (slurm_config_from_dict(last["slurm"]) if last.get("slurm") else None)
    kwargs = {"slurm": slurm} if slurm is not None else {}
    print(f"resubmitting {len(cids)} cell(s): {', '.join(cids)}")
    return submit(cfgs, out, last.get("cache"), executor=executor or last.get("executor", "slurm"),
                  name=f"{last.get('name', 'run')}-resubmit", wait=wait, **kwargs)
