"""Deployment cost, measured (DESIGN 8; the paper's deployment table).

For N effects served, one :class:`bench.cells.DeploymentCell` measures:

* **storage**: bytes on disk of the adapter files needed. Baseline (the conventional pipeline):
  N per-effect LoRAs + the Lightning LoRA. Ours: ceil(N / capacity) CollectionLoRAs. The files
  are written through ``methods.lora.save_lora`` at the run's configured ranks and target
  modules and ``stat``-ed; their weights are random (a file's size depends only on its shapes,
  so trained files have the same size) -- the rows say so in ``note``.
* **routing**: latency per request and accuracy of each router (``bench/studies/deployment/routers.py``) on
  paraphrased instructions (:func:`paraphrases`). Baseline routes among N effects. Ours needs no
  router while one CollectionLoRA holds every effect (latency 0 because no call is made,
  accuracy 100%); beyond the capacity the same router picks an effect and the request is right
  when that effect lives in the right CollectionLoRA.
* **adapter switching**: per-request load + unload (diffusers loaders), diffusers hotswap into a
  prepared slot (``enable_lora_hotswap`` before the first load; the widest adapter first) and,
  for ours, fusing once (``fuse_lora`` + dropping the LoRA layers) and swapping a fused
  collection (unfuse + load + fuse) when several are deployed.
* **end to end per image** (route + switch + generate, batch 1) and **peak memory**:
  ``torch.cuda.max_memory_allocated`` on GPU, the process's peak resident set size sampled
  during the request on CPU.

``python -m bench.studies deployment`` runs the cells on their own (same results layout as bench.run);
``python -m bench.run --grid deployment`` runs the paper's grid of them and its report.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import re
import statistics
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from bench.config import LoraTrainConfig
from bench.studies.deployment.routers import ROUTERS, Candidate, RouterUnavailable

RANDOM_NOTE = "adapter files of the configured shapes with random weights (file size depends only on shapes)"

# --------------------------------------------------------------------------------------------
# paraphrased instructions

_SYNONYMS: dict[str, tuple[str, ...]] = {
    "image": ("picture", "photo", "shot"), "picture": ("image", "photo"), "photo": ("picture", "image"),
    "colour": ("color", "hue"), "colours": ("colors", "hues"), "colored": ("coloured", "tinted"),
    "dark": ("dim", "shadowy"), "darkened": ("dimmed", "shaded"), "bright": ("light", "brilliant"),
    "covers": ("fills", "is over"), "laid": ("placed", "put"), "over": ("across", "on top of"),
    "fine": ("thin", "narrow"), "wide": ("broad", "thick"), "soft": ("gentle", "subtle"),
    "strong": ("heavy", "intense"), "effect": ("look", "style", "filter"), "small": ("tiny", "little"),
    "large": ("big", "huge"), "whole": ("entire", "full"), "everything": ("the whole scene", "all of it"),
}
_TEMPLATES: tuple[str, ...] = (
    "Make this {thing} look like the {phrase} {kind}.",
    "Could you give my {thing} a {phrase} look?",
    "I'd like the {phrase} treatment on this one.",
    "Turn it into something where {desc}",
    "Edit so that {desc}",
    "Please apply a {phrase} {kind} to the {thing}.",
    "{desc_cap} Do that to my {thing}.",
    "Want: {phrase}. Keep the subject recognisable.",
)


def effect_phrase(prompt: str) -> str:
    """``"Apply the sepia gradient map effect."`` -> ``"sepia gradient map"`` (else the prompt)."""
    text = prompt.strip().rstrip(".")
    low = text.lower()
    if low.startswith("apply the ") and low.endswith(" effect"):
        return text[len("apply the "):-len(" effect")]
    return text


def _swap_words(text: str, rng: random.Random, rate: float) -> str:
    out = []
    for word in text.split():
        core = word.strip(".,:;!?").lower()
        if core in _SYNONYMS and rng.random() < rate:
            out.append(word.lower().replace(core, rng.choice(_SYNONYMS[core])))
        else:
            out.append(word)
    return " ".join(out)


def _vague(text: str, rng: random.Random, keep: float) -> str:
    """What a user remembers of a description: its first clause, some words dropped."""
    clause = re.split(r"[:;,]", text.strip().rstrip("."))[0]
    words = clause.split()
    kept = [w for w in words if rng.random() < keep] or words[:1]
    return " ".join(kept)


def paraphrases(effect: Candidate, n: int, seed: int = 0) -> list[str]:
    """``n`` paraphrased requests for ``effect``, written from its instruction and description
    (never its trigger word): synonyms swapped, the description cut to its first clause with
    words dropped, as a user would half-remember it. Deterministic per (effect, seed)."""
    rng = random.Random(zlib.crc32(f"{effect.lora_name}|{seed}".encode()))
    phrase = effect_phrase(effect.prompt)
    desc = (effect.description or effect.prompt).strip()
    out: list[str] = []
    order = list(range(len(_TEMPLATES)))
    rng.shuffle(order)
    for i in range(n):
        template = _TEMPLATES[order[i % len(order)]]
        d = _swap_words(_vague(desc, rng, 0.8), rng, 0.6)
        p = _swap_words(_vague(phrase, rng, 0.85), rng, 0.5)
        text = template.format(thing=rng.choice(("photo", "picture", "image", "pic")), phrase=p,
                               kind=rng.choice(("effect", "style", "filter")), desc=d[0].lower() + d[1:] + ".",
                               desc_cap=d[0].upper() + d[1:] + ".")
        out.append(text)
    return out


def exact_requests(effect: Candidate) -> list[str]:
    """Requests that name the effect exactly: its trigger word, and its own instruction."""
    return [r for r in (f"{effect.trigger} please" if effect.trigger else None, effect.prompt) if r]


# --------------------------------------------------------------------------------------------
# measuring helpers


class PeakMemory:
    """Peak memory during a block: CUDA allocator peak on GPU, sampled process RSS on CPU."""

    def __init__(self, device: str = "cpu", interval_s: float = 0.002) -> None:
        self.device, self.interval_s = str(device), interval_s
        self.peak = 0
        self.kind = "cuda_max_memory_allocated" if self.device.startswith("cuda") else "process_peak_rss"

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> "PeakMemory":
        if self.kind.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return self
        self._stop = threading.Event()
        self.peak = self.rss()

        def sample() -> None:
            while not self._stop.wait(self.interval_s):
                self.peak = max(self.peak, self.rss())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.kind.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            self.peak = int(torch.cuda.max_memory_allocated())
            return
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def timed(fn: Callable[[], Any], device: str = "cpu") -> tuple[float, Any]:
    """Wall time of ``fn()`` (CUDA-synchronised on GPU) and its result."""
    sync = None
    if str(device).startswith("cuda"):
        import torch

        sync = torch.cuda.synchronize
        sync()
    t0 = time.perf_counter()
    result = fn()
    if sync:
        sync()
    return time.perf_counter() - t0, result


@contextlib.contextmanager
def quiet_loaders() -> Iterator[None]:
    """peft/diffusers warn about other adapters' keys on every multi-adapter load; timing loops
    would print thousands of lines."""
    loggers = [logging.getLogger(n) for n in ("diffusers", "peft")]
    levels = [lg.level for lg in loggers]
    import warnings

    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def write_random_loras(transformer: Any, cfg: LoraTrainConfig, count: int, directory: Path, *, prefix: str,
                       seed: int) -> list[Path]:
    """``count`` LoRA files of ``cfg``'s rank / targets with random weights, through ``save_lora``."""
    import torch

    from methods.lora import add_lora, save_lora

    name = f"_{prefix}_writer"
    add_lora(transformer, name, cfg)
    params = [(n, p) for n, p in transformer.named_parameters() if f".{name}." in n]
    gen = torch.Generator().manual_seed(seed)
    files = []
    try:
        for i in range(count):
            with torch.no_grad():
                for pname, p in params:  # B random too: hotswap / fuse then move real numbers
                    scale = 0.02 if "lora_B" in pname else 1.0 / math.sqrt(p.shape[-1])
                    p.copy_(torch.randn(p.shape, generator=gen) * scale)
            files.append(save_lora(transformer, name, directory / f"{prefix}-{i:04d}"))
    finally:
        transformer.delete_adapters(name)
    return files


