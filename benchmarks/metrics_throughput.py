"""Metric throughput, missing-weight latency and the feature cache, on CPU with tiny models.

Prints, for every metric: images/s of a first (cold cache) evaluation, images/s of a second
evaluation of the same images by a fresh metric instance (served from the on-disk cache) and
the backbone forwards each made (the second must be 0); and, before anything heavy is imported,
how long each real metric takes to report missing weights when none are on the machine.
With ``--real`` the default models are measured too where their weights resolve locally.

    python benchmarks/metrics_throughput.py [--n 32] [--size 64] [--real]

Tiny models are random (metrics/tiny.py): their images/s measure the harness (preprocessing,
hashing, caching, batching, judge plumbing), not the real backbones' speed.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from metrics import METRICS, EvalBatch, MetricUnavailable  # noqa: E402
from metrics.cache import MetricCache, forward_counts, reset_counts  # noqa: E402

REAL = ("clip", "dino", "dreamsim", "vsa", "bcr", "editreward")
SYNTHETIC = ("gt_mode_psnr", "gt_mode_mae", "src_ssim", "vsa_syn", "editreward_syn", "bcr_syn")


def make_batch(n: int, size: int, seed: int = 0) -> EvalBatch:
    g = torch.Generator().manual_seed(seed)
    img = lambda k=n: torch.rand(k, 3, size, size, generator=g)  # noqa: E731
    ref_src, ref = img(1).expand(n, -1, -1, -1), img(1).expand(n, -1, -1, -1)
    return EvalBatch(img(), img(), ["turn it into a watercolour painting"] * n, img(), ref, ref_src,
                     ["soft washes, paper texture"] * n)


def missing_latency(batch: EvalBatch, root: Path) -> None:
    """Every real metric, with no weights anywhere: seconds until it reports what is missing."""
    saved = {k: os.environ.get(k) for k in ("BENCH_WEIGHTS_DIR", "HF_HUB_CACHE", "HOME", "BENCH_JUDGE_URL",
                                            "BENCH_JUDGE_MODEL_PATH", "BENCH_EDITREWARD_PATH",
                                            "BENCH_DREAMSIM_DIR", "BENCH_CLIP_WEIGHTS", "BENCH_DINO_WEIGHTS")}
    os.environ.update(BENCH_WEIGHTS_DIR=str(root / "w"), HF_HUB_CACHE=str(root / "hf"), HOME=str(root / "home"))
    for k in list(saved)[3:]:
        os.environ.pop(k, None)
    print("missing-weight error latency (no weights anywhere; first calls, before any model library is imported):")
    try:
        for name in REAL:
            start = time.perf_counter()
            try:
                METRICS.get(name)(cache=False).score(batch)
                print(f"  {name:11s} weights found?!")
            except MetricUnavailable as err:
                ms = (time.perf_counter() - start) * 1e3
                print(f"  {name:11s} {ms:7.1f} ms  {str(err)[:110]}...")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def measure(label: str, make, batch: EvalBatch, cache_root: Path) -> None:
    """Cold evaluation, then a fresh instance on the same cache; prints images/s and forwards."""
    metric = make(MetricCache(cache_root))
    warm = batch.slice(0, 1)
    try:
        metric.score(EvalBatch(warm.results.flip(-1), warm.sources.flip(-1), warm.instructions,
                               None if warm.targets is None else warm.targets.flip(-1),
                               warm.references.flip(-1), warm.reference_sources.flip(-1), warm.criteria))  # load
    except MetricUnavailable as err:
        print(f"  {label:24s} missing: {err}")
        return
    reset_counts()
    start = time.perf_counter()
    metric.score(batch)
    cold = time.perf_counter() - start
    cold_forwards = sum(forward_counts().values())
    reset_counts()
    start = time.perf_counter()
    make(MetricCache(cache_root)).score(batch)
    again = time.perf_counter() - start
    print(f"  {label:24s} {len(batch) / cold:9.1f} img/s ({cold_forwards:3d} forwards)   "
          f"re-evaluation {len(batch) / again:9.1f} img/s ({sum(forward_counts().values())} forwards)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=32, help="images per evaluation")
    ap.add_argument("--size", type=int, default=64, help="image side in pixels")
    ap.add_argument("--real", action="store_true", help="also measure the default models where weights exist")
    args = ap.parse_args()
    torch.set_num_threads(min(4, os.cpu_count() or 1))
    logging.getLogger("metrics.judge").setLevel(logging.ERROR)  # the tiny local judge only answers garbage
    batch = make_batch(args.n, args.size)
    root = Path(tempfile.mkdtemp(prefix="metrics-bench-"))
    missing_latency(batch, root / "empty")

    from metrics import tiny
    from metrics.clip import ClipScore
    from metrics.dino import DinoScore
    from metrics.dreamsim import DreamSimDistance
    from metrics.editreward import EditRewardScore
    from metrics.judge import BCRJudge, JudgeConfig, VSAJudge

    t0 = time.perf_counter()
    clip_cfg, dino_cfg = tiny.tiny_open_clip(root / "clip"), tiny.tiny_dino(root / "dino")
    dreamsim_cfg = tiny.tiny_dreamsim(root / "dreamsim")
    qwen = tiny.tiny_qwen_vl(root / "qwen")
    editreward_cfg = tiny.tiny_editreward(root / "editreward", qwen)
    print(f"\ntiny models built in {time.perf_counter() - t0:.1f}s; {args.n} images of {args.size}px, CPU, "
          f"{torch.get_num_threads()} threads")
    cache = root / "cache"
    server = tiny.CannedJudgeServer('{"brief_reasoning": "canned", "scores": 4}')
    bcr_server = tiny.CannedJudgeServer('{"brief_reasoning": "canned", "is_bad_case": false}')
    http = lambda url: JudgeConfig(backend="http", url=url, model="canned", image_size=args.size)  # noqa: E731
    local = JudgeConfig(backend="local", model_path=str(qwen), max_new_tokens=16, max_attempts=1, image_size=56,
                        device="cpu")
    cases = [(name, lambda c, n=name: METRICS.get(n)(), args.n) for name in SYNTHETIC] + [
        ("clip (tiny open_clip)", lambda c: ClipScore(clip_cfg, cache=c), args.n),
        ("dino (tiny timm ViT)", lambda c: DinoScore(dino_cfg, cache=c), args.n),
        ("dreamsim (tiny dino)", lambda c: DreamSimDistance(dreamsim_cfg, cache=c), args.n),
        ("editreward (tiny qwen)", lambda c: EditRewardScore(editreward_cfg, cache=c), min(args.n, 8)),
        ("vsa (http, canned)", lambda c: VSAJudge(http(server.url), cache=c), args.n),
        ("bcr (http, canned)", lambda c: BCRJudge(http(bcr_server.url), cache=c), args.n),
        ("vsa (local tiny qwen)", lambda c: VSAJudge(local, cache=c), min(args.n, 4)),
    ]
    print("throughput (first evaluation, cold cache | second evaluation by a fresh instance):")
    for label, make, n in cases:
        measure(label, make, batch.slice(0, n), cache)
    server.close()
    bcr_server.close()
    if args.real:
        print("\ndefault models (weights resolved locally, never downloaded):")
        for name in REAL:
            measure(name, lambda c, n=name: METRICS.get(n)(cache=c), batch.slice(0, min(args.n, 8)), cache)


if __name__ == "__main__":
    main()
