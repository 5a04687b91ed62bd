"""``base``: each effect's own teacher LoRA on the base model, 40 steps with true CFG 4.0.

This is the paper's "Base" row (single effect, NFE 40x2): the quality reference every
distilled method is compared against, at the highest inference cost.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bench.data.effectbench import EffectSpec
from methods import EditOutput, Method
from methods.adapters import AdapterBank
from methods.distill import edit_with
from methods.lora import lora_bytes
from methods.teachers import teacher_identity


class Base(Method):
    name = "base"

    def prepare(self, effects: list[EffectSpec]) -> None:
        """Every teacher is validated here, before effect 1 is evaluated; they are loaded one by
        one as evaluation reaches them. The user's files (manifest ``lora_path``) are checked
        before any missing teacher is trained, all of them once the trained ones exist."""
        self.backbone = self.ws.load_backbone()
        self.bank = AdapterBank(self.backbone.transformer)
        self.bank.check({e.lora_name: Path(e.lora_path) for e in effects if e.lora_path is not None})
        self.teachers = {e.lora_name: self.ws.teacher_dir(e, self.backbone) for e in effects}
        self.bank.check(self.teachers)

    def teacher(self, effect: EffectSpec) -> str:
        if effect.lora_name not in self.bank.frozen:
            self.bank.add_teacher(effect.lora_name, self.teachers[effect.lora_name])
        return effect.lora_name

    def edit(self, effect: EffectSpec, sources: torch.Tensor, generator: torch.Generator) -> EditOutput:
        s = self.ws.cfg.sampling
        images, nfe = edit_with(self.backbone, self.bank, (self.teacher(effect),), sources, effect.prompt,
                                steps=s.base_steps, shift=s.shift, cfg_scale=s.base_cfg, generator=generator,
                                sampler="euler")  # flow-matching teacher
        return EditOutput(images, nfe, effect.prompt, "euler")

    def sample_identity(self, effect: EffectSpec) -> dict:
        s = self.ws.cfg.sampling
        return {"base": self.ws.base_key, "teacher": teacher_identity(effect, self.teachers[effect.lora_name]),
                "steps": s.base_steps, "shift": s.shift, "cfg": s.base_cfg, "sampler": "euler"}

    def adapter_bytes(self, effects: list[EffectSpec]) -> int:
        return sum(lora_bytes(self.teachers[e.lora_name]) for e in effects)

    def artifacts(self) -> dict[str, Path]:
        return {f"teacher/{name}": path for name, path in self.teachers.items()}