def load_adapter(transformer: Any, file: Path, name: str, *, hotswap: bool = False) -> None:
    """Read a LoRA file and load it as adapter ``name`` (into a prepared slot with ``hotswap``), the
    way ``methods.lora.load_lora`` does, so switch timings include reading the file."""
    from diffusers import QwenImagePipeline

    state, metadata = QwenImagePipeline.lora_state_dict(str(file), return_lora_metadata=True)
    QwenImagePipeline.load_lora_into_transformer(state, transformer=transformer, adapter_name=name,
                                                 metadata=metadata, hotswap=hotswap)


# --------------------------------------------------------------------------------------------
# the measurement


@dataclass
class DeploymentRows:
    ident: dict[str, Any]
    records: list[dict]

    def add(self, method: str, metric: str, values: Sequence[float] | float, *, higher: bool, note: str = "",
            router: str = "", status: str = "ok", effects: Sequence[str] | None = None) -> None:
        values = [values] if isinstance(values, (int, float)) else list(values)
        for i, v in enumerate(values):
            self.records.append({**self.ident, "method": method, "metric": metric, "value": float(v),
                                 "status": status, "note": note, "router": router, "higher_is_better": higher,
                                 "sample": i, "effect": effects[i] if effects else ""})


def collection_of(index: int, capacity: int) -> int:
    """Effects are packed into CollectionLoRAs in catalogue order, ``capacity`` each."""
    return index // capacity


