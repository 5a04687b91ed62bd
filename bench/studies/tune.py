"""``python -m bench.studies.tune``: an optuna study over CollectionLoRA's distillation hyper-parameters.

Each trial is one run cell (``bench.runner.run_cell``) submitted as a submitit job (``--executor
local|debug|slurm``); its objective is the mean of ``--metric`` over the cell's result rows.
While a trial trains, the student is scored on a few test samples at every DMD checkpoint and
the driver reports these intermediate values to optuna: the median pruner cancels trials that
fall behind. The study lives in an optuna journal file in the output directory (safe when
several drivers or jobs share it on a network filesystem; a fresh SQLite file is not). Running
the command again resumes the study: ``--trials`` is its total, and the search goes on from the
stored trials instead of replaying the first ones.

Examples:
  python -m bench.studies.tune --preset smoke --trials 8 --parallel 2
  python -m bench.studies.tune --preset smoke --trials 12 --parallel 2   # the same study, 4 (or more) trials more
  python -m bench.studies.tune --preset smoke --metric gt_mode_mae --direction minimize --space p_switch,lr
  python -m bench.studies.tune --executor slurm --trials 32 --parallel 8 slurm.partition=gpu slurm.gpus_per_node=1
  python -m bench.studies.tune --report runs/tune                    # table + plot of an existing study
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import submitit

from bench.cache import ArtifactCache
from bench.config import RunConfig
from bench.runner import add_cell_arguments, resolve_config
from bench.store import ResultStore, cell_id
from methods.dmd import TrainerCallback, observe


@dataclass(frozen=True)
class Param:
    """One searched hyper-parameter: how optuna suggests it and how it sets the config."""

    suggest: Callable[[Any], Any]               # optuna.Trial -> value
    apply: Callable[[RunConfig, Any], RunConfig]
    help: str


def _distill(**kw: Any) -> Callable[[RunConfig, Any], RunConfig]:
    (field_name, fn), = kw.items()
    return lambda cfg, v: replace(cfg, distill=replace(cfg.distill, **{field_name: fn(v)}))


SPACE: dict[str, Param] = {
    "p_switch": Param(lambda t: t.suggest_float("p_switch", 0.1, 0.9), _distill(p_switch=float),
                      "PDSR: probability of the effect stream"),
    "tafm_weight": Param(lambda t: t.suggest_float("tafm_weight", 0.1, 10.0, log=True), _distill(tafm_weight=float),
                         "TA-FM anchor loss weight"),
    "ts_weight": Param(lambda t: t.suggest_float("ts_weight", 0.1, 10.0, log=True), _distill(ts_weight=float),
                       "TS target-simulation loss weight"),
    "rank": Param(lambda t: t.suggest_categorical("rank", [4, 8, 16, 32]),
                  lambda cfg, v: replace(cfg, distill=replace(cfg.distill, rank=int(v), alpha=int(v))),
                  "student/critic LoRA rank (alpha = rank)"),
    "lr": Param(lambda t: t.suggest_float("lr", 1e-5, 1e-3, log=True), _distill(lr=float),
                "AdamW learning rate of generator and critic"),
}

INTERMEDIATE = "intermediate.jsonl"   # per cell: {"step", "value"} at every DMD checkpoint
STOP = "pruned"                       # per cell: written by the driver when it prunes the trial


class TrialPruned(Exception):
    """Raised inside a trial's job at its first checkpoint after the driver pruned it."""


def stop_trial(job, cell_dir: Path) -> None:  # noqa: ANN001
    """Stop a pruned trial: its job stops itself at its next checkpoint, when it finds the stop
    file (``_IntermediateScores``). A SLURM job is also cancelled, which frees its allocation at
    once. A local job is not: submitit's local cancel is a SIGINT to the job's controller
    process, whose KeyboardInterrupt traceback would land in the driver's terminal."""
    (cell_dir / STOP).write_text("pruned by the tuning driver\n")
    if not isinstance(job, submitit.LocalJob):
        job.cancel()


# --------------------------------------------------------------------------------------------
# the trial job


