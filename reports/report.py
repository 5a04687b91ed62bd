"""The markdown report of a results directory: the paper's four tables (ours beside the paper's
own numbers), training / scaling / deployment plots, qualitative image grids, failed cells, and
the configs and seeds that produced everything.

It only reads files (rows, configs, saved images, the EffectBench's images): it never imports
torch, so re-reporting makes zero backbone forwards by construction.

Which cells feed which table is read from their tags: the grid that made a cell tagged it with
its table (``main``, ``ablation``, ``scaling``, ``curves``; bench/grids.py ``TAGS``) and the store
kept the tag (bench/store.py). Within a table:

* cells whose configs differ only in ``distill.steps`` (and seed) are one run at several lengths:
  the longest is the table's *final* cell, the shorter ones are training-curve points;
* main N: the number of effects with the most main-table cells; the ablation table and the
  training curves use it too when they have cells there (else their own most common N);
* deployment: measurement cells (kind ``deployment``, recorded by the store).

A cell without tags (a single ``bench.run --method`` run, or a results directory written before
grids tagged their cells) is placed by its resolved config, as before tags existed
(``_guess_sections``).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bench.config import drop_unset
from bench.store import ResultStore, UnreadableRowsError
from reports import claims, plots, tables
from reports import paper_numbers as paper
from reports.grids_images import GridColumn, image_grid, result_images

CURVE_FREE_KEYS = ("distill.steps", "distill.checkpoint_every", "distill.keep_checkpoints",
                   "distill.snapshot_every")
PAPER_METHODS = ("base", "lightning", "fm_all_in_1", "ours")
# bench/studies/deployment/measure.PeakMemory kinds, as a reader needs them
MEMORY_NOTES = {"process_peak_rss": "peak resident memory of the whole process, sampled during the request (CPU; "
                                    "dominated by the framework, so not ranked)",
                "cuda_max_memory_allocated": "torch.cuda.max_memory_allocated during the request (GPU)"}


# ----------------------------------------------------------------------------------------------
# loading


@dataclass
class Cell:
    cid: str
    store: ResultStore
    config: dict
    rows: pd.DataFrame | None = None
    error: str | None = None
    kind: str = "run"                 # "run" | "deployment" | "study" (ResultStore.kind)
    tags: tuple[str, ...] = ()        # the tables its grids made it for (ResultStore.tags)
    roles: list[str] = field(default_factory=list)   # report sections this cell feeds
    curve_rows: pd.DataFrame | None = None           # rows at several steps, when the cell has them

    @property
    def dir(self) -> Path:
        return self.store.cell_dir(self.cid)

    @property
    def image_dir(self) -> Path:
        return self.store.image_dir(self.cid)

    @property
    def status(self) -> str:
        if self.rows is not None:
            return "ok"
        return "failed" if self.error is not None else "incomplete"

    @property
    def method(self) -> str:
        return self.config.get("method", "?")

    @property
    def ablation(self) -> str:
        return ",".join(sorted(self.config.get("components_off", []) or [])) or "none"

    @property
    def n_effects(self) -> int:
        return int(self.config.get("n_effects", 0))

    @property
    def steps(self) -> int | None:
        return (self.config.get("distill") or {}).get("steps")

    @property
    def seed(self) -> Any:
        return self.config.get("seed")

    @property
    def preset(self) -> str:
        return self.config.get("preset") or (self.config.get("base") or {}).get("preset", "?")


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def unflatten(flat: dict[str, Any]) -> dict:
    out: dict = {}
    for key, v in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return out


def compact_json(obj: Any) -> str:
    """Indented JSON with lists of scalars kept on one line."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=str)
    return re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)


