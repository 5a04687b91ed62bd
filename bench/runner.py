"""The runner: resolve a run's config, run one cell, or a grid of cells in this process, and store their rows.

``run_cell`` is the one way a cell runs -- from the CLI (bench/run.py), in a submitted job
(slurm/dispatch.py ``CellJob``), in a tuning trial (bench/studies/tune.py) and in a study -- so every
cell is skipped when finished, written config first and rows last, the same everywhere.
``run_grid`` runs a grid's cells one after the other here, then writes the report; submitting
a grid as jobs instead is slurm/dispatch.py's.
"""

from __future__ import annotations

import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from bench import cost
from bench.cache import ArtifactCache
from bench.cells import Cell, describe, is_measurement
from bench.config import PRESETS, RunConfig, apply_overrides, check_ranges
from bench.grids import grid_cells
from bench.registry import parse_names
from bench.store import ResultStore, UnreadableRowsError, cell_id


def quiet_expected_warnings() -> None:
    """Several adapters on one transformer is the design (student, critic, teacher bank), so
    peft's warning about a second adapter tells a user nothing (pyproject.toml silences it in tests);
    nor does its note that a teacher's training adapter, deleted once saved, was the active one."""
    warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute", category=UserWarning)
    warnings.filterwarnings("ignore", message="Adapter lora_in_training was active which is now deleted",
                            category=UserWarning)


def add_cell_arguments(p: Any, *, method: str, preset: str, method_help: str, seed_help: str) -> None:
    """The flags that choose a cell, shared by ``bench.run`` and ``bench.studies.tune`` (argparse
    parser ``p``; defaults per CLI); :func:`resolve_config` reads them."""
    p.add_argument("--method", default=method, help=method_help)
    p.add_argument("--preset", default=preset, help=f"config preset (see --list presets); default: {preset}")
    p.add_argument("--ablate", default=None, metavar="A,B", help="method components to switch off")
    p.add_argument("--effects", default=None, metavar="N|PATH",
                   help="use the first N effects, or an EffectBench effects.jsonl / directory (real data)")
    p.add_argument("--limit", type=int, default=None, metavar="K", help="test samples per effect")
    p.add_argument("--seed", type=int, default=None, help=seed_help)


def resolve_config(args: Any) -> RunConfig:
    """Preset + flags + overrides -> the run's config. Fails fast on any unknown name.

    ``args`` carries the flags both CLIs share (``bench.run`` and ``bench.studies.tune`` parse
    them): ``preset, method, ablate, seed, effects, limit, overrides``."""
    from methods import METHODS, resolve_components

    cfg: RunConfig = PRESETS.get(args.preset)()
    method = METHODS.canonical(args.method)
    off = parse_names(args.ablate, lambda name: None)
    resolve_components(METHODS.get(method), off)  # validates component names
    cfg = replace(cfg, method=method, components_off=tuple(sorted(off)))
    if args.seed is not None:
        cfg = replace(cfg, seed=args.seed)
    if args.effects is not None:
        if args.effects.isdigit():
            cfg = replace(cfg, n_effects=int(args.effects))
        else:  # a manifest: run every effect it lists
            path = Path(args.effects)
            root = path.parent if path.suffix == ".jsonl" else path
            if not (root / "effects.jsonl").exists():
                raise ValueError(f"--effects {args.effects}: no effects.jsonl at {root}")
            n = sum(1 for line in (root / "effects.jsonl").read_text().splitlines() if line.strip())
            cfg = replace(cfg, n_effects=n, world=replace(cfg.world, kind="effectbench", root=str(root)))
    if args.limit is not None:
        cfg = replace(cfg, eval=replace(cfg.eval, limit=args.limit))
    cfg = apply_overrides(cfg, args.overrides)
    check_ranges(cfg)
    from metrics import METRICS

    for name in cfg.eval.metrics:
        METRICS.canonical(name)
    return cfg


def run_cell(cell: Cell, out: Path, cache: ArtifactCache, *, force: bool = False,
             tags: tuple[str, ...] = ()) -> pd.DataFrame | None:
    """Run one grid cell and store its rows; a finished cell is skipped (returns its stored rows).

    A cell is a ``RunConfig`` (train or load the method's adapters, evaluate them) or a
    measurement cell such as ``bench.cells.DeploymentCell`` (nothing trained: ``cell.run(out,
    cache)`` measures and returns rows). Both are stored the same way: config.json first, rows
    renamed into place last, so only a complete cell ever looks finished. Stored rows that do
    not read (truncated) are reported in one line and the cell is rerun.

    Under torch.distributed (``torchrun -m bench.run`` or ``slurm.tasks_per_node`` > 1) every rank
    trains (DMD data-parallel, methods/distributed.py); rank 0 alone evaluates and writes, and
    the other ranks return None.

    ``tags`` (the report tables the cell's grid feeds, ``bench.grids.GridCell``) are added to the
    stored cell's, also when it finished before: a finished main-table cell reused by the
    ablation grid joins the ablation table.
    """
    from methods import distributed

    store = ResultStore(out)
    cid = cell_id(cell)
    if tags and distributed.current().is_main:
        store.tag(cid, tags)
    if not force and store.is_done(cid):
        try:
            rows = store.read_cell(cid)
        except UnreadableRowsError as err:
            print(f"warning: {err}; rerunning cell {cid}", file=sys.stderr)
        else:
            print(f"cell {cid} finished already ({store.cell_dir(cid)}); skipping. Use --force to rerun.")
            return rows
    ws = None
    cache.used.clear()  # from here on: the artifacts this cell uses, whose training cost its rows carry
    if not is_measurement(cell):  # every missing input at once, before anything is written or trained
        from bench.workspace import Workspace

        ws = Workspace(cell, cache)
        ws.check_inputs()
    if not distributed.current().is_main:
        if ws is not None:
            _prepare(ws)
        return None
    store.write_config(cid, cell)
    t0 = time.perf_counter()
    if is_measurement(cell):
        rows = cell.run(out, cache)
        timing = f"measured in {time.perf_counter() - t0:.1f}s"
    else:
        rows, timing = _train_and_evaluate(ws, store, cid)
    store.write_rows(cid, rows)
    print(f"cell {cid} ({describe(cell)}): {timing}, {len(rows)} rows -> {store.cell_dir(cid)}")
    return rows


