"""Shared shape of the backbone metrics (CLIP, DINO, DreamSim): embed two images, compare.

A subclass says how to load its model (lazily, on the first score, through
:mod:`metrics.weights`) and how to embed a preprocessed batch; this class caches the
embeddings per image on disk (:mod:`metrics.cache`) and compares them. Construction is cheap
and never touches weights, so ``METRICS.get(name)()`` costs nothing until a batch is scored.
"""

from __future__ import annotations

import os
from abc import abstractmethod
from typing import Any

import torch
import torch.nn.functional as F

from metrics import EvalBatch, Metric
from metrics.cache import MetricCache

ENV_DEVICE = "BENCH_METRIC_DEVICE"


def default_device() -> str:
    return os.environ.get(ENV_DEVICE) or ("cuda" if torch.cuda.is_available() else "cpu")


def resize_center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the shorter side to ``size`` (bicubic, antialiased) and crop the centre square.

    The tensor form of the CLIP/timm evaluation transform; on square inputs it is a plain resize.
    """
    h, w = images.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    if (nh, nw) != (h, w):
        images = F.interpolate(images, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
    top, left = (nh - size) // 2, (nw - size) // 2
    return images[..., top:top + size, left:left + size].clamp(0, 1)


def normalize(images: torch.Tensor, mean: Any, std: Any) -> torch.Tensor:
    mean_t = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - mean_t) / std_t


class EmbeddingMetric(Metric):
    """One score per sample from the embeddings of ``info.compares[0]`` and ``info.compares[1]``."""

    label: str = "embedding"   # name in the cache and in the forward counts

    def __init__(self, config: Any = None, *, cache: MetricCache | str | bool | None = True) -> None:
        self.config = config if config is not None else self.default_config()
        self.cache = cache if isinstance(cache, MetricCache) else MetricCache(cache)
        self._model: Any = None
        self._namespace: str | None = None

    @classmethod
    @abstractmethod
    def default_config(cls) -> Any:
        """The config read from the environment (model name, weights path, device)."""

    @abstractmethod
    def _load(self) -> tuple[Any, str]:
        """Resolve weights (raising MissingWeights fast), load the model; return (model, namespace).

        ``namespace`` must name everything the embedding depends on: model, weights fingerprint,
        preprocessing.
        """

    @abstractmethod
    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        """Embeddings (N, D) of raw images (N, 3, H, W) in [0, 1]; preprocessing included."""

    def _compare(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.cosine_similarity(a, b, dim=-1)

    def load(self) -> None:
        if self._model is None:
            self._model, self._namespace = self._load()

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Cached embeddings of raw images."""
        self.load()
        return self.cache.features(self.label, self._namespace, images, self._embed_no_grad)

    @torch.no_grad()
    def _embed_no_grad(self, images: torch.Tensor) -> torch.Tensor:
        return self._embed(images)

    def _score(self, batch: EvalBatch) -> torch.Tensor:
        first, second = self.info.compares[:2]
        return self._compare(self.embed(getattr(batch, first)), self.embed(getattr(batch, second)))