def load_cells(runs: Path) -> list[Cell]:
    store = ResultStore(runs)
    cells = []
    for cid in store.cell_ids():
        rows, error = None, None
        if store.has_rows(cid):
            try:
                rows = store.read_cell(cid)
            except UnreadableRowsError as err:  # a truncated file: an unfinished cell, said once
                print(f"warning: {err}; reported as an unfinished cell (a rerun redoes it)", file=sys.stderr)
                error = str(err)
        if rows is None and error is None:
            error = store.read_error(cid)
        cell = Cell(cid, store, store.read_config(cid), rows, error, store.kind(cid), store.tags(cid))
        if rows is not None and "step" in rows.columns and rows["step"].nunique() > 1:
            # a cell evaluated at several training steps (rows carry ``step``): tables use its last
            # step, the training curves all of them
            last = rows["step"].max()
            cell.curve_rows, cell.rows = rows, rows[rows["step"] == last].reset_index(drop=True)
        cells.append(cell)
    return cells


# What a grid varies between its cells; everything else defines the experiment's "family".
GRID_KEYS = ("method", "components_off", "n_effects", "seed", "fm_all.budget_passes", "distill.budget_passes",
             *CURVE_FREE_KEYS)


def budgeted(cell: Cell) -> bool:
    """Trained to a pass budget (``fm_all`` / ``distill.budget_passes``: the compute-matched grid)."""
    return any((cell.config.get(section) or {}).get("budget_passes") is not None for section in ("fm_all", "distill"))


def family(cell: Cell) -> str:
    """The config a grid's cells share (for a deployment cell: its base run config)."""
    config = cell.config.get("base", {}) if cell.kind == "deployment" else cell.config
    # a field added later is absent from older cells' configs and unset (None) in newer ones: the same
    flat = {k: v for k, v in flatten(drop_unset(config)).items() if k not in GRID_KEYS}
    return json.dumps(flat, sort_keys=True, default=str)


def classify(cells: list[Cell]) -> dict[str, Any]:
    """Assign finished cells to the report's sections (see the module docstring).

    Cells of one results directory may come from different configs (a default changed between
    runs, an override): tables use one family -- the one with most finished cells, the newest on a
    tie -- and the others are listed, never averaged in.
    """
    done = [c for c in cells if c.status == "ok"]
    counts: dict[str, list[Cell]] = {}
    for c in done:
        if c.kind == "run":
            counts.setdefault(family(c), []).append(c)
    newest = lambda members: max(m.store.finished_at(m.cid) for m in members)  # noqa: E731
    chosen = max(counts, key=lambda k: (len(counts[k]), newest(counts[k]))) if counts else None
    runs = counts.get(chosen, [])

    # the tables the grids tagged their cells for; untagged cells placed by their configs
    tagged = [c for c in runs if c.tags]
    guess, guess_n = _guess_sections([c for c in runs if not c.tags])
    main = [c for c in _finals([c for c in tagged if "main" in c.tags])[0] + guess["main"] if not budgeted(c)]
    matched = _finals([c for c in tagged if "main_matched" in c.tags])[0]
    ablation = _finals([c for c in tagged if "ablation" in c.tags])[0] + guess["ablation"]
    scaling = _finals([c for c in tagged if "scaling" in c.tags])[0] + guess["scaling"]
    curves = [c for c in tagged if "curves" in c.tags] + guess["curves"]
    main_n = _modal_n(main) or guess_n or _modal_n(ablation + curves + scaling + matched)
    main = [c for c in main if c.n_effects == main_n]
    matched = [c for c in matched if c.n_effects == main_n]
    ablation_n = main_n if any(c.n_effects == main_n for c in ablation) else _modal_n(ablation)
    ablation = [c for c in ablation if c.n_effects == ablation_n]
    if len(ablation) < 2:  # one row compares nothing
        ablation = []
    if len({c.n_effects for c in scaling}) < 2:
        scaling = []
    curves_n = main_n if any(c.n_effects == main_n for c in curves) else _modal_n(curves)
    curves = [c for c in curves if c.n_effects == curves_n]

    deployment = [c for c in done if c.kind == "deployment"]
    same = [c for c in deployment if chosen is None or family(c) == chosen]
    deployment_other = bool(deployment) and not same
    deployment = same or deployment  # deployment costs barely depend on training settings
    for name, members in (("main", main), ("ablation", ablation), ("scaling", scaling), ("curves", curves),
                          ("deployment", deployment), ("main_matched", matched)):
        for c in members:
            c.roles.append(name)
    others = [c for c in done if c.kind == "run" and family(c) != chosen]
    return {"main_n": main_n, "ablation_n": ablation_n or main_n, "main": main, "main_matched": matched,
            "ablation": ablation,
            "scaling": scaling, "curves": curves, "deployment": deployment,
            "deployment_other_config": deployment_other, "other_family": others,
            "family": json.loads(chosen) if chosen else {}}


