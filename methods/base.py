"""``base``: each effect's own teacher LoRA on the base model, 40 steps with true CFG 4.0.

This is the paper's "Base" row (single effect, NFE 40x2): the quality reference every
distilled method is compared against, at the highest inference cost.
"""

from __future__ import annotations

import torch

from bench.effectbench import EffectSpec
from methods import EditOutput, Method
from methods.flow import generate
from methods.lora import lora_bytes, load_lora

NEGATIVE_PROMPT = ""  # the unconditional branch of true CFG (the base was trained with prompt dropout)


class Base(Method):
    name = "base"

    def prepare(self, effects: list[EffectSpec]) -> None:
        self.backbone = self.ws.load_backbone()
        self.teachers = {e.lora_name: self.ws.teacher_dir(e, self.backbone) for e in effects}
        self.loaded: str | None = None

    def _activate(self, effect: EffectSpec) -> None:
        # One teacher at a time on the base: load, use, unload (bounded memory at 180 effects).
        transformer = self.backbone.transformer
        if self.loaded == effect.lora_name:
            return
        if self.loaded is not None:
            transformer.delete_adapters([self.loaded])
        load_lora(transformer, self.teachers[effect.lora_name], effect.lora_name)
        transformer.set_adapters([effect.lora_name])
        self.loaded = effect.lora_name

    def edit(self, effect: EffectSpec, sources: torch.Tensor, generator: torch.Generator) -> EditOutput:
        self._activate(effect)
        s = self.ws.cfg.sampling
        bb = self.backbone
        n, _, h, w = sources.shape
        latents, nfe = generate(bb, bb.encode_images(sources), bb.encode_prompts([effect.prompt] * n),
                                bb.latent_grid(h, w), steps=s.base_steps, shift=s.shift,
                                cfg_scale=s.base_cfg, uncond=bb.encode_prompts([NEGATIVE_PROMPT] * n),
                                generator=generator)
        return EditOutput(bb.decode_latents(latents, h, w), nfe, effect.prompt)

    def adapter_bytes(self, effects: list[EffectSpec]) -> int:
        return sum(lora_bytes(self.teachers[e.lora_name]) for e in effects)
