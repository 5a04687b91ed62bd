"""Grids are Python functions returning run cells; a cell's id is the hash of its resolved config.

``python -m bench.run --grid NAME`` runs one; finished cells are skipped, failed cells are listed
and the others still complete. Every grid is the paper's experiment at the preset's scale: the
default presets use the paper's sizes (50 effects, 10/20/50/100/180, ...), ``smoke`` is the same
grid made small (the big_vision habit: a smaller config, not a fork).

Grids and what they reproduce:

* ``main``        Table 1: base, lightning, fm_all_in_1, ours (+ merge baselines when registered)
* ``scaling``     LoRA scaling: the four paper methods x 10 / 20 / 50 / 100 / 180 effects
* ``main_matched`` Table 1 at equal training compute: FM all-in-1 trained until its counted
  transformer passes (bench/cost.py) reach ``ours``'s at the published settings; the other cells
  are main's
* ``ablation``    component ablation: the paper's five rows over PDSR / AOP / TS / TA-FM
* ``curves``      training curves: ``ours`` and its ablations evaluated every K distillation steps
* ``deployment``  deployment cost at 10 / 20 / 50 / 100 / 150 effects (measured, bench/studies/deployment/)
* ``paper``       all of the above, each cell once
* ``methods``     the four paper methods on the run's own effects (a quick comparison)

A cell is a ``RunConfig`` (train or load a method's adapters, evaluate) or a measurement cell,
:class:`bench.cells.DeploymentCell`, that trains nothing; ``bench.runner.run_cell`` runs and
stores both the same way, locally and in submitted jobs (``slurm.dispatch.load_cell`` rebuilds
either kind).

Tags: ``grid_cells`` gives every cell the tag of the report table its grid feeds (``TAGS``), the
store keeps it with the cell and the report reads it, so a cell lands in the table of the
grid that made it. A cell made by several grids (``paper`` is made of parts; main's ``ours`` is
ablation row (5)) carries every one of their tags.

Training curves: a curve point at step k is its own cell, ``ours`` with ``distill.steps=k``,
and every curve cell carries ``distill.snapshot_every`` = the spacing of the points. The DMD
loop's learning rate, stream sampler and RNG do not depend on the total step count, so the
k-step run *is* the first k steps of the full run (exact on CPU; tests/test_dmd.py); the full
run publishes its student at every k as the finished k-step artifact (methods/distill.py), and
the shorter cells find it cached. Cells run longest first, so a curve costs one training run.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from bench.cells import Cell, DeploymentCell
from bench.config import PRESETS, RunConfig
from bench.registry import Registry

GRIDS: Registry = Registry("grid")

PAPER_METHODS: tuple[str, ...] = ("base", "lightning", "fm_all_in_1", "ours")
# Beyond the paper: weight-merge baselines (+ Lightning), included whenever a method registers them.
MERGE_METHODS: tuple[str, ...] = ("merge_linear", "merge_ties", "merge_dare")

# The paper's component ablation (CollectionLoRA Table 4): rows (1)-(5) as components switched off.
ABLATION_ROWS: tuple[tuple[str, ...], ...] = (
    ("pdsr", "aop", "ts", "tafm"),   # (1) vanilla multi-teacher DMD
    ("aop", "ts", "tafm"),           # (2) + PDSR
    ("ts", "tafm"),                  # (3) + AOP
    ("ts",),                         # (4) + TA-FM
    (),                              # (5) full CollectionLoRA
)

# The report table each grid's cells feed: the tag the store keeps with the cell. ``methods`` is
# the main table on the run's own effects; a grid not listed here tags nothing (the report
# places its cells by their config).
TAGS: dict[str, str] = {"main": "main", "methods": "main", "scaling": "scaling", "ablation": "ablation",
                        "curves": "curves", "deployment": "deployment", "main_matched": "main_matched"}
# ``paper`` is these grids, each cell once. Curves first: their full runs publish the curve
# points (and are ablation's / main's LoRAs).
PAPER_PARTS: tuple[str, ...] = ("curves", "main", "ablation", "scaling", "deployment")

# The grids whose cells a grid's cells are tagged with: ``paper`` is its parts; main_matched's
# unbudgeted cells *are* main's (the same ids), so they carry main's tag as well.
GRID_PARTS: dict[str, tuple[str, ...]] = {"paper": PAPER_PARTS, "main_matched": ("main", "main_matched")}

CURVES_COST_NOTE = ("curve points are separate cells (ours with distill.steps=k): exact prefixes of the "
                    "full run, published by it as snapshots (distill.snapshot_every), so one training run each")


@dataclass(frozen=True)
class GridSizes:
    """How big each paper experiment is at a given preset."""
    main_effects: int                      # Table 1 / ablation / curves: effects in one CollectionLoRA
    scaling: tuple[int, ...]               # LoRA scaling: numbers of effects
    deployment: tuple[int, ...]            # deployment cost: numbers of effects served
    curve_points: int                      # training curves: evaluated every steps / curve_points steps
    capacity: int = 50                     # deployment: effects one CollectionLoRA holds (the paper's 50)
    requests_per_effect: int = 4           # deployment: paraphrased routing requests per effect
    timing_repeats: int = 5                # deployment: repeats of each latency measurement
    # main_matched: the training passes of ``ours`` at the preset's published settings, counted by
    # bench/cost.py (a DMD step's passes do not depend on the number of effects);
    # ``fm_all.budget_passes=N`` sets another budget
    matched_passes: int = 0


PAPER_SIZES = GridSizes(main_effects=50, scaling=(10, 20, 50, 100, 180), deployment=(10, 20, 50, 100, 150),
                        curve_points=6,
                        # synth ours (1000 steps, batch 8), counted over its whole run: 52,576 forward
                        # + 11,392 backward sample passes (the per-step count varies with the
                        # backward-simulation depth drawn); FM all-in-1's published 1500 x 16 x 2 = 48,000
                        matched_passes=63_968)
# smoke: the same grids on the smoke preset's 3 effects; deployment keeps the paper's N (it trains
# nothing: adapter files of the right shapes, routing on paraphrases, timed switches).
SMOKE_SIZES = GridSizes(main_effects=3, scaling=(2, 3, 4), deployment=(10, 20, 50, 100, 150),
                        curve_points=3, requests_per_effect=2, timing_repeats=3,
                        matched_passes=2552)  # smoke ours: 2088 forward + 464 backward sample passes
SIZES: dict[str, GridSizes] = {"smoke": SMOKE_SIZES}


def sizes(base: RunConfig) -> GridSizes:
    return SIZES.get(base.preset, PAPER_SIZES)


def main_effects(base: RunConfig, n: int | None = None) -> int:
    """Effects of the 50-in-1 experiments: ``n`` (``--effects N``, even when N is the preset's
    own default) if given, else ``base.n_effects`` where it differs from the preset's, else the
    paper's size."""
    if n is not None:
        return n
    default = PRESETS.get(base.preset)().n_effects if base.preset in PRESETS else None
    return base.n_effects if default is not None and base.n_effects != default else sizes(base).main_effects