def _finals(cells: list[Cell]) -> tuple[list[Cell], list[Cell]]:
    """(final cells, training-curve cells). Cells whose configs differ only in ``distill.steps``
    (and seed) are one run at several lengths: the longest of each group is final; the members of
    an ``ours`` group with several lengths are its curve points."""
    groups: dict[str, list[Cell]] = {}
    for c in cells:
        flat = {k: v for k, v in flatten(c.config).items() if k not in CURVE_FREE_KEYS and k != "seed"}
        groups.setdefault(json.dumps(flat, sort_keys=True, default=str), []).append(c)
    final: list[Cell] = []
    curves: list[Cell] = []
    for members in groups.values():
        longest = max((m.steps or 0) for m in members)
        final += [m for m in members if (m.steps or 0) == longest]
        if len({m.steps for m in members}) > 1 and members[0].method == "ours":
            curves += members
    return final, curves


def _modal_n(cells: list[Cell]) -> int | None:
    """The number of effects most of ``cells`` have (the larger on a tie); None without cells."""
    per_n: dict[int, int] = {}
    for c in cells:
        per_n[c.n_effects] = per_n.get(c.n_effects, 0) + 1
    return max(per_n, key=lambda n: (per_n[n], n)) if per_n else None


def _guess_sections(runs: list[Cell]) -> tuple[dict[str, list[Cell]], int | None]:
    """The sections of cells no grid tagged, read from their configs alone -- how every cell was
    placed before grids tagged them, kept for single runs and old results directories: main N
    is the number of effects with the most distinct (method, ablation) final cells; main: final
    cells at main N without ablation; ablation: final ``ours`` cells at main N; scaling: final
    cells of the four paper methods at every N; curves: ``ours`` curve groups at main N."""
    final, curves = _finals(runs)
    per_n: dict[int, set] = {}
    for c in final:
        per_n.setdefault(c.n_effects, set()).add((c.method, c.ablation))
    main_n = max(per_n, key=lambda n: (len(per_n[n]), n)) if per_n else None
    curves = [c for c in curves if c.n_effects == main_n]
    curves += [c for c in final if c.curve_rows is not None and c.n_effects == main_n and c not in curves]
    return {"main": [c for c in final if c.n_effects == main_n and c.ablation == "none"],
            "ablation": [c for c in final if c.n_effects == main_n and c.method == "ours"],
            "scaling": [c for c in final if c.ablation == "none" and c.method in PAPER_METHODS],
            "curves": curves}, main_n


def rows_of(cells: list[Cell], *, with_step: bool = False) -> pd.DataFrame:
    frames = []
    for c in cells:
        if with_step and c.curve_rows is not None:
            frames.append(c.curve_rows)
            continue
        r = c.rows.copy()
        if with_step:
            r["step"] = c.steps
        frames.append(r)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# ----------------------------------------------------------------------------------------------
# dataset (sources / ground truth for the image grids), read-only


def dataset_root(config: dict, cache_root: Path | None) -> Path | None:
    """The EffectBench a cell ran on, if it is on disk: ``world.root``, or the synthetic world in
    the artifact cache. Never builds anything."""
    from bench.cache import DONE, default_cache_root
    from bench.config import config_hash

    world = config.get("world") or {}
    if world.get("kind") == "effectbench":
        return Path(world["root"]) if world.get("root") and Path(world["root"]).exists() else None
    root = Path(cache_root) if cache_root else default_cache_root()
    path = root / "world" / config_hash(world)
    return path if (path / DONE).exists() else None


