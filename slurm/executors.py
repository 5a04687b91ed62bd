"""Where jobs run: one submitit executor per stage, built from a frozen ``SlurmConfig``.

Executor kinds (``--executor``):

* ``slurm``: ``submitit.SlurmExecutor``; a stage of N items becomes ONE array job
  (``--array=0-N-1%array_parallelism``), stages are chained with ``--dependency``.
* ``local``: ``submitit.LocalExecutor``, jobs are subprocesses of this machine (timeouts and
  checkpoint/requeue work as on SLURM; no dependencies, so stages run one after the other).
  ``python -m bench.run --executor local`` keeps running cells in its own process instead
  (no submitit); this kind is what ``bench.studies.tune`` and the dispatcher's API use.
* ``debug``: ``submitit.DebugExecutor``, jobs run inside this process when waited on.

Every job gets its own log folder ``<logs>/<stage>/<job id>/`` (submitit's ``%j``), holding
``*_log.out``/``*_log.err``, the sbatch script and the pickled (small) submission.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

KINDS: tuple[str, ...] = ("local", "debug", "slurm")


@dataclass(frozen=True)
class SlurmConfig:
    """Resources of one job; set from the CLI with ``slurm.<field>=value`` overrides."""

    partition: str | None = None      # SLURM partition (None: the cluster's default)
    time_min: int = 120               # wall-clock limit of one job (a requeued job gets it again)
    gpus_per_node: int = 0            # GPUs per job; 0 on the synthetic CPU world
    # Processes per job. >1 runs training data-parallel: every task is a torch.distributed rank
    # (methods/distributed.py; one per GPU, so normally = gpus_per_node); rank 0 evaluates and
    # writes the rows. The CPU-only report job always has one.
    tasks_per_node: int = 1
    cpus_per_task: int = 2            # CPU cores per job (torch threads follow SLURM_CPUS_PER_TASK)
    mem_gb: float | None = None       # memory per job (None: the partition default)
    account: str | None = None        # --account to charge
    qos: str | None = None            # --qos
    constraint: str | None = None     # --constraint node features, e.g. "h100|a100"
    array_parallelism: int = 32       # array tasks of one stage running at once (%N)
    max_requeues: int = 3             # timeouts/preemptions after which a job is not requeued again
    signal_delay_s: int = 90          # USR2 this long before the time limit: checkpoint + requeue
    setup: tuple[str, ...] = ()       # shell lines run before the job (module load ..., conda activate ...)
    report_time_min: int = 20         # time limit of the (CPU-only) report job


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown executor {kind!r}; valid executors: {', '.join(KINDS)}")
    return kind


def slurm_parameters(cfg: SlurmConfig, *, job_name: str, dependency: str | None = None,
                     cpu_only: bool = False) -> dict[str, Any]:
    """``SlurmExecutor.update_parameters`` arguments for one stage."""
    params: dict[str, Any] = {
        "job_name": job_name,
        "time": cfg.report_time_min if cpu_only else cfg.time_min,
        "cpus_per_task": 1 if cpu_only else cfg.cpus_per_task,
        "array_parallelism": cfg.array_parallelism,
        "signal_delay_s": cfg.signal_delay_s,
    }
    if cfg.gpus_per_node and not cpu_only:
        params["gpus_per_node"] = cfg.gpus_per_node
    if cfg.tasks_per_node > 1 and not cpu_only:
        params["ntasks_per_node"] = cfg.tasks_per_node
    optional = {"partition": cfg.partition, "account": cfg.account, "qos": cfg.qos,
                "constraint": cfg.constraint}
    params.update({k: v for k, v in optional.items() if v})
    if cfg.mem_gb:
        params["mem"] = f"{max(1, round(cfg.mem_gb * 1024))}MB"
    if cfg.setup:
        params["setup"] = list(cfg.setup)
    # Every job asks to be requeued (preemption, node failure): submitit's own requeue on USR2
    # uses scontrol requeue, which clusters with JobRequeue=0 refuse unless the job asked for it.
    extra: dict[str, Any] = {"requeue": True}
    if dependency:
        params["dependency"] = dependency
        # A dependency that can never be satisfied (a stage before failed) cancels the job at
        # once instead of leaving it pending forever; --status shows it, --resubmit-failed retries.
        extra["kill-on-invalid-dep"] = "yes"
    params["additional_parameters"] = extra
    return params


def make_executor(kind: str, log_dir: str | Path, cfg: SlurmConfig = SlurmConfig(), *,
                  job_name: str = "bench", dependency: str | None = None,
                  cpu_only: bool = False) -> submitit.Executor:
    """An executor whose jobs log to ``<log_dir>/<job id>/``."""
    check_kind(kind)
    folder = Path(log_dir) / "%j"
    if kind == "debug":
        return submitit.DebugExecutor(folder)
    if kind == "local":
        if dependency:
            raise ValueError("the local executor has no job dependencies; wait for the stage instead")
        executor = submitit.LocalExecutor(folder, max_num_timeout=cfg.max_requeues)
        executor.update_parameters(timeout_min=cfg.report_time_min if cpu_only else cfg.time_min,
                                   signal_delay_s=cfg.signal_delay_s,
                                   gpus_per_node=0 if cpu_only else cfg.gpus_per_node,
                                   tasks_per_node=1 if cpu_only else cfg.tasks_per_node)
        return executor
    executor = submitit.SlurmExecutor(folder, max_num_timeout=cfg.max_requeues)
    executor.update_parameters(**slurm_parameters(cfg, job_name=job_name, dependency=dependency,
                                                  cpu_only=cpu_only))
    return executor


def slurm_config_from_dict(d: dict[str, Any]) -> SlurmConfig:
    names = {f.name for f in dataclasses.fields(SlurmConfig)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown SlurmConfig fields {sorted(unknown)}; valid: {', '.join(sorted(names))}")
    return SlurmConfig(**{k: tuple(v) if k == "setup" else v for k, v in d.items()})


def split_slurm_overrides(overrides: list[str]) -> tuple[SlurmConfig, list[str], list[str]]:
    """CLI ``key=value`` overrides -> (the SlurmConfig their ``slurm.<field>=value`` ones set,
    those without the prefix, the other overrides). Unknown fields fail at once."""
    from bench.config import apply_overrides

    slurm = [o[len("slurm."):] for o in overrides if o.startswith("slurm.")]
    rest = [o for o in overrides if not o.startswith("slurm.")]
    return apply_overrides(SlurmConfig(), slurm), slurm, rest
