"""``ours``: CollectionLoRA -- one LoRA distilled on-policy from all teachers plus few-step
generation (8 steps, no CFG, no Lightning). Components (``--ablate`` switches them off):

* ``pdsr``: Probabilistic Dual-Stream Routing (effect stream w.p. p_switch, else general stream);
  off: effect stream only.
* ``aop``: Asymmetric Orthogonal Prompting (teacher: its own prompt; student and critic: a unique
  orthogonal trigger word + a description); off: the student uses the teacher's prompt.
* ``ts``: target simulation (DMD from the noised teacher output at late schedule steps).
* ``tafm``: trajectory anchoring (flow matching towards the teacher output).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from bench.data.effectbench import EffectSpec
from methods import EditOutput, Method
from methods.adapters import AdapterBank
from methods.distill import distilled_lora, edit_with
from methods.dmd import Objectives
from methods.lora import load_lora, lora_bytes

STUDENT = "collectionlora"


@dataclass(frozen=True)
class Components:
    pdsr: bool = True
    aop: bool = True
    ts: bool = True
    tafm: bool = True


class CollectionLoRA(Method):
    name = "ours"
    components_cls = Components

    def student_prompt(self, effect: EffectSpec) -> str:
        return effect.recaption_prompt_with_trigword if self.components.aop else effect.prompt

    def prepare(self, effects: list[EffectSpec]) -> None:
        c, cfg = self.components, self.ws.cfg.distill
        self.lora = distilled_lora(
            self.ws, kind="collectionlora", cfg=cfg, effects=effects,
            p_switch=cfg.p_switch if c.pdsr else 1.0, objectives=Objectives(tafm=c.tafm, ts=c.ts),
            student_prompt=self.student_prompt, seed=self.ws.cfg.seed,
            label=f"CollectionLoRA on {len(effects)} effects (off: {','.join(self.ws.cfg.components_off) or 'none'})")
        backbone = self.ws.load_backbone()
        load_lora(backbone.transformer, self.lora, STUDENT)
        self.serve(backbone, AdapterBank(backbone.transformer), STUDENT)

    def serve(self, backbone, bank: AdapterBank, adapter: str) -> None:  # noqa: ANN001
        """Edit with ``adapter`` of ``backbone``: the student ``prepare`` loaded, or one still in
        training (bench.studies.tune scores the DMD trainer's student at its checkpoints this way)."""
        self.backbone, self.bank, self.adapter = backbone, bank, adapter

    def edit(self, effect: EffectSpec, sources: torch.Tensor, generator: torch.Generator) -> EditOutput:
        s = self.ws.cfg.sampling
        prompt = self.student_prompt(effect)
        images, nfe = edit_with(self.backbone, self.bank, (self.adapter,), sources, prompt, steps=s.fast_steps,
                                shift=s.shift, cfg_scale=1.0, generator=generator, sampler=s.dmd_sampler)
        return EditOutput(images, nfe, prompt, s.dmd_sampler)

    def adapter_bytes(self, effects: list[EffectSpec]) -> int:
        return lora_bytes(self.lora)

    def artifacts(self) -> dict[str, Path]:
        return {STUDENT: self.lora}
