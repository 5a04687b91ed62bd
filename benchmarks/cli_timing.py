"""Wall time of the CLI as a user meets it (issue 2 targets; prints, never asserts).

* smoke preset, fresh cache (world + base pretraining + teachers + eval)   target <= 60 s
* the same command again (everything cached, the cell skipped)
* with --default: the synth preset, fresh cache, then a rerun             target <= 10 min / <= 1 min

    python benchmarks/cli_timing.py [--default] [--method base]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time


def timed(cmd: list[str], env_cache: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**__import__("os").environ, "BENCH_CACHE": env_cache})
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--default", action="store_true", help="also time the default (synth) preset")
    ap.add_argument("--method", default="base")
    args = ap.parse_args()
    presets = ["smoke"] + (["synth"] if args.default else [])
    for preset in presets:
        with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as out:
            cmd = [sys.executable, "-m", "bench.run", "--method", args.method, "--preset", preset, "--out", out]
            fresh = timed(cmd, cache)
            rerun = timed(cmd, cache)
            cmd_new_cell = cmd + ["--seed", "1"]  # cached artifacts, new cell: evaluation only
            evaluate_only = timed(cmd_new_cell, cache)
        print(f"{args.method} --preset {preset}: fresh {fresh:.1f}s | rerun (cell skipped) {rerun:.1f}s | "
              f"new seed (artifacts cached, evaluation only) {evaluate_only:.1f}s")


if __name__ == "__main__":
    main()