# ----------------------------------------------------------------------------------------------
# the report


@dataclass
class ReportOptions:
    categories: bool = False          # break the main table out per category (pet / animal / portrait)
    cache: Path | None = None         # artifact cache holding the synthetic EffectBench (for grid sources)
    grid_effects: int = 4             # effects shown in qualitative grids
    grid_samples: int = 4             # samples (rows) per grid


@dataclass
class ReportResult:
    path: Path
    filled: dict[str, bool]           # section -> has measured content (tables / plots / grids)
    failed: list[str]                 # ids of cells that did not finish

    def missing(self) -> list[str]:
        return [k for k, v in self.filled.items() if not v]


def build_report(runs: Path, out: Path, options: ReportOptions | None = None) -> ReportResult:
    """Write ``out`` (markdown) and its assets folder next to it."""
    opts = options or ReportOptions()
    runs, out = Path(runs), Path(out)
    assets = out.parent / (out.stem + "_assets")
    assets.mkdir(parents=True, exist_ok=True)
    rel = lambda p: os.path.relpath(p, out.parent)  # noqa: E731
    cells = load_cells(runs)
    sec = classify(cells)
    done = [c for c in cells if c.status == "ok"]
    failed = [c for c in cells if c.status != "ok"]
    all_rows = rows_of(done)
    synthetic = bool(len(all_rows)) and "synthetic" in all_rows.columns and bool(
        all_rows.loc[all_rows.get("role", pd.Series(dtype=str)).fillna("") != "NFE", "synthetic"].fillna(False).any())

    md: list[str] = []
    add = md.append
    add("# CollectionLoRA Bench report\n")
    presets = sorted({c.preset for c in cells})
    add(f"Results: `{runs}` · {len(cells)} cells ({len(done)} finished, "
        f"{sum(c.status == 'failed' for c in cells)} failed, {sum(c.status == 'incomplete' for c in cells)} incomplete)"
        f" · preset(s): {', '.join(presets) or '—'} · generated {_dt.datetime.now():%Y-%m-%d %H:%M}.\n")
    intro = ("Measured numbers come from this directory's rows only; tables and plots labelled **paper** are the "
             f"published numbers ({paper.SOURCE}), shown for reference and never part of a bold best.")
    if synthetic:
        intro += (" In the synthetic world the paper's columns are played by exact, weight-free metrics (the "
                  "`Columns:` line under each table names them), so compare *rankings* with the paper, not values.")
    add(intro + "\n")
    if sec["other_family"]:
        differ = _differing_keys(sec["family"], sec["other_family"])
        add(f"> {len(sec['other_family'])} finished cell(s) ran with another config (differs in "
            f"{', '.join(f'`{k}`' for k in differ[:8]) or 'grid keys'}{' ...' if len(differ) > 8 else ''}); "
            "they are listed under [Configs and seeds](#configs-and-seeds) and left out of every table.\n")
    if failed:
        add(f"> **{len(failed)} cell(s) did not finish** — see [Failed cells](#failed-cells): "
            + ", ".join(f"`{c.cid}` ({c.method})" for c in failed) + "\n")

    curve_rows = rows_of(sec["curves"], with_step=True)  # the training curves; the cost plot draws them too

    # 1. main table ------------------------------------------------------------------------------
    n = sec["main_n"]
    add(f"## 1. Main table — {n} effects\n")
    main_rows = rows_of(sec["main"])
    if len(main_rows):
        add("**This run** (means over effects, test samples and seeds; NFE counted):\n")
        add(tables.main_table(main_rows) + "\n")
        add(tables.legend(tables.metric_columns(main_rows)) + "\n")
        add("**Training cost** of each method's artifacts (by kind of artifact):\n")
        add(tables.cost_table(main_rows) + "\n")
        for role in ("CLIP", "DreamSim"):
            p = plots.quality_vs_cost(main_rows, role, assets / f"cost_{role.lower()}.png", curve_rows)
            if p:
                add(f"![{role}-role metric vs training passes]({rel(p)})\n")
        add("**This run, per effect** (each effect's own fidelity metric; a mean over effects can hide a method "
            "that is right on some effects and wrong on others):\n")
        add(tables.per_effect_table(main_rows, "method") + "\n")
        if opts.categories:
            add("**This run, per category**:\n")
            add(tables.main_table(main_rows, by_category=True) + "\n")
    else:
        add("_no finished main-table cells (run `--grid main`)_\n")
    add("**paper** (Table 1, 50 effects, EffectBench):\n")
    add(tables.paper_main_table() + "\n")

    scaling_rows = rows_of(sec["scaling"])
    ab_rows = rows_of(sec["ablation"])
    add("### The paper's claims in this world\n")
    # the effects the cells were evaluated on (cost rows name an artifact's training streams instead)
    used = set().union(*(set(tables.quality(r)["effect"]) for r in (main_rows, scaling_rows, ab_rows)
                         if "effect" in r)) - {""}
    gate = _world_gate(runs, used)
    add(gate + "\n")
    add("\n".join(claims.claims(main_rows, scaling_rows, ab_rows)) + "\n")

    matched_rows = rows_of(sec["main_matched"])
    if len(matched_rows):
        budgets = sorted({(c.config.get("fm_all") or {}).get("budget_passes") for c in sec["main_matched"]} - {None})
        add("### At equal training compute (`--grid main_matched`)\n")
        add(f"FM all-in-1 trained until its own counted transformer passes reached {', '.join(map(str, budgets))} "
            "(`ours`'s at the published settings); the other rows are the main table's:\n")
        add(tables.main_table(matched_rows) + "\n")
        add(claims.at_equal_compute(matched_rows) + "\n")

    # 2. scaling -----------------------------------------------------------------------------------
    add("## 2. LoRA scaling\n")
    if len(scaling_rows):
        add("**This run**:\n")
        add(tables.scaling_table(scaling_rows, "CLIP") + "\n")
        add(tables.scaling_table(scaling_rows, "DreamSim") + "\n")
        for role in ("CLIP", "DreamSim"):
            p = plots.scaling_curves(scaling_rows, role, assets / f"scaling_{role.lower()}.png")
            if p:
                add(f"![LoRA scaling, {role}-role metric]({rel(p)})\n")
    else:
        add("_no scaling cells with two or more effect counts (run `--grid scaling`)_\n")
    add("**paper**:\n")
    add(tables.paper_scaling_table() + "\n")

    # 3. deployment ----------------------------------------------------------------------------------
    add("## 3. Deployment cost\n")
    dep_rows = rows_of(sec["deployment"])
    if len(dep_rows):
        caps = sorted({c.config.get("capacity") for c in sec["deployment"]})
        add(f"**This run** (measured; capacity {', '.join(map(str, caps))} effects per CollectionLoRA; routing "
            "on paraphrased instructions; latencies: the median request; accuracy, bytes: the mean):\n")
        add(tables.deployment_table(dep_rows) + "\n")
        if sec["deployment_other_config"]:
            add("_(deployment cells ran with another base config than the tables above; costs depend on the "
                "backbone shapes and adapter ranks only)_\n")
        top = dep_rows["n_effects"].max()  # notes of the largest N (the others differ only in counts)
        order = ["storage_bytes", "switch_fused_s", "e2e_latency_s", "peak_memory_bytes"]  # the table's order
        notes = dep_rows[(dep_rows.status == "ok") & (dep_rows.n_effects == top) & dep_rows.metric.isin(order)
                         & (dep_rows.note.astype(str) != "")]
        notes = notes.sort_values("metric", key=lambda m: m.map(order.index), kind="stable")
        add(f"How each number was measured (N={top}):")
        for (metric, note), sub in notes.groupby(["metric", "note"], sort=False):
            who = ", ".join(dict.fromkeys(tables.DEPLOY_METHOD.get(m, m).split(" (")[0] for m in sub.method))
            add(f"- `{metric}` ({who}): {MEMORY_NOTES.get(note, note)}")
        add("")
        p = plots.deployment_curves(dep_rows, assets / "deployment.png")
        if p:
            add(f"![Deployment cost vs number of effects]({rel(p)})\n")
    else:
        add("_no deployment cells (run `--grid deployment` or `python -m bench.studies deployment`)_\n")
    add(f"**paper** (capacity {paper.PAPER_CAPACITY}; one LoRA file is 2.2 GB):\n")
    add(tables.paper_deployment_table() + "\n")

    # 4. ablation -------------------------------------------------------------------------------------
    add(f"## 4. Component ablation — {sec['ablation_n']} effects in 1\n")
    if len(ab_rows):
        add("**This run**:\n")
        add(tables.ablation_table(ab_rows) + "\n")
        add(tables.legend(tables.metric_columns(ab_rows)) + "\n")
        add("**This run, per effect**:\n")
        add(tables.per_effect_table(ab_rows, "ablation") + "\n")
    else:
        add("_no ablation cells (run `--grid ablation`)_\n")
    add("**paper**:\n")
    add(tables.paper_ablation_table() + "\n")

    # 5. training curves -------------------------------------------------------------------------------
    add("## 5. Training curves\n")
    if len(curve_rows):
        steps = sorted({int(s) for s in curve_rows["step"].dropna()})
        snapshots = any(c.curve_rows is not None for c in sec["curves"])
        published = any((c.config.get("distill") or {}).get("snapshot_every") for c in sec["curves"])
        how = ("read from the run's intermediate student snapshots" if snapshots
               else "each point is the exact k-step prefix of the full run, which published it as a snapshot "
                    "while training: one training run per row" if published
               else "each point is the exact prefix of the full run, trained as its own cell")
        add(f"`ours` and its ablations evaluated at distillation steps {', '.join(map(str, steps))} ({how}).\n")
        for role in ("CLIP", "DreamSim"):
            p = plots.training_curves(curve_rows, role, assets / f"curves_{role.lower()}.png")
            if p:
                add(f"![{role}-role metric vs step]({rel(p)})\n")
    else:
        add("_no training-curve cells (run `--grid curves`)_\n")

    # 6. qualitative --------------------------------------------------------------------------------------
    add("## 6. Qualitative results\n")
    add(_qualitative(sec, assets, rel, opts))

    # 7. failed cells -----------------------------------------------------------------------------------------
    add("## Failed cells\n")
    if failed:
        for c in failed:
            last = [ln for ln in (c.error or "").strip().splitlines() if ln.strip()]
            why = last[-1] if last else "no rows and no error file: still running, or killed"
            where = rel(c.store.error_path(c.cid)) if c.error else rel(c.dir)
            add(f"- `{c.cid}` — {_describe(c)}: **{c.status}** — `{why}` ({where})")
        add("")
    else:
        add("None: every cell finished.\n")
    missing = all_rows[~all_rows["status"].isin(["ok", "n/a"])] if len(all_rows) else all_rows
    if len(missing):
        add("Metrics reported as missing (no number was made up):\n")
        missing = missing.assign(router=missing["router"].fillna("") if "router" in missing.columns else "")
        for (metric, router), sub in missing.groupby(["metric", "router"], sort=False):
            note = str(sub["note"].iloc[0])
            short = note if len(note) <= 220 else note[:220].rsplit(" ", 1)[0] + " … (full text in the rows' `note`)"
            add(f"- `{metric}`{f' ({router})' if router else ''}: {short}")
        add("")

    # 8. configs and seeds ------------------------------------------------------------------------------------
    add("## Configs and seeds\n")
    add(_configs(cells, rel))
    text = "\n".join(md) + "\n"
    out.write_text(text)
    # what the report links, and whether each link is a real file (an older run's PNG left in the
    # assets folder does not count: only this report's links do)
    linked = {Path(link).name for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
              if (out.parent / link).is_file()}
    filled = {
        "main table": len(main_rows) > 0,
        "scaling tables + plots (CLIP, DreamSim roles)": len(scaling_rows) > 0
        and {"scaling_clip.png", "scaling_dreamsim.png"} <= linked,
        "deployment table + plot": len(dep_rows) > 0 and "deployment.png" in linked,
        "ablation table": len(ab_rows) > 0,
        "training curves (CLIP, DreamSim roles)": {"curves_clip.png", "curves_dreamsim.png"} <= linked,
        "qualitative grids (methods)": any(n.startswith("main_") for n in linked),
        "qualitative grids (ablation)": any(n.startswith("ablation_") for n in linked),
    }
    return ReportResult(out, filled, [c.cid for c in failed])


