"""Training batches for distillation: CollectionLoRA's Probabilistic Dual-Stream Routing (PDSR).

Every ``redraw_every`` steps a batch group is routed to the *effect stream* with probability
``p_switch`` (effects' sources; each effect's frozen teacher is the real score; the teacher
output anchors TA-FM / TS) or else to the *general stream* (unlabeled general edits; the real
score is the plain base, i.e. an all-zero identity LoRA). ``p_switch = 1`` is PDSR ablated
(effect stream only); ``p_switch = 0`` is Lightning's general-only distillation.

Inside the effect stream every step's batch is drawn from a fresh effect (``effect_per_step``,
the reference: only the stream is held for 20 steps; the teacher LoRA follows each batch's
``lora_name``). Holding the effect for the whole group too (``effect_per_step=False``, this
harness before engine version 4) gives each effect its generator updates in runs of four,
against a critic that has just spent 20 steps on another effect.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

from bench.cost import count_samples
from methods.backbones import TextCondition


@dataclass
class EffectData:
    name: str                       # the teacher's adapter name in the bank
    sources: torch.Tensor           # (N, T, C) source latents
    teacher_cond: TextCondition     # N rows: the teacher's own prompt, encoded with each source
    student_cond: TextCondition     # N rows: the student's prompt (AOP: trigger + description)
    anchors: torch.Tensor | None    # (N, T, C) the teacher's outputs on those sources (base_pred)
    uncond: TextCondition           # N rows: the empty (negative) prompt with each source, for CFG


@dataclass
class GeneralData:
    sources: torch.Tensor           # (N, T, C)
    conds: TextCondition            # N rows: each source's instruction
    uncond: TextCondition           # N rows: the empty prompt with each source


@dataclass
class DistillBatch:
    stream: str                     # "effect" | "general"
    teacher: str | None             # adapter of the real score (None: the plain base)
    sources: torch.Tensor
    student_cond: TextCondition
    teacher_cond: TextCondition
    uncond: TextCondition
    anchor: torch.Tensor | None
    grid: tuple[int, int]

    def slice(self, s: slice) -> "DistillBatch":
        """This rank's part of the batch (data-parallel training; methods/distributed.py shard)."""
        return replace(self, sources=self.sources[s], student_cond=self.student_cond.index(s),
                       teacher_cond=self.teacher_cond.index(s), uncond=self.uncond.index(s),
                       anchor=None if self.anchor is None else self.anchor[s])


@dataclass
class StreamState:
    stream: str = ""
    effect: int = -1
    left: int = 0


class StreamSampler:
    def __init__(self, effects: list[EffectData], general: GeneralData | None, *, p_switch: float,
                 redraw_every: int, batch_size: int, grid: tuple[int, int], effect_per_step: bool = True) -> None:
        if p_switch > 0 and not effects:
            raise ValueError("the effect stream is on (p_switch > 0) but there are no effects")
        if p_switch < 1 and general is None:
            raise ValueError("the general stream is on (p_switch < 1) but there is no general data")
        self.effects, self.general = effects, general
        self.p_switch, self.redraw_every, self.batch_size = p_switch, redraw_every, batch_size
        self.grid, self.effect_per_step = grid, effect_per_step
        self.state = StreamState()

    def restore(self, state: dict) -> None:
        self.state = StreamState(**{f.name: state[f.name] for f in fields(StreamState)})

    def next(self, gen: torch.Generator) -> DistillBatch:
        s = self.state
        if s.left <= 0:  # PDSR draw for the next batch group
            s.stream = "effect" if float(torch.rand(1, generator=gen)) < self.p_switch else "general"
            s.effect = int(torch.randint(len(self.effects), (1,), generator=gen)) if s.stream == "effect" else -1
            s.left = self.redraw_every
        elif s.stream == "effect" and self.effect_per_step:
            s.effect = int(torch.randint(len(self.effects), (1,), generator=gen))
        s.left -= 1
        n = self.batch_size
        count_samples([self.effects[s.effect].name if s.stream == "effect" else "general"] * n)
        if s.stream == "effect":
            e = self.effects[s.effect]
            idx = torch.randint(len(e.sources), (n,), generator=gen)
            return DistillBatch("effect", e.name, e.sources[idx], e.student_cond.index(idx),
                                e.teacher_cond.index(idx), e.uncond.index(idx),
                                None if e.anchors is None else e.anchors[idx], self.grid)
        g = self.general
        idx = torch.randint(len(g.sources), (n,), generator=gen)
        cond = g.conds.index(idx)
        return DistillBatch("general", None, g.sources[idx], cond, cond, g.uncond.index(idx), None, self.grid)
