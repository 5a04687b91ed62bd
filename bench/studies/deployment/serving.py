"""Serving cost: adapter switching (load + unload, diffusers hotswap, fusing a CollectionLoRA),
end-to-end latency per image (route + switch + generate, batch 1) and peak memory."""

from __future__ import annotations

import contextlib
import logging
import random
import statistics
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.studies.deployment.measure import DeploymentRows, PeakMemory, timed
from bench.studies.deployment.routers import ROUTERS
from bench.studies.deployment.routing import collection_of, paraphrases


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


def load_adapter(transformer: Any, file: Path, name: str, *, hotswap: bool = False) -> None:
    """Read a LoRA file and load it as adapter ``name`` (into a prepared slot with ``hotswap``), the
    way ``methods.lora.load_lora`` does, so switch timings include reading the file."""
    from diffusers import QwenImagePipeline

    state, metadata = QwenImagePipeline.lora_state_dict(str(file), return_lora_metadata=True)
    QwenImagePipeline.load_lora_into_transformer(state, transformer=transformer, adapter_name=name,
                                                 metadata=metadata, hotswap=hotswap)


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

    # (2b) Past capacity: the CollectionLoRAs hotswapped into one slot, unfused (each call pays the
    #      LoRA layers; a switch is a hotswap, not unfuse + fuse). One collection is always fused.
    if n_collections > 1:
        measure_hotswapped_collections(rows, t, device, order, ours=ours, capacity=capacity, router=router,
                                       request_text=request_text, gen_image=gen_image, effects=effects,
                                       steps=s.fast_steps, sampler=s.dmd_sampler)

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


def measure_hotswapped_collections(rows: DeploymentRows, t: Any, device: str, order: Sequence[int], *,
                                   ours: Sequence[Path], capacity: int, router: Any, request_text: Any,
                                   gen_image: Any, effects: Sequence[Any], steps: int, sampler: str) -> None:
    """Serving ``ours`` past capacity the way the baseline serves its LoRAs: the collection a request
    routes to is hotswapped into a slot (all collections share one rank and targets, so no slot
    preparation is needed) and left unfused; a swap is paid only when the collection changes."""
    load_adapter(t, ours[collection_of(order[0], capacity)], "collection")
    t.set_adapters(["collection"])
    held = collection_of(order[0], capacity)
    switch, e2e, mem = [], [], []
    for k, i in enumerate(order):
        text = request_text(i)
        prompt = getattr(effects[i], "recaption_prompt_with_trigword", None) or effects[i].prompt
        c = collection_of(i, capacity)
        with PeakMemory(device) as pm:
            t_route, _ = timed(lambda: router.route(text), device)
            t_swap = 0.0
            if c != held:
                t_swap, _ = timed(lambda: load_adapter(t, ours[c], "collection", hotswap=True), device)
                held = c
            t_gen, _ = timed(lambda: gen_image(prompt, steps=steps, cfg_scale=1.0, sampler=sampler), device)
        if k == 0:
            continue
        if t_swap:
            switch.append(t_swap)
        e2e.append(t_route + t_swap + t_gen)
        mem.append(pm.peak)
    if switch:  # none when every timed request happened to route to the collection already held
        rows.add("ours_hotswap", "switch_hotswap_s", switch, higher=False,
                 note="diffusers hotswap=True of one CollectionLoRA into the slot of another")
    rows.add("ours_hotswap", "e2e_latency_s", e2e, higher=False,
             note=f"route + hotswap when the collection changes + {steps} steps through unfused LoRA layers, batch 1")
    rows.add("ours_hotswap", "peak_memory_bytes", mem, higher=False, note=pm.kind)
    t.delete_adapters(["collection"])


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
