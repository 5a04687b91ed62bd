"""Python side of the one-node dev cluster (``slurm/devcluster.sh``) used by tests and CI.

``cluster_available()`` tells whether a SLURM controller answers and has a usable node;
``ensure_cluster(start=...)`` starts the dev cluster (``devcluster.sh up``) when allowed.
Tests decide whether starting is allowed with ``start_allowed_by_env()``
(``BENCH_START_SLURM=1`` or ``CI=true``) and must fail rather than skip under CI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

DEVCLUSTER_SH = Path(__file__).resolve().with_name("devcluster.sh")
HINT = "run `bash slurm/devcluster.sh up` or set BENCH_START_SLURM=1"

# node states (sinfo %T) a job can run on; a trailing '*' means "not responding"
_USABLE_STATES = ("idle", "mixed", "allocated", "completing", "planned")


def is_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def start_allowed_by_env() -> bool:
    """Starting a dev cluster is allowed with ``BENCH_START_SLURM=1`` or under CI."""
    flag = os.environ.get("BENCH_START_SLURM", "").strip().lower()
    return flag in {"1", "true", "yes"} or is_ci()


def cluster_available(timeout: float = 10.0) -> tuple[bool, str]:
    """Whether ``sinfo`` answers and shows an up partition with a usable node.

    Returns ``(True, summary)`` or ``(False, reason)``; never raises.
    """
    if shutil.which("sinfo") is None:
        return False, "`sinfo` not found on PATH (SLURM client not installed)"
    # `scontrol ping` fails at once when the controller is down (sinfo retries ~10 s)
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=timeout)
    except (subprocess.TimeoutExpired, OSError):
        ping = None
    if ping is not None and ping.returncode != 0 and "DOWN" in ping.stdout:
        return False, f"SLURM controller not running ({ping.stdout.strip().splitlines()[0]})"
    try:
        proc = subprocess.run(
            ["sinfo", "--noheader", "--Node", "--format=%N|%P|%a|%T"],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return False, f"`sinfo` did not answer within {timeout:.0f}s (no slurm.conf or controller?)"
    except OSError as exc:  # pragma: no cover - exotic
        return False, f"`sinfo` failed to run: {exc}"
    if proc.returncode != 0:
        err = (proc.stderr or proc.stdout).strip().splitlines()
        return False, f"`sinfo` failed (rc={proc.returncode}): {err[-1] if err else 'no output'}"
    rows = [line.split("|") for line in proc.stdout.splitlines() if line.count("|") == 3]
    if not rows:
        return False, "`sinfo` lists no nodes"
    usable = [
        (node, part.rstrip("*"), state)
        for node, part, avail, state in rows
        if avail == "up" and state in _USABLE_STATES
    ]
    if not usable:
        states = ", ".join(f"{n}:{s}" for n, _, _, s in rows)
        return False, f"no usable SLURM node (node states: {states})"
    node, part, state = usable[0]
    return True, f"node {node} {state} in partition {part}"


def _devcluster_command(*args: str) -> list[str]:
    cmd = ["bash", str(DEVCLUSTER_SH), *args]
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            raise RuntimeError("starting the dev cluster needs root (and sudo is not available)")
        cmd = ["sudo", "-n", "--preserve-env=SLURM_DEV_DIR,SLURM_CONF,SLURM_DEV_CPUS", *cmd]
    return cmd


def ensure_cluster(start: bool, *, with_accounting: bool = False, timeout: float = 600.0) -> None:
    """Make sure a usable SLURM cluster answers.

    If none does and ``start`` is true, run ``devcluster.sh up`` (install + start).
    Raises ``RuntimeError`` with the reason (and the script's output) otherwise.
    """
    ok, reason = cluster_available()
    if ok:
        return
    if not start:
        raise RuntimeError(f"no SLURM cluster ({reason}): {HINT}")
    args = ["up", "--with-accounting"] if with_accounting else ["up"]
    try:
        proc = subprocess.run(
            _devcluster_command(*args),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"`devcluster.sh up` timed out after {timeout:.0f}s") from exc
    if proc.returncode != 0:
        raise RuntimeError(
            f"`devcluster.sh up` failed (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    ok, reason = cluster_available()
    if not ok:
        raise RuntimeError(f"dev cluster started but is not usable: {reason}\n{proc.stdout}")


if __name__ == "__main__":  # python -m slurm.devcluster
    ok, msg = cluster_available()
    print(("available: " if ok else "unavailable: ") + msg)
    raise SystemExit(0 if ok else 1)
