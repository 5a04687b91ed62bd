"""Zero-shot composition: ``ours`` given "A then B" in one 8-step pass, against chaining the
teachers (teacher A at Base settings, then teacher B on its result). In the synthetic world both
are scored against the exact B(A(source)). ``python -m bench.studies composition`` runs it
(bench/studies/cli.py)."""

from __future__ import annotations

import zlib

import pandas as pd
import torch

from bench.data.effectbench import EffectSpec
from bench.studies.extension import collection_lora
from bench.workspace import Workspace
from methods.adapters import AdapterBank
from methods.distill import edit_with
from methods.lora import load_lora
from metrics import METRICS, EvalBatch


def compose_prompt(a: EffectSpec, b: EffectSpec) -> str:
    # Triggers first: the synthetic text encoder keeps the first tokens of a long prompt.
    return f"{a.trigger} then {b.trigger}, {a.description} then {b.description}"


def composition(ws: Workspace, pairs: int) -> pd.DataFrame:
    effects = list(ws.bench.effects)
    if len(effects) < 2:
        raise ValueError("composition needs at least 2 effects (--effects)")
    chosen = [(effects[i], effects[(i + 1) % len(effects)]) for i in range(min(pairs, len(effects)))]
    lora = collection_lora(ws, effects)
    bb = ws.load_backbone()
    load_lora(bb.transformer, lora, "ours")
    bank = AdapterBank(bb.transformer)
    for e in effects:
        bank.add_teacher(e.lora_name, ws.teacher_dir(e))
    exact = None
    if ws.cfg.world.kind == "synthetic":
        from bench.synthetic.effects import build_effects, effects_by_name
        exact = effects_by_name(build_effects(ws.cfg.world.seed))
    s, limit = ws.cfg.sampling, ws.cfg.eval.limit
    records = []
    for a, b in chosen:
        tests = [t for t in ws.bench.test_rows(a.lora_name)][:limit]
        src = ws.images([t.source_image for t in tests])
        gen = lambda: torch.Generator().manual_seed(zlib.crc32(f"{a.lora_name}+{b.lora_name}".encode()))  # noqa: E731
        ours, nfe_ours = edit_with(bb, bank, ("ours",), src, compose_prompt(a, b), steps=s.fast_steps,
                                   shift=s.shift, cfg_scale=1.0, generator=gen(), sampler=s.dmd_sampler)
        mid, nfe_a = edit_with(bb, bank, (a.lora_name,), src, a.prompt, steps=s.base_steps, shift=s.shift,
                               cfg_scale=s.base_cfg, generator=gen(), sampler="euler")
        chain, nfe_b = edit_with(bb, bank, (b.lora_name,), mid, b.prompt, steps=s.base_steps, shift=s.shift,
                                 cfg_scale=s.base_cfg, generator=gen(), sampler="euler")
        truth = None
        if exact is not None:
            truth = torch.stack([torch.from_numpy(exact[b.lora_name].apply(exact[a.lora_name].apply(
                x.permute(1, 2, 0).numpy()))).permute(2, 0, 1) for x in src])
        for method, out, nfe in (("ours (A then B, one pass)", ours, nfe_ours),
                                 ("teacher A -> teacher B", chain, nfe_a + nfe_b)):
            batch = EvalBatch(out, src, [f"{a.prompt} then {b.prompt}"] * len(src), truth)
            scores = {"to_teacher_chain_mae": (out - chain).abs().flatten(1).mean(1).tolist(), "nfe": [nfe] * len(src)}
            if truth is not None:
                for name in ("gt_psnr", "gt_mae"):
                    scores[name] = METRICS.get(name)().score(batch)
            for metric, values in scores.items():
                for i, v in enumerate(values):
                    records.append({"method": method, "effect": f"{a.lora_name}+{b.lora_name}",
                                    "family": f"{a.family}+{b.family}", "category": a.data_type, "sample": i,
                                    "metric": metric, "value": float(v),
                                    "higher_is_better": metric == "gt_psnr"})
    return pd.DataFrame.from_records(records)