class _IntermediateScores(TrainerCallback):
    """A DMD trainer callback (methods/dmd.py ``observe``) that evaluates the student at every
    checkpoint -- the evaluation of every cell (bench/evaluate.py), on ``limit`` test samples per
    effect, one draw each -- and appends ``{"step", "value"}`` to ``path``. The cell's own method
    edits with the trainer's student (``serve``), so the student is prompted and sampled as it
    will be served. Evaluation draws from its own generators: the training is the same with and
    without it."""

    def __init__(self, method, metric_name: str, path: Path, limit: int) -> None:  # noqa: ANN001
        from metrics import METRICS

        self.method, self.path, self.limit = method, path, limit
        self.metric = METRICS.get(metric_name)()

    def on_checkpoint(self, trainer, path: Path) -> None:  # noqa: ANN001
        if (self.path.parent / STOP).exists():
            raise TrialPruned(f"trial pruned by the tuning driver ({self.path.parent / STOP}); stopped at "
                              f"DMD step {trainer.step}")
        import torch

        from bench.evaluate import evaluate
        from methods.dmd import STUDENT

        self.method.serve(trainer.bb, trainer.bank, STUDENT)
        with torch.no_grad():
            rows = evaluate(self.method, self.method.ws, [self.metric], run="intermediate", limit=self.limit, draws=1)
        ok = rows[(rows["metric"] == self.metric.info.name) & (rows["status"] == "ok")]
        value = float(ok["value"].mean()) if len(ok) else float("nan")  # nan: not reported to optuna
        with self.path.open("a") as f:
            f.write(json.dumps({"step": trainer.step, "value": value}) + "\n")


def metric_mean(rows, metric: str) -> float:  # noqa: ANN001
    ok = rows[(rows["metric"] == metric) & (rows["status"] == "ok")]
    if ok.empty:
        raise ValueError(f"no '{metric}' rows with status ok (metrics in the rows: "
                         f"{', '.join(sorted(set(rows['metric'])))})")
    return float(ok["value"].mean())


class TrialJob(submitit.helpers.Checkpointable):
    """One trial: run the cell (requeueable; training resumes from its checkpoints), with
    intermediate scores at every DMD checkpoint; returns the mean of ``metric``."""

    def __call__(self, config_path: str, out: str, cache: str, metric: str, probe_limit: int = 2) -> float:
        from bench.runner import make_method, run_cell
        from bench.workspace import Workspace
        from slurm.dispatch import job_threads, load_config

        job_threads()
        cfg = load_config(config_path)
        cache_obj = ArtifactCache(cache)
        method = make_method(Workspace(cfg, cache_obj))  # the cell's method, to score its student mid-training
        scores = _IntermediateScores(method, metric, Path(config_path).parent / INTERMEDIATE, probe_limit)
        with observe(scores):
            rows = run_cell(cfg, Path(out), cache_obj)
        return metric_mean(rows, metric)


# --------------------------------------------------------------------------------------------
# the driver


@dataclass
class _Running:
    trial: Any            # optuna.Trial
    job: Any              # submitit.Job
    cell_dir: Path
    reported: int = 0     # intermediate lines already reported
    last_step: int = 0    # DMD step of the last one


# Trials that count toward ``--trials``: optuna's MaxTrialsCallback convention for a total shared by
# restarts and drivers. A failed trial (a crashed job) does not count, so the next start replaces
# it; a RUNNING one left behind by a dead driver does not either.
COUNTED = ("COMPLETE", "PRUNED")


