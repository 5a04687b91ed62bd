"""Grids: the paper's experiments as cells (no training here), ids from resolved configs."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest

from bench.cells import DeploymentCell
from bench.config import PRESETS
from bench.grids import (
    ABLATION_ROWS,
    GRIDS,
    MERGE_METHODS,
    PAPER_METHODS,
    SMOKE_SIZES,
    curve_steps,
    storage_collections,
)
from bench.store import cell_id


@pytest.fixture
def synth():
    return PRESETS.get("synth")()


@pytest.fixture
def smoke():
    return PRESETS.get("smoke")()


def test_every_paper_grid_is_registered():
    assert {"main", "scaling", "ablation", "curves", "deployment", "paper", "methods"} <= set(GRIDS.names())


def test_main_is_50_effects_and_picks_up_merge_baselines(synth, monkeypatch):
    from methods import METHODS

    cells = GRIDS.get("main")(synth)
    assert [c.method for c in cells][:4] == list(PAPER_METHODS)
    assert {c.n_effects for c in cells} == {50} and all(c.components_off == () for c in cells)
    registered = [m for m in MERGE_METHODS if m in METHODS.names()]
    assert [c.method for c in cells][4:] == registered  # checked when the grid is built
    for m in registered:
        monkeypatch.delitem(METHODS._entries, m)
    monkeypatch.setitem(METHODS._entries, "merge_ties", "methods.base:Base")
    assert [c.method for c in GRIDS.get("main")(synth)][4:] == ["merge_ties"]
    assert set(MERGE_METHODS) >= {"merge_linear", "merge_ties", "merge_dare"}


def test_scaling_and_deployment_sizes_are_the_papers(synth):
    scaling = GRIDS.get("scaling")(synth)
    assert sorted({c.n_effects for c in scaling}) == [10, 20, 50, 100, 180]
    assert len(scaling) == 5 * 4 and {c.method for c in scaling} == set(PAPER_METHODS)
    dep = GRIDS.get("deployment")(synth)
    assert [c.n_effects for c in dep] == [10, 20, 50, 100, 150]
    # --scaling-effects 10,20,50: the same study where 100 / 180 effects cost too much
    short = GRIDS.get("paper")(synth, scaling_effects=(10, 20, 50))
    assert {c.n_effects for c in short if getattr(c, "method", "") == "fm_all_in_1"} == {10, 20, 50}
    assert all(isinstance(c, DeploymentCell) and c.capacity == 50 for c in dep)
    assert [storage_collections(c.n_effects, c.capacity) for c in dep] == [1, 1, 1, 2, 3]  # the paper's ×2, ×3


def test_ablation_rows_match_the_paper(synth):
    cells = GRIDS.get("ablation")(synth)
    assert [c.components_off for c in cells] == [tuple(sorted(r)) for r in ABLATION_ROWS]
    assert all(c.method == "ours" and c.n_effects == 50 for c in cells)
    from reports.paper_numbers import ablation_exp

    assert [ablation_exp(c.components_off) for c in cells] == ["(1)", "(2)", "(3)", "(4)", "(5)"]


def test_curves_are_prefixes_ending_at_the_ablation_cells(synth):
    cells = GRIDS.get("curves")(synth)
    steps = curve_steps(synth.distill.steps, 6)
    spacing = synth.distill.steps // 6  # multiples of the spacing, then the full run
    assert steps == [spacing * i for i in range(1, 6)] + [synth.distill.steps]
    assert len(cells) == len(steps) * len(ABLATION_ROWS)
    finals = {cell_id(c) for c in cells if c.distill.steps == synth.distill.steps}
    assert finals == {cell_id(c) for c in GRIDS.get("ablation")(synth)}  # shared, trained once
    assert [c.distill.steps for c in cells][:: len(ABLATION_ROWS)] == steps[::-1]  # longest first
    assert {c.distill.snapshot_every for c in cells} == {spacing}  # the full runs publish the points
    smoke = GRIDS.get("curves")(PRESETS.get("smoke")())
    assert sorted({c.distill.steps for c in smoke}) == [13, 26, 40]  # multiples of the spacing ...
    assert {c.distill.snapshot_every for c in smoke} == {13}         # ... not a snapshot every step
    ablation = {cell_id(c) for c in GRIDS.get("ablation")(synth)}
    for c in cells:  # a point differs from its final cell in distill.steps only
        assert cell_id(replace(c, distill=replace(c.distill, steps=synth.distill.steps))) in ablation


def test_main_and_ablation_runs_publish_the_curve_points(synth):
    # whichever grid trains ours first (main, ablation or curves), the curve's shorter points are
    # its snapshots: `--grid curves` after `--grid ablation` only evaluates
    spacing = synth.distill.steps // 6
    for name in ("main", "ablation"):
        cells = GRIDS.get(name)(synth)
        assert {c.distill.snapshot_every for c in cells if c.method == "ours"} == {spacing}
        assert {c.distill.snapshot_every for c in cells if c.method != "ours"} <= {0}
    scaling = GRIDS.get("scaling")(synth, scaling_effects=(10, 20))
    assert {c.distill.snapshot_every for c in scaling} == {0}  # no curve at those N
    budgeted = replace(synth, distill=replace(synth.distill, budget_passes=1000))
    assert {c.distill.snapshot_every for c in GRIDS.get("ablation")(budgeted)} == {0}  # no fixed steps


def test_paper_is_the_union_each_cell_once(synth):
    paper = GRIDS.get("paper")(synth)
    ids = [cell_id(c) for c in paper]
    assert len(ids) == len(set(ids))
    parts = set()
    for name in ("main", "scaling", "ablation", "curves", "deployment"):
        parts |= {cell_id(c) for c in GRIDS.get(name)(synth)}
    assert set(ids) == parts
    # main's ours is ablation (5), and scaling at 50 reuses main's cells
    assert len(ids) < sum(len(GRIDS.get(n)(synth)) for n in ("main", "scaling", "ablation", "curves", "deployment"))


def test_smoke_variant_is_small(smoke):
    paper = GRIDS.get("paper")(smoke)
    runs = [c for c in paper if not isinstance(c, DeploymentCell)]
    assert max(c.n_effects for c in runs) <= 4
    assert {c.n_effects for c in GRIDS.get("main")(smoke)} == {smoke.n_effects}
    curves = GRIDS.get("curves")(smoke)
    assert sorted({c.distill.steps for c in curves}) == curve_steps(smoke.distill.steps, SMOKE_SIZES.curve_points)


def test_explicit_effects_override_the_paper_size(synth):
    cells = GRIDS.get("ablation")(replace(synth, n_effects=20))
    assert {c.n_effects for c in cells} == {20}


def test_cell_ids_are_config_hashes(synth):
    cells = GRIDS.get("paper")(synth)
    again = GRIDS.get("paper")(synth)
    assert [cell_id(c) for c in cells] == [cell_id(c) for c in again]
    dep = GRIDS.get("deployment")(synth)[0]
    assert cell_id(dep) != cell_id(replace(dep, n_effects=11)) and len(cell_id(dep)) == 12
    assert dep.method == "deployment" and dep.components_off == ()  # prints like a run cell


def test_deployment_cell_round_trips_through_its_config_json(synth, tmp_path):
    import json

    from bench.config import RunConfig
    from bench.store import ResultStore
    from slurm.dispatch import config_from_dict, load_cell

    cell = GRIDS.get("deployment")(synth)[2]
    store = ResultStore(tmp_path)
    path = store.write_config(cell_id(cell), cell)
    store.write_config(cell_id(synth), synth)
    assert store.kind(cell_id(cell)) == "deployment" and store.kind(cell_id(synth)) == "run"
    again = DeploymentCell.from_dict(json.loads(path.read_text()), lambda d: config_from_dict(RunConfig, d))
    assert again == cell and cell_id(again) == cell_id(cell)
    assert load_cell(path) == cell and load_cell(store.config_path(cell_id(synth))) == synth


# ---------------------------------------------------------------------- running a grid locally


def _measured_rows(cell: DeploymentCell) -> pd.DataFrame:
    """What a deployment measurement returns, reduced to storage (a stand-in for the real ``run``)."""
    ident = {"run": cell_id(cell), "ablation": "none", "components": "{}", "preset": cell.preset,
             "n_effects": cell.n_effects, "effect": "", "family": "", "category": "", "sample": 0, "role": "",
             "synthetic": False, "seed": cell.seed, "status": "ok", "note": "", "router": "",
             "higher_is_better": False}
    return pd.DataFrame([{**ident, "method": m, "metric": "storage_bytes", "value": v}
                         for m, v in (("baseline", 1000.0 * (cell.n_effects + 1)), ("ours", 1000.0))])


@pytest.mark.e2e  # 30-75 s here (processes / a whole grid): out of plain pytest, in CI's -m ""
def test_grid_with_a_measurement_cell_runs_locally_and_is_reported(smoke, tmp_path, monkeypatch, capsys):
    """A deployment cell is stored like a training cell (config.json, rows, skipped once finished);
    a failing cell does not stop it, and the report written at the end names the failure."""

    from bench.cache import ArtifactCache
    from bench.runner import run_grid
    from bench.store import ResultStore
    from slurm.dispatch import load_cell

    measured = []

    def measure(self, out, cache):
        measured.append(self.n_effects)
        return _measured_rows(self)

    monkeypatch.setattr(DeploymentCell, "run", measure)
    deployment = [DeploymentCell(base=smoke, n_effects=n, capacity=2) for n in (2, 4)]
    broken = replace(smoke, method="no_such_method")  # fails at once, before any training
    monkeypatch.setitem(GRIDS._entries, "mixed", lambda base: [deployment[0], broken, deployment[1]])
    out, cache = tmp_path / "runs", ArtifactCache(tmp_path / "cache", verbose=False)

    assert run_grid("mixed", smoke, out, cache) == 1
    printed = capsys.readouterr()
    assert measured == [2, 4]
    store = ResultStore(out)
    for cell in deployment:
        assert store.is_done(cell_id(cell))
        assert load_cell(store.cell_dir(cell_id(cell)) / "config.json") == cell
        assert set(store.read_cell(cell_id(cell))["metric"]) == {"storage_bytes"}
    assert "no_such_method" in store.read_error(cell_id(broken))
    assert f"FAILED cell {cell_id(broken)}" in printed.err

    report = (out / "report.md").read_text()
    assert f"report -> {out / 'report.md'}" in printed.out
    section = report.split("## 3.")[1].split("**paper**")[0]
    assert "Storage ↓" in section and "N=2" in section and "N=4" in section
    failed = report.split("## Failed cells")[1].split("##")[0]
    assert cell_id(broken) in failed and "no_such_method" in failed
    assert store.read_config(cell_id(broken))["method"] == "no_such_method"

    # a rerun measures nothing again
    monkeypatch.setitem(GRIDS._entries, "mixed", lambda base: deployment)
    assert run_grid("mixed", smoke, out, cache) == 0
    assert measured == [2, 4] and "finished already" in capsys.readouterr().out


def test_describe_names_each_kind_of_cell(smoke):
    from bench.cells import describe, is_measurement

    dep = GRIDS.get("deployment")(smoke)[0]
    assert is_measurement(dep) and not is_measurement(smoke)
    assert describe(dep) == "deployment N=10 capacity=50 seed=0"
    ours = replace(smoke, method="ours", components_off=("aop", "ts"))
    assert describe(ours) == f"ours N={smoke.n_effects} off=aop,ts steps={smoke.distill.steps} seed=0"


# ---------------------------------------------------------------------- tags


def test_each_grid_tags_its_cells_with_its_table_and_paper_with_every_part(smoke):
    from bench.grids import grid_cells

    assert {c.tags for c in grid_cells("ablation", smoke)} == {("ablation",)}
    assert {c.tags for c in grid_cells("deployment", smoke)} == {("deployment",)}
    assert {c.tags for c in grid_cells("methods", smoke)} == {("main",)}  # the main table, run's effects
    paper = {cell_id(c.cell): c.tags for c in grid_cells("paper", smoke)}
    assert len(paper) == len(GRIDS.get("paper")(smoke))
    full_ours = cell_id(replace(smoke, method="ours", components_off=()))
    # main's ours is ablation row (5), the last point of its curve and the scaling point at N=3
    assert paper[full_ours] == ("ablation", "curves", "main", "scaling")
    assert paper[cell_id(replace(smoke, method="base", n_effects=2))] == ("scaling",)
    vanilla = cell_id(replace(smoke, method="ours", components_off=tuple(sorted(ABLATION_ROWS[0]))))
    assert paper[vanilla] == ("ablation", "curves")



def test_effects_n_sets_the_50_in_1_experiments_even_at_the_presets_own_default():
    """``--effects 10 --grid ablation`` on the default preset (whose own n_effects is 10) means 10
    effects, not the paper's 50; without it the paper's size stays."""
    from bench.config import PRESETS
    from bench.grids import grid_cells

    synth = PRESETS.get("synth")()
    assert {c.cell.n_effects for c in grid_cells("ablation", synth)} == {50}
    for grid in ("ablation", "main", "curves"):
        assert {c.cell.n_effects for c in grid_cells(grid, synth, main_n=10)} == {10}, grid
    paper = grid_cells("paper", synth, main_n=10, scaling_effects=(10, 20))
    assert {c.cell.n_effects for c in paper if "ablation" in c.tags} == {10}


def test_main_matched_gives_fm_all_in_1_ours_training_passes_and_keeps_mains_other_cells(smoke):
    main = {c.method: c for c in GRIDS.get("main")(smoke)}
    matched = {c.method: c for c in GRIDS.get("main_matched")(smoke)}
    assert set(matched) == set(main)
    fm = matched["fm_all_in_1"]
    assert fm.fm_all.budget_passes == SMOKE_SIZES.matched_passes and fm.fm_all.steps == smoke.fm_all.steps
    assert cell_id(fm) != cell_id(main["fm_all_in_1"])
    assert all(cell_id(matched[m]) == cell_id(main[m]) for m in main if m != "fm_all_in_1")  # shared, run once
    own = GRIDS.get("main_matched")(replace(smoke, fm_all=replace(smoke.fm_all, budget_passes=1234)))
    assert {c.fm_all.budget_passes for c in own if c.method == "fm_all_in_1"} == {1234}


def test_an_unset_budget_leaves_every_existing_key_as_it_was(synth):
    """budget_passes joined the configs after artifacts were cached: unset, it is in no key."""
    import hashlib
    import json

    from bench.config import config_hash, result_dict, to_dict

    d = to_dict(synth.teacher)
    assert d.pop("budget_passes") is None
    old = hashlib.sha256(json.dumps([d], sort_keys=True, default=str).encode()).hexdigest()[:12]
    assert config_hash(synth.teacher) == old
    assert "budget_passes" not in result_dict(synth)["distill"]
    assert config_hash(replace(synth.teacher, budget_passes=10)) != old
