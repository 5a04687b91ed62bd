"""Write the synthetic world to disk as an EffectBench dataset (DESIGN 5).

Every effect of the catalogue gets its rows, so one cached dataset serves runs of any size
(a run with N effects selects the first N). Layout of ``root``:

    effects.jsonl     lora_name, prompt, data_type, lora_path (null: trained by the harness),
                      recaption_prompt_with_trigword, trigger, description, family, params, criteria
                      stochastic, variation (the parameter space each pair is drawn from)
    train.jsonl       lora_name, source_image, instruction, target_image, params (one fresh draw
                      of the effect's parameters per pair: effect(source; params))
    general.jsonl     source_image, instruction, target_image (general edits, some stochastic)
    test.jsonl        lora_name, source_image, data_type, target_image + params (one draw), and
                      the exact output distribution: variant_images (modes), mode_mean_image,
                      expected_energy, expected_pairwise_mae (held-out sources)
    templates.jsonl   lora_name, template_source, template_result, criteria, template_params
    images/...        PNG files

Texture effects have no finite set of variants: their mode mean and expected spread are Monte
Carlo estimates from ``MC_DRAWS`` draws each (the mean from one set, the spread from another,
so an ideal sampler's draw, independent of both, scores 1 in expectation).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bench.config import WorldConfig
from bench.data.image_io import save_image
from bench.data.jsonl import write_jsonl
from bench.synthetic.effects import Effect, build_effects
from bench.synthetic.general import GENERAL_VERSION, sample_general_edit
from bench.synthetic.images import CATEGORIES, make_source
from metrics.modes import highpass_energy

SOURCE_POOL_PER_CATEGORY = 256  # training sources shared by the effects of one category
MC_DRAWS = 64                   # Monte Carlo draws per texture test row, for the mean and for the spread
# Random streams (``numpy`` seed sequences [world seed, stream, crc32(effect name)]): the sources
# on the world seed alone, the general edits and each effect's pairs and test draws on their own,
# so an artifact trained on one part survives a change to another (keys hash content, not config).
GENERAL_STREAM, TRAIN_STREAM, TEST_STREAM = 1, 2, 3


def _stream(cfg: WorldConfig, stream: int, name: str = "") -> np.random.Generator:
    return np.random.default_rng([cfg.seed, stream, zlib.crc32(name.encode())])


def student_prompt(effect: Effect) -> str:
    """AOP's student prompt: the orthogonal trigger word plus the VLM-style description."""
    return f"{effect.trigger}, {effect.description}"


def criteria(effect: Effect) -> str:
    return (f"Good case: {effect.description}, applied over the whole image as in the template pair, "
            f"while the subject stays recognisable. Bad case: the effect is missing, partial, mixed "
            f"with another style, or the subject is destroyed.")


def _texture_energy(residuals: np.ndarray) -> float:
    """E of ``metrics.modes.highpass_energy`` over (N, H, W, 3) residuals around the mode mean."""
    x = torch.from_numpy(np.ascontiguousarray(residuals)).permute(0, 3, 1, 2)
    return float(highpass_energy(x).mean())


def output_distribution(effect: Effect, img: np.ndarray, rng: np.random.Generator) -> dict:
    """The exact (modes) or Monte Carlo (textures) distribution of effect(img) over the draws:
    the K variants, the mode mean, the expected high-pass energy of a draw around the mean
    (``texture_energy``'s normaliser) and E MAE(y, y') of independent draws."""
    if effect.variation is not None and effect.variation.kind == "modes":
        v = effect.mode_variants(img).astype(np.float64)
        mean = v.mean(0)
        energy = _texture_energy(v - mean)
        pairwise = float(np.mean([np.abs(a - b).mean() for a in v for b in v]))  # p_k p_l, k = l included
        return {"variants": v.astype(np.float32), "mean": mean.astype(np.float32), "energy": energy,
                "pairwise": pairwise}
    draws = np.stack([effect.apply(img, effect.draw(rng)) for _ in range(2 * MC_DRAWS)]).astype(np.float64)
    mean, spread = draws[:MC_DRAWS].mean(0), draws[MC_DRAWS:]
    energy = _texture_energy(spread - mean)
    pairwise = float(np.abs(spread[0::2] - spread[1::2]).mean())
    return {"variants": None, "mean": mean.astype(np.float32), "energy": energy, "pairwise": pairwise}


