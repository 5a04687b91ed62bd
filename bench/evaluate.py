"""Evaluate a prepared method on EffectBench test rows and produce tidy result rows."""

from __future__ import annotations

import dataclasses
import json
import zlib
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from bench.effectbench import save_image
from bench.workspace import Workspace
from methods import Method
from metrics import EvalBatch, Metric, MetricUnavailable

SAVED_IMAGES_PER_EFFECT = 4  # result PNGs kept per effect for qualitative grids


def evaluate(method: Method, ws: Workspace, metrics: list[Metric], *, run: str,
             image_dir: Path | None = None) -> pd.DataFrame:
    cfg = ws.cfg
    components = dataclasses.asdict(method.components) if method.components is not None else {}
    ident = {
        "run": run, "method": method.name,
        "ablation": ",".join(sorted(cfg.components_off)) or "none",
        "components": json.dumps(components, sort_keys=True), "preset": cfg.preset,
        "n_effects": cfg.n_effects, "seed": cfg.seed,
    }
    records: list[dict] = []
    for effect in tqdm(ws.bench.effects, desc=f"eval {method.name}", leave=False, disable=None):
        tests = ws.bench.test_rows(effect.lora_name)
        if cfg.eval.limit is not None:
            tests = tests[: cfg.eval.limit]
        if not tests:
            raise ValueError(f"effect {effect.lora_name!r} has no test rows")
        sources = ws.images([t.source_image for t in tests], [t.origin for t in tests])
        targets = (ws.images([t.target_image for t in tests], [t.origin for t in tests])
                   if all(t.target_image is not None for t in tests) else None)
        template = ws.bench.templates_for(effect.lora_name)[0]
        reference = ws.images([template.template_result], [template.origin])
        reference_source = ws.images([template.template_source], [template.origin])
        # Per-effect seed: a method's samples do not depend on which other effects ran before.
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + zlib.crc32(effect.lora_name.encode()))
        results, nfes = [], []
        for start in range(0, len(tests), cfg.eval.batch_size):
            out = method.edit(effect, sources[start:start + cfg.eval.batch_size], gen)
            results.append(out.images.cpu())
            nfes.append(out.nfe)
        result = torch.cat(results)
        n = len(tests)
        # Judges see what the user asked for (the effect's instruction), not the student's trigger prompt.
        batch = EvalBatch(result, sources, [effect.prompt] * n, targets, reference.expand(n, -1, -1, -1),
                          reference_source.expand(n, -1, -1, -1),
                          [template.criteria or effect.criteria or ""] * n)
        base = {**ident, "effect": effect.lora_name, "family": effect.family or "",
                "category": effect.data_type}
        for m in metrics:
            try:
                scores = m.score(batch)
                # judges mark unparsable answers per sample; they are counted, never defaulted
                statuses = list(getattr(m, "sample_status", None) or ["ok"] * n)
                notes = list(getattr(m, "sample_notes", None) or [""] * n)
            except MetricUnavailable as err:
                scores, statuses, notes = [float("nan")] * n, ["missing"] * n, [str(err)] * n
            for i, value in enumerate(scores):
                records.append({**base, "sample": i, "metric": m.info.name, "value": float(value),
                                "status": statuses[i], "note": notes[i], "role": m.info.role or "",
                                "synthetic": m.info.synthetic, "higher_is_better": m.info.higher_is_better})
        nfe = max(nfes)
        for i in range(len(tests)):
            records.append({**base, "sample": i, "metric": "nfe", "value": float(nfe), "status": "ok",
                            "note": "counted transformer calls per image", "role": "NFE",
                            "synthetic": False, "higher_is_better": False})
        if image_dir is not None:
            for i in range(min(SAVED_IMAGES_PER_EFFECT, len(tests))):
                save_image(image_dir / effect.lora_name / f"{i:02d}.png", result[i].permute(1, 2, 0).numpy())
    return pd.DataFrame.from_records(records)