def measure_routing(rows: DeploymentRows, effects: Sequence[Candidate], routers: Sequence[str], *, capacity: int,
                    requests_per_effect: int, seed: int) -> None:
    requests = [(i, text) for i, e in enumerate(effects) for text in paraphrases(e, requests_per_effect, seed)]
    index = {e.lora_name: i for i, e in enumerate(effects)}
    n_collections = math.ceil(len(effects) / capacity)
    names = [effects[i].lora_name for i, _ in requests]
    for router_name in routers:
        try:
            router = ROUTERS.get(router_name)(effects)
            latency, correct, ours_correct = [], [], []
            for true, text in requests:
                dt, chosen = timed(lambda: router.route(text))
                latency.append(dt)
                correct.append(float(chosen == effects[true].lora_name))
                ours_correct.append(float(chosen is not None and
                                          collection_of(index[chosen], capacity) == collection_of(true, capacity)))
        except RouterUnavailable as err:
            for method in ("baseline", "ours"):
                for metric, higher in (("routing_latency_s", False), ("routing_accuracy", True)):
                    rows.add(method, metric, [math.nan], higher=higher, router=router_name, status="missing",
                             note=str(err))
            continue
        note = f"{len(requests)} paraphrased requests over {len(effects)} effects"
        rows.add("baseline", "routing_latency_s", latency, higher=False, router=router_name, note=note, effects=names)
        rows.add("baseline", "routing_accuracy", correct, higher=True, router=router_name, note=note, effects=names)
        if n_collections == 1:
            why = "one CollectionLoRA serves every effect: no router call is made"
            rows.add("ours", "routing_latency_s", [0.0] * len(requests), higher=False, router=router_name, note=why,
                     effects=names)
            rows.add("ours", "routing_accuracy", [1.0] * len(requests), higher=True, router=router_name, note=why,
                     effects=names)
        else:
            why = f"{n_collections} CollectionLoRAs: right when the chosen effect is in the right collection"
            rows.add("ours", "routing_latency_s", latency, higher=False, router=router_name, note=why, effects=names)
            rows.add("ours", "routing_accuracy", ours_correct, higher=True, router=router_name, note=why,
                     effects=names)


def measure_storage(rows: DeploymentRows, *, teachers: Sequence[Path], lightning: Path, ours: Sequence[Path],
                    capacity: int, note: str = "") -> None:
    """Bytes on disk (``stat``) of what each pipeline must ship to serve these effects."""
    files = {"baseline": [*teachers, lightning], "ours": list(ours)}
    what = {"baseline": f"{len(teachers)} effect LoRAs + 1 Lightning LoRA",
            "ours": f"{len(ours)} CollectionLoRA(s) of capacity {capacity}"}
    for method, fs in files.items():
        rows.add(method, "storage_bytes", sum(Path(f).stat().st_size for f in fs), higher=False,
                 note="; ".join(filter(None, [what[method], note])))
        rows.add(method, "storage_files", len(fs), higher=False)