def run_study(base: RunConfig, out: Path, cache: str | None, *, metric: str, direction: str, trials: int,
              parallel: int, space: list[str], executor: str = "local", slurm=None,  # noqa: ANN001
              study_name: str = "tune", seed: int = 0, prune: bool = True, poll_s: float = 2.0,
              probe_limit: int = 2):
    """Run the study until it holds ``trials`` complete or pruned trials (at most ``parallel`` at
    once; an existing study in ``out`` is resumed) and return it."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from slurm.executors import SlurmConfig, make_executor

    unknown = [p for p in space if p not in SPACE]
    if unknown:
        raise ValueError(f"unknown search parameter(s) {unknown}; valid: {', '.join(SPACE)}")
    out.mkdir(parents=True, exist_ok=True)
    cache_root = str(ArtifactCache(cache).root)
    storage = JournalStorage(JournalFileBackend(str(out / "study.journal")))
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0) if prune else optuna.pruners.NopPruner()
    try:
        before = optuna.load_study(study_name=study_name, storage=storage).trials
    except KeyError:  # a new study
        before = []
    # A sampler's RNG lives in memory only (neither the journal nor optuna's RDB storage keeps it),
    # so the same seed on every start replayed the first trials' parameters. Offsetting the seed
    # by the trials already asked gives each start a fresh stream that is still reproducible from
    # the journal; TPE itself conditions on the stored trials, so the search continues. (optuna's
    # FAQ pickles the sampler instead: that breaks across optuna versions and loses the draws made
    # after the last pickle when a driver dies.)
    study = optuna.create_study(study_name=study_name, storage=storage, direction=direction, load_if_exists=True,
                                sampler=optuna.samplers.TPESampler(seed=seed + len(before)), pruner=pruner)
    study.set_user_attr("metric", metric)
    counted = sum(t.state.name in COUNTED for t in before)
    todo = max(0, trials - counted)
    if before:
        print(f"[tune] resuming study {study_name!r}: {counted} of {trials} trials finished "
              f"(complete or pruned), {todo} to run", flush=True)
    store = ResultStore(out)
    slurm = slurm or SlurmConfig()
    running: list[_Running] = []
    started = 0
    t0 = time.perf_counter()
    while started < todo or running:
        while started < todo and len(running) < parallel:
            trial = study.ask()
            cfg = base
            for name in space:
                cfg = SPACE[name].apply(cfg, SPACE[name].suggest(trial))
            cid = cell_id(cfg)
            store.write_config(cid, cfg)
            for name in (INTERMEDIATE, STOP):  # a trial with these parameters may have been pruned before
                (store.cell_dir(cid) / name).unlink(missing_ok=True)
            trial.set_user_attr("cell", cid)
            ex = make_executor(executor, out / "slurm" / "trials", slurm, job_name=f"tune-{trial.number}")
            job = ex.submit(TrialJob(), str(store.cell_dir(cid) / "config.json"), str(out), cache_root, metric,
                            probe_limit)
            trial.set_user_attr("job", str(job.job_id))
            print(f"[tune] trial {trial.number}: {trial.params} -> cell {cid}, job {job.job_id}", flush=True)
            running.append(_Running(trial, job, store.cell_dir(cid)))
            started += 1
        for r in list(running):
            if executor == "debug":
                r.job.exception()  # runs the trial here, now
            _report_intermediate(r)
            if not r.job.done():
                if r.trial.should_prune():
                    stop_trial(r.job, r.cell_dir)
                    study.tell(r.trial, state=optuna.trial.TrialState.PRUNED)
                    print(f"[tune] trial {r.trial.number}: pruned at DMD step {r.last_step}", flush=True)
                    running.remove(r)
                continue
            exc = r.job.exception()
            if exc is None:
                value = r.job.result()
                study.tell(r.trial, value)
                print(f"[tune] trial {r.trial.number}: {metric} = {value:.4f}", flush=True)
            else:
                study.tell(r.trial, state=optuna.trial.TrialState.FAIL)
                last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
                print(f"[tune] trial {r.trial.number}: FAILED: {last}", file=sys.stderr, flush=True)
            running.remove(r)
        if running:
            time.sleep(poll_s)
    print(f"[tune] {started} trial(s) in {time.perf_counter() - t0:.1f}s", flush=True)
    return study


def _read_intermediate(cell_dir: Path) -> list[dict]:
    path = cell_dir / INTERMEDIATE
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip().endswith("}")]


def _report_intermediate(r: _Running) -> None:
    values = _read_intermediate(r.cell_dir)
    for item in values[r.reported:]:
        if math.isfinite(item["value"]):
            r.trial.report(item["value"], item["step"])
        r.last_step = item["step"]
    r.reported = len(values)


# --------------------------------------------------------------------------------------------
# table and plot


def study_table(study) -> "pd.DataFrame":  # noqa: ANN001, F821
    df = study.trials_dataframe(attrs=("number", "value", "state", "params", "user_attrs", "duration"))
    df.columns = [c.replace("params_", "").replace("user_attrs_", "") for c in df.columns]
    if "duration" in df:
        df["duration"] = df["duration"].dt.total_seconds().round(1)
    return df


def write_study_report(study, out: Path) -> tuple[Path, Path]:  # noqa: ANN001
    """``tune.md`` (best trial + every trial) and ``tune.png`` (objective history, intermediate
    curves, objective against each parameter)."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna

    metric = study.user_attrs.get("metric", "objective")
    df = study_table(study)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    lines = [f"# Study `{study.study_name}`: {metric} ({study.direction.name.lower()})", ""]
    if complete:
        best = study.best_trial
        lines += [f"Best: trial {best.number}, {metric} = {best.value:.4f}, params "
                  + ", ".join(f"`{k}={v:.4g}`" if isinstance(v, float) else f"`{k}={v}`"
                              for k, v in best.params.items()), ""]
    lines += [df.to_markdown(index=False, floatfmt=".4g"), "", "![study](tune.png)", ""]
    md = out / "tune.md"
    md.write_text("\n".join(lines))

    params = sorted({k for t in study.trials for k in t.params})
    ncols = 2 + len(params)
    fig, axes = plt.subplots(1, ncols, figsize=(3.6 * ncols, 3.2), squeeze=False)
    ax = axes[0][0]
    xs = [t.number for t in complete]
    ys = [t.value for t in complete]
    ax.plot(xs, ys, "o", label="trial")
    if ys:
        agg = max if study.direction.name == "MAXIMIZE" else min
        ax.plot(xs, [agg(ys[: i + 1]) for i in range(len(ys))], "-", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.legend(fontsize=7)
    ax.set_title("objective")
    ax = axes[0][1]
    for t in study.trials:
        if t.intermediate_values:
            steps = sorted(t.intermediate_values)
            style = "--" if t.state == optuna.trial.TrialState.PRUNED else "-"
            ax.plot(steps, [t.intermediate_values[s] for s in steps], style, marker=".", label=f"#{t.number}")
    ax.set_xlabel("DMD step")
    ax.set_title("intermediate (dashed: pruned)")
    if any(t.intermediate_values for t in study.trials):
        ax.legend(fontsize=6)
    for i, name in enumerate(params):
        ax = axes[0][2 + i]
        pts = [(t.params[name], t.value) for t in complete if name in t.params]
        if pts:
            ax.plot([p for p, _ in pts], [v for _, v in pts], "o")
        if name in ("lr", "tafm_weight", "ts_weight"):
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=3))   # few labels even
            ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.1e"))  # in one decade
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel(name)
        ax.set_title(f"{metric} vs {name}")
    fig.tight_layout()
    png = out / "tune.png"
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return md, png


