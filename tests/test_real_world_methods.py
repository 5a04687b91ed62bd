"""Every method end to end on tiny random components of the REAL Qwen-Image-Edit classes
(transformer, AutoencoderKLQwenImage, Qwen2.5-VL text encoder, offline tokenizer/processor),
saved to disk and loaded back through the code that loads the real weights."""

from dataclasses import replace

import pandas as pd
import pytest

from bench.cache import ArtifactCache
from bench.config import PRESETS, apply_overrides
from bench.runner import run_cell


@pytest.fixture(scope="module")
def tiny_real(tmp_path_factory):
    from methods.backbones.qwen_tiny_components import save_tiny_model

    root = tmp_path_factory.mktemp("real")
    return save_tiny_model(root / "Qwen-Image-Edit-2509-tiny"), ArtifactCache(root / "cache", verbose=False)


@pytest.mark.e2e
@pytest.mark.parametrize("method", ["base", "lightning", "fm_all_in_1", "ours", "merge_ties"])
def test_method_runs_on_tiny_real_components(method, tiny_real, tmp_path):
    model_dir, cache = tiny_real
    cfg = apply_overrides(PRESETS.get("smoke")(), [
        "backbone.kind=qwen-image-edit", f"backbone.path={model_dir}", "world.image_size=32",
        "teacher.steps=2", "fm_all.steps=2", "distill.steps=2", "lightning.steps=2",
        "sampling.base_steps=2", "sampling.fast_steps=2", "eval.metrics=gt_psnr,gt_mae", "eval.limit=1"])
    cfg = replace(cfg, method=method, n_effects=2)
    rows = run_cell(cfg, tmp_path / "runs", cache)
    assert isinstance(rows, pd.DataFrame) and (rows.role == "cost").any()  # what training cost, counted
    rows = rows[rows.role != "cost"]
    assert set(rows["effect"].unique()).__len__() == 2
    nfe = rows.loc[rows.metric == "nfe", "value"].iloc[0]
    assert nfe == (4 if method == "base" else 2)  # 2 steps x CFG for base; 2 steps otherwise
    assert rows.loc[rows.metric == "gt_psnr", "value"].notna().all()
