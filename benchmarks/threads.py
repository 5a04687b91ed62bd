"""Threads vs speed of the tiny backbone's training step (issue 14 item 12; prints, never asserts).

Times ``--steps`` full flow-matching steps of the default base (4 layers, batch 16, 16 px) in
fresh processes at each thread count, alternating settings over ``--repeats`` rounds so both
see the same machine. Run it on a quiet machine and beside another CPU-bound job: torch's
default (one thread per core) is what ``python -m bench.run`` used before bench/threads.py.

    python benchmarks/threads.py [--threads 1,2] [--steps 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

CHILD = r"""
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
from bench.config import BackboneConfig
from methods.backbones.tiny_qwen import TinyQwenBackbone
from methods.fm import EditPairs, FMSettings, train_flow_matching
bb = TinyQwenBackbone.create(BackboneConfig(), seed=0)
g = torch.Generator().manual_seed(0)
pairs = EditPairs(torch.rand(64, 3, 16, 16, generator=g), torch.rand(64, 3, 16, 16, generator=g),
                  [f"edit {i}" for i in range(64)])
steps = int(sys.argv[2])
train_flow_matching(bb, pairs, FMSettings(steps=2, batch_size=16, lr=1e-4, shift=3.0), seed=0)  # warm-up
t0 = time.perf_counter()
train_flow_matching(bb, pairs, FMSettings(steps=steps, batch_size=16, lr=1e-4, shift=3.0), seed=0)
print((time.perf_counter() - t0) / steps * 1000)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default=f"1,{os.cpu_count() or 1}")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    counts = [int(t) for t in args.threads.split(",")]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "BENCH_THREADS")}
    env["BENCH_PROGRESS_EVERY"] = "0"
    ms: dict[int, list[float]] = {n: [] for n in counts}
    for _ in range(args.repeats):
        for n in counts:
            out = subprocess.run([sys.executable, "-c", CHILD, str(n), str(args.steps)], env=env, check=True,
                                 capture_output=True, text=True).stdout
            ms[n].append(float(out.strip().splitlines()[-1]))
    load = os.getloadavg()[0]
    print(f"FM step of the default base (batch 16), ms per step over {args.steps} steps, {args.repeats} rounds, "
          f"{os.cpu_count()} cores, load {load:.1f} at the end:")
    first = statistics.median(ms[counts[0]])
    for n in counts:
        med = statistics.median(ms[n])
        print(f"  {n} thread(s): median {med:.0f} ms (min {min(ms[n]):.0f}, max {max(ms[n]):.0f}), "
              f"{med / first:.2f}x of {counts[0]} thread(s)")


if __name__ == "__main__":
    main()
