"""One teacher LoRA trained with flow matching, data-parallel over torch.distributed ranks, timed
(prints, never asserts). The trainer is the one every teacher uses (methods/fm.py
``train_flow_matching``); this script only launches it on several processes.

Launch (CPU: gloo; GPU: nccl, one process per GPU)::

    torchrun --nproc_per_node=2 benchmarks/fm_data_parallel.py --preset smoke --effect 0 --steps 20 --out /tmp/ddp
    python benchmarks/fm_data_parallel.py --steps 20       # one process: the same run, for comparison
    # inside a SLURM job with --ntasks-per-node=<gpus>: plain ``python benchmarks/fm_data_parallel.py``;
    # the rank/world come from SLURM through submitit's TorchDistributedEnvironment
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch.distributed as dist

from bench.cache import ArtifactCache
from bench.config import PRESETS, apply_overrides
from bench.threads import set_threads
from bench.workspace import Workspace
from methods import distributed
from methods.fm import EditPairs
from methods.teachers import train_teacher


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/fm_data_parallel.py", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="smoke")
    p.add_argument("--effect", type=int, default=0, help="index of the effect whose teacher LoRA is trained")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=8, help="global batch (split over ranks)")
    p.add_argument("--cache", default=None)
    p.add_argument("--out", default="runs/fm_data_parallel", help="where rank 0 saves the LoRA and loss.csv")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)

    env = distributed.init()
    set_threads(share=env.world_size)
    cfg = apply_overrides(PRESETS.get(args.preset)(), args.overrides)
    ws = Workspace(cfg, ArtifactCache(args.cache, verbose=env.is_main))
    if env.world_size > 1:  # rank 0 builds the shared artifacts; the others wait, then load them
        if env.is_main:
            _ = ws.base_dir
        dist.barrier()
    effect = ws.bench.effects[args.effect]
    rows = ws.full_bench.train_rows(effect.lora_name)
    pairs = EditPairs(ws.images([r.source_image for r in rows], [r.origin for r in rows]),
                      ws.images([r.target_image for r in rows], [r.origin for r in rows]),
                      [r.instruction for r in rows])
    teacher = replace(cfg.teacher, steps=args.steps, batch_size=args.batch_size)
    t0 = time.perf_counter()
    saved = train_teacher(ws.load_backbone(), pairs, teacher, shift=cfg.sampling.shift, seed=cfg.seed,
                          out_dir=Path(args.out), desc=f"teacher {effect.lora_name}", env=env)
    elapsed = time.perf_counter() - t0
    if env.is_main:
        losses = [float(line.split(",")[1]) for line in (Path(args.out) / "loss.csv").read_text().splitlines()[1:]]
        print(f"[fm_data_parallel] {env.world_size} rank(s) ({env.backend or 'single process'}): {args.steps} "
              f"steps of global batch {args.batch_size} in {elapsed:.1f}s; loss {losses[0]:.4f} -> {losses[-1]:.4f}; "
              f"saved {saved}")
    distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
