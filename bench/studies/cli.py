"""``python -m bench.studies STUDY``: studies beyond the paper's tables, written as tidy rows like every cell.

* ``composition`` (bench/studies/composition.py): zero-shot composition -- ``ours`` given
  "A then B" in one 8-step pass, against chaining the teachers. The synthetic world scores both
  against the exact B(A(source)).
* ``extension`` (bench/studies/extension.py): a CollectionLoRA distilled on the first N effects
  is extended to M new ones; forgetting is the drop of the old effects' scores.
* ``deployment`` (bench/studies/deployment/): the deployment-cost cells at chosen numbers of
  effects, run and stored like every grid cell (``python -m bench.run --grid deployment``: the
  paper's Ns and the report).

    python -m bench.studies composition --preset smoke --pairs 2
    python -m bench.studies extension --preset smoke --new 1
    python -m bench.studies deployment --preset smoke --n 10,50,150
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd

from bench.cache import ArtifactCache
from bench.config import PRESETS, RunConfig, apply_overrides, config_hash
from bench.store import ResultStore
from bench.studies.composition import composition
from bench.studies.extension import extension
from bench.workspace import Workspace
from methods.ours import Components
from reports.tables import means_table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.studies", description=__doc__.split("\n")[0])
    ap.add_argument("study", choices=["composition", "extension", "deployment"])
    ap.add_argument("--preset", default="synth")
    ap.add_argument("--effects", type=int, default=None)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--pairs", type=int, default=4, help="composition: effect pairs")
    ap.add_argument("--new", type=int, default=2, help="extension: new effects added")
    ap.add_argument("--n", default=None,
                    help="deployment: comma list of effect counts (default: the deployment grid's)")
    ap.add_argument("--force", action="store_true", help="deployment: measure again even if a cell finished before")
    ap.add_argument("--out", default="runs")
    ap.add_argument("--cache", default=None)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_intermixed_args(argv)
    if args.study == "deployment":
        return deployment(args)
    cfg: RunConfig = apply_overrides(PRESETS.get(args.preset)(), args.overrides)
    cfg = replace(cfg, method="ours", n_effects=args.effects or cfg.n_effects,
                  eval=replace(cfg.eval, limit=args.limit if args.limit is not None else cfg.eval.limit))
    ws = Workspace(cfg, ArtifactCache(args.cache))
    rows = composition(ws, args.pairs) if args.study == "composition" else extension(ws, args.new)
    cid = config_hash(args.study, asdict(cfg), args.pairs, args.new)
    rows = rows.assign(run=cid, study=args.study, preset=cfg.preset, n_effects=cfg.n_effects, seed=cfg.seed,
                       ablation="none", components=json.dumps(asdict(Components())), status="ok", note="",
                       role="", synthetic=rows["metric"].isin(["gt_psnr", "gt_mae", "src_ssim"]))
    store = ResultStore(args.out)
    # a study's rows are not a grid table's: kind "study" keeps them out of the report's tables
    store.write_config(cid, cfg, kind="study")
    store.tag(cid, [args.study])
    store.write_rows(cid, rows)
    index = ("method", "effect_set") if "effect_set" in rows else ("method",)
    print(f"{args.study} ({cfg.preset}, {cfg.n_effects} effects) -> {store.cell_dir(cid)}")
    print(means_table(rows, index))
    return 0


def deployment(args: argparse.Namespace) -> int:
    """The deployment cells at ``--n`` (default: the grid's), with the same bookkeeping as every
    grid cell (skipped when finished, rows written atomically, tagged for the report's deployment
    table); prints that table."""
    from bench.grids import grid_cells
    from bench.runner import run_cell
    from reports.tables import deployment_table

    base = apply_overrides(PRESETS.get(args.preset)(), args.overrides)
    cells = grid_cells("deployment", base)
    if args.n:
        wanted = {int(x) for x in args.n.split(",")}
        cells = [c._replace(cell=replace(c.cell, n_effects=n)) for n in sorted(wanted) for c in cells[:1]]
    cache = ArtifactCache(args.cache)
    rows = [run_cell(c.cell, Path(args.out), cache, force=args.force, tags=c.tags) for c in cells]
    print(deployment_table(pd.concat(rows, ignore_index=True)))
    return 0

