"""DreamSim distance (DESIGN 6): result vs reference template result, through the dreamsim package.

``dreamsim()`` always runs its download step (urllib, no timeout) and reaches its backbones
through ``torch.hub`` (whose global directory it changes), so this wrapper first checks that the
cache directory holds every file the chosen type needs and raises ``MissingWeights`` listing the
missing ones; only then is dreamsim imported and called (with ``torch.hub``'s directory restored
afterwards). Default type ``ensemble`` (DreamSim's default: DINO + CLIP + OpenCLIP ViT-B/16);
``BENCH_DREAMSIM_TYPE`` picks another, ``BENCH_DREAMSIM_DIR`` the cache directory (default
``$BENCH_WEIGHTS_DIR/dreamsim``).

Distance = 1 - cosine of the (normalised) DreamSim embeddings, exactly what
``PerceptualModel.forward`` computes, but per image so embeddings can be cached. Images are
resized to 224x224 (bicubic, antialiased) like dreamsim's own preprocessing.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from metrics import MetricInfo
from metrics.embedding import EmbeddingMetric, default_device
from metrics.weights import MissingWeights, fingerprint, force_offline, weights_dir

# Files each backbone needs in the cache directory (dreamsim 0.2.1: its download list plus what
# torch.hub.load reads for the DINO backbones: the hub repo and its checkpoint).
_BACKBONE_FILES: dict[str, tuple[str, ...]] = {
    "dino_vitb16": ("dino_vitb16_pretrain.pth", "facebookresearch_dino_main/hubconf.py",
                    "checkpoints/dino_vitbase16_pretrain.pth"),
    "dinov2_vitb14": ("dinov2_vitb14_pretrain.pth", "facebookresearch_dinov2_main/hubconf.py",
                      "checkpoints/dinov2_vitb14_pretrain.pth"),
    "clip_vitb16": ("clip_vitb16_pretrain.pth.tar",),
    "clip_vitb32": ("clip_vitb32_pretrain.pth.tar",),
    "open_clip_vitb16": ("open_clip_vitb16_pretrain.pth.tar",),
    "open_clip_vitb32": ("open_clip_vitb32_pretrain.pth.tar",),
    "synclr_vitb16": ("synclr_vit_b_16.pth",),
}
# dreamsim type -> (backbones, LoRA adapter folder)
DREAMSIM_TYPES: dict[str, tuple[tuple[str, ...], str]] = {
    "ensemble": (("dino_vitb16", "clip_vitb16", "open_clip_vitb16"), "ensemble_lora"),
    "dino_vitb16": (("dino_vitb16",), "dino_vitb16_single_lora"),
    "dinov2_vitb14": (("dinov2_vitb14",), "dinov2_vitb14_single_lora"),
    "clip_vitb32": (("clip_vitb32",), "clip_vitb32_single_lora"),
    "open_clip_vitb32": (("open_clip_vitb32",), "open_clip_vitb32_single_lora"),
    "synclr_vitb16": (("synclr_vitb16",), "synclr_vitb16_single_lora"),
}
IMAGE_SIZE = 224  # dreamsim_args["img_size"]


def default_dreamsim_dir() -> Path:
    return Path(os.environ["BENCH_DREAMSIM_DIR"]).expanduser() if os.environ.get("BENCH_DREAMSIM_DIR") \
        else weights_dir() / "dreamsim"


@dataclass(frozen=True)
class DreamSimConfig:
    dreamsim_type: str = "ensemble"                   # a key of DREAMSIM_TYPES
    cache_dir: str | None = None                      # None: $BENCH_DREAMSIM_DIR or $BENCH_WEIGHTS_DIR/dreamsim
    device: str = field(default_factory=default_device)

    @classmethod
    def from_env(cls) -> "DreamSimConfig":
        return cls(dreamsim_type=os.environ.get("BENCH_DREAMSIM_TYPE", cls.dreamsim_type),
                   cache_dir=os.environ.get("BENCH_DREAMSIM_DIR") or None)


def required_files(dreamsim_type: str) -> list[str]:
    if dreamsim_type not in DREAMSIM_TYPES:
        raise ValueError(f"unknown dreamsim type {dreamsim_type!r}; valid: {', '.join(DREAMSIM_TYPES)}")
    backbones, lora = DREAMSIM_TYPES[dreamsim_type]
    files = [f for b in backbones for f in _BACKBONE_FILES[b]]
    return files + [f"{lora}/adapter_config.json", f"{lora}/adapter_model.safetensors|{lora}/adapter_model.bin"]


def missing_files(folder: Path, dreamsim_type: str) -> list[str]:
    return [entry for entry in required_files(dreamsim_type)
            if not any((folder / alt).is_file() for alt in entry.split("|"))]


def check_cache(folder: Path, dreamsim_type: str) -> None:
    """Raise MissingWeights listing every file of ``dreamsim_type`` absent from ``folder``."""
    missing = [entry.replace("|", " or ") for entry in missing_files(folder, dreamsim_type)]
    if missing:
        raise MissingWeights(
            f"DreamSim ({dreamsim_type}) weights missing in {folder}: {', '.join(missing)}. To provide them, on a "
            f"machine with network run `python -c \"from dreamsim import dreamsim; dreamsim(pretrained=True, "
            f"device='cpu', cache_dir='{folder}', dreamsim_type='{dreamsim_type}')\"` and copy {folder} here "
            f"(or point BENCH_DREAMSIM_DIR at such a copy).")


def load_dreamsim(cfg: DreamSimConfig) -> tuple[torch.nn.Module, str]:
    folder = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_dreamsim_dir()
    check_cache(folder, cfg.dreamsim_type)
    force_offline()
    import torch.hub

    hub_dir = torch.hub.get_dir()
    try:
        # dreamsim and torch.hub print "Using cache ..." lines and peft warns about dreamsim's own
        # double adapter wrapping; none of it is actionable here.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from dreamsim import dreamsim

            model, _ = dreamsim(pretrained=True, device=cfg.device, cache_dir=str(folder),
                                dreamsim_type=cfg.dreamsim_type)
    finally:
        torch.hub.set_dir(hub_dir)  # dreamsim points torch.hub at its cache dir globally
    files = [alt for entry in required_files(cfg.dreamsim_type) for alt in entry.split("|")
             if (folder / alt).is_file()]
    namespace = f"dreamsim|{cfg.dreamsim_type}|{fingerprint(folder, files)}|{IMAGE_SIZE}px"
    return model.eval(), namespace


class DreamSimDistance(EmbeddingMetric):
    info = MetricInfo("dreamsim", higher_is_better=False, compares=("results", "references"), batch_size=32,
                      role="DreamSim", description="DreamSim distance of the result to the reference template result")
    label = "dreamsim"

    @classmethod
    def default_config(cls) -> DreamSimConfig:
        return DreamSimConfig.from_env()

    def _load(self):
        return load_dreamsim(self.config)

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images.float(), size=(IMAGE_SIZE, IMAGE_SIZE), mode="bicubic",
                          align_corners=False, antialias=True).clamp(0, 1)
        emb = self._model.embed(x.to(self.config.device))
        return emb.reshape(images.shape[0], -1).float()

    def _compare(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return 1 - F.cosine_similarity(a, b, dim=-1)
