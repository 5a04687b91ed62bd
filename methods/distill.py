"""Build a distilled LoRA from a workspace: teachers into the bank, streams, DMD, cache.

Shared by ``lightning`` (general stream only, real score = the base) and ``ours``
(CollectionLoRA: PDSR over the effect and general streams, AOP prompts, TA-FM / TS).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist

from bench import cost
from bench.cache import ArtifactSpec
from bench.config import DistillConfig, result_dict
from bench.data.effectbench import EffectSpec
from methods import distributed
from methods.adapters import AdapterBank
from methods.dmd import ENGINE_VERSION, DMDTrainer, Objectives, TrainerCallback
from methods.lora import weights_fingerprint
from methods.streams import EffectData, GeneralData, StreamSampler
from methods.teachers import teacher_identity, teacher_outputs


def distilled_lora(ws, *, kind: str, cfg: DistillConfig, effects: list[EffectSpec], p_switch: float,
                   objectives: Objectives, student_prompt: Callable[[EffectSpec], str], label: str,
                   seed: int, init_student: Path | None = None, extra_key: object = None) -> Path:
    """Train (or reuse) a DMD-distilled student LoRA; returns its cached directory.

    Under torch.distributed (several ranks, e.g. ``torchrun -m bench.run`` or a multi-task SLURM
    job) the ranks train it together, data-parallel; rank 0 owns the cache entry."""
    teachers = {e.lora_name: ws.teacher_dir(e) for e in effects}
    named = {e.lora_name: teacher_identity(e, teachers[e.lora_name]) for e in effects}  # read once, not per snapshot
    env = distributed.current()
    sampler = ws.cfg.sampling.dmd_sampler  # backward simulation's; a student is served with the same

    def spec_of(c: DistillConfig) -> ArtifactSpec:
        """The student of ``c``: its result-relevant fields only (``result_dict``), so a run that
        checkpoints or publishes snapshots differently trains the same artifact."""
        return ArtifactSpec(kind, {
            "base": ws.base_key, "distill": result_dict(c), "p_switch": p_switch, "objectives": objectives,
            "effects": [(e.lora_name, named[e.lora_name], e.prompt, student_prompt(e)) for e in effects],
            "seed": seed, "fast_steps": ws.cfg.sampling.fast_steps, "sampler": sampler,
            "init_student": init_student and weights_fingerprint(init_student), "extra": extra_key,
            "engine": ENGINE_VERSION},
            label=label if c.steps == cfg.steps else f"{label} @ step {c.steps} (snapshot)")

    spec = spec_of(cfg)

    def build(out: Path | None) -> None:
        bb = ws.load_backbone()
        bank = AdapterBank(bb.transformer)
        # Every teacher validated (finite, fits, one rank) before its outputs are sampled and
        # cached: a NaN teacher otherwise caches NaN anchors and fails later as a NaN DMD loss.
        bank.check(teachers)
        anchors = {e.lora_name: teacher_outputs(ws, e, bb) for e in effects} if p_switch > 0 else {}
        for e in effects:  # all teachers loaded once, switched by name
            bank.add_teacher(e.lora_name, teachers[e.lora_name])
        effect_data = []
        for e in effects:
            rows = ws.full_bench.train_rows(e.lora_name)
            images = ws.images([r.source_image for r in rows], [r.origin for r in rows])
            n = len(rows)  # prompts encoded per source: Qwen-Image-Edit's text encoder sees the image
            effect_data.append(EffectData(
                e.lora_name, bb.encode_images(images), bb.encode_prompts([e.prompt] * n, images),
                bb.encode_prompts([student_prompt(e)] * n, images),
                bb.encode_images(anchors[e.lora_name]) if e.lora_name in anchors else None,
                bb.encode_prompts([""] * n, images)))
        general = None
        if p_switch < 1:
            rows = ws.full_bench.general
            if not rows:
                raise ValueError(f"{ws.dataset_root}/general.jsonl: the general stream needs general rows")
            images = ws.images([r.source_image for r in rows], [r.origin for r in rows])
            general = GeneralData(bb.encode_images(images),
                                  bb.encode_prompts([r.instruction for r in rows], images),
                                  bb.encode_prompts([""] * len(rows), images))
        size = ws.image_size
        streams = StreamSampler(effect_data if p_switch > 0 else [], general, p_switch=p_switch,
                                redraw_every=cfg.stream_redraw_every, effect_per_step=cfg.effect_per_step,
                                batch_size=cfg.batch_size,
                                grid=bb.latent_grid(size, size))
        snapshots = (_Snapshots(ws.cache, spec_of),)
        trainer = DMDTrainer(bb, bank, streams, cfg, objectives=objectives,
                             fast_steps=ws.cfg.sampling.fast_steps, shift=ws.cfg.sampling.shift,
                             seed=seed, work_dir=ws.cache.work_dir(spec), sampler=sampler,
                             init_student=init_student, desc=label,
                             callbacks=snapshots if cfg.snapshot_every and env.is_main else (), env=env)
        trainer.train()
        if out is not None:
            trainer.save_student(out)
            trainer.write_losses(out / "losses.csv")

    if env.world_size == 1:
        return ws.cache.get_or_build(spec, build)
    # Several ranks: rank 0 takes the cache lock and tells the others whether it trains; they
    # train beside it (same batches, averaged gradients) and write nothing.
    if env.is_main:
        told = []

        def main_build(out: Path) -> None:
            told.append(distributed.broadcast_flag(True))
            build(out)

        path = ws.cache.get_or_build(spec, main_build)
        if not told:
            distributed.broadcast_flag(False)
    else:
        if distributed.broadcast_flag(None):
            build(None)
        path = ws.cache.path(spec)
    dist.barrier()
    return path


class _Snapshots(TrainerCallback):
    """``distill.snapshot_every=K``: at every K-th step publish the student as the finished
    artifact of the same run with ``steps=k``. The DMD loop's constant learning rate, stream
    sampler and RNG do not depend on the total step count, so the k-step run *is* this run's
    first k steps (tests/test_dmd.py checks it bit for bit); a training curve over k costs one
    run instead of sum(k)."""

    def __init__(self, cache, spec_of: Callable[[DistillConfig], ArtifactSpec]) -> None:  # noqa: ANN001
        self.cache, self.spec_of = cache, spec_of

    def on_step_end(self, trainer: DMDTrainer, log: dict) -> None:
        cfg, k = trainer.cfg, trainer.step
        if k % cfg.snapshot_every or k >= cfg.steps:
            return

        spent = cost.so_far()  # the training up to step k (the snapshot's own build costs ~nothing)

        def build(out: Path) -> None:
            trainer.save_student(out)
            trainer.write_losses(out / "losses.csv")
            (out / cost.COST_FILE).write_text(spent.to_json())

        self.cache.publish(self.spec_of(replace(cfg, steps=k)), build)


def lightning_lora(ws) -> Path:
    """The base's 8-step, no-CFG LoRA: DMD on the general stream alone (real score = base)."""
    return distilled_lora(ws, kind="lightning", cfg=ws.cfg.lightning, effects=[], p_switch=0.0,
                          objectives=Objectives(tafm=False, ts=False), student_prompt=lambda e: e.prompt,
                          label="Lightning LoRA (DMD, general stream)", seed=ws.cfg.world.seed)


def edit_with(bb, bank: AdapterBank, adapters: tuple[str, ...], sources: torch.Tensor, prompt: str, *,
              steps: int, shift: float, cfg_scale: float, generator: torch.Generator, sampler: str):
    """Generate with exactly ``adapters`` active and ``sampler`` (``"euler"`` for flow-matching
    models, ``sampling.dmd_sampler`` when a DMD-trained adapter is active); returns (images, nfe)."""
    from methods.flow import generate

    n, _, h, w = sources.shape
    bank.activate(*adapters)
    try:
        lat, nfe = generate(bb, bb.encode_images(sources), bb.encode_prompts([prompt] * n, sources),
                            bb.latent_grid(h, w), steps=steps, shift=shift, cfg_scale=cfg_scale,
                            uncond=bb.encode_prompts([""] * n, sources) if cfg_scale > 1 else None,
                            generator=generator, sampler=sampler)
    finally:
        bank.activate()
    return bb.decode_latents(lat, h, w), nfe
