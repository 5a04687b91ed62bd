"""How much could training many teacher LoRAs in one batched forward save? Prints figures.

Batching N teachers into one transformer call (each sample routed to its own adapter) saves only
the per-call overhead: the matmuls of N batches remain. This measures that bound directly: one
LoRA training step of the default preset's backbone and teacher LoRA (flow-matching loss,
backward, AdamW) at batch B, 4B and 10B, as time per B samples. If the per-sample cost does not
fall with the batch, batched teachers cannot beat sequential ones by more than that ratio
(issue 16's lever "training a bank of teachers together").

    OMP_NUM_THREADS=1 python benchmarks/teacher_batching.py [--repeats 6] [--preset synth]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.config import PRESETS
from methods.backbones.tiny_qwen import TinyQwenBackbone
from methods.flow import add_noise, fm_loss
from methods.lora import add_lora


def step_ms(bb: TinyQwenBackbone, opt: torch.optim.Optimizer, batch: int, repeats: int, size: int) -> list[float]:
    grid = bb.latent_grid(size, size)
    tokens, channels = grid[0] * grid[1], bb.encode_images(torch.zeros(1, 3, size, size)).shape[-1]
    gen = torch.Generator().manual_seed(0)
    x0, src, noise = (torch.randn(batch, tokens, channels, generator=gen) for _ in range(3))
    sigma = torch.rand(batch, generator=gen)
    cond = bb.encode_prompts(["Apply the sepia palette effect."] * batch)
    times = []
    for _ in range(repeats + 1):  # the first call warms up
        t = time.perf_counter()
        v = bb.velocity(add_noise(x0, noise, sigma), sigma, src, cond, grid)
        fm_loss(v, x0, noise, sigma, "none").backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(1000 * (time.perf_counter() - t))
    return times[1:]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="synth")
    ap.add_argument("--repeats", type=int, default=6)
    args = ap.parse_args()
    cfg = PRESETS.get(args.preset)()
    bb = TinyQwenBackbone.create(cfg.backbone)
    bb.transformer.requires_grad_(False)
    add_lora(bb.transformer, "teacher", cfg.teacher)
    opt = torch.optim.AdamW([p for p in bb.transformer.parameters() if p.requires_grad], lr=cfg.teacher.lr)
    b = cfg.teacher.batch_size
    print(f"teacher LoRA step, preset {args.preset} (rank {cfg.teacher.rank}, {cfg.world.image_size} px), "
          f"{torch.get_num_threads()} thread(s), median of {args.repeats}:\n")
    print(f"| batch | step ms (min / median / max) | ms per {b} samples | vs batch {b} |")
    print("|---|---|---|---|")
    ref = None
    for batch in (b, 4 * b, 10 * b):
        t = step_ms(bb, opt, batch, args.repeats, cfg.world.image_size)
        per = statistics.median(t) * b / batch
        ref = ref or per
        print(f"| {batch} | {min(t):.0f} / {statistics.median(t):.0f} / {max(t):.0f} | {per:.0f} | {ref / per:.2f}x |")


if __name__ == "__main__":
    main()