def build_general(cfg: WorldConfig, put: Callable[[str, np.ndarray], str]) -> list[dict]:
    """The general edits: the base editor's pretraining data and PDSR's general stream.

    They have their own random stream (``GENERAL_STREAM``), so they -- and the base pretrained
    on them, whose key is ``general_identity`` -- do not change when the effects do."""
    rng = _stream(cfg, GENERAL_STREAM)
    n_pool = max(1, cfg.n_general // 4)
    pool = []
    for i in range(n_pool):
        img = make_source(CATEGORIES[i % len(CATEGORIES)], rng, cfg.image_size)
        pool.append((put(f"images/general/src/{i:05d}.png", img), img))
    rows = []
    for i in range(cfg.n_general):
        rel, img = pool[i % n_pool]
        instruction, edit = sample_general_edit(rng)
        rows.append({"source_image": rel, "instruction": instruction,
                     "target_image": put(f"images/general/out/{i:05d}.png", edit.apply(img, rng))})
    return rows


def general_identity(cfg: WorldConfig) -> dict:
    """What the general edits of a synthetic world follow from (the base model's key): not the
    effect catalogue, so a world version that changes only effects keeps its base."""
    return {"kind": cfg.kind, "seed": cfg.seed, "image_size": cfg.image_size, "n_general": cfg.n_general,
            "generator": GENERAL_VERSION}


def build_world(root: str | Path, cfg: WorldConfig) -> None:
    """Generate the whole synthetic EffectBench under ``root`` (deterministic from ``cfg.seed``;
    each effect's rows from its own stream, so they do not change when another effect does)."""
    root = Path(root)
    sources_rng = np.random.default_rng(cfg.seed)  # training pools, then test sources
    size = cfg.image_size
    effects = build_effects(cfg.seed)

    def put(rel: str, image: np.ndarray) -> str:
        save_image(root / rel, image)
        return rel

    # Training-source pools per category (teachers of a category's effects draw from its pool).
    pools: dict[str, list[tuple[str, np.ndarray]]] = {}
    for cat in CATEGORIES:
        pools[cat] = []
        for i in range(SOURCE_POOL_PER_CATEGORY):
            img = make_source(cat, sources_rng, size)
            pools[cat].append((put(f"images/sources/{cat}/{i:04d}.png", img), img))

    effect_rows, train_rows, template_rows = [], [], []
    for e in effects:
        effect_rows.append({
            "lora_name": e.name, "prompt": e.teacher_prompt, "data_type": e.data_type,
            "lora_path": None, "recaption_prompt_with_trigword": student_prompt(e),
            "trigger": e.trigger, "description": e.description, "family": e.family,
            "params": e.params_dict(), "criteria": criteria(e),
            "stochastic": e.stochastic, "variation": e.variation.describe() if e.variation else None,
        })
        pool = pools[e.data_type]
        rng = _stream(cfg, TRAIN_STREAM, e.name)
        picks = rng.choice(len(pool), size=min(cfg.n_train_per_effect + 1, len(pool)), replace=False)
        for j, k in enumerate(picks[1:]):
            rel, img = pool[k]
            draw = e.draw(rng)  # a fresh parameter draw for every training pair
            train_rows.append({"lora_name": e.name, "source_image": rel, "instruction": e.teacher_prompt,
                               "target_image": put(f"images/train/{e.name}/{j:04d}.png", e.apply(img, draw)),
                               "params": draw})
        rel, img = pool[picks[0]]  # the reference template pair shown to judges / CLIP-style metrics
        draw = e.draw(rng)
        template_rows.append({"lora_name": e.name, "template_source": rel,
                              "template_result": put(f"images/templates/{e.name}.png", e.apply(img, draw)),
                              "criteria": criteria(e), "template_params": draw})

    # Held-out test sources per category, with the exact ground truth of every effect on them.
    test_rows = []
    for cat in CATEGORIES:
        sources = [make_source(cat, sources_rng, size) for _ in range(cfg.n_test_per_category)]
        rels = [put(f"images/test/{cat}/{i:03d}.png", img) for i, img in enumerate(sources)]
        for e in effects:
            if e.data_type != cat:
                continue
            rng = _stream(cfg, TEST_STREAM, e.name)
            for i, (rel, img) in enumerate(zip(rels, sources)):
                draw = e.draw(rng)
                d = output_distribution(e, img, rng)
                gt = f"images/test_gt/{e.name}/{i:03d}"
                row = {"lora_name": e.name, "source_image": rel, "data_type": cat,
                       "target_image": put(f"{gt}.png", e.apply(img, draw)), "params": draw,
                       "mode_mean_image": put(f"{gt}_mean.png", d["mean"]),
                       "expected_energy": d["energy"], "expected_pairwise_mae": d["pairwise"]}
                if d["variants"] is not None:
                    row["variant_images"] = [put(f"{gt}_mode{k}.png", v) for k, v in enumerate(d["variants"])]
                test_rows.append(row)

    general_rows = build_general(cfg, put)

    write_jsonl(root / "effects.jsonl", effect_rows)
    write_jsonl(root / "train.jsonl", train_rows)
    write_jsonl(root / "general.jsonl", general_rows)
    write_jsonl(root / "test.jsonl", test_rows)
    write_jsonl(root / "templates.jsonl", template_rows)
    (root / "meta.json").write_text(json.dumps({"world": "synthetic", "image_size": size,
                                                "seed": cfg.seed, "n_effects": len(effects)}, indent=2))
