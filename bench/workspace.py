"""The resolved world of one run: its EffectBench, its base backbone and its teacher LoRAs.

Everything expensive is an artifact of the content-addressed cache, keyed by the part of the
config that determines it: the synthetic dataset by the world config; the base model by
world + backbone + pretraining; each teacher by the base key + teacher config + effect.
"""

from __future__ import annotations

import zlib
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from bench.cache import ArtifactCache, ArtifactSpec, files_fingerprint
from bench.config import RunConfig
from bench.data.effectbench import EffectBench, EffectSpec
from bench.data.errors import EffectBenchError
from bench.data.identity import world_identity
from bench.data.image_io import load_image
from bench.data.loader import load_effectbench
from bench.errors import MissingInputsError
from methods.backbones import BACKBONES, Backbone
from methods.fm import EditPairs


class Workspace:
    def __init__(self, cfg: RunConfig, cache: ArtifactCache) -> None:
        self.cfg = cfg
        self.cache = cache
        self._images: dict[tuple[Path, int], torch.Tensor] = {}

    # -- data ---------------------------------------------------------------------------------
    @cached_property
    def dataset_root(self) -> Path:
        world = self.cfg.world
        if world.kind == "effectbench":
            if not world.root:
                raise MissingInputsError(["world.kind=effectbench needs world.root=PATH (or --effects PATH) to an "
                                          "EffectBench directory"])
            return Path(world.root)
        if world.kind != "synthetic":
            raise ValueError(f"unknown world.kind {world.kind!r}; valid: synthetic, effectbench")
        from bench.synthetic.world import build_world

        spec = ArtifactSpec("world", {"world": world}, label="synthetic EffectBench")
        return self.cache.get_or_build(spec, lambda d: build_world(d, world))

    def check_inputs(self) -> None:
        """Raise :class:`MissingInputsError` listing every input this run needs and does not
        have -- the dataset, the backbone's weights, a teacher for each effect -- at once and
        before any work starts (file checks only), each with how to obtain it."""
        problems: list[str] = []
        world, bench = self.cfg.world, None
        if world.kind == "effectbench" and not world.root:
            problems.append("dataset: world.kind=effectbench needs an EffectBench directory: give world.root=PATH "
                            "or --effects PATH (effects.jsonl, train.jsonl, test.jsonl and their images; the "
                            "format is in bench/data/effectbench.py)")
        elif world.kind == "effectbench" and not Path(world.root).is_dir():
            problems.append(f"dataset: world.root {world.root}: no such directory")
        else:
            try:
                bench = self.bench
            except EffectBenchError as err:
                problems.append(f"dataset: {err}")
        backbone = BACKBONES.get(self.cfg.backbone.kind)
        problems += [f"backbone weights: {p}" for p in backbone.missing_weights(self.cfg.backbone)]
        if bench is not None:
            for effect in bench.effects:
                if effect.lora_path is None and not any(
                        r.target_image for r in self.full_bench.train_rows(effect.lora_name)):
                    problems.append(f"teacher of {effect.lora_name}: no lora_path in effects.jsonl and no train rows "
                                    "with target_image to train one on; add either")
        if problems:
            raise MissingInputsError(problems)

    @cached_property
    def full_bench(self) -> EffectBench:
        return load_effectbench(self.dataset_root)

    @cached_property
    def bench(self) -> EffectBench:
        """The run's effects: the first ``n_effects`` of the catalogue."""
        return self.full_bench.select(self.cfg.n_effects)

    def content_inputs(self, paths: list[Path]) -> dict[str, str]:
        """What an artifact spec adds for files read from the dataset: their content fingerprint
        (a dataset edited in place must not serve stale artifacts). For the synthetic world too:
        each effect's rows come from its own random stream, so a teacher -- keyed by its rows, not
        by the whole world config -- survives a change to another effect."""
        return {"files": files_fingerprint(sorted({Path(p) for p in paths}))}

    @property
    def image_size(self) -> int:
        return self.cfg.world.image_size

    def images(self, paths: list[Path], origins: list[str] | None = None) -> torch.Tensor:
        """Load images as (N, 3, S, S) in [0, 1], memoised by path."""
        out = []
        for i, path in enumerate(paths):
            key = (Path(path), self.image_size)
            if key not in self._images:
                arr = load_image(path, size=self.image_size, origin=origins[i] if origins else None)
                self._images[key] = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)
            out.append(self._images[key])
        return torch.stack(out)

    # -- base model -----------------------------------------------------------------------------
    @cached_property
    def base_spec(self) -> ArtifactSpec:
        """The base model: pretrained here on the world's general edits, or real weights, keyed by
        what is loaded. The general edits of the synthetic world are keyed by what they follow from
        (``general_identity``: not the effects, so a new effect catalogue keeps its base); a dataset
        on disk by its content (``world_identity``)."""
        cls = BACKBONES.get(self.cfg.backbone.kind)
        if getattr(cls, "pretrained", False):
            return ArtifactSpec("base", {"backbone": self.cfg.backbone}, label="base model (real weights)")
        from bench.synthetic.world import general_identity  # the synthetic world only when used

        world = self.cfg.world
        general = general_identity(world) if world.kind == "synthetic" else world_identity(world)
        inputs = {"general": general, "backbone": self.cfg.backbone,
                  "pretrain": self.cfg.pretrain, "shift": self.cfg.sampling.shift}
        return ArtifactSpec("base", inputs, label="base model (pretraining on general edits)")

    @property
    def base_key(self) -> str:
        """What the keys of artifacts trained on the base name it by."""
        return self.base_spec.key

    @cached_property
    def base_dir(self) -> Path:
        from methods.pretrain import pretrain_base

        def build(out: Path) -> None:
            rows = self.full_bench.general
            if not rows or any(r.target_image is None for r in rows):
                raise ValueError(f"{self.dataset_root}/general.jsonl: pretraining the base needs general "
                                 "rows with target_image")
            pairs = EditPairs(self.images([r.source_image for r in rows], [r.origin for r in rows]),
                              self.images([r.target_image for r in rows], [r.origin for r in rows]),
                              [r.instruction for r in rows], ["general"] * len(rows))
            pretrain_base(self.cfg, pairs, out)

        return self.cache.get_or_build(self.base_spec, build)

    def load_backbone(self, *, prompt_cache: bool = True) -> Backbone:
        """A fresh copy of the base backbone (no adapters): real weights are loaded from
        ``backbone.path`` / the HF cache, with their prompt embeddings cached next to the other
        artifacts (``<cache>/prompt_embeds``; ``BENCH_PROMPT_CACHE=off`` disables it); the
        synthetic base is pretrained once and cached. Timing measurements of serving pass
        ``prompt_cache=False``: a served request pays for its text encoding.

        The transformer is named after its base (``methods.lora.name_base``), which every LoRA
        saved from it records: ``backbone.path`` as given (else the directory it was loaded
        from), or the synthetic base's cache key."""
        from methods.lora import name_base

        cls = BACKBONES.get(self.cfg.backbone.kind)
        if getattr(cls, "pretrained", False):
            from methods.backbones.prompt_cache import KIND, resolve_prompt_cache

            prompts = (resolve_prompt_cache(self.cache.root / KIND, verbose=self.cache.verbose)
                       if prompt_cache else None)
            bb = cls.load(self.cfg.backbone, self.cfg.backbone.path, prompt_cache=prompts)
            if self.cfg.backbone.path:
                name_base(bb.transformer, self.cfg.backbone.path)
            return bb
        bb = cls.load(self.cfg.backbone, self.base_dir / "transformer")
        name_base(bb.transformer, f"{self.cfg.backbone.kind}-base-{self.base_key}")  # not the cache path
        return bb

    # -- teachers -------------------------------------------------------------------------------
    def teacher_spec(self, effect: EffectSpec) -> ArtifactSpec:
        """What the effect's trained teacher LoRA is made from (its cache key names it without building it)."""
        rows = self.full_bench.train_rows(effect.lora_name)
        return ArtifactSpec("teachers", {
            "base": self.base_key, "teacher": self.cfg.teacher, "effect": effect.lora_name, "prompt": effect.prompt,
            **self.content_inputs([p for r in rows for p in (r.source_image, r.target_image) if p])},
            label=f"teacher LoRA {effect.lora_name}")

    def teacher_dir(self, effect: EffectSpec, backbone: Backbone | None = None) -> Path:
        """The effect's teacher LoRA: its manifest ``lora_path``, or trained here and cached."""
        if effect.lora_path is not None:
            return Path(effect.lora_path)
        from methods.teachers import train_teacher

        spec = self.teacher_spec(effect)

        def build(out: Path) -> None:
            rows = self.full_bench.train_rows(effect.lora_name)
            if not rows or any(r.target_image is None for r in rows):
                raise ValueError(f"effect {effect.lora_name!r} ({effect.origin}) has no train rows with "
                                 "target_image to train its teacher LoRA on, and no lora_path")
            pairs = EditPairs(self.images([r.source_image for r in rows], [r.origin for r in rows]),
                              self.images([r.target_image for r in rows], [r.origin for r in rows]),
                              [r.instruction for r in rows], [effect.lora_name] * len(rows))
            seed = zlib.crc32(effect.lora_name.encode()) ^ self.cfg.world.seed
            train_teacher(backbone or self.load_backbone(), pairs, self.cfg.teacher,
                          shift=self.cfg.sampling.shift, seed=seed, out_dir=out,
                          desc=f"teacher {effect.lora_name}")

        return self.cache.get_or_build(spec, build)