def _cell(base: RunConfig, method: str, *, n: int, off: Iterable[str] = ()) -> RunConfig:
    return replace(base, method=method, n_effects=n, components_off=tuple(sorted(off)))


def _unique(cells: Iterable[Any]) -> list[Any]:
    """Cells in order, each resolved config once (grids share cells: main's ours is ablation (5))."""
    from bench.store import cell_id

    seen: dict[str, Any] = {}
    for cell in cells:
        seen.setdefault(cell_id(cell), cell)
    return list(seen.values())


def main_methods() -> list[str]:
    """The paper's four methods plus every merge baseline registered *now* (checked at call time)."""
    from methods import METHODS

    return list(PAPER_METHODS) + [m for m in MERGE_METHODS if m in METHODS.names()]


# ----------------------------------------------------------------------------------------------
# grids


@GRIDS.register("main")
def main(base: RunConfig, *, main_n: int | None = None) -> list[RunConfig]:
    """Table 1: every method on the 50-in-1 effects (merge baselines included when registered)."""
    n = main_effects(base, main_n)
    return [_curve_snapshots(_cell(base, m, n=n), base) for m in main_methods()]


@GRIDS.register("main_matched")
def main_matched(base: RunConfig, *, main_n: int | None = None) -> list[RunConfig]:
    """Table 1 at equal training compute: FM all-in-1 given ``ours``'s counted training passes.

    Main's cells, but FM all-in-1 trains until its own counted transformer passes reach
    ``ours``'s at the published settings, however many steps that takes. The merges train
    nothing of their own and Base / Lightning are the teachers' and the base's, so those cells
    are main's."""
    budget = base.fm_all.budget_passes or sizes(base).matched_passes
    if not budget:
        raise ValueError("--grid main_matched: no training budget for this preset; set fm_all.budget_passes=N "
                         "(ours's counted passes: the main table's 'training passes' column)")
    fm = replace(base.fm_all, budget_passes=budget)
    return [replace(c, fm_all=fm) if c.method == "fm_all_in_1" else c for c in main(base, main_n=main_n)]


@GRIDS.register("scaling")
def scaling(base: RunConfig, *, scaling_effects: tuple[int, ...] | None = None) -> list[RunConfig]:
    """LoRA scaling: the four paper methods x 10 / 20 / 50 / 100 / 180 effects (``--scaling-effects``:
    another list, e.g. 10,20,50 where the larger Ns cost too much)."""
    return [_cell(base, m, n=n) for n in (scaling_effects or sizes(base).scaling) for m in PAPER_METHODS]


@GRIDS.register("ablation")
def ablation(base: RunConfig, *, main_n: int | None = None) -> list[RunConfig]:
    """The paper's five ablation rows over PDSR / AOP / TS / TA-FM (50-in-1)."""
    n = main_effects(base, main_n)
    return [_curve_snapshots(_cell(base, "ours", n=n, off=off), base) for off in ABLATION_ROWS]


