"""``python -m bench.run``: train (or load) a method's adapters, evaluate it, store tidy rows.

Examples:
  python -m bench.run --method base --preset smoke          # ~1 min on 2 CPU cores
  python -m bench.run --method base                         # default synthetic preset
  python -m bench.run --method base --effects 20 --limit 4 teacher.steps=300
  python -m bench.run --grid ablation --preset smoke       # a grid of cells, failures listed
  python -m bench.run --grid paper --preset smoke --out runs/paper   # every table; runs/paper/report.md
  python -m bench.run --list methods
  python -m bench.run --grid ablation --preset smoke --executor slurm slurm.partition=gpu slurm.gpus_per_node=1
  python -m bench.run --status runs                         # each cell: SLURM job state + stored rows
  python -m bench.run --status runs --resubmit-failed       # resubmit only the failed cells
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from bench import runner
from bench.cache import ArtifactCache
from bench.config import PRESETS, to_json
from bench.errors import KNOWN_ERRORS
from bench.grids import GRIDS, GridCell, grid_cells
from bench.registry import UnknownNameError
from bench.threads import set_threads


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0],
                                epilog=__doc__.split("\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    runner.add_cell_arguments(p, method="base", preset="synth", method_help="method name (see --list methods)",
                              seed_help="training/sampling seed of the run")
    p.add_argument("--out", default="runs", help="results directory (default: ./runs)")
    p.add_argument("--cache", default=None,
                   help="artifact cache (default: $BENCH_CACHE or ~/.cache/collectionlora-bench)")
    p.add_argument("--force", action="store_true", help="rerun a cell even if it finished before")
    p.add_argument("--grid", default=None, help="run a grid of cells (see --list grids) instead of one run")
    p.add_argument("--scaling-effects", default=None, metavar="N,N,...",
                   help="with --grid scaling / paper: the numbers of effects of the scaling study "
                        "(default: the preset's, 10,20,50,100,180 at the paper's size)")
    p.add_argument("--list", choices=["methods", "metrics", "presets", "grids"], help="list registered names and exit")
    p.add_argument("--executor", choices=["local", "debug", "slurm"], default=None,
                   help="local: run cells in this process (default); debug/slurm: submitit jobs by stage "
                        "(slurm: one array per stage, resources from slurm.* overrides, see slurm/executors.py)")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="local: run the grid as N jobs at a time on this machine (submitit's local executor, "
                        "each with its share of the cores as threads); default 1: cells in this process")
    p.add_argument("--wait", action="store_true", help="with --executor slurm: wait for the jobs and print the status")
    p.add_argument("--status", default=None, metavar="RUN_DIR", help="show each cell's job and store state and exit")
    p.add_argument("--resubmit-failed", action="store_true", help="with --status: resubmit the failed cells alone")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch CPU threads (default: OMP_NUM_THREADS, else the cores idle at start; bench/threads.py)")
    p.add_argument("--debug", action="store_true", help="show the traceback of known errors too")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. teacher.steps=300; slurm.<field>=value sets job resources")
    return p


def _effect_counts(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        counts = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--scaling-effects {text!r}: expected numbers of effects like 10,20,50") from None
    if any(n < 1 for n in counts):
        raise ValueError(f"--scaling-effects {text!r}: every number of effects must be >= 1")
    return counts


def main(argv: list[str] | None = None) -> int:
    """The CLI. A known error (bench/errors.py) is one ``error:`` line and exit status 1
    (``--debug``: the traceback); Ctrl-C says what is kept and how to go on."""
    runner.quiet_expected_warnings()
    args = build_parser().parse_intermixed_args(argv)
    if args.list:
        return list_names(args.list)
    try:
        return _main(args)
    except KNOWN_ERRORS as err:
        if args.debug:
            raise
        usage = isinstance(err, UsageError)
        text = str(err)
        hint = "" if usage or "\n" in text else "  (--debug: traceback)"
        print(f"error: {text}{hint}", file=sys.stderr)
        return 2 if usage else 1
    except KeyboardInterrupt:
        print(f"\ninterrupted. Finished artifacts stay in the cache ({ArtifactCache(args.cache).root}) and "
              f"finished cells in {args.out}; training resumes from its last checkpoint. Run the same "
              "command again to go on.", file=sys.stderr)
        return 130


class UsageError(ValueError):
    """A bad command line or config value: exit status 2, like argparse's."""


