"""Evaluate a prepared method on EffectBench test rows and produce tidy result rows."""

from __future__ import annotations

import dataclasses
import json
import math
import zlib
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from bench.cache import ArtifactSpec
from bench.cost import cost_records
from bench.data.image_io import save_image
from bench.progress import progress
from bench.workspace import Workspace
from methods import Method
from metrics import EvalBatch, Metric, MetricUnavailable, SampleScores

SAVED_IMAGES_PER_EFFECT = 4  # result PNGs kept per effect for qualitative grids
SAMPLES_FILE = "samples.safetensors"  # a "samples" artifact: one effect's edits, (n x draws, 3, H, W) float32


def evaluate(method: Method, ws: Workspace, metrics: list[Metric], *, run: str,
             image_dir: Path | None = None, limit: int | None = None, draws: int | None = None) -> pd.DataFrame:
    """Edit every effect's test sources with ``method`` and score the results: tidy rows, one per
    sample, draw and metric (plus NFE). ``limit`` / ``draws`` override ``eval.limit`` /
    ``eval.draws`` (bench.studies.tune scores students mid-training on a few samples this way)."""
    cfg = ws.cfg
    ident = row_identity(method, cfg, run)
    records: list[dict] = []
    draws = draws or cfg.eval.draws
    limit = limit if limit is not None else cfg.eval.limit
    for effect in progress(ws.bench.effects, desc=f"eval {method.name}"):
        tests = ws.bench.test_rows(effect.lora_name)
        if limit is not None:
            tests = tests[:limit]
        if not tests:
            raise ValueError(f"effect {effect.lora_name!r} has no test rows")
        result, nfe, sampler = samples(method, ws, effect, tests, draws)
        n = len(result)
        batch = effect_batch(ws, effect, tests, result, draws)
        base = {**ident, "effect": effect.lora_name, "family": effect.family or "",
                "category": effect.data_type, "variation": effect.variation_kind, "sampler": sampler or ""}
        for m in metrics:
            try:
                # judges mark unparsable or unanswered samples one by one; counted, never defaulted
                scored = m.score_samples(batch)
            except MetricUnavailable as err:
                scored = SampleScores([float("nan")] * n, ["missing"] * n, [str(err)] * n)
            for i, value in enumerate(scored.values):
                status, note = scored.status[i], scored.notes[i]
                if status == "ok" and math.isnan(value):  # e.g. mode coverage of a texture effect
                    status, note = "n/a", f"{m.info.name} is not defined for a {base['variation']} effect"
                records.append({**base, "sample": i // draws, "draw": i % draws, "metric": m.info.name,
                                "value": float(value), "status": status, "note": note, "role": m.info.role or "",
                                "synthetic": m.info.synthetic, "higher_is_better": m.info.higher_is_better,
                                "unit": m.info.unit, "ideal": m.info.ideal})
        for i in range(n):
            records.append({**base, "sample": i // draws, "draw": i % draws, "metric": "nfe", "value": float(nfe),
                            "status": "ok", "note": "counted transformer calls per image", "role": "NFE",
                            "synthetic": False, "higher_is_better": False})
        if image_dir is not None:  # first draw of the first sources, and every draw of the first source
            for i in range(min(SAVED_IMAGES_PER_EFFECT, len(tests))):
                save_image(image_dir / effect.lora_name / f"{i:02d}.png", result[i * draws].permute(1, 2, 0).numpy())
            for j in range(1, draws):
                save_image(image_dir / effect.lora_name / f"00_draw{j}.png", result[j].permute(1, 2, 0).numpy())
    return pd.DataFrame.from_records(records)


def samples(method: Method, ws: Workspace, effect, tests, draws: int) -> tuple[torch.Tensor, int, str]:  # noqa: ANN001
    """``method``'s edits of the test sources, each ``draws`` times: (images, NFE, sampler).

    Each test source is edited ``draws`` times with independent noise (source-major order), so
    the distribution metrics see several samples of one conditional. The seed is the effect's:
    a method's samples do not depend on which other effects ran before. A method whose samples
    of an effect depend on that effect alone (``Method.sample_identity``: Base, Base + Lightning)
    keeps them in the artifact cache, so every N and grid that evaluates the effect shares one
    sampling; scores are always computed afresh from them (a judge that comes back scores them).
    """
    cfg = ws.cfg
    identity = method.sample_identity(effect)
    if identity is None:
        return _sample(method, ws, effect, tests, draws)
    sources = [t.source_image for t in tests]
    spec = ArtifactSpec("samples", {
        "method": method.name, "model": identity, "effect": effect.lora_name, "prompt": effect.prompt,
        "sources": [Path(p).name for p in sources], **ws.content_inputs(sources),
        "image_size": ws.image_size, "draws": draws, "seed": cfg.seed, "batch_size": cfg.eval.batch_size},
        label=f"{method.name} samples of {effect.lora_name}")

    def build(out: Path) -> None:
        images, nfe, sampler = _sample(method, ws, effect, tests, draws)
        save_file({"images": images.contiguous()}, out / SAMPLES_FILE)
        (out / "samples.json").write_text(json.dumps({"nfe": nfe, "sampler": sampler}))

    path = ws.cache.get_or_build(spec, build)
    meta = json.loads((path / "samples.json").read_text())
    return load_file(path / SAMPLES_FILE)["images"], int(meta["nfe"]), meta["sampler"]


