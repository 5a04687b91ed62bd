"""Per-effect teacher LoRAs: trained with flow matching on (source, effect(source)) pairs with
the effect's own trigger prompt, on top of the frozen base, and saved as diffusers LoRAs."""

from __future__ import annotations

from pathlib import Path

from bench.config import LoraTrainConfig
from methods.backbones import Backbone
from methods.fm import EditPairs, FMSettings, train_flow_matching
from methods.lora import add_lora, save_lora

TRAINING_ADAPTER = "lora_in_training"  # not "training": that is an nn.Module attribute


def train_teacher(backbone: Backbone, pairs: EditPairs, cfg: LoraTrainConfig, *, shift: float,
                  seed: int, out_dir: Path, desc: str) -> Path:
    """Train one LoRA on ``backbone`` (left without adapters afterwards) and save it to ``out_dir``."""
    transformer = backbone.transformer
    transformer.requires_grad_(False)
    add_lora(transformer, TRAINING_ADAPTER, cfg)   # peft marks only the new LoRA weights trainable
    try:
        settings = FMSettings(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, shift=shift,
                              uncond_prob=cfg.uncond_prob, grad_clip=cfg.grad_clip,
                              weighting_scheme=cfg.weighting_scheme, logit_mean=cfg.logit_mean,
                              logit_std=cfg.logit_std, mode_scale=cfg.mode_scale)
        train_flow_matching(backbone, pairs, settings, seed=seed, log_path=out_dir / "loss.csv", desc=desc)
        return save_lora(transformer, TRAINING_ADAPTER, out_dir)
    finally:
        transformer.delete_adapters([TRAINING_ADAPTER])
