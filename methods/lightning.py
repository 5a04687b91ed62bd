"""``lightning`` (Base + Lightning): each effect's teacher LoRA stacked with the Lightning LoRA,
8 steps, no CFG -- the conventional cascaded pipeline whose parameter interference
CollectionLoRA removes."""

from __future__ import annotations

import torch

from bench.effectbench import EffectSpec
from methods import EditOutput
from methods.base import Base
from methods.distill import edit_with, lightning_lora
from methods.lora import lora_bytes

LIGHTNING = "lightning"


class BasePlusLightning(Base):
    name = "lightning"

    def prepare(self, effects: list[EffectSpec]) -> None:
        self.lightning = lightning_lora(self.ws)
        super().prepare(effects)
        self.backbone_load_lightning()

    def backbone_load_lightning(self) -> None:
        from methods.lora import load_lora

        load_lora(self.backbone.transformer, self.lightning, LIGHTNING)

    def edit(self, effect: EffectSpec, sources: torch.Tensor, generator: torch.Generator) -> EditOutput:
        s = self.ws.cfg.sampling
        images, nfe = edit_with(self.backbone, self.bank, (self.teacher(effect), LIGHTNING), sources,
                                effect.prompt, steps=s.fast_steps, shift=s.shift, cfg_scale=1.0,
                                generator=generator)
        return EditOutput(images, nfe, effect.prompt)

    def adapter_bytes(self, effects: list[EffectSpec]) -> int:
        return super().adapter_bytes(effects) + lora_bytes(self.lightning)
