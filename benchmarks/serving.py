"""Serving benchmark: one mixed stream of requests over 50 effects, served three ways, in one run.

  (a) Base            per-request effect LoRA: load, 40 steps x true CFG (80 NFE), unload
  (b) Base+Lightning  effect LoRA hotswapped into a prepared slot (diffusers ``hotswap=True``),
                      stacked with the Lightning LoRA, 8 steps, no CFG
  (c) Ours            one CollectionLoRA fused into the weights at start-up (``fuse_lora``, LoRA
                      layers dropped), 8 steps, no CFG, the effect chosen by its prompt

Requests are served one at a time (batch 1) and interleaved round-robin over the three servers,
so load spikes on a shared machine hit all three alike. Each server has its own copy of the
backbone. Prints throughput and p50 / p95 latency side by side and checks target P4:
ours / Base >= 10x and ours / (Base+Lightning, hotswap) >= 1.3x in throughput.

Adapters: by default LoRA files *of the run's shapes with random weights*, written with
``methods.lora.save_lora`` (speed does not depend on the values; the output says so).
``--trained`` uses the run's real teachers, Lightning and CollectionLoRA instead (trained and
cached if missing -- that can take long).

    python benchmarks/serving.py                          # synth preset shapes, CPU
    python benchmarks/serving.py --requests 30 --preset smoke
    python benchmarks/serving.py backbone.device=cuda --out serving.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from bench.cache import ArtifactCache
from bench.config import PRESETS, LoraTrainConfig, apply_overrides
from bench.studies.deployment.serving import fuse_collection, load_adapter, quiet_loaders
from bench.studies.deployment.storage import write_random_loras
from bench.workspace import Workspace
from methods.backbones import BACKBONES
from methods.flow import generate

TARGETS = {"ours / base": 10.0, "ours / lightning_hotswap": 1.3}


class Server:
    """One serving setup on its own backbone copy; ``serve`` handles one request end to end."""

    name = ""

    def __init__(self, bb, cfg, source) -> None:
        self.bb, self.cfg, self.s = bb, cfg, cfg.sampling
        self.src = source.to(bb.device)
        self.src_lat = bb.encode_images(self.src)
        size = self.src.shape[-1]
        self.grid = bb.latent_grid(size, size)
        self.latencies: list[float] = []
        self.nfe = 0

    def _generate(self, prompt: str, steps: int, cfg_scale: float, sampler: str) -> None:
        bb = self.bb
        cond = bb.encode_prompts([prompt], self.src)
        uncond = bb.encode_prompts([""], self.src) if cfg_scale > 1 else None
        _, self.nfe = generate(bb, self.src_lat, cond, self.grid, steps=steps, shift=self.s.shift, cfg_scale=cfg_scale,
                               uncond=uncond, generator=torch.Generator().manual_seed(0), sampler=sampler)

    def handle(self, effect_index: int, effect) -> None:
        raise NotImplementedError

    def serve(self, effect_index: int, effect, *, record: bool = True) -> None:
        sync = torch.cuda.synchronize if self.bb.device.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            self.handle(effect_index, effect)
        sync()
        if record:
            self.latencies.append(time.perf_counter() - t0)


class BaseServer(Server):
    name = "base"
    label = "(a) Base, per-request LoRA load/unload"

    def __init__(self, bb, cfg, source, teachers) -> None:
        super().__init__(bb, cfg, source)
        self.teachers = teachers

    def handle(self, i, effect) -> None:
        t = self.bb.transformer
        load_adapter(t, self.teachers[i], "req")
        t.set_adapters(["req"])
        self._generate(effect.prompt, self.s.base_steps, self.s.base_cfg, "euler")
        t.delete_adapters("req")


class LightningHotswapServer(Server):
    name = "lightning_hotswap"
    label = "(b) Base+Lightning, hotswap"

    def __init__(self, bb, cfg, source, teachers, lightning, target_rank) -> None:
        super().__init__(bb, cfg, source)
        self.teachers = teachers
        t = bb.transformer
        t.enable_lora_hotswap(target_rank=target_rank)  # before the first load (FACTS)
        load_adapter(t, lightning, "lightning")
        load_adapter(t, teachers[0], "slot")
        t.set_adapters(["slot", "lightning"])

    def handle(self, i, effect) -> None:
        load_adapter(self.bb.transformer, self.teachers[i], "slot", hotswap=True)
        self._generate(effect.prompt, self.s.fast_steps, 1.0, self.s.dmd_sampler)


class OursFusedServer(Server):
    name = "ours_fused"
    label = "(c) Ours, fused CollectionLoRA"

    def __init__(self, bb, cfg, source, collection) -> None:
        super().__init__(bb, cfg, source)
        fuse_collection(bb.transformer, collection)

    def handle(self, i, effect) -> None:
        self._generate(effect.recaption_prompt_with_trigword or effect.prompt, self.s.fast_steps, 1.0,
                       self.s.dmd_sampler)


def percentile(values: list[float], q: float) -> float:
    xs = sorted(values)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def adapters(ws, cfg, bb, effects, tmp: Path, trained: bool):
    """(teacher files, Lightning file, CollectionLoRA file, note)."""
    if trained:
        from methods.distill import lightning_lora
        from methods.lora import WEIGHT_NAME
        from methods.ours import CollectionLoRA, Components

        teachers = [Path(ws.teacher_dir(e)) / WEIGHT_NAME for e in effects]
        lightning = Path(lightning_lora(ws)) / WEIGHT_NAME
        ours = CollectionLoRA(ws, Components())
        ours.prepare(effects)
        return teachers, lightning, Path(ours.lora) / WEIGHT_NAME, "trained adapters of this run"
    t = bb.transformer
    teachers = write_random_loras(t, cfg.teacher, len(effects), tmp, prefix="teacher", seed=0)
    lightning = write_random_loras(t, LoraTrainConfig(rank=cfg.lightning.rank, alpha=cfg.lightning.alpha), 1, tmp,
                                   prefix="lightning", seed=1)[0]
    ours = write_random_loras(t, LoraTrainConfig(rank=cfg.distill.rank, alpha=cfg.distill.alpha), 1, tmp,
                              prefix="collection", seed=2)[0]
    return teachers, lightning, ours, ("tiny random LoRAs of the run's shapes (ranks "
                                       f"{cfg.teacher.rank}/{cfg.lightning.rank}/{cfg.distill.rank}, "
                                       f"{len(cfg.teacher.target_modules)} target modules), saved with save_lora")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="synth")
    ap.add_argument("--effects", type=int, default=50, help="effects in the request mix (default 50)")
    ap.add_argument("--requests", type=int, default=40, help="requests in the stream (default 40)")
    ap.add_argument("--warmup", type=int, default=2, help="unrecorded warm-up requests per server")
    ap.add_argument("--trained", action="store_true", help="use the run's trained adapters (may train them)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's); 1 avoids oversubscription on a shared small box")
    ap.add_argument("--cache", default=None)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("overrides", nargs="*", metavar="key=value")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = replace(apply_overrides(PRESETS.get(args.preset)(), args.overrides), n_effects=args.effects)
    ws = Workspace(cfg, ArtifactCache(args.cache, verbose=False))
    effects = list(ws.bench.effects)
    test = ws.full_bench.test[0]
    source = ws.images([test.source_image], [test.origin])
    kind = cfg.backbone.kind

    def backbone():
        # serving speed does not depend on the weights: the tiny backbone is freshly initialised
        if kind == "tiny-qwen":
            return BACKBONES.get(kind).create(cfg.backbone, seed=0)
        return ws.load_backbone(prompt_cache=False)  # latency includes the text encoder

    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="serving-") as tmp, quiet_loaders():
        bbs = [backbone() for _ in range(3)]
        teachers, lightning, collection, note = adapters(ws, cfg, bbs[0], effects, Path(tmp), args.trained)
        rank = max(cfg.teacher.rank, cfg.lightning.rank, cfg.distill.rank)
        servers = [BaseServer(bbs[0], cfg, source, teachers),
                   LightningHotswapServer(bbs[1], cfg, source, teachers, lightning, rank),
                   OursFusedServer(bbs[2], cfg, source, collection)]
        rng = random.Random(args.seed)
        stream = [rng.randrange(len(effects)) for _ in range(args.requests)]
        for server in servers:
            for i in stream[: args.warmup]:
                server.serve(i, effects[i], record=False)
        for k, i in enumerate(stream):  # round-robin, rotating who goes first
            for j in range(3):
                server = servers[(k + j) % 3]
                server.serve(i, effects[i])

    results = {}
    for sv in servers:
        total = sum(sv.latencies)
        results[sv.name] = {"label": sv.label, "nfe": sv.nfe, "requests": len(sv.latencies),
                            "throughput_rps": len(sv.latencies) / total, "p50_s": percentile(sv.latencies, 0.5),
                            "p95_s": percentile(sv.latencies, 0.95), "mean_s": statistics.mean(sv.latencies)}
    ratios = {"ours / base": results["ours_fused"]["throughput_rps"] / results["base"]["throughput_rps"],
              "ours / lightning_hotswap": results["ours_fused"]["throughput_rps"]
              / results["lightning_hotswap"]["throughput_rps"]}
    device = str(bbs[0].device) + (f" ({torch.cuda.get_device_name()})" if bbs[0].device.type == "cuda" else
                                   f" ({torch.get_num_threads()} threads)")
    print(f"serving {args.requests} requests over {len(effects)} effects, preset {cfg.preset} "
          f"({cfg.backbone.num_layers} layers, {cfg.world.image_size}px), {device}")
    print(f"adapters: {note}\n")
    print("| server | NFE | throughput (req/s) | p50 | p95 | mean |\n|---|---|---|---|---|---|")
    for r in results.values():
        print(f"| {r['label']} | {r['nfe']} | {r['throughput_rps']:.2f} | {r['p50_s'] * 1e3:.1f} ms | "
              f"{r['p95_s'] * 1e3:.1f} ms | {r['mean_s'] * 1e3:.1f} ms |")
    print()
    ok = True
    for key, value in ratios.items():
        passed = value >= TARGETS[key]
        ok &= passed
        print(f"P4 throughput {key}: {value:.2f}x (target >= {TARGETS[key]}x) {'PASS' if passed else 'FAIL'}")
    print(f"\ntotal {time.perf_counter() - t_start:.1f}s")
    if args.out:
        Path(args.out).write_text(json.dumps({"results": results, "ratios": ratios, "targets": TARGETS,
                                              "adapters": note, "device": device, "preset": cfg.preset,
                                              "requests": args.requests, "effects": len(effects)}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
