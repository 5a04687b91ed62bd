"""The world's learnability gate: can this synthetic world tell the paper's methods apart?

Run it before any method grid. Per effect it trains (or takes from the cache) the teacher LoRA,
samples every held-out test source ``eval.draws`` times at 1, 8, 40 and 80 NFE (40 steps x
CFG 4, the Base setting), and prints with 95 % intervals (cluster bootstrap over test sources):
the 80-NFE samples are Base's evaluation samples (``bench.evaluate.samples``, cached), so the
gate and the grids' Base rows share one sampling, whichever runs first.

* the teacher's fidelity: ``gt_mode_mae`` for modes effects, ``texture_energy`` for textures
  (1 is an exact draw's energy; the few-step average is below 1);
* ``mode_blur``, ``mode_coverage`` (modes) and ``diversity_ratio`` at each NFE.

Each effect is marked by what it can test, and only once its teacher has **learned** it: at 8,
40 or 80 NFE the teacher's ``gt_mode_mae`` is significantly below that of returning the source
unchanged and (modes) of returning the mode mean, or (textures) not significantly above an
exact draw's -- an effect its teacher cannot do tells the methods nothing, however its samples
are spread. Then:

* ``few-step gap`` -- 40 or 80 NFE significantly better than 8 NFE (paired bootstrap over the
  test sources; for textures "better" is |log texture_energy| smaller), so distilling few-step
  sampling has something to win back;
* ``coverage`` -- the teacher at 8, 40 or 80 NFE reaches >= 0.8 of the ideal sampler's mode
  coverage (CFG 4 lowers it in this world), so a student's mode collapse is visible;
* ``neither`` -- such an effect tells the methods nothing and does not belong in a method grid.

    python benchmarks/world_gate.py [--preset synth] [--effects N | --only A,B | --every K]
                                    [--json gate.json] [key=value ...]

``--json FILE`` accumulates: the file keeps every effect of the catalogue gated into it (one the
catalogue no longer has is dropped from it), an effect already there with the same gate key
(its teacher's cache key, the sampling and evaluation settings, the seed, ``GATE_VERSION``) is
read back instead of sampled again, and a stale one is measured again and replaced. The file
is rewritten after each effect, so a crash loses at most the effect in hand. So gating 20
effects after 10 samples only the new ten, and one file can hold a catalogue gated in pieces
(``--only``); the counts it stores are over everything it holds.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench.cache import ArtifactCache
from bench.config import PRESETS, apply_overrides, config_hash
from bench.errors import KNOWN_ERRORS, BenchError
from bench.evaluate import effect_batch, sample_generator, samples
from bench.runner import quiet_expected_warnings
from bench.workspace import Workspace
from methods.base import Base
from methods.distill import edit_with
from methods.teachers import teacher_identity
from metrics import METRICS
from metrics.modes import DiversityRatio, ModeBlur, ModeCoverage, ModeMAE
from reports.stats import bootstrap_ci, log_distance, paired_difference, significantly
from reports.tables import fidelity_metric

COVERAGE_BAR = 0.8
GATE_VERSION = 2          # bump when gate_effect measures differently: stored figures are then stale
                          # (2: the 80-NFE column is Base's evaluation samples, every column their noise)
SERIES = ("source_mae", "mean_mae", "draw_mae")  # per-source baselines stored beside the NFE columns


def settings(cfg) -> list[tuple[int, float]]:
    """(steps, CFG) per NFE column: 1, fast (8), base steps without CFG (40), Base (40 x CFG 4).
    The last is ``methods.base.Base``'s setting: ``gate_effect`` takes that column's samples from it."""
    s = cfg.sampling
    return [(1, 1.0), (s.fast_steps, 1.0), (s.base_steps, 1.0), (s.base_steps, s.base_cfg)]


def per_source(scores: list[float], draws: int) -> pd.Series:
    """Mean over each test source's draws (the bootstrap's unit)."""
    x = np.asarray(scores, dtype=float).reshape(-1, draws)
    with np.errstate(invalid="ignore"):
        return pd.Series(np.nanmean(x, 1) if np.isfinite(x).any() else np.full(len(x), np.nan))


def gate_effect(ws: Workspace, base: Base, effect) -> dict:
    """The effect's figures at each NFE of ``settings``; ``base`` is a prepared ``Base`` method,
    whose backbone and teacher bank sample every column and whose evaluation samples are the last."""
    cfg = ws.cfg
    draws = cfg.eval.draws
    tests = ws.bench.test_rows(effect.lora_name)[: cfg.eval.limit]
    kind = effect.variation_kind
    bb, bank, teacher = base.backbone, base.bank, base.teacher(effect)
    sources = ws.images([t.source_image for t in tests], [t.origin for t in tests]).repeat_interleave(draws, 0)
    out: dict = {"effect": effect.lora_name, "family": effect.family, "kind": kind, "n_sources": len(tests),
                 "draws": draws, "nfe": {}}
    fidelity = METRICS.get(fidelity_metric(kind))()
    # what doing nothing, or returning the average of the effect's outputs, scores
    plain = effect_batch(ws, effect, tests, ws.images([t.source_image for t in tests]), 1)
    out["source_mae"] = per_source(ModeMAE().score(plain), 1)
    if plain.mode_means is not None and kind == "modes":
        out["mean_mae"] = per_source(ModeMAE().score(effect_batch(ws, effect, tests, plain.mode_means.float(), 1)), 1)
    if kind == "texture" and plain.targets is not None:  # an exact draw: its grain leaks through the low-pass
        out["draw_mae"] = per_source(ModeMAE().score(effect_batch(ws, effect, tests, plain.targets.float(), 1)), 1)

    def scores(batch) -> dict[str, pd.Series]:  # noqa: ANN001 -- an EvalBatch
        return {name: per_source(m.score(batch), draws) for name, m in
                (("fidelity", fidelity), ("gt_mode_mae", ModeMAE()), ("mode_blur", ModeBlur()),
                 ("mode_coverage", ModeCoverage()), ("diversity_ratio", DiversityRatio()))}

    for steps, scale in settings(cfg)[:-1]:  # from the noise of Base's samples: paired columns
        gen, chunks = sample_generator(cfg, effect), []
        for start in range(0, len(sources), cfg.eval.batch_size):
            images, nfe = edit_with(bb, bank, (teacher,), sources[start:start + cfg.eval.batch_size], effect.prompt,
                                    steps=steps, shift=cfg.sampling.shift, cfg_scale=scale, generator=gen,
                                    sampler="euler")
            chunks.append(images)
        out["nfe"][nfe] = scores(effect_batch(ws, effect, tests, torch.cat(chunks), draws))
    images, nfe, _ = samples(base, ws, effect, tests, draws)  # the last setting, Base's: its evaluation's samples
    out["nfe"][nfe] = scores(effect_batch(ws, effect, tests, images, draws))
    return out


def gate_key(ws: Workspace, effect) -> str:  # noqa: ANN001
    """What an effect's gate figures are made from: its teacher (by cache key, or a manifest
    LoRA's bytes), the sampling and evaluation settings, the seed and this script's version."""
    teacher = (ws.teacher_spec(effect).key if effect.lora_path is None
               else teacher_identity(effect, Path(effect.lora_path)))
    cfg = ws.cfg
    return config_hash(GATE_VERSION, teacher, cfg.sampling, cfg.eval.draws, cfg.eval.limit, cfg.seed)


def to_json(res: dict) -> dict:
    return {**{k: (v.tolist() if isinstance(v, pd.Series) else v) for k, v in res.items()},
            "nfe": {str(n): {k: v.tolist() for k, v in col.items()} for n, col in res["nfe"].items()}}


def from_json(entry: dict) -> dict:
    """An effect's stored figures as ``gate_effect`` returns them (per-source series)."""
    res = {k: (pd.Series(v, dtype=float) if k in SERIES else v) for k, v in entry.items()}
    res["nfe"] = {int(n): {k: pd.Series(v, dtype=float) for k, v in col.items()} for n, col in entry["nfe"].items()}
    return res


