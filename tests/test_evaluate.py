"""Evaluation samples an effect once for methods whose samples of it depend on it alone (Base,
Base + Lightning), however many N evaluate it; scores and costs stay the cell's own."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import torch

from bench.cache import ArtifactCache
from bench.config import PRESETS, apply_overrides
from bench.evaluate import _sample
from bench.runner import make_method, run_cell
from bench.store import ResultStore, cell_id
from bench.workspace import Workspace

TINY = ["eval.limit=1", "pretrain.steps=5", "teacher.steps=3", "lightning.steps=2", "lightning.checkpoint_every=1",
        "sampling.base_steps=2", "world.n_general=32", "world.n_train_per_effect=4", "world.n_test_per_category=1"]


def _quality(rows: pd.DataFrame, effect: str) -> pd.DataFrame:
    q = rows[(rows.effect == effect) & (rows.role != "cost")]
    return q[["metric", "sample", "draw", "value"]].sort_values(["metric", "sample", "draw"]).reset_index(drop=True)


def test_base_and_lightning_sample_an_effect_once_for_every_n(tmp_path):
    smoke = apply_overrides(PRESETS.get("smoke")(), TINY)
    cache = ArtifactCache(tmp_path / "cache", verbose=False)
    out = tmp_path / "runs"
    for method in ("base", "lightning"):
        one, two = (replace(smoke, method=method, n_effects=n) for n in (1, 2))
        run_cell(one, out, cache)
        cache.built.clear()
        run_cell(two, out, cache)
        sampled = [k for k in cache.built if k.startswith("samples/")]
        assert len(sampled) == 1, f"{method} at N=2 samples only the effect N=1 did not have"
        store = ResultStore(out)
        a, b = store.read_cell(cell_id(one)), store.read_cell(cell_id(two))
        first = sorted(set(a.effect) - {""})[0]
        pd.testing.assert_frame_equal(_quality(a, first), _quality(b, first))  # scored afresh, the same
        assert not b.artifact.fillna("").str.startswith("samples/").any(), "evaluation is not training cost"

    # what the cache holds is what sampling without it gives, bit for bit
    ws = Workspace(replace(smoke, method="base", n_effects=1), cache)
    method = make_method(ws)
    method.prepare(list(ws.bench.effects))
    effect = ws.bench.effects[0]
    tests = ws.bench.test_rows(effect.lora_name)[:1]
    from bench.evaluate import samples

    cached, nfe, sampler = samples(method, ws, effect, tests, ws.cfg.eval.draws)
    fresh, nfe2, sampler2 = _sample(method, ws, effect, tests, ws.cfg.eval.draws)
    assert torch.equal(cached, fresh) and (nfe, sampler) == (nfe2, sampler2)