def curve_steps(total: int, points: int) -> list[int]:
    """Distillation steps at which a curve is evaluated: multiples of ``total // points`` (the
    snapshot spacing), ending at ``total``."""
    points = max(1, min(points, total))
    every = total // points
    return sorted({every * i for i in range(1, points)} | {total})


def curve_spacing(base: RunConfig) -> int:
    """Distillation steps between two points of a training curve (the snapshot spacing)."""
    return base.distill.steps // max(1, min(sizes(base).curve_points, base.distill.steps))


def _curve_snapshots(cell: RunConfig, base: RunConfig) -> RunConfig:
    """An ``ours`` cell of the 50-in-1 experiments that publishes the training curve's points as
    it trains, so main's or ablation's run is also the curve's and ``--grid curves`` run after it
    only evaluates (snapshot_every is bookkeeping: the cell id and the artifact are unchanged)."""
    if cell.method != "ours" or cell.distill.budget_passes is not None or cell.distill.snapshot_every:
        return cell
    return replace(cell, distill=replace(cell.distill, snapshot_every=curve_spacing(base)))


@GRIDS.register("curves")
def curves(base: RunConfig, *, main_n: int | None = None) -> list[RunConfig]:
    """Training curves: ours and its ablations evaluated every K distillation steps (one cell per point)."""
    n = main_effects(base, main_n)
    steps = curve_steps(base.distill.steps, sizes(base).curve_points)
    every = curve_spacing(base)
    # Longest first: the full run publishes the shorter ones as snapshots (snapshot_every is
    # not part of the artifact key, so the full runs are also `ablation`'s LoRAs).
    return [replace(_cell(base, "ours", n=n, off=off),
                    distill=replace(base.distill, steps=k, snapshot_every=every))
            for k in sorted(steps, reverse=True) for off in ABLATION_ROWS]


@GRIDS.register("deployment")
def deployment(base: RunConfig) -> list[DeploymentCell]:
    """Deployment cost at 10 / 20 / 50 / 100 / 150 effects: storage, routing, switching, latency."""
    s = sizes(base)
    return [DeploymentCell(base=base, n_effects=n, capacity=s.capacity, requests_per_effect=s.requests_per_effect,
                           timing_repeats=s.timing_repeats, seed=base.seed) for n in s.deployment]


@GRIDS.register("paper")
def paper(base: RunConfig, *, scaling_effects: tuple[int, ...] | None = None,
          main_n: int | None = None) -> list[Any]:
    """Everything the paper reports: main, scaling, ablation, curves, deployment (each cell once)."""
    return _unique(c for part in PAPER_PARTS for c in _part(part, base, scaling_effects=scaling_effects,
                                                          main_n=main_n))


def _part(name: str, base: RunConfig, **options: Any) -> list[Any]:
    """Grid ``name``'s cells, handing on only the options it takes (a grid registered elsewhere
    may take none) and only those given."""
    grid = GRIDS.get(name)
    takes = inspect.signature(grid).parameters
    return grid(base, **{k: v for k, v in options.items() if v is not None and k in takes})


@GRIDS.register("methods")
def methods(base: RunConfig) -> list[RunConfig]:
    """The four paper methods on the run's effects."""
    return [replace(base, method=m, components_off=()) for m in PAPER_METHODS]


class GridCell(NamedTuple):
    """A cell of a grid and its tags: the report tables it feeds (kept by ``ResultStore.tag``)."""
    cell: Cell
    tags: tuple[str, ...]


def grid_cells(name: str, base: RunConfig, *, scaling_effects: tuple[int, ...] | None = None,
               main_n: int | None = None) -> list[GridCell]:
    """The cells of grid ``name`` made from ``base``, tagged (``TAGS``); ``scaling_effects``
    (``--scaling-effects``) applies to the grids that hold the scaling study only, ``main_n``
    (``--effects N``) is the number of effects of the main / ablation / curves experiments."""
    from bench.store import cell_id

    if scaling_effects and name not in ("scaling", "paper"):
        raise ValueError(f"--scaling-effects applies to --grid scaling or paper, not {name!r}")
    options = {"scaling_effects": scaling_effects, "main_n": main_n}
    cells = _part(name, base, **options)
    tags: dict[str, set[str]] = {}
    for part in GRID_PARTS.get(name, (name,)):
        if part in TAGS:
            for c in _part(part, base, **options):
                tags.setdefault(cell_id(c), set()).add(TAGS[part])
    return [GridCell(c, tuple(sorted(tags.get(cell_id(c), ())))) for c in cells]


def storage_collections(n_effects: int, capacity: int) -> int:
    """CollectionLoRAs needed to serve ``n_effects``: ceil(N / capacity)."""
    return max(1, math.ceil(n_effects / capacity))
