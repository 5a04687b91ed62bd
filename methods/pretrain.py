"""Pretraining of the synthetic world's base editor on general edits.

The real world starts from pretrained Qwen-Image-Edit weights; the synthetic world has none,
so the harness trains the tiny transformer itself (all weights, flow matching) on the general
edit stream. The result is cached by the workspace, keyed by its resolved config.
"""

from __future__ import annotations

from pathlib import Path

from bench.config import RunConfig
from methods.backbones.tiny_qwen import TinyQwenBackbone
from methods.fm import EditPairs, FMSettings, train_flow_matching


def pretrain_base(cfg: RunConfig, pairs: EditPairs, out_dir: Path) -> None:
    backbone = TinyQwenBackbone.create(cfg.backbone, seed=cfg.world.seed)
    p = cfg.pretrain
    settings = FMSettings(steps=p.steps, batch_size=p.batch_size, lr=p.lr, warmup=p.warmup,
                          shift=cfg.sampling.shift, uncond_prob=p.uncond_prob, grad_clip=p.grad_clip)
    train_flow_matching(backbone, pairs, settings, seed=cfg.world.seed,
                        log_path=out_dir / "loss.csv", desc="pretrain base")
    backbone.save(out_dir / "transformer")
