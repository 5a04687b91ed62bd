"""Incremental extension: a CollectionLoRA distilled on the first N effects is extended to M new
effects (initialised from it, trained on the new ones); forgetting is the drop of the old
effects' scores. ``python -m bench.studies extension`` runs it (bench/studies/cli.py)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from bench.data.effectbench import EffectSpec
from bench.evaluate import evaluate
from bench.workspace import Workspace
from methods import EditOutput, Method
from methods.adapters import AdapterBank
from methods.distill import distilled_lora, edit_with
from methods.dmd import Objectives
from methods.lora import load_lora
from methods.ours import Components
from metrics import METRICS


def collection_lora(ws: Workspace, effects: list[EffectSpec], init: Path | None = None) -> Path:
    """The CollectionLoRA of ``effects`` at the run's distill settings, every component on (cached
    like any student); ``init``: start from another CollectionLoRA (extension)."""
    cfg = ws.cfg.distill
    return distilled_lora(ws, kind="collectionlora", cfg=cfg, effects=effects, p_switch=cfg.p_switch,
                          objectives=Objectives(), student_prompt=lambda e: e.recaption_prompt_with_trigword,
                          seed=ws.cfg.seed, init_student=init,
                          label=f"CollectionLoRA on {len(effects)} effects" + (" (extension)" if init else ""))


class _FixedLoRA(Method):
    """Evaluate a given CollectionLoRA file like ``ours`` does (8 steps, student prompt)."""

    name = "ours"

    def __init__(self, ws: Workspace, lora: Path, label: str) -> None:
        super().__init__(ws, Components())
        self.lora, self.label = lora, label

    def prepare(self, effects: list[EffectSpec]) -> None:
        self.bb = self.ws.load_backbone()
        load_lora(self.bb.transformer, self.lora, "ours")
        self.bank = AdapterBank(self.bb.transformer)

    def edit(self, effect: EffectSpec, sources: torch.Tensor, generator: torch.Generator) -> EditOutput:
        s = self.ws.cfg.sampling
        prompt = effect.recaption_prompt_with_trigword
        images, nfe = edit_with(self.bb, self.bank, ("ours",), sources, prompt, steps=s.fast_steps,
                                shift=s.shift, cfg_scale=1.0, generator=generator, sampler=s.dmd_sampler)
        return EditOutput(images, nfe, prompt, s.dmd_sampler)


def extension(ws: Workspace, n_new: int) -> pd.DataFrame:
    all_effects = list(ws.full_bench.select(ws.cfg.n_effects + n_new).effects)
    old, new = all_effects[: ws.cfg.n_effects], all_effects[ws.cfg.n_effects:]
    original = collection_lora(ws, old)
    extended = collection_lora(ws, new, init=original)
    metrics = [METRICS.get(m)() for m in ("gt_psnr", "gt_mae", "src_ssim")]
    frames = []
    for label, lora, bench in (("original", original, ws.bench), ("extended", extended, ws.bench),
                               ("extended", extended, ws.full_bench.select(names=[e.lora_name for e in new]))):
        method = _FixedLoRA(ws, lora, label)
        method.prepare([])
        sub = Workspace(ws.cfg, ws.cache)
        sub.__dict__["bench"] = bench  # evaluate these effects with the same data and cache
        rows = evaluate(method, sub, metrics, run="extension")
        rows["method"] = f"ours ({label}: {len(old)} old" + (f" + {len(new)} new)" if label == "extended" else ")")
        rows["effect_set"] = "new" if bench is not ws.bench else "old"
        frames.append(rows)
    return pd.concat(frames, ignore_index=True)
