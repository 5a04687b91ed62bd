"""The confusion benchmark tells a student that applies another effect, or none, from one that
applies the effect it was asked for (benchmarks/confusion.py), from exact effect outputs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from bench.cache import ArtifactCache
from bench.config import PRESETS, apply_overrides
from bench.synthetic.effects import build_effects, effects_by_name
from bench.workspace import Workspace
from methods import EditOutput

_spec = importlib.util.spec_from_file_location("confusion", Path(__file__).parents[1] / "benchmarks" / "confusion.py")
bench_confusion = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_confusion)
MIN_STRENGTH, confusion = bench_confusion.MIN_STRENGTH, bench_confusion.confusion


class Scripted:
    """A 'method' whose edit of effect B is the exact canonical output of ``plan[B]`` (None: the source)."""

    def __init__(self, plan: dict[str, str | None]) -> None:
        self.plan, self.exact = plan, effects_by_name(build_effects(0, dropped=True))

    def sample_identity(self, effect):  # noqa: ANN001, ANN201
        return None

    def edit(self, effect, sources: torch.Tensor, generator: torch.Generator) -> EditOutput:  # noqa: ANN001
        target = self.plan[effect.lora_name]
        if target is None:
            return EditOutput(sources.clone(), 1, "", "")
        imgs = sources.permute(0, 2, 3, 1).numpy()
        out = np.stack([self.exact[target].apply(x) for x in imgs])
        return EditOutput(torch.from_numpy(out).permute(0, 3, 1, 2), 1, "", "")


def test_own_effect_another_effect_and_no_edit_are_told_apart(tmp_path):
    cfg = apply_overrides(PRESETS.get("smoke")(), ["world.n_general=32", "world.n_train_per_effect=4",
                                                   "world.n_test_per_category=2", "eval.draws=2"])
    ws = Workspace(cfg, ArtifactCache(tmp_path / "cache", verbose=False))
    a, b, c = (e.lora_name for e in ws.bench.effects[:3])
    exact = effects_by_name(build_effects(0))
    src = ws.images([t.source_image for t in ws.bench.test_rows(a)]).permute(0, 2, 3, 1).numpy()
    assert np.abs(exact[a].apply(src[0]) - src[0]).mean() > MIN_STRENGTH  # a is a visible edit
    matrix, verdicts = confusion(ws, Scripted({a: a, b: a, c: None}), mc=4)
    v = verdicts.set_index("effect")
    assert v.loc[a, "verdict"] == "own"
    assert v.loc[b, "verdict"] == f"confused with {a}"
    assert v.loc[c, "verdict"] in ("unchanged", "neither")  # "neither" only if c barely changes its sources
    assert v.loc[c, "source"] == 0.0
    assert list(matrix.columns) == [a, b, c] and matrix.loc[a, a] < matrix.loc[a, b]
