"""State of a run directory: each cell as SLURM sees its job and as the results store sees it.

``python -m bench.run --status RUN_DIR`` prints one line per cell; ``--resubmit-failed``
resubmits the cells that are neither finished nor queued/running (``slurm.dispatch.resubmit_failed``:
their shared artifacts are re-checked and rebuilt only if missing). This module only reads: the
submission records slurm/dispatch.py writes, the scheduler and the results store.

Job states come from ``squeue`` (queued/running), then from the job's submitit result file
(finished: success or error), then from ``sacct`` where accounting is on; a job found in none
of them is ``GONE`` (cancelled, e.g. by a failed dependency, or killed without a result).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd

from bench.store import ResultStore

# squeue/sacct states in which a job may still produce a result
ACTIVE = frozenset({"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING",
                    "COMPLETING", "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED",
                    "RESV_DEL_HOLD", "LOCAL_RUNNING"})


@dataclass(frozen=True)
class JobState:
    state: str
    reason: str = ""

    @property
    def active(self) -> bool:
        return self.state in ACTIVE


def _run(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (subprocess.TimeoutExpired, OSError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def squeue_states(array_ids: list[str]) -> dict[str, JobState]:
    """Queued/running jobs (array tasks one per line) among ``array_ids``."""
    if not array_ids:
        return {}
    fmt = ["-h", "-r", "-o", "%i|%T|%r"]
    text = _run(["squeue", *fmt, "--jobs=" + ",".join(sorted(set(array_ids)))])
    if text is None:  # an id the controller forgot makes squeue fail: list everything instead
        text = _run(["squeue", *fmt]) or ""
    states = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            reason = "" if parts[2] in ("None", "(null)") else parts[2]
            states[parts[0]] = JobState(parts[1], reason)
    return states


def sacct_states(array_ids: list[str]) -> dict[str, JobState]:
    """Finished jobs from accounting; empty when the cluster keeps no accounting."""
    if not array_ids:
        return {}
    text = _run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(sorted(set(array_ids)))])
    states = {}
    for line in (text or "").splitlines():
        parts = line.strip().split("|")
        if len(parts) == 2 and parts[0]:
            states[parts[0]] = JobState(parts[1].split()[0])  # "CANCELLED by 0" -> CANCELLED
    return states


def result_state(log_folder: str | None, job_id: str, not_before: float = 0.0) -> JobState | None:
    """COMPLETED/FAILED from submitit's result file (ignoring files older than the submission,
    which a restarted dev cluster could leave under a reused job id)."""
    if not log_folder:
        return None
    path = Path(log_folder) / f"{job_id}_0_result.pkl"
    if not path.exists() or path.stat().st_mtime < not_before:
        return None
    from submitit.core.utils import pickle_load

    try:
        outcome, value = pickle_load(path)
    except Exception:  # noqa: BLE001 -- half-written or from another version: unknown
        return JobState("UNKNOWN", f"unreadable {path.name}")
    if outcome == "success":
        return JobState("COMPLETED")
    last = str(value).strip().splitlines()[-1] if str(value).strip() else "error"
    return JobState("FAILED", last)


def load_records(out: str | Path) -> list[dict]:
    """All submission records of a run directory (written by slurm/dispatch.py), oldest first."""
    paths = sorted((Path(out) / "submissions").glob("*.json"))
    return [json.loads(p.read_text()) | {"_path": str(p)} for p in paths]


def record_job_states(record: dict) -> dict[str, JobState]:
    """Every job of one submission record -> its state."""
    jobs = [j for j in record.get("jobs", []) if j.get("job_id")]
    kind = record.get("executor")
    not_before = datetime.fromisoformat(record["created"]).timestamp() - 1 if record.get("created") else 0.0
    states: dict[str, JobState] = {}
    if kind == "slurm":
        ids = sorted({j["job_id"].split("_")[0] for j in jobs})
        queued = squeue_states(ids)
        missing = [j for j in jobs if j["job_id"] not in queued]
        accounted = sacct_states(ids) if missing else {}
        for j in jobs:
            jid = j["job_id"]
            states[jid] = (queued.get(jid) or result_state(j["log_folder"], jid, not_before)
                           or accounted.get(jid)
                           or JobState("GONE", "not queued and no result: cancelled (e.g. a failed "
                                               "dependency) or killed"))
    elif kind == "local":
        for j in jobs:
            jid = j["job_id"]
            states[jid] = result_state(j["log_folder"], jid, not_before) or (
                JobState("LOCAL_RUNNING") if _pid_alive(jid) else JobState("GONE", "process ended without a result"))
    else:  # debug: ran inside the dispatching process, which is over
        for j in jobs:
            states[j["job_id"]] = JobState("FINISHED")
    return states


def _pid_alive(job_id: str) -> bool:
    try:
        os.kill(int(job_id), 0)
    except (ValueError, ProcessLookupError, PermissionError):
        return False
    return True


def cell_status(out: str | Path) -> pd.DataFrame:
    """One row per cell of ``out``: job id and state, store state, overall state and a note."""
    out = Path(out)
    store = ResultStore(out)
    latest: dict[str, tuple[dict, dict]] = {}   # cell -> (record, its entry), newest record wins
    job_states: dict[str, JobState] = {}
    for record in load_records(out):
        states = record_job_states(record)
        for cid, entry in record.get("cells", {}).items():
            latest[cid] = (record, entry)
            if entry.get("job_id"):
                job_states[entry["job_id"]] = states.get(entry["job_id"], JobState("UNKNOWN"))
    cells = sorted(set(store.cell_ids()) | set(latest))
    rows = []
    for cid in cells:
        record, entry = latest.get(cid, ({}, {}))
        jid = entry.get("job_id")
        job = job_states.get(jid) if jid else (JobState(entry["state"]) if entry.get("state") else None)
        error = (store.read_error(cid) or "").strip()
        err_line = error.splitlines()[-1] if error else ""
        if store.is_done(cid):
            state, note = "done", ""
        elif job is not None and job.active:
            state, note = job.state.lower().replace("local_", ""), job.reason
        elif job is not None and job.state == "DEPENDENCY_FAILED":
            state, note = "failed", "a shared stage (base/teachers/lightning) failed; see the table above"
        elif err_line or (job is not None and job.state in ("FAILED", "COMPLETED", "FINISHED")):
            state, note = "failed", err_line or job.reason or "finished without rows"
        elif job is None:
            state, note = "not submitted", ""
        else:
            state, note = job.state.lower(), job.reason
        rows.append({"cell": cid, "label": entry.get("label", ""), "executor": record.get("executor", ""),
                     "job": jid or "", "job_state": job.state if job else "", "store": (
                         "rows" if store.is_done(cid) else ("error" if err_line else "")),
                     "state": state, "note": note, "log": entry.get("log_folder") or ""})
    return pd.DataFrame(rows, columns=["cell", "label", "executor", "job", "job_state", "store", "state",
                                       "note", "log"])


def shared_status(out: str | Path) -> pd.DataFrame:
    """Jobs of the shared stages and the report (latest record that has them)."""
    rows = []
    for record in load_records(out):
        states = record_job_states(record)
        for j in record.get("jobs", []):
            if j.get("cell") is None:
                s = states.get(j["job_id"], JobState("UNKNOWN"))
                rows.append({"submission": Path(record["_path"]).stem, "stage": j["stage"], "label": j["label"],
                             "job": j["job_id"], "state": s.state, "note": s.reason})
    return pd.DataFrame(rows, columns=["submission", "stage", "label", "job", "state", "note"])


def print_status(out: str | Path, only: set[str] | None = None) -> int:
    """Print the status tables; 0 when no cell failed, 1 otherwise. ``only``: the cells to show
    and judge (a grid's own: another run sharing the directory may hold cells not started yet)."""
    out = Path(out)
    if not (out / "cells").exists() and not (out / "submissions").exists():
        print(f"{out}: no cells and no submissions here")
        return 2
    shared = shared_status(out)
    if len(shared):
        print("shared stages and report:")
        print(shared.to_markdown(index=False))
        print()
    cells = cell_status(out)
    if only is not None:
        cells = cells[cells["cell"].isin(only)]
    print(cells.drop(columns=["log"]).to_markdown(index=False))
    counts = cells["state"].value_counts().to_dict()
    print("\n" + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    bad = cells[~cells["state"].isin(["done", "pending", "running", "requeued", "completing", "configuring"])]
    if len(bad):
        print(f"logs of the first failed cell: {bad['log'].iloc[0] or '(none)'}; "
              f"resubmit with: python -m bench.run --status {out} --resubmit-failed")
    return 1 if len(bad) else 0


def failed_cells(out: str | Path) -> list[str]:
    """Cells that are neither finished nor queued/running."""
    table = cell_status(out)
    return list(table.loc[~table["state"].isin(["done", "pending", "running", "requeued", "completing",
                                               "configuring", "suspended"]), "cell"])
