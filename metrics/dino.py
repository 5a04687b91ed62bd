"""DINO score (DESIGN 6): cosine of DINO ViT CLS tokens, result vs its source (subject consistency).

Default model: timm ``vit_base_patch16_224.dino`` (DINO ViT-B/16; ``BENCH_DINO_MODEL``, explicit
file ``BENCH_DINO_WEIGHTS``). Weights resolve through :mod:`metrics.weights` from
``timm/<model>`` (``model.safetensors`` or ``pytorch_model.bin``) and load with timm's own
pretrained path (``pretrained_cfg_overlay=dict(file=...)``), so its checkpoint filters apply.

The CLS token is the first token of ``forward_features`` (after the final norm), as in the DINO
paper's k-NN evaluation. Images are resized (shorter side, bicubic) and centre-cropped to the
model's own input size (not ``resolve_data_config``'s, which says 224 px even for tiny models)
without timm's 0.875 crop, so the whole subject is compared.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch

from metrics import MetricInfo
from metrics.embedding import EmbeddingMetric, default_device, normalize, resize_center_crop
from metrics.weights import WeightRequest, fingerprint, force_offline, resolve_file

TIMM_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class DinoConfig:
    model: str = "vit_base_patch16_224.dino"   # timm name with its pretrained tag
    weights: str | None = None                 # explicit checkpoint file; else weights dir / HF cache
    model_kwargs: tuple[tuple[str, Any], ...] = ()  # architecture overrides (tiny test models)
    device: str = field(default_factory=default_device)

    @classmethod
    def from_env(cls) -> "DinoConfig":
        return cls(model=os.environ.get("BENCH_DINO_MODEL", cls.model),
                   weights=os.environ.get("BENCH_DINO_WEIGHTS") or None)


def load_timm_vit(cfg: DinoConfig) -> tuple[torch.nn.Module, str]:
    """(model, namespace); the same code loads the real DINO ViT and tiny test checkpoints."""
    repo = f"timm/{cfg.model}" if "." in cfg.model else None  # timm's hub naming: timm/<arch>.<tag>
    path = resolve_file(WeightRequest(what=f"DINO ViT {cfg.model} weights", env="BENCH_DINO_WEIGHTS",
                                      explicit=cfg.weights, repo=repo, filenames=TIMM_FILES))
    force_offline()
    import timm

    model = timm.create_model(cfg.model, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                              num_classes=0, **dict(cfg.model_kwargs))
    model = model.eval().to(cfg.device)
    namespace = f"timm|{cfg.model}|{sorted(cfg.model_kwargs)}|{fingerprint(path)}|{_input_size(model)}px|cls"
    return model, namespace


def _input_size(model: torch.nn.Module) -> int:
    size = model.patch_embed.img_size
    return size[0] if isinstance(size, (tuple, list)) else size


class DinoScore(EmbeddingMetric):
    info = MetricInfo("dino", higher_is_better=True, compares=("results", "sources"), batch_size=32,
                      role="DINO", description="DINO ViT CLS cosine of the result and its source (subject kept)")
    label = "dino"

    @classmethod
    def default_config(cls) -> DinoConfig:
        return DinoConfig.from_env()

    def _load(self):
        return load_timm_vit(self.config)

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        cfg = self._model.pretrained_cfg
        x = resize_center_crop(images.float(), _input_size(self._model))
        x = normalize(x, cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225)))
        tokens = self._model.forward_features(x.to(self.config.device))
        if getattr(self._model, "num_prefix_tokens", 1) >= 1 and getattr(self._model, "cls_token", None) is not None:
            return tokens[:, 0].float()
        return self._model.forward_head(tokens, pre_logits=True).float()