def _differing_keys(chosen: dict, others: list[Cell]) -> list[str]:
    keys: set[str] = set()
    for c in others:
        flat = {k: v for k, v in flatten(c.config).items() if k not in GRID_KEYS}
        keys |= {k for k in set(flat) | set(chosen) if json.dumps(flat.get(k), default=str)
                 != json.dumps(chosen.get(k), default=str)}
    return sorted(keys)


def _world_gate(runs: Path, used: set[str] = frozenset()) -> str:
    """What the learnability gate said about the effects these results use (``benchmarks/world_gate.py
    --json <runs>/world_gate.json``): a comparison between methods means something only where it
    passed, so effects the file does not hold are named as ungated."""
    path = Path(runs) / "world_gate.json"
    if not path.exists():
        return ("_World gate not run for these results (`python benchmarks/world_gate.py --json "
                f"{path}`): until it has, read the comparisons below as unvalidated._")
    gate = json.loads(path.read_text())
    entries = [e for e in gate["effects"] if not used or e["effect"] in used]
    n = len(entries)
    c = {t: sum(t in e["tests"] for e in entries) for t in ("few-step gap", "coverage", "neither")}
    verdict = "passes" if n and c["neither"] == 0 and 2 * c["few-step gap"] > n else "does not pass"
    text = (f"World gate ({gate['preset']}, {n} effects): {c['few-step gap']} test the few-step gap, "
            f"{c['coverage']} test coverage, {c['neither']} test neither -- the world **{verdict}** its gate "
            "(every effect tests something, a majority the few-step gap).")
    if used and (ungated := sorted(used - {e["effect"] for e in entries})):
        text += (f" **{len(ungated)} of the {len(used)} effects these results use are not gated** "
                 f"({', '.join(ungated[:5])}{', ...' if len(ungated) > 5 else ''}): read what they add as "
                 f"unvalidated (`python benchmarks/world_gate.py --effects N --json {path}` with the results' N "
                 "adds them; the effects the file holds are read back, not sampled again).")
    return text


