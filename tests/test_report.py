"""The markdown report, from hand-made result rows (no training): every table and plot present,
best values bold, the paper's numbers labelled, failed cells named, and re-reporting without
torch (zero backbone forwards)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench.cells import DeploymentCell
from bench.config import PRESETS
from bench.grids import ABLATION_ROWS
from bench.store import COLUMNS, ResultStore, cell_id
from reports import tables

EFFECTS = ("palette_sepia_00", "warp_mirror_left_00", "stripes_vertical_wide_dark_00")
METRICS = (("gt_psnr", "CLIP", True), ("gt_mae", "DreamSim", False), ("src_ssim", "DINO", True))
NFE = {"base": 20.0, "lightning": 8.0, "fm_all_in_1": 8.0, "ours": 8.0}
QUALITY = {"base": 0.8, "lightning": 0.6, "fm_all_in_1": 0.5, "ours": 0.9}


def _rows(cfg, quality: float) -> pd.DataFrame:
    recs = []
    off = ",".join(sorted(cfg.components_off)) or "none"
    for e_i, effect in enumerate(EFFECTS[: cfg.n_effects] if cfg.n_effects <= 3 else EFFECTS):
        for s in range(2):
            base = {"run": cell_id(cfg), "method": cfg.method, "ablation": off, "components": "{}",
                    "preset": cfg.preset, "n_effects": cfg.n_effects, "effect": effect, "family": effect.split("_")[0],
                    "category": ("pet", "animal", "portrait")[e_i % 3], "sample": s, "status": "ok", "note": "",
                    "synthetic": True, "seed": cfg.seed}
            for metric, role, higher in METRICS:
                value = 20 * quality if metric == "gt_psnr" else (1 - quality) if metric == "gt_mae" else quality
                recs.append({**base, "metric": metric, "role": role, "higher_is_better": higher, "value": value,
                             "unit": "dB" if metric == "gt_psnr" else ""})
            recs.append({**base, "metric": "nfe", "role": "NFE", "higher_is_better": False, "synthetic": False,
                         "value": NFE.get(cfg.method, 8.0)})
            recs.append({**base, "metric": "vsa", "role": "VSA", "higher_is_better": True, "synthetic": False,
                         "value": float("nan"), "status": "missing", "note": "no judge endpoint: set BENCH_JUDGE_URL"})
    return pd.DataFrame.from_records(recs)[[*COLUMNS, "unit"]]


def _write(store: ResultStore, cfg, rows: pd.DataFrame, images: bool = True) -> str:
    cid = cell_id(cfg)
    store.write_config(cid, cfg)
    store.write_rows(cid, rows)
    if images:
        for effect in rows["effect"].unique():
            for i in range(2):
                arr = (np.random.default_rng(i).random((16, 16, 3)) * 255).astype(np.uint8)
                path = store.cell_dir(cid) / "images" / effect / f"{i:02d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(path)
    return cid


def _deployment_rows(cell: DeploymentCell) -> pd.DataFrame:
    n = cell.n_effects
    recs = []
    ident = {"run": cell_id(cell), "ablation": "none", "components": "{}", "preset": "smoke", "n_effects": n,
             "effect": "", "family": "", "category": "", "role": "", "synthetic": False, "seed": 0, "sample": 0}

    def add(method, metric, value, higher=False, router="", status="ok", note=""):
        recs.append({**ident, "method": method, "metric": metric, "value": value, "higher_is_better": higher,
                     "router": router, "status": status, "note": note})

    add("baseline", "storage_bytes", 1000.0 * (n + 1), note="random weights")
    add("baseline", "storage_files", n + 1)
    add("ours", "storage_bytes", 1000.0 * -(-n // 50))
    add("ours", "storage_files", -(-n // 50))
    add("baseline", "routing_latency_s", 0.002, router="embedding")
    add("baseline", "routing_accuracy", 1 - n / 500, higher=True, router="embedding")
    add("ours", "routing_latency_s", 0.0 if n <= 50 else 0.002, router="embedding")
    add("ours", "routing_accuracy", 1.0 if n <= 50 else 0.9, higher=True, router="embedding")
    add("baseline", "routing_latency_s", float("nan"), router="mllm", status="missing", note="no router endpoint")
    for m, t in (("base", 0.4), ("baseline", 0.06), ("ours", 0.04)):
        add(m, "e2e_latency_s", t)
        add(m, "peak_memory_bytes", 1e9)
    add("baseline", "switch_hotswap_s", 0.01)
    return pd.DataFrame.from_records(recs)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Cells written without tags, as by a single run or an older version: the report places them
    by their configs (``_guess_sections``); tagged cells are tested further down."""
    out = tmp_path_factory.mktemp("runs")
    store = ResultStore(out)
    smoke = PRESETS.get("smoke")()
    for m in ("base", "lightning", "fm_all_in_1", "ours"):
        cfg = replace(smoke, method=m)
        _write(store, cfg, _rows(cfg, QUALITY[m]))
        small = replace(cfg, n_effects=2)
        _write(store, small, _rows(small, QUALITY[m] - 0.05), images=False)  # scaling point
    for i, off in enumerate(ABLATION_ROWS):
        for steps in (20, 40):
            cfg = replace(smoke, method="ours", components_off=tuple(sorted(off)),
                          distill=replace(smoke.distill, steps=steps))
            _write(store, cfg, _rows(cfg, 0.5 + 0.1 * i - (0.1 if steps == 20 else 0)), images=steps == 40)
    for n in (10, 100):
        cell = DeploymentCell(base=smoke, n_effects=n)
        store.write_config(cell_id(cell), cell)
        store.write_rows(cell_id(cell), _deployment_rows(cell))
    broken = replace(smoke, method="lightning", seed=7)
    store.write_config(cell_id(broken), broken)
    store.write_error(cell_id(broken), "Traceback (most recent call last):\n  ...\n"
                                       "RuntimeError: teacher LoRA 'x' has rank 4, the bank's have 8\n")
    return out


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory) -> tuple[str, Path]:
    from bench.report import main

    out = runs / "report.md"
    assert main([str(runs), "--categories", "--cache", str(tmp_path_factory.mktemp("nocache"))]) == 0
    return out.read_text(), out