def _main(args: argparse.Namespace) -> int:
    try:
        slurm = _slurm_config(args)  # takes the slurm.* overrides out of args.overrides
        if args.status:
            from slurm.dispatch import resubmit_failed
            from slurm.status import print_status

            if args.resubmit_failed:
                resubmit_failed(args.status, executor=args.executor, wait=args.wait,
                                slurm=slurm if args.slurm_overrides else None)
            return print_status(args.status)
        cfg = runner.resolve_config(args)
        scaling_effects = _effect_counts(args.scaling_effects)
        # --effects N with a grid: N effects in its 50-in-1 experiments (main, ablation, curves)
        main_n = cfg.n_effects if args.grid and args.effects is not None and args.effects.isdigit() else None
        if args.jobs < 1 or (args.jobs > 1 and (args.executor or "local") != "local"):
            raise ValueError(f"--jobs {args.jobs}: give N >= 1, with the local executor (SLURM runs "
                             "slurm.array_parallelism tasks at a time)")
        print(set_threads(args.threads), flush=True)
    except (UnknownNameError, ValueError) as err:
        raise UsageError(str(err)) from err
    from bench.cost import stage_table
    from methods import distributed
    from reports.tables import cost_line, means_table

    started = time.perf_counter()
    if distributed.init().world_size > 1 and (args.grid or (args.executor or "local") != "local"):
        print("error: under torchrun run one cell (--method ...); a grid runs its cells data-parallel with "
              "--executor slurm slurm.tasks_per_node=N", file=sys.stderr)
        return 2
    if (args.executor or "local") != "local" or args.jobs > 1:  # submitit jobs by stage (slurm/dispatch.py)
        from slurm.dispatch import run_cli

        cells = (grid_cells(args.grid, cfg, scaling_effects=scaling_effects, main_n=main_n) if args.grid
                 else [GridCell(cfg, ())])
        return run_cli(cells, Path(args.out), args.cache, executor=args.executor or "local", slurm=slurm,
                       name=args.grid or cfg.method, force=args.force, wait=args.wait, parallel=args.jobs)
    cache = ArtifactCache(args.cache)
    if args.grid:
        return runner.run_grid(args.grid, cfg, Path(args.out), cache, force=args.force,
                               scaling_effects=scaling_effects, main_n=main_n)
    rows = runner.run_cell(cfg, Path(args.out), cache, force=args.force)
    if rows is None:  # a rank other than 0 of a data-parallel run: rank 0 reports
        return 0
    print()
    print(f"{cfg.method} on {cfg.n_effects} effects (preset {cfg.preset}, seed {cfg.seed}):")
    print(means_table(rows))
    if line := cost_line(rows):
        print(line)
    print("\n" + stage_table(cache.built, time.perf_counter() - started))
    return 0


def _slurm_config(args: argparse.Namespace):
    """``slurm.<field>=value`` overrides -> SlurmConfig; removes them from ``args.overrides``."""
    from slurm.executors import split_slurm_overrides

    slurm, args.slurm_overrides, args.overrides = split_slurm_overrides(args.overrides)
    return slurm


def list_names(what: str) -> int:
    if what == "methods":
        from methods import METHODS

        for name in METHODS.names():
            cls = METHODS.get(name)
            comps = ([f.name for f in dataclasses.fields(cls.components_cls)]
                     if cls.components_cls else [])
            doc = (sys.modules[cls.__module__].__doc__ or "").strip().split("\n")[0]
            print(f"{name:14s} {doc}" + (f"  [components: {', '.join(comps)}]" if comps else ""))
    elif what == "metrics":
        from metrics import METRICS

        for name in METRICS.names():
            info = METRICS.get(name).info
            arrow = "↑" if info.higher_is_better else "↓"
            print(f"{name:14s} {arrow} compares {'+'.join(info.compares):28s} {info.description}")
    elif what == "grids":
        for name in GRIDS.names():
            doc = GRIDS.get(name).__doc__
            print(f"{name:14s} {doc.strip().splitlines()[0] if doc else ''}")
    else:
        for name in PRESETS.names():
            print(f"{name:14s} {(PRESETS.get(name).__doc__ or '').strip()}")
        print("\nresolved default preset:\n" + to_json(PRESETS.get("synth")()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
