"""How many CPU threads torch uses: chosen on purpose, not torch's default.

torch starts one thread per core. For the tiny models of the synthetic world that collapses on
a busy machine (measured: the base's pretraining took 1959 s beside another CPU-bound job vs
about 360 s quiet on a 2-core machine): the threads of two processes take turns on the cores
and each op is too small to amortise it. In order of precedence:

1. ``--threads N`` (the CLI flag);
2. ``BENCH_THREADS`` or ``OMP_NUM_THREADS`` -- a user's setting is never overridden, not even
   by SLURM's ``cpus_per_task``;
3. ``SLURM_CPUS_PER_TASK`` inside a job (the dev cluster does not bind CPUs);
4. otherwise the cores that are idle when the run starts: the cores this process may use minus
   the 1-minute load average, at least 1.
"""

from __future__ import annotations

import os

import torch


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def choose_threads(flag: int | None = None) -> tuple[int, str]:
    """(threads, where the number came from)."""
    if flag is not None:
        if flag < 1:
            raise ValueError(f"--threads must be >= 1, got {flag}")
        return flag, "--threads"
    for var in ("BENCH_THREADS", "OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK"):
        text = os.environ.get(var, "").strip()
        if text:
            try:
                n = int(text)
            except ValueError:
                raise ValueError(f"{var}={text!r} is not a number of threads") from None
            if n >= 1:
                return n, var
    cores = usable_cores()
    try:
        load = os.getloadavg()[0]
    except OSError:  # no load average on this platform
        load = 0.0
    return max(1, min(cores, round(cores - load))), f"{cores} cores, load {load:.1f}"


def set_threads(flag: int | None = None, *, share: int = 1) -> str:
    """Set torch's intra-op threads by the policy above (``share``: processes splitting the
    cores, e.g. torchrun ranks, when nothing was set explicitly); returns a line saying why."""
    n, why = choose_threads(flag)
    default = why.endswith(tuple("0123456789"))  # the idle-cores default ("... load 1.7"), not a setting
    if share > 1 and default:
        n = max(1, n // share)
        why += f", shared by {share} processes"
    torch.set_num_threads(n)
    return f"threads: {n} ({why}" + ("; choose with --threads N or OMP_NUM_THREADS)" if default else ")")