def measure_serving(rows: DeploymentRows, bb: Any, *, effects: Sequence[Any], teachers: Sequence[Path], lightning: Path,
                    ours: Sequence[Path], capacity: int, sampling: Any, source: Any, repeats: int, seed: int,
                    ranks: tuple[int, ...]) -> None:
    """Switch latencies, end-to-end latency per image and peak memory of the three serving setups,
    on one backbone, in the order that keeps its base weights clean until the last (fused) one."""
    import torch

    from methods.flow import generate

    t, device, s = bb.transformer, str(bb.device), sampling
    n_collections = len(ours)
    rng = random.Random(seed)
    order = [rng.randrange(len(effects)) for _ in range(repeats + 1)]  # first: warm-up request
    src = source.to(bb.device)
    src_lat = bb.encode_images(src)
    size_px = src.shape[-1]
    grid = bb.latent_grid(size_px, size_px)
    router = ROUTERS.get("embedding")(effects)

    def gen_image(prompt: str, *, steps: int, cfg_scale: float, sampler: str) -> None:
        cond = bb.encode_prompts([prompt], src)
        uncond = bb.encode_prompts([""], src) if cfg_scale > 1 else None
        generate(bb, src_lat, cond, grid, steps=steps, shift=s.shift, cfg_scale=cfg_scale, uncond=uncond,
                 generator=torch.Generator().manual_seed(0), sampler=sampler)

    def request_text(i: int) -> str:
        return paraphrases(effects[i], 1, seed)[0]

    # (1) Base (base_steps x CFG) with per-request load + unload of the effect LoRA.
    switch, e2e, mem = [], [], []
    for k, i in enumerate(order):
        text = request_text(i)
        with PeakMemory(device) as pm:
            t_route, _ = timed(lambda: router.route(text), device)
            t_load, _ = timed(lambda: (load_adapter(t, teachers[i], "req"), t.set_adapters(["req"])), device)
            t_gen, _ = timed(lambda: gen_image(effects[i].prompt, steps=s.base_steps, cfg_scale=s.base_cfg,
                                               sampler="euler"), device)
            t_unload, _ = timed(lambda: t.delete_adapters("req"), device)
        if k == 0:
            continue  # warm-up (first-call allocations, lazy imports)
        switch.append(t_load + t_unload)
        e2e.append(t_route + t_load + t_gen + t_unload)
        mem.append(pm.peak)
    load_note = "diffusers load_lora_into_transformer + delete_adapters, per request"
    rows.add("base", "switch_load_unload_s", switch, higher=False, note=load_note)
    rows.add("baseline", "switch_load_unload_s", switch, higher=False, note=load_note)
    rows.add("base", "e2e_latency_s", e2e, higher=False,
             note=f"route (embedding) + load + {s.base_steps} steps x CFG {s.base_cfg} + unload, batch 1")
    rows.add("base", "peak_memory_bytes", mem, higher=False, note=pm.kind)

    # (2) Baseline: effect LoRA hotswapped into a slot, stacked with Lightning, fast steps, no CFG.
    #     enable_lora_hotswap before the first load, slot sized for the widest adapter (FACTS).
    t.enable_lora_hotswap(target_rank=max(ranks))
    load_adapter(t, lightning, "lightning")
    load_adapter(t, teachers[order[0]], "slot")
    t.set_adapters(["slot", "lightning"])
    switch, e2e, mem = [], [], []
    for k, i in enumerate(order):
        text = request_text(i)
        with PeakMemory(device) as pm:
            t_route, _ = timed(lambda: router.route(text), device)
            t_swap, _ = timed(lambda: load_adapter(t, teachers[i], "slot", hotswap=True), device)
            t_gen, _ = timed(lambda: gen_image(effects[i].prompt, steps=s.fast_steps, cfg_scale=1.0,
                                               sampler=s.dmd_sampler), device)
        if k == 0:
            continue
        switch.append(t_swap)
        e2e.append(t_route + t_swap + t_gen)
        mem.append(pm.peak)
    rows.add("baseline", "switch_hotswap_s", switch, higher=False, note="diffusers hotswap=True into a prepared slot")
    rows.add("baseline", "e2e_latency_s", e2e, higher=False,
             note=f"route (embedding) + hotswap + {s.fast_steps} steps with Lightning, batch 1")
    rows.add("baseline", "peak_memory_bytes", mem, higher=False, note=pm.kind)
    t.delete_adapters(["slot", "lightning"])

    # (3) Ours: a CollectionLoRA fused into the weights (no LoRA layers left), fast steps, no CFG.
    t_fuse, _ = timed(lambda: fuse_collection(t, ours[0]), device)
    rows.add("ours", "fuse_once_s", t_fuse, higher=False, note="load + fuse_lora + unload_lora, once at start-up")
    swaps = []
    if n_collections > 1:
        for k in range(repeats):
            old, new = ours[k % n_collections], ours[(k + 1) % n_collections]
            swaps.append(timed(lambda: (unfuse_collection(t, old), fuse_collection(t, new)), device)[0])
        fused = ours[repeats % n_collections]
    else:
        fused = ours[0]
    rows.add("ours", "switch_fused_s", swaps or [0.0], higher=False,
             note=("unfuse one CollectionLoRA, fuse another" if swaps else
                   "one fused CollectionLoRA serves every effect: nothing to switch"))
    swap_cost = statistics.mean(swaps) if swaps else 0.0
    e2e, mem = [], []
    for k, i in enumerate(order):
        text = request_text(i)
        prompt = getattr(effects[i], "recaption_prompt_with_trigword", None) or effects[i].prompt
        with PeakMemory(device) as pm:
            t_route = timed(lambda: router.route(text), device)[0] if n_collections > 1 else 0.0
            t_gen, _ = timed(lambda: gen_image(prompt, steps=s.fast_steps, cfg_scale=1.0, sampler=s.dmd_sampler),
                             device)
        if k == 0:
            continue
        # a swap is paid only when consecutive requests live in different collections
        changed = n_collections > 1 and collection_of(i, capacity) != collection_of(order[k - 1], capacity)
        e2e.append(t_route + (swap_cost if changed else 0.0) + t_gen)
        mem.append(pm.peak)
    rows.add("ours", "e2e_latency_s", e2e, higher=False,
             note=f"{'route + ' if n_collections > 1 else ''}{s.fast_steps} steps, fused CollectionLoRA, batch 1")
    rows.add("ours", "peak_memory_bytes", mem, higher=False, note=pm.kind)
    unfuse_collection(t, fused)  # leave the backbone's base weights as they were