def load_study(out: Path, study_name: str = "tune"):  # noqa: ANN201
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return optuna.load_study(study_name=study_name,
                             storage=JournalStorage(JournalFileBackend(str(out / "study.journal"))))


# --------------------------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.studies.tune", description=__doc__.split("\n")[0],
                                epilog=__doc__.split("\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cell_arguments(p, method="ours", preset="smoke", method_help="method whose cells are tuned (default: ours)",
                       seed_help="training/sampling seed of every trial")
    p.add_argument("--metric", default="gt_mode_psnr",
                   help="objective: mean of this metric's rows (default gt_mode_psnr)")
    p.add_argument("--direction", choices=["maximize", "minimize"], default=None,
                   help="default: from the metric's higher_is_better")
    p.add_argument("--space", default="p_switch,tafm_weight,ts_weight,rank,lr",
                   help=f"comma-separated searched parameters; valid: {', '.join(SPACE)}")
    p.add_argument("--trials", type=int, default=8, metavar="N",
                   help="total trials of the study, not an addition: a resumed study runs only the missing "
                        "ones (--trials 6 after 4: 2 more); complete and pruned trials count, failed ones "
                        "are replaced (default 8)")
    p.add_argument("--parallel", type=int, default=1, help="trials running at once")
    p.add_argument("--no-prune", action="store_true", help="never prune on intermediate scores")
    p.add_argument("--executor", choices=["local", "debug", "slurm"], default="local",
                   help="where trials run (submitit): local subprocesses, in this process, or SLURM jobs")
    p.add_argument("--study", default="tune", help="study name in the journal (default: tune)")
    p.add_argument("--out", default="runs/tune", help="study directory (journal, cells, tune.md, tune.png)")
    p.add_argument("--cache", default=None,
                   help="artifact cache (default: $BENCH_CACHE or ~/.cache/collectionlora-bench)")
    p.add_argument("--report", default=None, metavar="DIR", help="only write the table and plot of DIR's study")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides; slurm.<field>=value for jobs")
    return p


def main(argv: list[str] | None = None) -> int:
    from bench.registry import UnknownNameError
    from methods import METHODS
    from metrics import METRICS
    from slurm.executors import split_slurm_overrides

    args = build_parser().parse_args(argv)
    if args.report:
        study = load_study(Path(args.report), args.study)
        md, png = write_study_report(study, Path(args.report))
        print(md.read_text())
        return 0
    try:
        slurm, _, args.overrides = split_slurm_overrides(args.overrides)
        base = resolve_config(args)
        if not hasattr(METHODS.get(base.method), "serve"):
            raise ValueError(f"--method {base.method}: bench.studies.tune searches CollectionLoRA's distill.* "
                             "settings and scores its student while it trains; tune --method ours")
        metric_cls = METRICS.get(args.metric)
        space = [s.strip() for s in args.space.split(",") if s.strip()]
        unknown = [s for s in space if s not in SPACE]
        if unknown:
            raise ValueError(f"unknown search parameter(s) {unknown}; valid: {', '.join(SPACE)}")
    except (UnknownNameError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.metric not in base.eval.metrics:
        base = replace(base, eval=replace(base.eval, metrics=(*base.eval.metrics, args.metric)))
    direction = args.direction or ("maximize" if metric_cls.info.higher_is_better else "minimize")
    out = Path(args.out)
    study = run_study(base, out, args.cache, metric=args.metric, direction=direction, trials=args.trials,
                      parallel=args.parallel, space=space, executor=args.executor, slurm=slurm,
                      study_name=args.study, seed=base.seed, prune=not args.no_prune)
    md, png = write_study_report(study, out)
    print(md.read_text())
    print(f"table: {md}\nplot:  {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
