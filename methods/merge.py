"""Merge baselines (beyond the paper): all teachers merged into one LoRA with peft's
``add_weighted_adapter`` (linear, TIES, DARE), stacked with Lightning, 8 steps, no CFG.
They answer "why distil at all, when merging is free?" -- and show the interference."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig
from peft.tuners.lora import LoraModel

from bench.cache import ArtifactSpec
from bench.data.effectbench import EffectSpec
from methods.adapters import AdapterBank
from methods.lightning import StackedWithLightning
from methods.lora import save_lora
from methods.teachers import teacher_identity

MERGED = "merged"


@dataclass(frozen=True)
class MergeSpec:
    combination_type: str          # peft add_weighted_adapter combination type
    weight: float = 1.0            # per-teacher weight (task arithmetic) ...
    average: bool = False          # ... divided by the number of teachers (a mean, not a sum)
    density: float | None = None   # TIES / DARE keep fraction


def merge_teachers(transformer: torch.nn.Module, names: list[str], spec: MergeSpec, seed: int = 0) -> None:
    """Add adapter ``merged`` to ``transformer`` combining the loaded adapters ``names``.

    DARE drops entries at random (peft draws from torch's global generator): the draw is made
    from ``seed`` inside a forked RNG, so a merge is the same whatever ran before it in the
    process -- it is a cached artifact (unseeded, two builds of one key differed).

    diffusers injects LoRA layers without a peft ``LoraModel`` wrapper; ``add_weighted_adapter``
    lives on that wrapper. Wrapping the transformer around its own ``peft_config`` dict (with a
    throwaway anchor adapter the constructor insists on injecting) lets the peft method run on
    the adapters already loaded, and the merged adapter lands in the same dict.
    """
    cfg = transformer.peft_config
    cfg["_merge_anchor"] = LoraConfig(r=1, lora_alpha=1, target_modules=list(cfg[names[0]].target_modules))
    tuner = LoraModel(transformer, cfg, "_merge_anchor")
    weight = spec.weight / len(names) if spec.average else spec.weight
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tuner.add_weighted_adapter(names, [weight] * len(names), MERGED,
                                   combination_type=spec.combination_type, density=spec.density)
    transformer.delete_adapters(["_merge_anchor"])


class MergeBaseline(StackedWithLightning):
    spec: MergeSpec

    def build_lora(self, effects: list[EffectSpec]) -> Path:
        ws = self.ws
        teachers = {e.lora_name: ws.teacher_dir(e) for e in effects}
        random = self.spec.combination_type.startswith("dare")  # the run's seed draws the drops
        artifact = ArtifactSpec("merged", {
            "base": ws.base_key, "merge": self.spec.__dict__,
            "teachers": sorted(teacher_identity(e, teachers[e.lora_name]) for e in effects),
            **({"seed": ws.cfg.seed} if random else {})},
            label=f"{self.name} of {len(effects)} teachers")

        def build(out: Path) -> None:
            bb = ws.load_backbone()
            bank = AdapterBank(bb.transformer)
            bank.check(teachers)  # all validated first: ranks and targets must agree
            for name, path in teachers.items():
                bank.add_teacher(name, path)
            merge_teachers(bb.transformer, list(teachers), self.spec, seed=ws.cfg.seed)
            save_lora(bb.transformer, MERGED, out)

        return ws.cache.get_or_build(artifact, build)


# Summing N full-strength teachers (weight 1 each) overshoots every effect N-fold: on the default
# preset linear and DARE sums destroyed the images (src_ssim ~0.01). Linear and DARE average;
# TIES keeps weight 1 because its disjoint merge already takes the mean of the agreeing signs.
# Linear task arithmetic uses peft's "cat" type: it stacks the teachers' ranks, so the merged
# delta is exactly sum_i w_i B_i A_i. peft's "linear" type sums the A and the B matrices
# separately, which adds cross terms B_i A_j (N identical teachers come out N times too strong).
class MergeLinear(MergeBaseline):
    name = "merge_linear"
    spec = MergeSpec("cat", average=True)


class MergeTies(MergeBaseline):
    name = "merge_ties"
    spec = MergeSpec("ties", density=0.5)


class MergeDare(MergeBaseline):
    name = "merge_dare"
    spec = MergeSpec("dare_linear", average=True, density=0.5)