def _train_and_evaluate(ws, store: ResultStore, cid: str) -> tuple[pd.DataFrame, str]:  # noqa: ANN001
    """A training cell: get the method's adapters (trained or from the cache), then evaluate."""
    from bench.evaluate import cost_rows, evaluate
    from methods.backbones.prompt_cache import prompt_cache_report
    from metrics import METRICS
    from metrics.cache import forward_report

    t0 = time.perf_counter()
    cfg = ws.cfg
    method, effects = _prepare(ws)
    store.write_artifacts(cid, method.artifacts())
    t1 = time.perf_counter()
    metrics = [METRICS.get(name)() for name in cfg.eval.metrics]
    rows = evaluate(method, ws, metrics, run=cid, image_dir=store.image_dir(cid))
    rows = pd.concat([rows, cost_rows(method, ws, cid)], ignore_index=True)
    t2 = time.perf_counter()
    print(forward_report())
    if report := prompt_cache_report():
        print(report)
    return rows, f"{len(effects)} effects, prepare {t1 - t0:.1f}s, evaluate {t2 - t1:.1f}s"


def make_method(ws):  # noqa: ANN001, ANN201 -- a Workspace -> a Method
    """The cell's method (``cfg.method`` with ``cfg.components_off`` switched off), not prepared."""
    from methods import METHODS, resolve_components

    method_cls = METHODS.get(ws.cfg.method)
    return method_cls(ws, resolve_components(method_cls, ws.cfg.components_off))


def _prepare(ws):  # noqa: ANN001, ANN202 -- a checked Workspace (the one run_cell built)
    """The cell's method with its adapters trained or loaded: (method, effects)."""
    method = make_method(ws)
    effects = list(ws.bench.effects)
    method.prepare(effects)
    return method, effects


def run_grid(name: str, base: RunConfig, out: Path, cache: ArtifactCache, *, force: bool = False,
             scaling_effects: tuple[int, ...] | None = None, main_n: int | None = None) -> int:
    """Run every cell of a grid in this process, then write the markdown report (``<out>/report.md``).

    Each cell is stored with its grid's tags (``bench.grids.grid_cells``), so the report puts it
    in its grid's table. A failing cell does not stop the others: its traceback is stored with it
    (``ResultStore.write_error``), the report names it and the failures are listed last.
    (``bench.run --executor debug|slurm`` submits the grid as submitit jobs instead:
    slurm/dispatch.py; its last stage writes the same report.)
    Returns 0 when every cell finished and the report was written, else 1.
    """
    import traceback

    cells = grid_cells(name, base, scaling_effects=scaling_effects, main_n=main_n)
    print(f"grid {name}: {len(cells)} cells -> {out}")
    started = time.perf_counter()
    store = ResultStore(out)
    failed = []
    for i, (cell, tags) in enumerate(cells):
        cid = cell_id(cell)
        print(f"[{i + 1}/{len(cells)}] cell {cid}: {describe(cell)}", flush=True)
        try:
            run_cell(cell, out, cache, force=force, tags=tags)
            store.clear_error(cid)  # an earlier failure of this cell is stale now
        except Exception as err:  # noqa: BLE001 -- one failing cell must not stop the grid
            failed.append((cid, cell, err))
            store.write_error(cid, traceback.format_exc())
            print(f"cell {cid} FAILED: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
    print(f"\ngrid {name}: {len(cells) - len(failed)} of {len(cells)} cells finished in "
          f"{time.perf_counter() - started:.1f}s")
    print(cost.stage_table(cache.built, time.perf_counter() - started), flush=True)
    from methods import distributed

    # under torchrun every rank runs the grid; rank 0 alone wrote the rows and writes the report
    report_ok = _write_report(out, cache) if distributed.current().is_main else True
    for cid, cell, err in failed:
        print(f"FAILED cell {cid} ({describe(cell)}): {type(err).__name__}: {err} "
              f"(traceback: {store.error_path(cid)})", file=sys.stderr)
    return 1 if failed or not report_ok else 0


def _write_report(out: Path, cache: ArtifactCache) -> bool:
    """``python -m bench.report OUT``; a report that fails to build is said loudly, rows stay."""
    import traceback

    from bench.report import main as report_main

    try:
        return report_main([str(out), "--cache", str(cache.root)]) == 0
    except Exception:  # noqa: BLE001 -- the cells' rows are stored; say so and how to retry
        traceback.print_exc()
        print(f"report FAILED; the rows are stored, retry with: python -m bench.report {out}", file=sys.stderr)
        return False