def _describe(c: Cell) -> str:
    if c.kind == "deployment":
        return f"deployment N={c.config.get('n_effects')}"
    steps = f", steps {c.steps}" if c.steps is not None and c.method == "ours" else ""
    return f"{c.method}, off={c.ablation}, N={c.n_effects}{steps}, seed {c.seed}"


def _qualitative(sec: dict, assets: Path, rel, opts: ReportOptions) -> str:
    """Per effect: source | ground truth | each main-table method, and the ablation rows."""
    order = tables.method_order([c.method for c in sec["main"]] + list(PAPER_METHODS))
    per_method: dict[str, Cell] = {}
    for c in sorted(sec["main"], key=lambda c: (order.index(c.method), str(c.seed))):
        per_method.setdefault(c.method, c)  # one seed per method
    ablation = {c.ablation: c for c in sorted(sec["ablation"], key=lambda c: str(c.seed))}
    shown = list(per_method.values()) or list(ablation.values())
    if not shown:
        return "_no finished main-table or ablation cells to show_\n"
    root = dataset_root(shown[0].config, opts.cache)
    bench = None
    if root is not None:
        from bench.data.loader import load_effectbench

        bench = load_effectbench(root)
    effects = list(dict.fromkeys(tables.quality(shown[0].rows)["effect"]))[: opts.grid_effects]
    lines = []
    if bench is None:
        lines.append("_the EffectBench is not on disk here (pass `--cache`), so sources and ground truth are "
                     "left out of the grids_\n")
    k = opts.grid_samples
    for effect in effects:
        tests = bench.test_rows(effect)[:k] if bench is not None else []
        spec = next((e for e in bench.effects if e.lora_name == effect), None) if bench is not None else None
        base_cols = [GridColumn("source", [t.source_image for t in tests] or [None] * k),
                     GridColumn("ground truth", [t.target_image for t in tests] or [None] * k)]
        if per_method:
            short = lambda m: tables.label(m).split(" (")[0].replace(" + Lightning", "") \
                if m != "lightning" else "Base + Lightning"  # noqa: E731 -- column titles must fit a tile
            cols = base_cols + [GridColumn(short(m), result_images(c.image_dir, effect, k))
                                for m, c in per_method.items()]
            title = f"{effect}: {spec.prompt}" if spec else effect
            p = image_grid(cols, assets / "qualitative" / f"main_{effect}.png", title=title)
            lines.append(f"![{effect}]({rel(p)})\n")
        if len(ablation) > 1:
            abl = sorted(ablation.items(), key=lambda kv: paper.ablation_exp(
                () if kv[0] == "none" else tuple(kv[0].split(","))) or "(9)")
            cols = base_cols + [GridColumn(plots.ABLATION_NAMES.get(ab, f"off: {ab}"),
                                           result_images(c.image_dir, effect, k)) for ab, c in abl]
            p = image_grid(cols, assets / "qualitative" / f"ablation_{effect}.png", title=f"{effect} - ablation")
            lines.append(f"![{effect} ablation]({rel(p)})\n")
    return "\n".join(lines) + "\n"