def load_gated(path: Path, preset: str) -> dict[str, dict]:
    """The effects already gated into ``path`` (none if it does not exist), by name."""
    if not path.exists():
        return {}
    try:
        stored = json.loads(path.read_text())
        entries = stored["effects"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise BenchError(f"{path} is not a world-gate file ({e}); pass another --json") from e
    if stored.get("preset") != preset:
        raise BenchError(f"{path} holds the gate of preset {stored.get('preset')!r}, not {preset!r}; "
                         "pass another --json")
    return {e["effect"]: from_json(e) for e in entries}


def gate_or_read(effect, gated: dict[str, dict], *, key, measure) -> tuple[dict, bool]:  # noqa: ANN001
    """The effect's figures and whether they were read back: ``gated``'s entry when its key is
    ``key(effect)``, else ``measure(effect)`` (then stored in ``gated`` under that key)."""
    k = key(effect)
    res = gated.get(effect.lora_name)
    if res is not None and res.get("key") == k:
        return res, True
    res = gated[effect.lora_name] = {**measure(effect), "key": k}
    return res, False


def tally(results: list[dict]) -> dict[str, int]:
    return {t: sum(t in r["tests"] for r in results) for t in ("few-step gap", "coverage", "neither")}


def learned_at(res: dict) -> list[int]:
    """NFEs (8 and up) at which the teacher's gt_mode_mae is significantly below the source's
    and (modes) the mode mean's -- or, for a texture, not significantly above an exact draw's.

    The second clause is for textures whose structure change is at or below the grain's own
    low-pass residual (pure grain, fine pixelation at 16 px: an exact draw's structure error is
    then *above* the source's, so "below the source" cannot be met); their structure is right
    when it is as close as an exact draw's, and what they test is the texture."""
    baselines = [res["source_mae"]] + ([res["mean_mae"]] if "mean_mae" in res else [])
    draw = res.get("draw_mae")

    def learned(err: pd.Series) -> bool:
        if all(significantly(paired_difference(err, b), higher_is_better=False) for b in baselines):
            return True
        return draw is not None and not significantly(paired_difference(err, draw), higher_is_better=True)

    return [n for n in sorted(res["nfe"])[1:] if learned(res["nfe"][n]["gt_mode_mae"])]


def verdict(res: dict) -> tuple[bool, bool]:
    """(tests the few-step gap, tests coverage); both need a teacher that learned the effect."""
    cols, texture = res["nfe"], res["kind"] == "texture"
    nfes = sorted(cols)
    fast, slow = nfes[1], nfes[2:]
    learned = learned_at(res)
    if not learned:
        return False, False

    def distance(s: pd.Series) -> pd.Series:  # lower is better
        return log_distance(s) if texture else s

    gap = any(significantly(paired_difference(distance(cols[n]["fidelity"]), distance(cols[fast]["fidelity"])),
                            higher_is_better=False) for n in slow)
    coverage = res["kind"] == "modes" and max(float(cols[n]["mode_coverage"].mean()) for n in learned) >= COVERAGE_BAR
    return gap, coverage


def chosen(ws: Workspace, only: str | None, every: int | None) -> tuple:
    """The effects to gate: the run's first ``n_effects``, or named / every K-th of the catalogue."""
    if only:
        return ws.bench.select(names=[n.strip() for n in only.split(",") if n.strip()]).effects
    if every:
        return ws.bench.effects[::every]
    return ws.bench.effects


def main() -> None:
    quiet_expected_warnings()  # a teacher bank is several adapters on one transformer, by design
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="synth")
    ap.add_argument("--effects", type=int, default=None,
                    help="first N effects of the catalogue (default: the preset's)")
    ap.add_argument("--only", default=None,
                    help="comma-separated effect names: gate just these (from the whole catalogue)")
    ap.add_argument("--every", type=int, default=None,
                    help="every K-th effect of the whole catalogue (a spread sample of its families and kinds)")
    ap.add_argument("--cache", default=None)
    ap.add_argument("--json", default=None, help="also write the per-effect figures and verdicts here")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    cfg = apply_overrides(PRESETS.get(args.preset)(), args.overrides)
    if args.effects:
        cfg = replace(cfg, n_effects=args.effects)
    ws = Workspace(cfg, ArtifactCache(args.cache))
    if args.only or args.every:  # effects from the whole catalogue: the workspace must hold them all
        ws = Workspace(replace(cfg, n_effects=len(ws.full_bench.effects)), ws.cache)
    t0 = time.perf_counter()
    gated = load_gated(Path(args.json), cfg.preset) if args.json else {}
    catalogue = {e.lora_name for e in ws.full_bench.effects}
    gone = sorted(set(gated) - catalogue)  # e.g. the effects a world version dropped (GATE_DROPPED)
    for name in gone:
        del gated[name]
    if gone:
        print(f"dropped from {args.json}: {', '.join(gone)} (no longer in the catalogue)", flush=True)
    effects = chosen(ws, args.only, args.every)
    teachers = Base(ws)  # the teachers at the Base setting; its samples are the gate's last column
    teachers.prepare(list(effects))  # every teacher checked (and trained if missing) before the first is gated
    results, lines = [], []
    reused = 0
    for effect in effects:
        res, was_stored = gate_or_read(effect, gated, key=lambda e: gate_key(ws, e),
                                       measure=lambda e: gate_effect(ws, teachers, e))
        reused += was_stored
        gap, cov = verdict(res)
        res["tests"] = [t for t, on in (("few-step gap", gap), ("coverage", cov)) if on] or ["neither"]
        results.append(res)
        cells = []
        for nfe, col in sorted(res["nfe"].items()):
            cells.append(bootstrap_ci(col["fidelity"]).text())
        extra = []
        for name in ("mode_blur", "mode_coverage", "diversity_ratio"):
            vals = [bootstrap_ci(col[name]) for _, col in sorted(res["nfe"].items())]
            extra.append(" / ".join("—" if np.isnan(v.mean) else f"{v.mean:.2f}" for v in vals))
        metric = fidelity_metric(res["kind"])
        maes = " / ".join(f"{float(col['gt_mode_mae'].mean()):.3f}" for _, col in sorted(res["nfe"].items()))
        base = f"{float(res['source_mae'].mean()):.3f}" + "".join(
            f" / {float(res[k].mean()):.3f}" for k in ("mean_mae", "draw_mae") if k in res)
        learned = ", ".join(map(str, learned_at(res))) or "no"
        lines.append(f"| {res['effect']} | {res['kind']} | {metric} | " + " | ".join(cells) + " | "
                     + " | ".join(extra) + f" | {maes} | {base} | {learned} | {', '.join(res['tests'])} |")
        print(lines[-1], flush=True)
        if args.json and not was_stored:  # each effect's figures are kept as soon as they exist
            save(Path(args.json), cfg.preset, gated)
    nfes = sorted(results[0]["nfe"]) if results else []
    head = ("| effect | kind | fidelity | " + " | ".join(f"{n} NFE" for n in nfes)
            + " | mode_blur (1/8/40/80) | mode_coverage | diversity_ratio | gt_mode_mae "
            "| source / mode mean or exact draw | learned at NFE | tests |")
    print(f"\nWorld gate, preset {cfg.preset}, {len(results)} effects, {results[0]['n_sources'] if results else 0} "
          f"test sources x {cfg.eval.draws} draws each; 95 % bootstrap intervals over test sources:\n")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    print("\n".join(lines))
    counts = tally(results)
    print(f"\n{counts['few-step gap']} of {len(results)} effects test the few-step gap, {counts['coverage']} test "
          f"coverage, {counts['neither']} test neither ({time.perf_counter() - t0:.0f} s; {reused} read back "
          f"from {args.json}).")
    if args.json:
        total = save(Path(args.json), cfg.preset, gated)
        print(f"{args.json} now holds {len(gated)} gated effects: {total['few-step gap']} test the few-step gap, "
              f"{total['coverage']} coverage, {total['neither']} neither.")


def save(out: Path, preset: str, gated: dict[str, dict]) -> dict[str, int]:
    """Write every gated effect to ``out``; the counts over them. An entry's verdict is computed
    once (its key holds ``GATE_VERSION``, so stored verdicts are this version's)."""
    everything = list(gated.values())
    for r in everything:
        if "tests" not in r:
            gap, cov = verdict(r)
            r["tests"] = [t for t, on in (("few-step gap", gap), ("coverage", cov)) if on] or ["neither"]
    total = tally(everything)
    out.parent.mkdir(parents=True, exist_ok=True)  # e.g. runs/ before any run
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"preset": preset, "counts": total, "effects": [to_json(r) for r in everything]},
                              indent=1))
    tmp.replace(out)  # a crash mid-write leaves the previous file whole
    return total


if __name__ == "__main__":
    try:
        main()
    except KNOWN_ERRORS as err:
        raise SystemExit(f"error: {err}") from None