def _sample(method: Method, ws: Workspace, effect, tests, draws: int) -> tuple[torch.Tensor, int, str]:  # noqa: ANN001
    cfg = ws.cfg
    sources = ws.images([t.source_image for t in tests], [t.origin for t in tests]).repeat_interleave(draws, 0)
    gen = sample_generator(cfg, effect)
    results, nfes, sampler = [], [], ""
    for start in range(0, len(sources), cfg.eval.batch_size):
        out = method.edit(effect, sources[start:start + cfg.eval.batch_size], gen)
        results.append(out.images.cpu())
        nfes.append(out.nfe)
        sampler = out.sampler or ""
    return torch.cat(results), max(nfes), sampler


def sample_generator(cfg, effect) -> torch.Generator:  # noqa: ANN001 -- a RunConfig, an EffectSpec
    """The noise of an effect's evaluation samples, drawn batch by batch (``eval.batch_size``):
    the effect's own seed, so no sample depends on which effects ran before, and every method
    and the gate's NFE columns start an effect's draws from the same noise."""
    return torch.Generator().manual_seed(cfg.seed * 1_000_003 + zlib.crc32(effect.lora_name.encode()))


def row_identity(method, cfg, run: str) -> dict:  # noqa: ANN001 -- a Method, a RunConfig
    """The fields every row of a cell starts with: which run, method, components, preset, N, seed."""
    components = dataclasses.asdict(method.components) if method.components is not None else {}
    return {"run": run, "method": method.name, "ablation": ",".join(sorted(cfg.components_off)) or "none",
            "components": json.dumps(components, sort_keys=True), "preset": cfg.preset,
            "n_effects": cfg.n_effects, "seed": cfg.seed}


def cost_rows(method, ws: Workspace, run: str) -> pd.DataFrame:  # noqa: ANN001 -- a Method
    """The training cost of everything the cell used (``ws.cache.used``: teachers, Lightning, the
    student, the base ...), one row per artifact and cost metric (bench/cost.py)."""
    ident = row_identity(method, ws.cfg, run)
    trained = {k: v for k, v in ws.cache.used.items() if not k.startswith("samples/")}  # evaluation's own
    return pd.DataFrame.from_records([{**ident, **r} for r in cost_records(trained)])


def effect_batch(ws: Workspace, effect, tests, results: torch.Tensor, draws: int) -> EvalBatch:
    """What the metrics score for one effect: ``results`` holds ``draws`` edits of each test
    source in source-major order; the batch carries the sources, the template pair, the
    instruction and whatever exact ground truth the test rows have."""
    truth = _ground_truth(ws, tests)
    expand = {k: (None if v is None else v.repeat_interleave(draws, 0)) for k, v in truth.items()}
    n = len(results)
    if n != len(tests) * draws:
        raise ValueError(f"{n} results for {len(tests)} test sources x {draws} draws")
    template = ws.bench.templates_for(effect.lora_name)[0]
    reference = ws.images([template.template_result], [template.origin]).expand(n, -1, -1, -1)
    reference_source = ws.images([template.template_source], [template.origin]).expand(n, -1, -1, -1)
    # Judges see what the user asked for (the effect's instruction), not the student's trigger prompt.
    return EvalBatch(results, expand.pop("sources"), [effect.prompt] * n, expand["targets"], reference,
                     reference_source, [template.criteria or effect.criteria or ""] * n,
                     variants=expand["variants"], mode_means=expand["mode_means"],
                     expected_energy=expand["expected_energy"], expected_pairwise=expand["expected_pairwise"],
                     groups=torch.arange(len(tests)).repeat_interleave(draws))


def _ground_truth(ws: Workspace, tests) -> dict:
    """Sources and whatever exact ground truth the test rows carry, as tensors (None if absent)."""
    origins = [t.origin for t in tests]

    def all_images(attr: str) -> torch.Tensor | None:
        paths = [getattr(t, attr) for t in tests]
        return ws.images(paths, origins) if all(p is not None for p in paths) else None

    def scalars(attr: str) -> torch.Tensor | None:
        values = [getattr(t, attr) for t in tests]
        return torch.tensor(values, dtype=torch.float64) if all(v is not None for v in values) else None

    variants = None
    ks = {len(t.variant_images) for t in tests}
    if ks != {0}:
        if len(ks) != 1:
            raise ValueError(f"test rows of effect {tests[0].lora_name!r} have different numbers of variant_images "
                             f"({sorted(ks)}; {tests[0].origin})")
        k = ks.pop()
        flat = ws.images([p for t in tests for p in t.variant_images], [t.origin for t in tests for _ in range(k)])
        variants = flat.view(len(tests), k, *flat.shape[1:])
    return {"sources": ws.images([t.source_image for t in tests], origins), "targets": all_images("target_image"),
            "variants": variants, "mode_means": all_images("mode_mean_image"),
            "expected_energy": scalars("expected_energy"), "expected_pairwise": scalars("expected_pairwise_mae")}