def test_report_has_every_table_plot_and_grid(report):
    text, path = report
    for heading in ("Main table", "LoRA scaling", "Deployment cost", "Component ablation", "Training curves",
                    "Qualitative results", "Failed cells", "Configs and seeds"):
        assert heading in text
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    names = {Path(i).name for i in images}
    for plot in ("scaling_clip.png", "deployment.png", "curves_clip.png", "curves_dreamsim.png"):
        assert plot in names
    assert any(n.startswith("main_") for n in names) and any(n.startswith("ablation_") for n in names)
    for i in images:  # every linked file exists and is a real PNG
        assert Image.open(path.parent / i).size[0] > 50
    assert "Category" in text  # --categories


def test_tables_bold_best_arrows_and_nfe(report):
    text, _ = report
    main = text.split("## 1.")[1].split("**paper**")[0]
    # a stand-in column says the metric it holds, its unit and the paper column it plays
    assert "gt_psnr (dB) · CLIP role ↑" in main and "DreamSim role ↓" in main and "NFE ↓" in main
    ours = next(line for line in main.splitlines() if "Ours (CollectionLoRA)" in line and "Single" not in line)
    # best CLIP-role and DreamSim-role are ours, significantly (the fake rows have no spread)
    assert "**18.00 ± 0.00**" in ours and "**0.100 ± 0.000**" in ours
    base = next(line for line in main.splitlines() if line.startswith("| Single effect") and "| Base " in line)
    assert "| 20 " in base or "| 20 |" in base  # counted NFE of Base
    assert "`gt_psnr`" in main  # legend names the metric behind the role
    ablation = text.split("## 4.")[1].split("**paper**")[0]
    assert "(1)" in ablation and "(5)" in ablation and "✓" in ablation and "TA-FM" in ablation


