"""``fm_all_in_1`` (FM all-in-1 + Lightning): one LoRA trained with plain flow matching on every
effect's teacher outputs (each pair with its effect's prompt), then stacked with the Lightning
LoRA at 8 steps. The off-policy multi-effect baseline of the paper."""

from __future__ import annotations

import torch

from bench.config import config_hash, to_dict
from bench.effectbench import EffectSpec
from methods import EditOutput, Method
from methods.adapters import AdapterBank
from methods.distill import edit_with, lightning_lora
from methods.fm import EditPairs
from methods.lightning import LIGHTNING
from methods.lora import load_lora, lora_bytes
from methods.teachers import teacher_outputs, train_teacher

ALL_IN_1 = "fm_all_in_1"


class FMAllInOne(Method):
    name = "fm_all_in_1"

    def prepare(self, effects: list[EffectSpec]) -> None:
        ws = self.ws
        self.lightning = lightning_lora(ws)
        teachers = [ws.teacher_dir(e).name for e in effects]
        key = config_hash(ws.base_key, to_dict(ws.cfg.fm_all), teachers, ws.cfg.seed)

        def build(out) -> None:
            bb = ws.load_backbone()
            sources, targets, prompts = [], [], []
            for e in effects:
                rows = ws.full_bench.train_rows(e.lora_name)
                sources.append(ws.images([r.source_image for r in rows], [r.origin for r in rows]))
                targets.append(teacher_outputs(ws, e, bb))
                prompts += [e.prompt] * len(rows)
            pairs = EditPairs(torch.cat(sources), torch.cat(targets), prompts)
            train_teacher(bb, pairs, ws.cfg.fm_all, shift=ws.cfg.sampling.shift, seed=ws.cfg.seed,
                          out_dir=out, desc=f"FM all-in-1 ({len(effects)} effects)")

        self.lora = ws.cache.get_or_build("fm_all_in_1", key, build, label=f"FM all-in-1 LoRA ({len(effects)} effects)",
                                          config={"base": ws.base_key, "fm_all": to_dict(ws.cfg.fm_all),
                                                  "effects": [e.lora_name for e in effects]})
        self.backbone = ws.load_backbone()
        load_lora(self.backbone.transformer, self.lora, ALL_IN_1)
        load_lora(self.backbone.transformer, self.lightning, LIGHTNING)
        self.bank = AdapterBank(self.backbone.transformer)

    def edit(self, effect: EffectSpec, sources: torch.Tensor, generator: torch.Generator) -> EditOutput:
        s = self.ws.cfg.sampling
        images, nfe = edit_with(self.backbone, self.bank, (ALL_IN_1, LIGHTNING), sources, effect.prompt,
                                steps=s.fast_steps, shift=s.shift, cfg_scale=1.0, generator=generator)
        return EditOutput(images, nfe, effect.prompt)

    def adapter_bytes(self, effects: list[EffectSpec]) -> int:
        return lora_bytes(self.lora) + lora_bytes(self.lightning)