def fuse_collection(transformer: Any, file: Path) -> None:
    """Load a LoRA, merge it into the base weights and drop the LoRA layers (no per-call cost)."""
    load_adapter(transformer, file, "collection")
    transformer.fuse_lora(adapter_names=["collection"])
    transformer.unload_lora()


def unfuse_collection(transformer: Any, file: Path) -> None:
    """Subtract a fused LoRA's delta from the base weights (load it again, merge with scale -1)."""
    load_adapter(transformer, file, "collection")
    transformer.fuse_lora(adapter_names=["collection"], lora_scale=-1.0)
    transformer.unload_lora()


def measure_deployment(cell: Any, *, out: Path, cache: Any) -> pd.DataFrame:
    """All deployment measurements of one cell as tidy rows."""
    from bench.store import cell_id
    from bench.workspace import Workspace

    cfg = replace(cell.base, n_effects=cell.n_effects)
    ws = Workspace(cfg, cache)
    effects = list(ws.full_bench.select(cell.n_effects).effects)
    if len(effects) < cell.n_effects:
        raise ValueError(f"deployment at N={cell.n_effects}: the EffectBench has only {len(effects)} effects")
    rows = DeploymentRows({"run": cell_id(cell), "ablation": "none", "components": "{}", "preset": cfg.preset,
                  "n_effects": cell.n_effects, "family": "", "category": "", "role": "", "synthetic": False,
                  "seed": cell.seed}, [])
    n_collections = math.ceil(cell.n_effects / cell.capacity)

    measure_routing(rows, effects, cell.routers, capacity=cell.capacity,
                    requests_per_effect=cell.requests_per_effect, seed=cell.seed)

    bb = _deployment_backbone(ws)
    t = bb.transformer
    teacher_cfg = cfg.teacher
    lightning_cfg = LoraTrainConfig(rank=cfg.lightning.rank, alpha=cfg.lightning.alpha)
    ours_cfg = LoraTrainConfig(rank=cfg.distill.rank, alpha=cfg.distill.alpha)
    reps = max(1, cell.timing_repeats)
    with tempfile.TemporaryDirectory(prefix="deploy-") as tmp, quiet_loaders():
        tmp = Path(tmp)
        teachers = write_random_loras(t, teacher_cfg, cell.n_effects, tmp, prefix="teacher", seed=cell.seed)
        lightning = write_random_loras(t, lightning_cfg, 1, tmp, prefix="lightning", seed=cell.seed + 1)[0]
        ours = write_random_loras(t, ours_cfg, n_collections, tmp, prefix="collection", seed=cell.seed + 2)

        measure_storage(rows, teachers=teachers, lightning=lightning, ours=ours, capacity=cell.capacity,
                        note=RANDOM_NOTE)

        src = ws.images([ws.full_bench.test[0].source_image], [ws.full_bench.test[0].origin])
        measure_serving(rows, bb, effects=effects, teachers=teachers, lightning=lightning, ours=ours,
                        capacity=cell.capacity, sampling=cfg.sampling, source=src, repeats=reps, seed=cell.seed,
                        ranks=(teacher_cfg.rank, lightning_cfg.rank, ours_cfg.rank))
    return pd.DataFrame.from_records(rows.records)


def _deployment_backbone(ws: Any) -> Any:
    """A backbone of the run's shapes. Costs do not depend on the weights, so the tiny synthetic
    backbone is freshly initialised (no pretraining); a real backbone is loaded as for a run."""
    from methods.backbones import BACKBONES

    kind = ws.cfg.backbone.kind
    cls = BACKBONES.get(kind)
    if kind == "tiny-qwen":
        return cls.create(ws.cfg.backbone, seed=ws.cfg.seed)
    return ws.load_backbone()
