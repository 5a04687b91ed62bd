"""``fm_all_in_1`` (FM all-in-1 + Lightning): one LoRA trained with plain flow matching on every
effect's teacher outputs (each pair with its effect's prompt), then stacked with the Lightning
LoRA at 8 steps. The off-policy multi-effect baseline of the paper."""

from __future__ import annotations

from pathlib import Path

import torch

from bench.cache import ArtifactSpec
from bench.data.effectbench import EffectSpec
from methods.fm import EditPairs
from methods.lightning import StackedWithLightning
from methods.teachers import teacher_identity, teacher_outputs, train_teacher


class FMAllInOne(StackedWithLightning):
    name = "fm_all_in_1"

    def build_lora(self, effects: list[EffectSpec]) -> Path:
        ws = self.ws
        spec = ArtifactSpec("fm_all_in_1", {
            "base": ws.base_key, "fm_all": ws.cfg.fm_all,
            "teachers": [teacher_identity(e, ws.teacher_dir(e)) for e in effects], "seed": ws.cfg.seed},
            label=f"FM all-in-1 LoRA ({len(effects)} effects)")

        def build(out: Path) -> None:
            bb = ws.load_backbone()
            sources, targets, prompts, names = [], [], [], []
            for e in effects:
                rows = ws.full_bench.train_rows(e.lora_name)
                sources.append(ws.images([r.source_image for r in rows], [r.origin for r in rows]))
                targets.append(teacher_outputs(ws, e, bb))
                prompts += [e.prompt] * len(rows)
                names += [e.lora_name] * len(rows)
            pairs = EditPairs(torch.cat(sources), torch.cat(targets), prompts, names)
            train_teacher(bb, pairs, ws.cfg.fm_all, shift=ws.cfg.sampling.shift, seed=ws.cfg.seed,
                          out_dir=out, desc=f"FM all-in-1 ({len(effects)} effects)")

        return ws.cache.get_or_build(spec, build)
