"""Training cost is counted, not declared (bench/cost.py): transformer passes per sample, the
samples each effect got, seconds; exclusive per artifact, so a run's cost is a sum over the
artifacts it used, each once."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from bench import cost
from bench.cache import ArtifactCache, ArtifactSpec
from bench.config import LoraTrainConfig
from methods.fm import EditPairs
from methods.teachers import train_teacher
from reports import tables


def _pairs(n: int = 4) -> EditPairs:
    gen = torch.Generator().manual_seed(0)
    return EditPairs(torch.rand(n, 3, 8, 8, generator=gen), torch.rand(n, 3, 8, 8, generator=gen),
                     ["make it red"] * n, ["red_00"] * n)


def test_a_teachers_flow_matching_counts_one_forward_and_one_backward_per_sample(tiny_backbone, tmp_path):
    cfg = LoraTrainConfig(rank=4, alpha=4, steps=5, batch_size=3, lr=1e-3)
    with cost.measure() as measured:
        train_teacher(tiny_backbone, _pairs(), cfg, shift=3.0, seed=0, out_dir=tmp_path / "t", desc="t")
    c = measured[0]
    assert (c.forward, c.backward, c.samples) == (15, 15, {"red_00": 15})
    assert c.wall_s > 0 and c.cpu_s > 0


def test_a_frozen_forward_counts_no_backward_and_cfg_counts_each_branch(tiny_backbone):
    bb = tiny_backbone
    x = bb.encode_images(torch.rand(2, 3, 8, 8))
    cond, uncond = bb.encode_prompts(["a", "b"]), bb.encode_prompts(["", ""])
    with cost.measure() as measured, torch.no_grad():
        bb.velocity(x, torch.tensor([0.5, 0.5]), x, cond, bb.latent_grid(8, 8))   # conditional branch
        bb.velocity(x, torch.tensor([0.5, 0.5]), x, uncond, bb.latent_grid(8, 8))  # and the unconditional one
    assert (measured[0].forward, measured[0].backward) == (4, 0)


def test_a_nested_build_owns_its_cost_and_the_cache_stores_it(tiny_backbone, tmp_path):
    """A student's build that trains its teacher first: each artifact's cost.json holds its own
    passes only, and the two add up to everything that ran."""
    cache = ArtifactCache(tmp_path / "cache", verbose=False)
    cfg = LoraTrainConfig(rank=4, alpha=4, steps=2, batch_size=2, lr=1e-3)

    def teacher(out):
        train_teacher(tiny_backbone, _pairs(), cfg, shift=3.0, seed=0, out_dir=out, desc="teacher")

    def student(out):
        cache.get_or_build(ArtifactSpec("teachers", {"n": 1}), teacher)
        train_teacher(tiny_backbone, _pairs(), LoraTrainConfig(rank=4, alpha=4, steps=3, batch_size=2, lr=1e-3),
                      shift=3.0, seed=1, out_dir=out, desc="student")

    with cost.measure() as total:
        path = cache.get_or_build(ArtifactSpec("students", {"n": 1}), student)
    inner = cost.Cost.read(cache.path(ArtifactSpec("teachers", {"n": 1})))
    outer = cost.Cost.read(path)
    assert (inner.forward, outer.forward) == (4, 6)
    assert (total[0].forward, total[0].backward) == (0, 0)  # the enclosing frame ran no pass of its own
    assert set(cache.used) == {f"students/{ArtifactSpec('students', {'n': 1}).key}",
                               f"teachers/{ArtifactSpec('teachers', {'n': 1}).key}"}


def _cost_rows(method: str, artifacts: dict[str, float]) -> list[dict]:
    out = []
    for artifact, passes in artifacts.items():
        for metric, value in (("train_forward", passes / 2), ("train_backward", passes / 2), ("train_cpu_s", 36.0),
                              ("train_wall_s", 40.0)):
            out.append({"method": method, "ablation": "none", "n_effects": 2, "artifact": artifact, "metric": metric,
                        "value": value, "status": "ok", "role": "cost", "effect": "", "sample": 0, "note": ""})
    return out


def test_the_report_sums_each_method_its_artifacts_and_the_grid_each_artifact_once():
    """Base and ours share the teachers: each method's column counts them, the grid's total once;
    the shared base's pretraining is not in any method's sum."""
    rows = pd.DataFrame(_cost_rows("base", {"base/b": 1000, "teachers/t1": 100, "teachers/t2": 100})
                        + _cost_rows("ours", {"base/b": 1000, "teachers/t1": 100, "teachers/t2": 100,
                                              "collectionlora/s": 300}))
    costs = tables.training_cost(rows)
    assert costs.loc["base", "passes"] == 200 and costs.loc["ours", "passes"] == 500
    assert costs.loc["ours", "base_passes"] == 1000
    text = tables.cost_table(rows)
    total = next(line for line in text.splitlines() if "each artifact once" in line)
    assert total.rstrip(" |").split("|")[-1].strip().startswith("1.5 k")  # 1000 + 2 x 100 + 300, not 2700


def test_an_artifact_built_before_costs_were_counted_is_uncounted_not_zero(tmp_path):
    (tmp_path / "old").mkdir()
    recs = cost.cost_records({"teachers/old": ("teacher LoRA x", tmp_path / "old")})
    assert {r["status"] for r in recs} == {"missing"} and all(np.isnan(r["value"]) for r in recs)
    assert "built before training costs were recorded" in recs[0]["note"]
    rows = pd.DataFrame([{**r, "method": "ours", "ablation": "none", "n_effects": 1} for r in recs])
    assert tables.cost_cells(tables.training_cost(rows), ["ours"])["training passes ↓"] == ["0 (+1 uncounted)"]
    (tmp_path / "base").mkdir()  # an uncounted base is said so after a run, not "0 passes"
    base = [{**r, "method": "ours", "ablation": "none", "n_effects": 1}
            for r in cost.cost_records({"base/old": ("base model", tmp_path / "base")})]
    line = tables.cost_line(pd.DataFrame(base + rows.to_dict("records")))
    assert "(base: built before costs were counted)" in line


def test_the_scaling_table_states_each_rows_training_cost_per_number_of_effects():
    """Beside the quality at 2 and 4 effects, each method's passes at that size: the larger
    student's teachers are its own sum, not the smaller one's again."""
    quality = [{"method": m, "ablation": "none", "n_effects": n, "effect": f"e{s % n}", "sample": s,
                "metric": "gt_mode_psnr", "value": 20.0 + s, "status": "ok", "role": "CLIP", "higher_is_better": True,
                "note": "", "synthetic": True, "unit": "dB"} for m in ("fm_all_in_1", "ours") for n in (2, 4)
               for s in range(4)]
    cost = []
    for n in (2, 4):
        teachers = {f"teachers/t{i}": 100 for i in range(n)}
        for method, kind in (("fm_all_in_1", "fm_all_in_1"), ("ours", "collectionlora")):
            cost += [{**r, "n_effects": n} for r in _cost_rows(method, {**teachers, f"{kind}/{n}": 1000 * n})]
    text = tables.scaling_table(pd.DataFrame(quality + cost))
    ours = [line for line in text.split("Training cost")[1].splitlines() if line.startswith("| Ours")][0]
    # 2 x 100 + 2000 passes, 3 artifacts x 36 CPU s; 4 x 100 + 4000, 5 x 36
    assert "2.2 k · 0.03 h" in ours and "4.4 k · 0.05 h" in ours


def test_quality_is_plotted_against_counted_training_passes(tmp_path):
    """One point per method whose artifacts were all counted; none when nothing was counted."""
    from reports import plots

    quality = [{"method": m, "ablation": "none", "n_effects": 2, "effect": "e", "sample": s, "metric": "gt_mode_mae",
                "value": v + 0.01 * s, "status": "ok", "role": "DreamSim", "higher_is_better": False, "note": "",
                "synthetic": True, "unit": "MAE 0-1"} for m, v in (("fm_all_in_1", 0.09), ("ours", 0.1))
               for s in range(6)]
    rows = pd.DataFrame(quality + _cost_rows("fm_all_in_1", {"teachers/t1": 100, "fm_all_in_1/f": 400})
                        + _cost_rows("ours", {"teachers/t1": 100, "collectionlora/s": 900}))
    path = plots.quality_vs_cost(rows, "DreamSim", tmp_path / "cost.png")
    assert path is not None and path.stat().st_size > 1000
    assert plots.quality_vs_cost(pd.DataFrame(quality), "DreamSim", tmp_path / "none.png") is None


def test_a_pass_budget_stops_training_once_the_counted_passes_reach_it(tiny_backbone, tmp_path):
    """batch 3: 6 passes a step; a budget of 10 stops after the second step, whatever ``steps`` says."""
    cfg = LoraTrainConfig(rank=4, alpha=4, steps=100, batch_size=3, lr=1e-3, budget_passes=10)
    with cost.measure() as measured:
        train_teacher(tiny_backbone, _pairs(), cfg, shift=3.0, seed=0, out_dir=tmp_path / "t", desc="t")
    assert measured[0].passes == 12
    assert (tmp_path / "t" / "loss.csv").read_text().count("\n") == 3  # header + 2 steps


def test_the_cost_plot_draws_ours_shorter_runs_at_the_passes_their_snapshots_counted(tmp_path):
    """The training curves' cells (rows with a step) add a line of ``ours`` at each length; with
    nothing else counted, the plot exists because of that line alone."""
    from reports import plots

    def quality(step=None):
        return [{"method": "ours", "ablation": "none", "n_effects": 2, "effect": "e", "sample": s,
                 "metric": "gt_mode_mae", "value": 0.1 + 0.01 * s, "status": "ok", "role": "DreamSim",
                 "higher_is_better": False, "note": "", "synthetic": True, "unit": "MAE 0-1", "step": step}
                for s in range(6)]

    uncounted = [{**r, "status": "missing", "value": np.nan} for r in _cost_rows("ours", {"collectionlora/s": 0})]
    main = pd.DataFrame(quality() + uncounted)
    curves = pd.DataFrame([r for k in (10, 20) for r in quality(k) + [
        {**c, "step": k} for c in _cost_rows("ours", {f"collectionlora/s{k}": 100 * k})]])
    assert plots.quality_vs_cost(main, "DreamSim", tmp_path / "main.png") is None
    assert plots.quality_vs_cost(main, "DreamSim", tmp_path / "curve.png", curves) is not None


def test_the_stage_table_says_what_each_kind_of_build_took_and_leaves_the_rest_to_evaluation():
    built = {"teachers/a": ("building", cost.Cost(wall_s=10.0, cpu_s=9.0)),
             "teachers/b": ("building", cost.Cost(wall_s=20.0, cpu_s=18.0)),
             "base/x": ("copying shipped", cost.Cost(wall_s=0.5, cpu_s=0.1))}
    lines = {line.split("  ")[1].strip(): line.split() for line in cost.stage_table(built, 100.0).splitlines()[2:]}
    assert lines["teachers"][1:] == ["2", "30.0", "27.0"] and lines["base (copied)"][2] == "1"
    assert lines["evaluation and the rest"][-1] == "69.5" and lines["total"][-1] == "100.0"
