"""Each component of ``ours`` switched off changes exactly what it should, and nothing else.

The ``components`` column of a row only says what was asked for; these tests watch what the
training did. ``CollectionLoRA.prepare`` runs for real (tiny world, a few DMD steps) with each
component off in turn, and a trainer callback plus two spies on the DMD loop record what a
user would look for: which streams were drawn, which loss terms each generator update
computed and logged (also in the artifact's ``losses.csv``), which prompt the student and the
critic were trained on and the prompt the student is given at inference.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import replace

import pytest
import torch

from bench.cache import ArtifactCache
from bench.config import PRESETS, apply_overrides
from bench.workspace import Workspace
from methods import METHODS, resolve_components
from methods.dmd import STUDENT, DMDTrainer, TrainerCallback, observe

# The smoke preset made tiny; PDSR re-drawn every step and the generator updated every step,
# so a few steps hold generator updates in both streams.
TINY = ["n_effects=1", "eval.limit=1", "backbone.num_layers=1", "pretrain.steps=5", "teacher.steps=3",
        "distill.steps=6", "distill.batch_size=2", "distill.gen_update_ratio=1", "distill.stream_redraw_every=1",
        "sampling.base_steps=2", "world.n_general=32", "world.n_train_per_effect=4", "world.n_test_per_category=1"]
LOSSES = ("dmd", "tafm", "ts")


class _Watch(TrainerCallback):
    """What one training did, per stream: losses logged, sample groups the real and fake scores
    saw (2: DMD + TS), extra student predictions of a generator update (TA-FM, TS)."""

    def __init__(self) -> None:
        self.logs: list[dict] = []
        self.scored: dict[str, set[int]] = defaultdict(set)
        self.student_extra: dict[str, set[int]] = defaultdict(set)
        self.trainer: DMDTrainer | None = None

    def on_step_end(self, trainer: DMDTrainer, log: dict) -> None:
        self.trainer = trainer
        self.logs.append(dict(log))


@pytest.fixture(scope="module")
def run_ours(tmp_path_factory):
    """``run_ours(off)`` -> what training ``ours`` with ``off`` switched off did (one cache:
    the world, base, teacher and its outputs are built once)."""
    cache = ArtifactCache(tmp_path_factory.mktemp("cache"), verbose=False)
    base = replace(apply_overrides(PRESETS.get("smoke")(), TINY), method="ours")
    mp = pytest.MonkeyPatch()
    mp.setattr("bench.synthetic.world.MC_DRAWS", 2)  # the world's texture statistics are not used here
    watch: list[_Watch] = []
    score_x0, v_groups = DMDTrainer._score_x0, DMDTrainer._v_groups

    def spy_score_x0(self, x_t, sigma, b):  # noqa: ANN001, ANN202
        watch[-1].scored[b.stream].add(len(x_t))
        return score_x0(self, x_t, sigma, b)

    def spy_v_groups(self, adapter, xs, sigmas, conds, b):  # noqa: ANN001, ANN202
        if adapter == (STUDENT,):  # the student's TA-FM / TS predictions (one call)
            watch[-1].student_extra[b.stream].add(len(xs))
        return v_groups(self, adapter, xs, sigmas, conds, b)

    mp.setattr(DMDTrainer, "_score_x0", spy_score_x0)
    mp.setattr(DMDTrainer, "_v_groups", spy_v_groups)
    seen: dict[tuple[str, ...], dict] = {}

    def run(off: tuple[str, ...]) -> dict:
        if off not in seen:
            seen[off] = _train(off)
        return seen[off]

    def _train(off: tuple[str, ...]) -> dict:
        cfg = replace(base, components_off=off)
        ws = Workspace(cfg, cache)
        cls = METHODS.get("ours")
        method = cls(ws, resolve_components(cls, off))
        watch.append(_Watch())
        with observe(watch[-1]):
            method.prepare(list(ws.bench.effects))
        w, effect = watch[-1], ws.bench.effects[0]
        # every ablation is its own student: a cache hit means this switch changed nothing trained
        assert w.trainer is not None, f"off={off}: the student came from the cache, trained as another run's"
        trained_on = w.trainer.streams.effects[0].student_cond.embeds[0]
        prompts = {effect.prompt: "teacher's prompt", effect.recaption_prompt_with_trigword: "trigger + description"}
        with open(method.lora / "losses.csv") as f:
            filled = {k for row in csv.DictReader(f) for k in LOSSES if row[k] != ""}
        gen = torch.Generator().manual_seed(0)
        sources = ws.images([ws.bench.test[0].source_image], [ws.bench.test[0].origin])
        summary = {
            "streams drawn": {log["stream"] for log in w.logs},
            "general data built": w.trainer.streams.general is not None,
            "student and critic trained on": next(name for p, name in prompts.items() if torch.equal(
                w.trainer.bb.encode_prompts([p]).embeds[0], trained_on)),
            "student prompt at inference": prompts[method.edit(effect, sources, gen).prompt],
            "losses.csv columns filled": filled,
        }
        for stream in ("effect", "general"):
            updates = [log for log in w.logs if log["stream"] == stream and "dmd" in log]
            summary[f"{stream} stream"] = None if not updates else {
                "losses logged": {tuple(k for k in LOSSES if k in log) for log in updates},
                "groups scored": w.scored[stream],
                "extra student predictions": w.student_extra[stream]}
        return summary

    yield run
    mp.undo()


def test_full_collectionlora_uses_every_component(run_ours):
    full = run_ours(())
    assert full["streams drawn"] == {"effect", "general"} and full["general data built"]
    assert full["effect stream"] == {"losses logged": {("dmd", "tafm", "ts")}, "groups scored": {2},
                                     "extra student predictions": {2}}
    # the general stream is plain DMD against the base: no teacher output to anchor on
    assert full["general stream"] == {"losses logged": {("dmd",)}, "groups scored": {1},
                                      "extra student predictions": set()}
    assert full["student and critic trained on"] == full["student prompt at inference"] == "trigger + description"
    assert full["losses.csv columns filled"] == {"dmd", "tafm", "ts"}


# What switching one component off must change; everything else stays as in the full method.
EXPECTED_CHANGE = {
    "ts": {"effect stream": {"losses logged": {("dmd", "tafm")}, "groups scored": {1},
                             "extra student predictions": {1}},
           "losses.csv columns filled": {"dmd", "tafm"}},
    "tafm": {"effect stream": {"losses logged": {("dmd", "ts")}, "groups scored": {2},
                               "extra student predictions": {1}},
             "losses.csv columns filled": {"dmd", "ts"}},
    "aop": {"student and critic trained on": "teacher's prompt", "student prompt at inference": "teacher's prompt"},
    "pdsr": {"streams drawn": {"effect"}, "general data built": False, "general stream": None},
}


@pytest.mark.parametrize("component", sorted(EXPECTED_CHANGE))
def test_a_component_switched_off_changes_exactly_its_part(run_ours, component):
    full, ablated = run_ours(()), run_ours((component,))
    assert ablated == {**full, **EXPECTED_CHANGE[component]}