def _configs(cells: list[Cell], rel) -> str:
    if not cells:
        return "_no cells_\n"
    order = tables.method_order([c.method for c in cells])
    cells = sorted(cells, key=lambda c: (c.kind != "run", order.index(c.method) if c.method in order else 99,
                                         c.n_effects, c.ablation, c.steps or 0, str(c.seed)))
    table = pd.DataFrame([{
        "cell": f"`{c.cid}`", "status": c.status,
        "feeds": ", ".join(c.roles) or ("other config" if c.status == "ok" else "—"),
        "method": c.method, "off": c.ablation if c.kind == "run" else "", "N": c.n_effects,
        "distill steps": c.steps if c.kind == "run" and c.method == "ours" else "",
        "seed": c.seed if c.kind == "run" else (c.config.get("seed")), "preset": c.preset,
        "config": f"[config.json]({rel(c.store.config_path(c.cid))})"} for c in cells])
    text = tables.render(table) + "\n\n"
    runs = [c for c in cells if c.kind == "run" and c.config and (c.roles or c.status != "ok")]
    if runs:
        flats = [flatten(c.config) for c in runs]
        keys = sorted({k for f in flats for k in f})
        varying = [k for k in keys if len({json.dumps(f.get(k), default=str) for f in flats}) > 1]
        seeds = sorted({str(c.seed) for c in runs})
        text += f"Seeds: {', '.join(seeds)}. Keys that differ between run cells: " + \
                (", ".join(f"`{k}`" for k in varying) or "none") + ".\n\n"
        shared = {k: v for k, v in flats[0].items() if k not in varying}
        text += "<details><summary>Resolved config shared by every run cell</summary>\n\n```json\n" + \
                compact_json(unflatten(shared)) + "\n```\n</details>\n"
    return text
