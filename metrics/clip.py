"""CLIP score (DESIGN 6): image-image cosine of open_clip embeddings, result vs reference template result.

Default model: ``ViT-B-32`` with the ``openai`` weights (``BENCH_CLIP_MODEL``,
``BENCH_CLIP_PRETRAINED``; explicit file ``BENCH_CLIP_WEIGHTS``). Weights resolve through
:mod:`metrics.weights` (explicit path, ``$BENCH_WEIGHTS_DIR/<hf repo>/``, HF cache, open_clip's own
``~/.cache/clip``); nothing is downloaded.

QuickGELU pitfall (FACTS): OpenAI's CLIP weights were trained with QuickGELU, but
``create_model('ViT-B-32', pretrained='openai')`` builds GELU and only warns, giving silently wrong
embeddings. The activation is therefore decided from the pretrained tag (``quick_gelu`` of its
open_clip config) and forced; a contradicting explicit ``quick_gelu`` setting is an error.

Images are resized (shorter side, bicubic) and centre-cropped to the model's input size and
normalised with the tag's mean/std, i.e. open_clip's evaluation transform on tensors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from metrics import MetricInfo
from metrics.embedding import EmbeddingMetric, default_device, normalize, resize_center_crop
from metrics.weights import MissingWeights, WeightRequest, fingerprint, force_offline, resolve_file

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")

# (model, tag) -> (HF repo, trained with QuickGELU, file name of open_clip's URL download).
# Known here so resolving the defaults never imports open_clip (~6 s): a missing weight must fail
# in well under a second. Other pairs are looked up in open_clip's own table.
_KNOWN: dict[tuple[str, str], tuple[str, bool, str]] = {
    ("ViT-B-32", "openai"): ("timm/vit_base_patch32_clip_224.openai", True, "ViT-B-32.pt"),
    ("ViT-B-16", "openai"): ("timm/vit_base_patch16_clip_224.openai", True, "ViT-B-16.pt"),
    ("ViT-L-14", "openai"): ("timm/vit_large_patch14_clip_224.openai", True, "ViT-L-14.pt"),
}


@dataclass(frozen=True)
class ClipConfig:
    model: str = "ViT-B-32"               # open_clip model name, or "local-dir:/path" (config + weights)
    pretrained: str = "openai"            # open_clip tag the weights come from (decides QuickGELU, mean/std)
    weights: str | None = None            # explicit checkpoint file; else weights dir / HF cache
    quick_gelu: bool | None = None        # None: what the tag was trained with
    device: str = field(default_factory=default_device)

    @classmethod
    def from_env(cls) -> "ClipConfig":
        return cls(model=os.environ.get("BENCH_CLIP_MODEL", cls.model),
                   pretrained=os.environ.get("BENCH_CLIP_PRETRAINED", cls.pretrained),
                   weights=os.environ.get("BENCH_CLIP_WEIGHTS") or None)


def _tag_info(model: str, tag: str) -> tuple[str | None, bool | None, tuple[str, ...], tuple, tuple]:
    """(HF repo, quick_gelu, extra local files, mean, std) of an open_clip (model, tag) pair."""
    base = model[: -len("-quickgelu")] if model.endswith("-quickgelu") else model
    if (base, tag) in _KNOWN:
        repo, quick, url_name = _KNOWN[(base, tag)]
        return repo, quick, (f"~/.cache/clip/{url_name}",), OPENAI_MEAN, OPENAI_STD
    if not tag:
        return None, None, (), OPENAI_MEAN, OPENAI_STD
    force_offline()
    import open_clip

    cfg = open_clip.get_pretrained_cfg(base, tag) or open_clip.get_pretrained_cfg(model, tag)
    if not cfg:
        return None, None, (), OPENAI_MEAN, OPENAI_STD
    repo = cfg.get("hf_hub", "").strip("/") or None
    if repo and repo.count("/") > 1:  # "org/name/file.bin" form
        repo = "/".join(repo.split("/")[:2])
    extra = (f"~/.cache/clip/{os.path.basename(cfg['url'])}",) if cfg.get("url") else ()
    return repo, cfg.get("quick_gelu"), extra, cfg.get("mean", OPENAI_MEAN), cfg.get("std", OPENAI_STD)


def load_open_clip(cfg: ClipConfig) -> tuple[torch.nn.Module, str, tuple, tuple]:
    """(model, namespace, mean, std): the same code loads real weights and tiny test checkpoints."""
    if cfg.model.startswith("local-dir:"):
        folder = Path(cfg.model[len("local-dir:"):]).expanduser()
        missing = [n for n in ("open_clip_config.json",) if not (folder / n).is_file()]
        if not any((folder / n).is_file() for n in OPEN_CLIP_FILES):
            missing.append(" or ".join(OPEN_CLIP_FILES))
        if missing:
            raise MissingWeights(f"CLIP model directory {folder} lacks {', '.join(missing)}. Save one with "
                                 f"open_clip's push_to_hf_hub layout or set BENCH_CLIP_MODEL to a model name.")
        force_offline()
        import open_clip

        model = open_clip.create_model(cfg.model, device=cfg.device)
        preprocess = getattr(model.visual, "preprocess_cfg", {}) or {}
        mean, std = preprocess.get("mean", OPENAI_MEAN), preprocess.get("std", OPENAI_STD)
        quick, fp = "from-config", fingerprint(folder)
    else:
        repo, tag_quick, extra, mean, std = _tag_info(cfg.model, cfg.pretrained)
        if cfg.quick_gelu is not None and tag_quick is not None and cfg.quick_gelu != tag_quick:
            raise ValueError(f"CLIP {cfg.model} weights '{cfg.pretrained}' were trained with "
                             f"quick_gelu={tag_quick}, but quick_gelu={cfg.quick_gelu} was asked for")
        quick = cfg.quick_gelu if cfg.quick_gelu is not None else bool(tag_quick)
        path = resolve_file(WeightRequest(
            what=f"CLIP {cfg.model} ({cfg.pretrained or 'no tag'}) weights", env="BENCH_CLIP_WEIGHTS",
            explicit=cfg.weights, repo=repo, filenames=OPEN_CLIP_FILES, extra=extra))
        force_offline()
        import open_clip

        model = open_clip.create_model(cfg.model, pretrained=str(path), force_quick_gelu=quick, device=cfg.device)
        fp = fingerprint(path)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    namespace = f"open_clip|{cfg.model}|{cfg.pretrained}|quick_gelu={quick}|{fp}|{size}px|{mean}|{std}"
    return model.eval(), namespace, tuple(mean), tuple(std)


class ClipScore(EmbeddingMetric):
    info = MetricInfo("clip", higher_is_better=True, compares=("results", "references"), batch_size=32,
                      role="CLIP", description="open_clip image cosine of the result and the reference template result")
    label = "clip"

    @classmethod
    def default_config(cls) -> ClipConfig:
        return ClipConfig.from_env()

    def _load(self):
        model, namespace, self._mean, self._std = load_open_clip(self.config)
        return model, namespace

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        size = self._model.visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else size
        x = normalize(resize_center_crop(images.float(), size), self._mean, self._std)
        return self._model.encode_image(x.to(self.config.device)).float()
