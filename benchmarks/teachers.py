"""Do the teacher LoRAs really learn their effects? Prints per-family figures.

For every effect of the run, on its held-out test sources: the base model without any LoRA
(given the teacher's prompt, Base settings: 40 steps, CFG 4.0) against the base with the
effect's teacher LoRA, both scored against the exact ground truth. Also prints the identity
baseline (returning the source unchanged) so "learned" means more than "copied the input", and
both models again at the few-step setting (8 steps, no CFG): the "plain base at 8 NFE" that a
distilled LoRA has to beat.

Scores are mode-aware (``gt_mode_mae``: the error to the nearest allowed variant; for textures
the structure under the grain -- the texture itself is the world gate's business).
With ``--compare RUN_DIR`` it also prints, per effect, every 8-NFE method's gt_mode_mae from that
results directory (``bench.run --out``) beside the plain base at 8 NFE, and how many effects
each method wins.

    python benchmarks/teachers.py [--preset synth] [--effects N] [--compare runs] [key=value ...]
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from bench.cache import ArtifactCache
from bench.config import PRESETS, apply_overrides
from bench.evaluate import effect_batch
from bench.workspace import Workspace
from methods.adapters import AdapterBank
from methods.distill import edit_with
from metrics import METRICS
from metrics.modes import mode_error


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="synth")
    ap.add_argument("--effects", type=int, default=None)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--compare", default=None, help="results directory whose 8-NFE methods to compare")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    cfg = apply_overrides(PRESETS.get(args.preset)(), args.overrides)
    if args.effects:
        from dataclasses import replace
        cfg = replace(cfg, n_effects=args.effects)
    ws = Workspace(cfg, ArtifactCache(args.cache))
    t0 = time.perf_counter()
    bb = ws.load_backbone()
    bank = AdapterBank(bb.transformer)
    s = cfg.sampling
    records = []
    scorers = {name: METRICS.get(name)() for name in ("gt_mode_mae", "gt_mode_psnr")}
    for e in ws.bench.effects:
        bank.add_teacher(e.lora_name, ws.teacher_dir(e, bb))
        tests = ws.bench.test_rows(e.lora_name)
        src = ws.images([t.source_image for t in tests])
        for label, adapters in (("base (no LoRA)", ()), ("teacher LoRA", (e.lora_name,))):
            for steps, cfg_scale in ((s.base_steps, s.base_cfg), (s.fast_steps, 1.0)):
                out, nfe = edit_with(bb, bank, adapters, src, e.prompt, steps=steps, shift=s.shift,
                                     cfg_scale=cfg_scale, generator=torch.Generator().manual_seed(0),
                                     sampler="euler")  # flow-matching models only
                batch = effect_batch(ws, e, tests, out, draws=1)  # the run's own (mode-aware) metrics
                records.append({"family": e.family, "effect": e.lora_name, "model": label, "nfe": nfe,
                                **{name: pd.Series(m.score(batch)).mean() for name, m in scorers.items()}})
        records.append({"family": e.family, "effect": e.lora_name, "model": "identity (source)", "nfe": 0,
                        "gt_mode_mae": float(mode_error(effect_batch(ws, e, tests, src, draws=1))[0].mean())})
    every = pd.DataFrame(records)
    print("mean gt_mode_mae by model and NFE (lower is better):")
    print(every.pivot_table(index="model", columns="nfe", values="gt_mode_mae", aggfunc="mean").round(4).to_markdown())
    print()
    df = every[every["nfe"].isin([0, s.base_steps * (2 if s.base_cfg > 1 else 1)])]
    table = df.pivot_table(index="family", columns="model", values="gt_mode_mae", aggfunc="mean")
    table["teacher / base"] = table["teacher LoRA"] / table["base (no LoRA)"]
    print(f"gt_mode_mae (lower is better) on held-out test sources, {len(ws.bench.effects)} effects, "
          f"preset {cfg.preset}:")
    print(table.round(4).to_markdown())
    per_effect = df.pivot_table(index="effect", columns="model", values="gt_mode_mae")
    wins = (per_effect["teacher LoRA"] < per_effect["base (no LoRA)"]).mean()
    print(f"\nteacher beats the base on {wins:.0%} of effects; mean gt_mode_mae base "
          f"{per_effect['base (no LoRA)'].mean():.4f} -> teacher {per_effect['teacher LoRA'].mean():.4f}"
          f" (identity {per_effect['identity (source)'].mean():.4f}); {time.perf_counter() - t0:.1f}s")
    if args.compare:
        compare(every, args.compare, s.fast_steps)


def compare(every: pd.DataFrame, run_dir: str, fast_steps: int) -> None:
    """Per effect: each few-step method's gt_mode_mae (mean of its result rows) vs the plain base at 8 NFE."""
    from bench.store import ResultStore

    rows = ResultStore(run_dir).read_all()
    nfe = rows[rows["metric"] == "nfe"].groupby("method")["value"].max()
    fast_methods = set(nfe[nfe == fast_steps].index)
    psnr = rows[(rows["metric"] == "gt_mode_psnr") & (rows["status"] == "ok") & rows["method"].isin(fast_methods)]
    rows = rows[(rows["metric"] == "gt_mode_mae") & (rows["status"] == "ok") & rows["method"].isin(fast_methods)]
    plain_rows = every[(every["model"] == "base (no LoRA)") & (every["nfe"] == fast_steps)]
    plain = plain_rows["gt_mode_psnr"].mean()
    fast = plain_rows.set_index("effect")["gt_mode_mae"]
    table = pd.DataFrame({f"base (no LoRA), {fast_steps} NFE": fast})
    for method, part in rows.groupby("method"):
        table[method] = part.groupby("effect")["value"].mean()
    table = table.dropna(axis=1, how="all").loc[fast.index]
    print(f"\ngt_mode_mae per effect from {run_dir} beside the plain base at {fast_steps} NFE:")
    print(table.round(4).to_markdown())
    base = table.iloc[:, 0]
    for m in table.columns[1:]:
        print(f"{m}: mean gt_mode_mae {table[m].mean():.4f} (plain base {base.mean():.4f}), better on "
              f"{int((table[m] < base).sum())}/{len(base)} effects; gt_mode_psnr "
              f"{psnr[psnr['method'] == m]['value'].mean():.2f} dB (plain base {plain:.2f})")


if __name__ == "__main__":
    main()
