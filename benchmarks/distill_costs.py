"""Distillation cost targets of issue 3, measured side by side in one run (prints, never asserts).

P1  mean DMD training step (all four components, 5:1 critic:generator) / FM LoRA step,
    same model, same batch.                                                 target <= 3.5x
P2  peak memory of DMD training / FM training on a >= 100 M parameter backbone
    (each in a fresh subprocess; peak RSS on CPU, max allocated on CUDA).   target <= 1.3x
P3  switching teachers with 50 in the bank / one DMD training step.       target <= 1 %

    python benchmarks/distill_costs.py [--steps 20] [--batch 16] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.config import BackboneConfig, DistillConfig, LoraTrainConfig
from methods.adapters import AdapterBank
from methods.backbones.tiny_qwen import TinyQwenBackbone
from methods.dmd import DMDTrainer, Objectives
from methods.fm import EditPairs, FMSettings, train_flow_matching
from methods.lora import add_lora, save_lora
from methods.streams import EffectData, GeneralData, StreamSampler

SMALL = BackboneConfig()  # the synthetic preset's backbone
LARGE = BackboneConfig(num_layers=5, num_attention_heads=12, attention_head_dim=64,
                       axes_dims_rope=(16, 24, 24))  # ~106 M parameters


def _teachers(cfg: BackboneConfig, n: int, rank: int, out: Path) -> list[Path]:
    bb = TinyQwenBackbone.create(cfg, seed=0)
    files = []
    for i in range(n):
        add_lora(bb.transformer, f"t{i}", LoraTrainConfig(rank=rank, alpha=rank))
        files.append(save_lora(bb.transformer, f"t{i}", out / f"t{i}"))
        bb.transformer.delete_adapters([f"t{i}"])
    return files


def _dmd(cfg: BackboneConfig, batch: int, steps: int, n_teachers: int, device: str, tmp: Path):
    bb = TinyQwenBackbone.create(BackboneConfig(**{**cfg.__dict__, "device": device}), seed=0)
    bank = AdapterBank(bb.transformer)
    files = _teachers(cfg, n_teachers, 16, tmp)
    for i, f in enumerate(files):
        bank.add_teacher(f"t{i}", f)
    gen = torch.Generator().manual_seed(0)
    src = bb.encode_images(torch.rand(64, 3, 16, 16, generator=gen))
    empty = bb.encode_prompts([""] * 64)
    effects = [EffectData(f"t{i}", src, bb.encode_prompts([f"apply effect {i}"] * 64),
                          bb.encode_prompts([f"zq{i}x, a description"] * 64), src.clone(), empty)
               for i in range(n_teachers)]
    general = GeneralData(src, bb.encode_prompts(["make it brighter"] * 64), empty)
    streams = StreamSampler(effects, general, p_switch=0.5, redraw_every=1, batch_size=batch, grid=(8, 8))
    trainer = DMDTrainer(bb, bank, streams, DistillConfig(steps=steps, batch_size=batch, checkpoint_every=10**9),
                         objectives=Objectives(tafm=True, ts=True), fast_steps=8, shift=3.0, seed=0,
                         work_dir=tmp / "work")
    return bb, bank, trainer


def _fm(cfg: BackboneConfig, batch: int, steps: int, device: str) -> float:
    bb = TinyQwenBackbone.create(BackboneConfig(**{**cfg.__dict__, "device": device}), seed=0)
    bb.transformer.requires_grad_(False)
    add_lora(bb.transformer, "fm", LoraTrainConfig(rank=16, alpha=16))
    imgs = torch.rand(64, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    pairs = EditPairs(imgs, imgs.flip(-1), ["apply effect"] * 64)
    settings = FMSettings(steps=steps, batch_size=batch, lr=1e-4, shift=3.0)
    train_flow_matching(bb, pairs, FMSettings(**{**settings.__dict__, "steps": 2}), seed=0)  # warm-up
    with _Clock() as clock:
        train_flow_matching(bb, pairs, settings, seed=0)
    return clock.per(steps)


class _Clock:
    """Wall time and this process's CPU time (CPU time is what to compare when other processes
    share the cores: it does not count the time the process waited for one)."""

    def __enter__(self) -> "_Clock":
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu

    def per(self, n: int) -> tuple[float, float]:
        return self.wall / n, self.cpu / n


def _peak(kind: str, device: str) -> float:
    """Run one training kind in this process and return its peak memory in MiB."""
    with tempfile.TemporaryDirectory() as tmp:
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        if kind == "fm":
            _fm(LARGE, 2, 5, device)
        else:
            _, _, trainer = _dmd(LARGE, 2, 5, 2, device, Path(tmp))
            for _ in range(5):
                trainer.train_step()
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--peak", choices=["fm", "dmd"], help=argparse.SUPPRESS)  # subprocess mode
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    if args.peak:
        print(json.dumps({"peak_mib": _peak(args.peak, args.device)}))
        return

    print(f"device {args.device}, {torch.get_num_threads()} threads, batch {args.batch}, {args.steps} steps")
    with tempfile.TemporaryDirectory() as tmp:
        fm_step = _fm(SMALL, args.batch, args.steps, args.device)
        _, bank, trainer = _dmd(SMALL, args.batch, args.steps, 50, args.device, Path(tmp))
        trainer.train_step()  # warm-up
        with _Clock() as clock:
            for _ in range(args.steps):
                trainer.train_step()
        dmd_step = clock.per(args.steps)
        with _Clock() as clock:
            for i in range(200):
                bank.activate(f"t{i % 50}")
        switch = clock.per(200)
    for i, clock_name in enumerate(("wall", "CPU")):
        print(f"P1  ({clock_name}) FM LoRA step {fm_step[i] * 1e3:.1f} ms | DMD step (all components, 5:1) "
              f"{dmd_step[i] * 1e3:.1f} ms | ratio {dmd_step[i] / fm_step[i]:.2f}x (target <= 3.5x)")
    for i, clock_name in enumerate(("wall", "CPU")):
        print(f"P3  ({clock_name}) teacher switch with 50 in the bank {switch[i] * 1e3:.3f} ms = "
              f"{100 * switch[i] / dmd_step[i]:.3f} % of a DMD step (target <= 1 %)")
    peaks = {}
    for kind in ("fm", "dmd"):
        out = subprocess.run([sys.executable, __file__, "--peak", kind, "--device", args.device],
                             capture_output=True, text=True, check=True).stdout
        peaks[kind] = json.loads(out.strip().splitlines()[-1])["peak_mib"]
    n_params = sum(p.numel() for p in TinyQwenBackbone.create(LARGE).transformer.parameters())
    print(f"P2  peak memory on a {n_params / 1e6:.0f} M-parameter backbone: FM {peaks['fm']:.0f} MiB | "
          f"DMD (base + student + critic + 2 teachers) {peaks['dmd']:.0f} MiB | ratio "
          f"{peaks['dmd'] / peaks['fm']:.2f}x (target <= 1.3x; three full model copies would be ~3x)")


if __name__ == "__main__":
    main()
