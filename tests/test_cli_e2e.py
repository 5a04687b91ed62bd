"""End-to-end: the CLI as a user runs it, on the smoke preset (tiny models, built locally)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench.run import main


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.mark.e2e
def test_smoke_run_writes_rows_table_and_skips_on_rerun(tmp_path, cache_dir, capsys):
    out = tmp_path / "runs"
    argv = ["--method", "base", "--preset", "smoke", "--out", str(out), "--cache", str(cache_dir)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| method" in printed and "gt_mode_psnr ↑" in printed and "nfe ↓" in printed
    assert "training cost: " in printed and "transformer passes" in printed
    # where the time went: the stages built here (a fresh cache: world, base, three teachers)
    stages = {line.split()[0]: line.split()[1] for line in printed.split("time by stage")[1].splitlines()[2:]}
    assert stages["world"] == "1" and stages["base"] == "1" and stages["teachers"] == "3" and "total" in stages

    files = list(out.glob("cells/*/rows.parquet"))
    assert len(files) == 1
    rows = pd.read_parquet(files[0])
    cost, rows = rows[rows.role == "cost"], rows[rows.role != "cost"]
    # the training cost of everything the run used: one set of rows per artifact, counted
    kinds = set(cost["artifact"].str.split("/").str[0])
    assert {"base", "teachers"} <= kinds and (cost["status"] == "ok").all()
    teacher = cost[cost.artifact.str.startswith("teachers/") & (cost.metric == "train_backward")]
    assert len(teacher) == 3 and (teacher["value"] > 0).all()
    synthetic = {"gt_mode_psnr", "gt_mode_mae", "src_ssim", "vsa_syn", "editreward_syn", "bcr_syn"}
    distribution = {"mode_blur", "mode_coverage", "diversity_ratio", "texture_energy"}
    real = {"clip", "dreamsim", "dino", "vsa", "editreward", "bcr"}
    assert set(rows["metric"]) == synthetic | distribution | real | {"nfe"}
    assert rows["effect"].nunique() == 3
    assert (rows.loc[rows.metric.isin(synthetic | {"nfe"}), "status"] == "ok").all()
    # every test source is sampled eval.draws times; coverage is defined for modes effects only
    assert set(rows["draw"]) == set(range(4)) and set(rows["sampler"]) == {"euler"}
    cov = rows[rows.metric == "mode_coverage"]
    assert (cov.loc[cov.variation == "modes", "status"] == "ok").all()
    assert (cov.loc[cov.variation == "texture", "status"] == "n/a").all()
    assert set(rows.loc[rows.role != "", "role"]) >= {"CLIP", "DreamSim", "DINO", "VSA", "EditReward", "BCR", "NFE"}
    # offline, no weights: the real metrics finish as "missing" and say why, never a number
    missing = rows[rows.metric.isin(real)]
    assert (missing["status"] == "missing").all() and missing["value"].isna().all()
    assert missing.groupby("metric")["note"].first().str.len().min() > 20
    assert "missing" in printed
    # Base is 10 steps x true CFG in the smoke preset: NFE is counted, 2 calls per step
    assert set(rows.loc[rows.metric == "nfe", "value"]) == {20.0}
    config = json.loads((files[0].parent / "config.json").read_text())
    assert config["method"] == "base" and config["preset"] == "smoke"
    assert list((files[0].parent / "images").rglob("*.png"))
    # the cell links to the teacher LoRAs it evaluated (both layouts) and their loss curves
    links = json.loads((files[0].parent / "artifacts.json").read_text())
    assert len(links) == 3 and all(role.startswith("teacher/") for role in links)
    for link in links.values():
        assert {p.rsplit("/", 1)[1] for p in link["lora"]} == {
            "pytorch_lora_weights.safetensors", "adapter_model.safetensors", "adapter_config.json"}
        assert [p.rsplit("/", 1)[1] for p in link["loss_csv"]] == ["loss.csv"]
    peft_config = json.loads((Path(link["dir"]) / "adapter_config.json").read_text())
    assert peft_config["base_model_name_or_path"].startswith("tiny-qwen-base-")  # the cached base's key

    assert main(argv) == 0
    assert "finished already" in capsys.readouterr().out
    assert len(list(out.glob("cells/*/rows.parquet"))) == 1


@pytest.mark.e2e
def test_corrupt_image_in_manifest_names_file_and_line(tmp_path, cache_dir):
    import shutil

    from bench.cache import ArtifactCache
    from bench.config import PRESETS
    from bench.workspace import Workspace

    cfg = PRESETS.get("smoke")()
    root = Workspace(cfg, ArtifactCache(cache_dir, verbose=False)).dataset_root
    broken = tmp_path / "bench"
    shutil.copytree(root, broken)
    lines = (broken / "test.jsonl").read_text().splitlines()
    victim = json.loads(lines[4])["source_image"]
    (broken / victim).write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--preset", "smoke", "--out", str(tmp_path / "r"),
         "--cache", str(cache_dir), "world.kind=effectbench", f"world.root={broken}"],
        capture_output=True, text=True)
    assert proc.returncode != 0
    assert "test.jsonl:5" in proc.stderr and victim in proc.stderr and "unreadable" in proc.stderr.lower()


@pytest.mark.e2e
def test_ours_smoke_with_ablation_stores_components(tmp_path, cache_dir, capsys):
    out = tmp_path / "runs"
    assert main(["--method", "ours", "--ablate", "aop,ts", "--preset", "smoke", "--out", str(out),
                 "--cache", str(cache_dir), "distill.snapshot_every=20"]) == 0
    built = r"built +CollectionLoRA .* @ step 20 \(snapshot\) \(collectionlora/\w+\) in"
    assert re.search(built, capsys.readouterr().out)
    rows = pd.read_parquet(next(out.glob("cells/*/rows.parquet")))
    assert set(rows["ablation"]) == {"aop,ts"}
    assert json.loads(rows["components"].iloc[0]) == {"pdsr": True, "aop": False, "ts": False, "tafm": True}
    assert set(rows.loc[rows.metric == "nfe", "value"]) == {8.0}  # one LoRA, 8 steps, no CFG
    losses = sorted(cache_dir.glob("collectionlora/*/losses.csv"), key=lambda p: len(p.read_text()))
    assert len(losses) == 2 and "critic" in losses[0].read_text().splitlines()[0]
    assert [len(p.read_text().splitlines()) - 1 for p in losses] == [20, 40]
    # the 20-step run is the snapshot the 40-step run published: a new cell, no training
    assert main(["--method", "ours", "--ablate", "aop,ts", "--preset", "smoke", "--out", str(out),
                 "--cache", str(cache_dir), "distill.steps=20"]) == 0
    printed = capsys.readouterr().out
    assert "cached   CollectionLoRA" in printed and "building CollectionLoRA" not in printed


@pytest.mark.parametrize("argv, needle", [
    (["--method", "bse"], "Did you mean 'base'"),
    (["--method", "base", "--ablate", "aop"], "no components"),
    (["--method", "ours", "--ablate", "aop,pdrs"], "valid components: pdsr, aop, ts, tafm"),
    (["--preset", "tiny"], "unknown preset"),
    (["teacher.stepz=3"], "unknown config key"),
])
def test_bad_names_fail_at_once(argv, needle, capsys):
    assert main(argv) == 2
    assert needle in capsys.readouterr().err


def test_list_methods_and_metrics(capsys):
    assert main(["--list", "methods"]) == 0
    assert "base" in capsys.readouterr().out
    assert main(["--list", "metrics"]) == 0
    assert "gt_psnr" in capsys.readouterr().out


@pytest.mark.e2e
@pytest.mark.parametrize("study, extra", [("composition", ["--pairs", "1"]), ("extension", ["--new", "1"])])
def test_studies_write_rows(study, extra, tmp_path, cache_dir, capsys):
    from bench.studies.cli import main as studies

    out = tmp_path / "runs"
    assert studies([study, "--preset", "smoke", "--effects", "2", "--limit", "2", "--out", str(out),
                    "--cache", str(cache_dir), "distill.steps=4", *extra]) == 0
    rows = pd.read_parquet(next(out.glob("cells/*/rows.parquet")))
    if study == "composition":
        assert set(rows["method"]) == {"ours (A then B, one pass)", "teacher A -> teacher B"}
        assert rows.loc[rows.metric == "nfe"].groupby("method")["value"].first().to_dict() == {
            "ours (A then B, one pass)": 8.0, "teacher A -> teacher B": 40.0}
    else:
        assert set(rows["effect_set"]) == {"old", "new"} and rows["method"].nunique() == 2


def test_effects_accepts_a_manifest_path(tmp_path):
    from bench.run import build_parser
    from bench.runner import resolve_config

    (tmp_path / "effects.jsonl").write_text('{"lora_name": "a"}\n{"lora_name": "b"}\n')
    cfg = resolve_config(build_parser().parse_intermixed_args(["--effects", str(tmp_path / "effects.jsonl")]))
    assert cfg.world.kind == "effectbench" and cfg.world.root == str(tmp_path) and cfg.n_effects == 2
    assert resolve_config(build_parser().parse_intermixed_args(["--effects", "7"])).n_effects == 7


@pytest.mark.e2e
def test_grid_with_a_real_deployment_cell_runs_and_reports(tmp_path, cache_dir, capsys, monkeypatch):
    """``--grid`` with a training cell and a measured deployment cell (tiny N, one timing repeat):
    both are stored, and the report written at the end fills the main and deployment tables."""
    from dataclasses import replace

    from bench.cells import DeploymentCell
    from bench.grids import GRIDS

    def tiny_paper(base):
        return [replace(base, method="base"),
                DeploymentCell(base=base, n_effects=3, capacity=2, routers=("exact", "embedding"),
                               requests_per_effect=1, timing_repeats=1, seed=base.seed)]

    monkeypatch.setitem(GRIDS._entries, "tiny_paper", tiny_paper)
    out = tmp_path / "runs"
    assert main(["--grid", "tiny_paper", "--preset", "smoke", "--out", str(out), "--cache", str(cache_dir)]) == 0
    assert f"report -> {out / 'report.md'}" in capsys.readouterr().out
    assert len(list(out.glob("cells/*/rows.parquet"))) == 2
    report = (out / "report.md").read_text()
    assert "| Single effect" in report.split("## 1.")[1].split("**paper**")[0]
    deployment = report.split("## 3.")[1].split("**paper**")[0]
    for block in ("Routing accuracy ↑ (embedding)", "Storage ↓", "Switch: hotswap ↓", "End-to-end per image ↓"):
        assert block in deployment
    assert "(4 files)" in deployment and "(2 files)" in deployment  # 3 LoRAs + Lightning; ⌈3/2⌉ collections


@pytest.mark.e2e
def test_torchrun_two_ranks_train_the_same_ours_as_one_process(tmp_path, cache_dir):
    """``torchrun --nproc_per_node=2 -m bench.run --method ours``: the DMD student is trained
    data-parallel (gloo on CPU) and equals the single-process one; rank 0 alone writes the rows."""
    import os
    import shutil

    from safetensors.torch import load_file

    # 10 steps: N ranks reduce the gradient in another float order than one process; DMD's
    # two-player dynamics amplify that rounding over many steps (measured at the smoke preset's
    # 40 steps with grad clip 10 and the re-noising sampler: 2e-3; with clip 1 or euler: < 1e-5),
    # so the equivalence is checked where rounding has not yet grown (tests/test_distributed.py
    # checks the step itself tightly).
    argv = ["--method", "ours", "--ablate", "pdsr", "--preset", "smoke", "distill.steps=10"]
    no_students = shutil.ignore_patterns("collectionlora")
    one_cache, ranks_cache = tmp_path / "cache1", tmp_path / "cache2"  # the same world, base, teachers
    shutil.copytree(cache_dir, one_cache, ignore=no_students)
    assert main([*argv, "--out", str(tmp_path / "one"), "--cache", str(one_cache)]) == 0
    shutil.copytree(one_cache, ranks_cache, ignore=no_students)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "bench.run", *argv, "--out", str(tmp_path / "two"), "--cache", str(ranks_cache)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list((tmp_path / "two").glob("cells/*/rows.parquet"))) == 1

    def student(cache):
        (lora,) = cache.glob("collectionlora/*/pytorch_lora_weights.safetensors")
        return load_file(lora)

    one, two = student(one_cache), student(ranks_cache)
    assert one.keys() == two.keys()
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-3, atol=1e-5)


def _manifest(src: Path, dst: Path, effects: list[str], loras: dict[str, Path]) -> Path:
    """An EffectBench at ``dst`` holding ``effects`` of the dataset at ``src`` (its images named by
    absolute path, nothing copied) whose teachers are the ``loras`` files (``lora_path``)."""
    def absolute(value):
        if isinstance(value, list):
            return [absolute(v) for v in value]
        return str(src / value) if isinstance(value, str) and value.endswith(".png") else value

    dst.mkdir(parents=True)
    for file in sorted(src.glob("*.jsonl")):
        lines = []
        for line in file.read_text().splitlines():
            row = {k: absolute(v) for k, v in json.loads(line).items()}
            if row.get("lora_name") not in (None, *effects):
                continue
            if file.name == "effects.jsonl":
                row["lora_path"] = str(loras[row["lora_name"]])
            lines.append(json.dumps(row))
        (dst / file.name).write_text("\n".join(lines) + "\n")
    return dst


@pytest.mark.e2e
def test_kohya_and_comfyui_teachers_in_a_manifest_train_the_student_the_originals_do(tmp_path, cache_dir):
    """Teachers given by ``lora_path`` in an EffectBench manifest, written in the kohya and ComfyUI
    layouts from the smoke world's trained teachers (and one left in diffusers', a mixed bank):
    the bank loads them with the originals' outputs, and ``ours`` distilled from them is the
    student -- and the rows -- that the diffusers files give, bit for bit."""
    from safetensors.torch import load_file

    from bench.cache import ArtifactCache
    from bench.config import PRESETS
    from bench.store import ResultStore
    from bench.workspace import Workspace
    from methods import lora_formats as lf
    from methods.adapters import AdapterBank
    from methods.distill import edit_with
    from methods.lora import WEIGHT_NAME

    ws = Workspace(PRESETS.get("smoke")(), ArtifactCache(cache_dir, verbose=False))
    effects = list(ws.bench.effects)
    originals = {e.lora_name: ws.teacher_dir(e) / WEIGHT_NAME for e in effects}
    layouts = dict(zip(originals, ("kohya", "comfyui", "diffusers")))
    converted = {n: f if layouts[n] == "diffusers" else
                 lf.save_lora_file(lf.read_lora(f), tmp_path / "loras" / f"{n}.{layouts[n]}.safetensors", layouts[n])
                 for n, f in originals.items()}
    first = {layouts[n]: next(iter(load_file(str(f)))) for n, f in converted.items()}
    assert first["kohya"].startswith("lora_unet_") and first["comfyui"].startswith("diffusion_model.")

    # the bank: each converted teacher edits exactly as its original
    bb = ws.load_backbone()
    bank = AdapterBank(bb.transformer)
    bank.check({f"{n}_original": f for n, f in originals.items()} | {f"{n}_file": f for n, f in converted.items()})
    src = ws.images([t.source_image for t in ws.bench.test_rows(effects[0].lora_name)[:2]])
    s = ws.cfg.sampling
    for e in effects:
        outs = []
        for name, file in ((f"{e.lora_name}_original", originals[e.lora_name]),
                           (f"{e.lora_name}_file", converted[e.lora_name])):
            bank.add_teacher(name, file)
            outs.append(edit_with(bb, bank, (name,), src, e.prompt, steps=s.base_steps, shift=s.shift,
                                  cfg_scale=s.base_cfg, generator=torch.Generator().manual_seed(0),
                                  sampler="euler")[0])
        assert torch.equal(*outs), e.lora_name

    # a student distilled from each manifest (cheap base and student: the identity is the point)
    names = [e.lora_name for e in effects]
    students, rows = [], []
    for label, loras in (("diffusers", originals), ("converted", converted)):
        root = _manifest(ws.dataset_root, tmp_path / label, names, loras)
        out = tmp_path / f"runs-{label}"
        assert main(["--method", "ours", "--preset", "smoke", "--limit", "1", "--out", str(out),
                     "--cache", str(tmp_path / "cache"), "world.kind=effectbench", f"world.root={root}",
                     "pretrain.steps=10", "pretrain.warmup=2", "distill.steps=6"]) == 0
        store = ResultStore(out)
        [cid] = store.cell_ids()
        [student] = store.read_artifacts(cid).values()  # ours serves one LoRA
        students.append(load_file(next(p for p in student["lora"] if p.endswith(WEIGHT_NAME))))
        keys = ["effect", "sample", "draw", "metric"]
        quality = store.read_cell(cid).query("role != 'cost'")  # (seconds differ between runs)
        rows.append(quality.sort_values(keys).reset_index(drop=True))
    assert students[0].keys() == students[1].keys()
    assert all(torch.equal(students[0][k], students[1][k]) for k in students[0])
    assert set(rows[1]["effect"]) == set(names) and (rows[1]["status"] == "ok").any()
    pd.testing.assert_series_equal(rows[0]["value"], rows[1]["value"])