def test_paper_numbers_labelled_and_separate(report):
    text, _ = report
    assert text.count("**paper**") >= 4
    paper_main = text.split("## 1.")[1].split("**paper**")[1]
    assert "0.727" in paper_main and "40×2" in paper_main
    assert "**0.727**" not in text  # paper numbers never take part in bold best


def test_failed_cell_named_with_error(report, runs):
    text, _ = report
    failed = text.split("## Failed cells")[1]
    store = ResultStore(runs)
    broken = [cid for cid in store.cell_ids() if store.read_error(cid)][0]
    assert broken in failed and "rank 4" in failed
    assert "did not finish" in text.split("## 1.")[0]
    assert "no judge endpoint" in text  # missing metrics are reported with their reason


def test_deployment_and_configs_sections(report):
    text, _ = report
    dep = text.split("## 3.")[1].split("**paper**")[0]
    assert "Routing accuracy ↑ (embedding)" in dep and "N=10" in dep and "N=100" in dep
    assert "Storage ↓" in dep and "(11 files)" in dep and "mllm" in dep and "missing" in dep
    cfgs = text.split("## Configs and seeds")[1]
    assert "config.json" in cfgs and "`distill.steps`" in cfgs and "Seeds: 0" in cfgs


@pytest.mark.e2e
def test_rereport_imports_no_torch(runs, tmp_path):
    """Re-reporting reads files only: torch is never imported, so no backbone forward can happen.
    (The CLI in a fresh interpreter, as a user runs it: e2e.)"""
    code = ("import sys; from bench.report import main; "
            f"rc = main([{str(runs)!r}, '--out', {str(tmp_path / 'r.md')!r}, '--cache', {str(tmp_path)!r}]); "
            "assert rc == 0; assert 'torch' not in sys.modules, 'report imported torch'; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "r.md").exists()


def test_metric_columns_keyed_on_role_with_fallback():
    rows = pd.DataFrame([
        {"metric": "gt_psnr", "role": "CLIP", "status": "ok", "higher_is_better": True, "synthetic": True, "note": ""},
        {"metric": "clip", "role": "CLIP", "status": "ok", "higher_is_better": True, "synthetic": False, "note": ""},
        {"metric": "extra", "role": "", "status": "ok", "higher_is_better": False, "synthetic": False, "note": ""},
        {"metric": "bcr", "role": "BCR", "status": "missing", "higher_is_better": False, "synthetic": False,
         "note": "no judge"},
    ])
    cols = {c.label: c for c in tables.metric_columns(rows)}
    assert {"CLIP (gt_psnr)", "CLIP (clip)", "extra", "BCR", "NFE"} <= set(cols)
    assert cols["BCR"].metric is None and "no judge" in cols["BCR"].missing_note
    assert list(cols)[-1] == "NFE"


def test_report_cli_rejects_dir_without_cells(tmp_path, capsys):
    from bench.report import main

    assert main([str(tmp_path)]) == 2
    assert "no cells/" in capsys.readouterr().err


def test_config_json_of_deployment_cell_is_recognised(runs):
    from reports.report import load_cells

    kinds = {c.kind for c in load_cells(runs)}
    assert kinds == {"run", "deployment"}
    cfg = json.loads(next((runs / "cells").glob("*/config.json")).read_text())
    assert "method" in cfg or "capacity" in cfg


def test_check_flag_fails_on_failed_cells_and_passes_sections(runs, tmp_path, capsys):
    from bench.report import main

    rc = main([str(runs), "--out", str(tmp_path / "c.md"), "--cache", str(tmp_path), "--check"])
    printed = capsys.readouterr()
    assert rc == 1 and "unfinished cell" in printed.out  # the fixture holds one failed cell
    assert "EMPTY" not in printed.out  # every section is filled


def test_rows_with_a_step_column_feed_curves_and_tables_use_the_last_step(tmp_path):
    """Forward compatible with evaluation at intermediate snapshots (rows carrying ``step``)."""
    from reports.report import build_report

    store = ResultStore(tmp_path)
    smoke = PRESETS.get("smoke")()
    for m in ("base", "ours"):
        cfg = replace(smoke, method=m)
        rows = _rows(cfg, QUALITY[m])
        if m == "ours":
            early = rows.copy()
            early["value"] = early["value"] * 0.5
            rows = pd.concat([early.assign(step=20), rows.assign(step=40)], ignore_index=True)
        _write(store, cfg, rows, images=False)
    result = build_report(tmp_path, tmp_path / "r.md")
    text = (tmp_path / "r.md").read_text()
    assert result.filled["training curves (CLIP, DreamSim roles)"] and "intermediate student snapshots" in text
    ours = next(line for line in text.split("## 1.")[1].splitlines() if "Ours (CollectionLoRA)" in line)
    assert "18.00" in ours  # the last step's value, not the mean over steps


def test_cells_of_another_config_are_listed_not_averaged(tmp_path):
    from reports.report import build_report

    store = ResultStore(tmp_path)
    smoke = PRESETS.get("smoke")()
    for m in ("base", "ours"):
        cfg = replace(smoke, method=m)
        _write(store, cfg, _rows(cfg, QUALITY[m]), images=False)
    other = replace(smoke, method="ours", teacher=replace(smoke.teacher, steps=999))  # a changed default
    _write(store, other, _rows(other, 0.1), images=False)
    build_report(tmp_path, tmp_path / "r.md")
    text = (tmp_path / "r.md").read_text()
    ours = next(line for line in text.split("## 1.")[1].splitlines() if "Ours (CollectionLoRA)" in line)
    assert "**18.00 ± 0.00**" in ours  # 0.1-quality cell not averaged in
    assert "ran with another config" in text and "`teacher.steps`" in text
    assert "other config" in text.split("## Configs and seeds")[1]


def test_a_cell_from_before_a_config_field_existed_is_of_the_same_config(tmp_path):
    """An older cell's config.json lacks a field added since (budget_passes); unset in newer cells,
    it must not split a results directory into two configs."""
    from reports.report import build_report

    store = ResultStore(tmp_path)
    smoke = PRESETS.get("smoke")()
    for m in ("base", "ours"):
        cfg = replace(smoke, method=m)
        cid = _write(store, cfg, _rows(cfg, QUALITY[m]), images=False)
        if m == "base":  # written before the field existed
            path = store.cell_dir(cid) / "config.json"
            config = json.loads(path.read_text())
            for section in ("teacher", "fm_all", "distill", "lightning"):
                del config[section]["budget_passes"]
            path.write_text(json.dumps(config))
    build_report(tmp_path, tmp_path / "r.md")
    text = (tmp_path / "r.md").read_text()
    assert "ran with another config" not in text
    main = text.split("## 1.")[1].split("**paper**")[0]
    assert "| Base " in main and "Ours (CollectionLoRA)" in main


def test_check_names_every_empty_section_on_stderr(tmp_path, capsys):
    """CI's ``--check``: a run with the main table only fails and names each missing section."""
    from bench.report import main

    smoke = PRESETS.get("smoke")()
    cfg = replace(smoke, method="base")
    _write(ResultStore(tmp_path), cfg, _rows(cfg, QUALITY["base"]))
    assert main([str(tmp_path), "--cache", str(tmp_path), "--check"]) == 1
    err = capsys.readouterr().err
    assert "CHECK FAILED" in err
    for section in ("scaling tables + plots", "deployment table + plot", "ablation table", "training curves",
                    "qualitative grids (ablation)"):
        assert f"empty: {section}" in err, section
    assert "empty: main table" not in err and "empty: qualitative grids (methods)" not in err


def test_a_best_value_is_bold_only_when_significantly_best():
    """Inside the noise nothing is bold; a clear, paired win is; n counts test sources."""
    rng = np.random.default_rng(0)
    idx = pd.MultiIndex.from_tuples([("e", i) for i in range(30)], names=["effect", "sample"])
    noise = pd.Series(rng.normal(0, 0.1, 30), index=idx)
    base = 0.5 + noise
    close = base + pd.Series(rng.normal(0.005, 0.1, 30), index=idx)   # a tiny, noisy "win"
    clear = base + 0.2 + pd.Series(rng.normal(0, 0.01, 30), index=idx)
    clip = tables.Column("CLIP", "clip", "CLIP", True)
    cells = tables.ci_column({"a": base, "b": close}, ["a", "b"], clip)
    assert not any(c.startswith("**") for c in cells) and all("±" in c for c in cells)
    cells = tables.ci_column({"a": base, "b": clear}, ["a", "b"], clip)
    assert cells[1].startswith("**") and not cells[0].startswith("**")
    assert tables.n_sources({"CLIP": {"a": base}}, ["a"]) == ["30"]


def test_a_ratio_with_an_ideal_value_is_best_closest_to_it_and_says_so():
    """texture_energy 1 is an exact draw's; 1.3 (noise) is not better than 0.95 (nearly right)."""
    idx = pd.MultiIndex.from_tuples([("e", i) for i in range(40)], names=["effect", "sample"])
    rng = np.random.default_rng(0)
    groups = {"noisy": pd.Series(1.30 + 0.01 * rng.standard_normal(40), index=idx),
              "right": pd.Series(0.95 + 0.01 * rng.standard_normal(40), index=idx),
              "smooth": pd.Series(0.40 + 0.01 * rng.standard_normal(40), index=idx)}
    col = tables.Column("texture_energy", "texture_energy", "", True, True, unit="exact draw = 1", ideal=1.0)
    cells = tables.ci_column(groups, ["noisy", "right", "smooth"], col)
    assert cells[1].startswith("**0.95") and "**" not in cells[0] + cells[2]
    assert col.header == "texture_energy (exact draw = 1) →1"


def _ratio_rows(per_effect: dict[str, dict[str, float]], n: int = 12) -> pd.DataFrame:
    """Rows of texture_energy (texture effects) and gt_mode_mae (one modes effect) per method:
    ``per_effect[method][effect]`` is the value every test source of that effect gets, plus a
    little noise so intervals exist."""
    rng = np.random.default_rng(0)
    recs = []
    for method, effects in per_effect.items():
        for effect, value in effects.items():
            kind = "modes" if effect.startswith("stripes") else "texture"
            metric = "gt_mode_mae" if kind == "modes" else "texture_energy"
            for s in range(n):
                recs.append({"method": method, "ablation": "none", "n_effects": 3, "effect": effect, "sample": s,
                             "variation": kind, "metric": metric, "value": value * (1 + 0.02 * rng.standard_normal()),
                             "status": "ok", "role": "", "synthetic": True, "unit": "",
                             "higher_is_better": metric == "texture_energy",
                             "ideal": 1.0 if metric == "texture_energy" else float("nan")})
    return pd.DataFrame.from_records(recs)


def test_a_ratio_whose_mean_is_right_while_no_effect_is_shows_its_distance_from_right():
    """1.8 on one effect and 0.25 on another average to about 1; the log-distance column says
    that method is further from exact than one at 0.9 on both, and bolds the latter."""
    rows = _ratio_rows({"ours": {"palette_sepia_00": 1.8, "warp_mirror_left_00": 0.25},
                        "base": {"palette_sepia_00": 0.9, "warp_mirror_left_00": 0.9}})
    text = tables.main_table(rows)
    head = next(line for line in text.splitlines() if line.startswith("| Setting"))
    labels = [c.strip() for c in head.strip("|").split("|")]
    assert "texture_energy log-distance (0 = exact) ↓" in labels
    col = labels.index("texture_energy log-distance (0 = exact) ↓")
    cells = {line.split("|")[2].strip(): line.strip("|").split("|")[col].strip()
             for line in text.splitlines() if line.startswith("| Single") or line.startswith("| 3 effects")}
    ours, base = cells["Ours (CollectionLoRA)"], cells["Base"]
    assert base.startswith("**0.1") and not ours.startswith("**")
    assert float(ours.split(" ")[0]) > 0.9  # (|log 1.8| + |log 0.25|) / 2 = 0.99


def test_the_per_effect_table_scores_each_effect_by_its_own_fidelity_metric():
    """A texture by its texture energy (closest to 1 is best), a modes effect by its nearest-variant
    error; one row per effect, a column per method, bold where one is significantly best."""
    rows = _ratio_rows({"ours": {"palette_sepia_00": 1.8, "warp_mirror_left_00": 0.95,
                                 "stripes_vertical_wide_dark_00": 0.14},
                        "base": {"palette_sepia_00": 0.9, "warp_mirror_left_00": 0.6,
                                 "stripes_vertical_wide_dark_00": 0.03}})
    text = tables.per_effect_table(rows, "method")
    line = {r.split("|")[1].strip(): [c.strip() for c in r.strip("|").split("|")] for r in text.splitlines()
            if r.startswith("| ") and "_00" in r}
    assert line["palette_sepia_00"][1:3] == ["texture", "texture_energy →1"]
    assert line["stripes_vertical_wide_dark_00"][1:3] == ["modes", "gt_mode_mae ↓"]
    # columns: Effect, kind, fidelity, n, Base, Ours
    assert line["palette_sepia_00"][3] == "12"
    assert line["palette_sepia_00"][4].startswith("**0.9") and line["warp_mirror_left_00"][5].startswith("**0.9")
    assert line["stripes_vertical_wide_dark_00"][4].startswith("**0.03")


# ---------------------------------------------------------------------- cells tagged by their grids


@pytest.fixture
def stub_training(monkeypatch):
    """``run_grid`` without training: each run cell's "training and evaluation" returns hand-made
    rows (``_rows``); ``fail`` names methods that raise instead. Returns (trained cell ids, fail)."""
    import bench.runner
    import bench.workspace

    trained, fail = [], set()

    class Inputs:  # the Workspace run_cell checks inputs with, without world or backbone
        def __init__(self, cfg, cache):
            self.cfg = cfg

        def check_inputs(self):
            pass

    def train_and_evaluate(ws, store, cid):
        if ws.cfg.method in fail:
            raise RuntimeError(f"teacher LoRA 'x' of {ws.cfg.method} has rank 4, the bank's have 8")
        trained.append(cid)
        return _rows(ws.cfg, QUALITY.get(ws.cfg.method, 0.4)), "stub"

    monkeypatch.setattr(bench.workspace, "Workspace", Inputs)
    monkeypatch.setattr(bench.runner, "_train_and_evaluate", train_and_evaluate)
    return trained, fail


def _section(text: str, number: str) -> str:
    return text.split(f"## {number}")[1].split("**paper**")[0]


def test_a_cell_lands_in_the_table_of_the_grid_that_made_it(tmp_path, stub_training):
    """``--grid ablation`` alone fills the ablation table and no main table (from its configs alone,
    the full ``ours`` row looks like a one-method main table); ``--grid main`` afterwards reuses
    that finished cell -- not retrained -- and it feeds both tables."""
    from bench.cache import ArtifactCache
    from bench.grids import main_methods
    from bench.runner import run_grid

    trained, _ = stub_training
    smoke, out = PRESETS.get("smoke")(), tmp_path / "runs"
    cache = ArtifactCache(tmp_path / "cache", verbose=False)
    ours = cell_id(replace(smoke, method="ours"))

    assert run_grid("ablation", smoke, out, cache) == 0
    text = (out / "report.md").read_text()
    assert "_no finished main-table cells (run `--grid main`)_" in _section(text, "1.")
    ablation = _section(text, "4.")
    assert "## 4." not in ablation and sum(line.startswith("| (") for line in ablation.splitlines()) == 5
    assert ResultStore(out).tags(ours) == ("ablation",)

    assert run_grid("main", smoke, out, cache) == 0
    assert trained.count(ours) == 1 and len(trained) == 5 + len(main_methods()) - 1
    assert ResultStore(out).tags(ours) == ("ablation", "main")
    text = (out / "report.md").read_text()
    main = _section(text, "1.")
    assert all(tables.label(m) in main for m in main_methods())
    assert sum(line.startswith("| (") for line in _section(text, "4.").splitlines()) == 5


def test_the_compute_matched_grid_has_its_own_table_and_stays_out_of_the_main_one(tmp_path, stub_training):
    """``--grid main_matched`` after ``--grid main`` trains only the budgeted FM all-in-1; its cell is
    not averaged into the main table's FM all-in-1 row but fills the equal-compute table, which
    answers claim (c2) again."""
    from bench.cache import ArtifactCache
    from bench.grids import main_methods
    from bench.runner import run_grid

    trained, _ = stub_training
    smoke, out = PRESETS.get("smoke")(), tmp_path / "runs"
    cache = ArtifactCache(tmp_path / "cache", verbose=False)
    assert run_grid("main", smoke, out, cache) == 0
    assert run_grid("main_matched", smoke, out, cache) == 0
    assert len(trained) == len(main_methods()) + 1  # the other cells are main's
    text = (out / "report.md").read_text()
    main, matched = text.split("### At equal training compute")
    main = main.split("## 1.")[1]
    fm_rows = [line for line in main.splitlines() if line.startswith("| 3 effects in 1 | FM all-in-1")]
    assert len(fm_rows) == 1 and "cell(s) ran with another config" not in text
    matched = matched.split("## 2.")[0]
    assert "reached 2552" in matched and "(c2) at equal training compute:" in matched
    assert all(tables.label(m) in matched for m in main_methods())


def test_a_failed_cells_error_is_kept_shown_and_cleared_through_the_store(tmp_path, stub_training):
    """A cell that fails in a grid: its traceback is stored with it, the report and ``--status``
    show its last line; once it runs through, the error is gone from both."""
    from bench.cache import ArtifactCache
    from bench.runner import run_grid
    from slurm.status import cell_status

    _, fail = stub_training
    fail.add("fm_all_in_1")
    smoke, out = PRESETS.get("smoke")(), tmp_path / "runs"
    cache = ArtifactCache(tmp_path / "cache", verbose=False)
    broken = cell_id(replace(smoke, method="fm_all_in_1"))

    assert run_grid("methods", smoke, out, cache) == 1
    store = ResultStore(out)
    assert "rank 4, the bank's have 8" in store.read_error(broken) and not store.is_done(broken)
    failed = (out / "report.md").read_text().split("## Failed cells")[1]
    assert broken in failed and "RuntimeError: teacher LoRA 'x' of fm_all_in_1 has rank 4" in failed
    status = cell_status(out).set_index("cell")
    assert status.loc[broken, "state"] == "failed" and "rank 4" in status.loc[broken, "note"]

    fail.clear()
    assert run_grid("methods", smoke, out, cache) == 0
    assert store.read_error(broken) is None and store.is_done(broken)
    assert "None: every cell finished." in (out / "report.md").read_text()
    assert cell_status(out).set_index("cell").loc[broken, "state"] == "done"


def test_a_results_dir_from_before_cell_json_is_still_read(tmp_path):
    """An old results directory (config.json and rows, no cell.json): kinds are told from the
    config, cells are untagged and placed by their configs."""
    from reports.report import build_report

    store = ResultStore(tmp_path)
    smoke = PRESETS.get("smoke")()
    cfg = replace(smoke, method="base")
    _write(store, cfg, _rows(cfg, QUALITY["base"]), images=False)
    for n in (10, 100):
        cell = DeploymentCell(base=smoke, n_effects=n)
        store.write_config(cell_id(cell), cell)
        store.write_rows(cell_id(cell), _deployment_rows(cell))
    for meta in tmp_path.glob("cells/*/cell.json"):
        meta.unlink()
    assert {store.kind(cid) for cid in store.cell_ids()} == {"run", "deployment"}
    assert all(store.tags(cid) == () for cid in store.cell_ids())
    result = build_report(tmp_path, tmp_path / "r.md")
    assert result.filled["main table"] and result.filled["deployment table + plot"]


def test_the_gate_verdict_covers_the_results_effects_and_names_the_ungated_ones(tmp_path):
    from reports.report import _world_gate

    effects = [{"effect": f"e{i}", "tests": ["few-step gap"]} for i in range(3)]
    effects.append({"effect": "e9", "tests": ["neither"]})          # gated, but not in these results
    (tmp_path / "world_gate.json").write_text(json.dumps({"preset": "synth", "counts": {}, "effects": effects}))
    text = _world_gate(tmp_path, {"e0", "e1", "e2"})
    assert "3 effects" in text and "**passes**" in text and "not gated" not in text  # e9 is not these results'
    text = _world_gate(tmp_path, {"e0", "e1", "e2", "e3", "e4"})
    assert "**2 of the 5 effects these results use are not gated** (e3, e4" in text
    assert "**does not pass**" in _world_gate(tmp_path, {"e0", "e9"})


def test_the_scaling_claims_compare_fm_and_ours_across_n_and_at_the_largest_n():
    from reports.claims import claims

    smoke = PRESETS.get("smoke")()
    quality = {("fm_all_in_1", 2): 0.6, ("fm_all_in_1", 3): 0.4, ("ours", 2): 0.9, ("ours", 3): 0.9}
    scaling = pd.concat([_rows(replace(smoke, method=m, n_effects=n), q) for (m, n), q in quality.items()])
    main = pd.concat([_rows(replace(smoke, method=m, n_effects=2), QUALITY[m]) for m in ("ours", "fm_all_in_1")])
    lines = claims(main, scaling, pd.DataFrame())
    c1 = next(line for line in lines if "(c1)" in line)
    assert "degrades as N grows: holds" in c1 and "on the 2 effects shared by N=2 and N=3" in c1
    ours = lines[lines.index(c1) + 1]
    assert "for comparison, ours" in ours and "0 of 3 columns significantly worse at N=3" in ours
    c2 = next(line for line in lines if "(c2)" in line)
    assert "(c2) (scaling study) FM all-in-1 is behind ours at N=3: holds" in c2  # the largest N, not main's 2


def test_the_report_judges_the_gate_on_the_effects_its_cells_were_evaluated_on(tmp_path):
    from bench.report import main

    store = ResultStore(tmp_path)
    smoke = PRESETS.get("smoke")()
    for m in ("base", "ours"):
        cfg = replace(smoke, method=m)
        rows = _rows(cfg, QUALITY[m])
        cost = pd.concat([rows.iloc[[0]].assign(effect=e, metric=m, role=tables.COST_ROLE, value=1.0)  # cost rows:
                          for e, m in (("", "train_forward"), ("general", "train_samples"))])  # a stream, no effect
        _write(store, cfg, pd.concat([rows, cost], ignore_index=True), images=False)
    gated = [{"effect": e, "tests": ["few-step gap"]} for e in EFFECTS]
    (tmp_path / "world_gate.json").write_text(json.dumps({"preset": "smoke", "counts": {}, "effects": gated}))
    assert main([str(tmp_path), "--cache", str(tmp_path / "nocache")]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "(smoke, 3 effects)" in text and "**passes**" in text and "not gated" not in text
