"""``lightning`` (Base + Lightning): each effect's teacher LoRA stacked with the Lightning LoRA,
8 steps, no CFG -- the conventional cascaded pipeline whose parameter interference
CollectionLoRA removes. Everything stacked with Lightning samples as a DMD student does
(``sampling.dmd_sampler``): the step count and the lack of CFG are Lightning's."""

from __future__ import annotations

from pathlib import Path

import torch

from bench.data.effectbench import EffectSpec
from methods import EditOutput, Method
from methods.base import Base
from methods.distill import edit_with, lightning_lora
from methods.lora import lora_bytes, weights_fingerprint

LIGHTNING = "lightning"


class BasePlusLightning(Base):
    name = "lightning"

    def prepare(self, effects: list[EffectSpec]) -> None:
        from methods.lora import load_lora

        super().prepare(effects)  # teachers validated before Lightning's training
        self.lightning = lightning_lora(self.ws)
        load_lora(self.backbone.transformer, self.lightning, LIGHTNING)
        self.lightning_identity = weights_fingerprint(self.lightning)

    def sample_identity(self, effect: EffectSpec) -> dict:
        s = self.ws.cfg.sampling
        return {**super().sample_identity(effect), "lightning": self.lightning_identity, "steps": s.fast_steps,
                "cfg": 1.0, "sampler": s.dmd_sampler}

    def edit(self, effect: EffectSpec, sources: torch.Tensor, generator: torch.Generator) -> EditOutput:
        s = self.ws.cfg.sampling
        images, nfe = edit_with(self.backbone, self.bank, (self.teacher(effect), LIGHTNING), sources,
                                effect.prompt, steps=s.fast_steps, shift=s.shift, cfg_scale=1.0,
                                generator=generator, sampler=s.dmd_sampler)
        return EditOutput(images, nfe, effect.prompt, s.dmd_sampler)

    def adapter_bytes(self, effects: list[EffectSpec]) -> int:
        return super().adapter_bytes(effects) + lora_bytes(self.lightning)

    def artifacts(self) -> dict[str, Path]:
        return {**super().artifacts(), LIGHTNING: self.lightning}


class StackedWithLightning(Method):
    """One multi-effect LoRA (built by ``build_lora``) stacked with Lightning: 8 steps, no CFG,
    each effect's own prompt. FM all-in-1 and the merge baselines differ only in the LoRA."""

    ADAPTER = "multi_effect"

    def build_lora(self, effects: list[EffectSpec]) -> Path:
        raise NotImplementedError

    def prepare(self, effects: list[EffectSpec]) -> None:
        from methods.adapters import AdapterBank
        from methods.lora import load_lora

        self.lightning = lightning_lora(self.ws)
        self.lora = self.build_lora(effects)
        self.backbone = self.ws.load_backbone()
        load_lora(self.backbone.transformer, self.lora, self.ADAPTER)
        load_lora(self.backbone.transformer, self.lightning, LIGHTNING)
        self.bank = AdapterBank(self.backbone.transformer)

    def edit(self, effect: EffectSpec, sources: torch.Tensor, generator: torch.Generator) -> EditOutput:
        s = self.ws.cfg.sampling
        images, nfe = edit_with(self.backbone, self.bank, (self.ADAPTER, LIGHTNING), sources, effect.prompt,
                                steps=s.fast_steps, shift=s.shift, cfg_scale=1.0, generator=generator,
                                sampler=s.dmd_sampler)
        return EditOutput(images, nfe, effect.prompt, s.dmd_sampler)

    def adapter_bytes(self, effects: list[EffectSpec]) -> int:
        return lora_bytes(self.lora) + lora_bytes(self.lightning)

    def artifacts(self) -> dict[str, Path]:
        return {self.ADAPTER: self.lora, LIGHTNING: self.lightning}
