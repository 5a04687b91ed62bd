"""Studies beyond the paper's tables, written as tidy rows like every cell.

* ``composition``: zero-shot composition -- ``ours`` given "A then B" in one 8-step pass, against
  chaining the teachers (teacher A at Base settings, then teacher B on its result). In the
  synthetic world both are scored against the exact B(A(source)).
* ``extension``: incremental extension -- a CollectionLoRA distilled on the first N effects is
  extended to M new effects (initialised from it, trained on the new ones); forgetting is the
  drop of the old effects' scores.
* ``deployment``: the deployment-cost cells (bench/studies/deployment/cell.py) at chosen numbers of effects,
  run and stored like every grid cell (``python -m bench.run --grid deployment``: the paper's Ns
  and the report).

    python -m bench.studies composition --preset smoke --pairs 2
    python -m bench.studies extension --preset smoke --new 1
    python -m bench.studies deployment --preset smoke --n 10,50,150
"""

from __future__ import annotations

import argparse
import json
import sys
import zlib
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd
import torch

from bench.cache import ArtifactCache
from bench.config import PRESETS, RunConfig, apply_overrides, config_hash
from bench.data.effectbench import EffectSpec
from bench.evaluate import evaluate
from bench.store import ResultStore
from bench.workspace import Workspace
from methods import EditOutput, Method
from methods.adapters import AdapterBank
from methods.distill import distilled_lora, edit_with
from methods.dmd import Objectives
from methods.lora import load_lora
from methods.ours import Components
from metrics import METRICS, EvalBatch
from reports.tables import means_table


def _ours_lora(ws: Workspace, effects: list[EffectSpec], init: Path | None = None) -> Path:
    cfg = ws.cfg.distill
    return distilled_lora(ws, kind="collectionlora", cfg=cfg, effects=effects, p_switch=cfg.p_switch,
                          objectives=Objectives(), student_prompt=lambda e: e.recaption_prompt_with_trigword,
                          seed=ws.cfg.seed, init_student=init,
                          label=f"CollectionLoRA on {len(effects)} effects" + (" (extension)" if init else ""))


def compose_prompt(a: EffectSpec, b: EffectSpec) -> str:
    # Triggers first: the synthetic text encoder keeps the first tokens of a long prompt.
    return f"{a.trigger} then {b.trigger}, {a.description} then {b.description}"


def composition(ws: Workspace, pairs: int) -> pd.DataFrame:
    effects = list(ws.bench.effects)
    if len(effects) < 2:
        raise ValueError("composition needs at least 2 effects (--effects)")
    chosen = [(effects[i], effects[(i + 1) % len(effects)]) for i in range(min(pairs, len(effects)))]
    lora = _ours_lora(ws, effects)
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


class _FixedLoRA(Method):
    """Evaluate a given CollectionLoRA file like ``ours`` does (8 steps, student prompt)."""

    name = "ours"

    def __init__(self, ws: Workspace, lora: Path, label: str) -> None:
        super().__init__(ws, Components())
        self.lora, self.label = lora, label

    def prepare(self, effects: list[EffectSpec]) -> None:
        self.bb = self.ws.load_backbone()
        load_lora(self.bb.transformer, self.lora, "ours")
        self.bank = AdapterBank(self.bb.transformer)

    def edit(self, effect: EffectSpec, sources: torch.Tensor, generator: torch.Generator) -> EditOutput:
        s = self.ws.cfg.sampling
        prompt = effect.recaption_prompt_with_trigword
        images, nfe = edit_with(self.bb, self.bank, ("ours",), sources, prompt, steps=s.fast_steps,
                                shift=s.shift, cfg_scale=1.0, generator=generator, sampler=s.dmd_sampler)
        return EditOutput(images, nfe, prompt, s.dmd_sampler)


def extension(ws: Workspace, n_new: int) -> pd.DataFrame:
    all_effects = list(ws.full_bench.select(ws.cfg.n_effects + n_new).effects)
    old, new = all_effects[: ws.cfg.n_effects], all_effects[ws.cfg.n_effects:]
    original = _ours_lora(ws, old)
    extended = _ours_lora(ws, new, init=original)
    metrics = [METRICS.get(m)() for m in ("gt_psnr", "gt_mae", "src_ssim")]
    frames = []
    for label, lora, bench in (("original", original, ws.bench), ("extended", extended, ws.bench),
                               ("extended", extended, ws.full_bench.select(names=[e.lora_name for e in new]))):
        method = _FixedLoRA(ws, lora, label)
        method.prepare([])
        sub = Workspace(ws.cfg, ws.cache)
        sub.__dict__["bench"] = bench  # evaluate these effects with the same data and cache
        rows = evaluate(method, sub, metrics, run="extension")
        rows["method"] = f"ours ({label}: {len(old)} old" + (f" + {len(new)} new)" if label == "extended" else ")")
        rows["effect_set"] = "new" if bench is not ws.bench else "old"
        frames.append(rows)
    return pd.concat(frames, ignore_index=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.studies", description=__doc__.split("\n")[0])
    ap.add_argument("study", choices=["composition", "extension", "deployment"])
    ap.add_argument("--preset", default="synth")
    ap.add_argument("--effects", type=int, default=None)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--pairs", type=int, default=4, help="composition: effect pairs")
    ap.add_argument("--new", type=int, default=2, help="extension: new effects added")
    ap.add_argument("--n", default=None,
                    help="deployment: comma list of effect counts (default: the deployment grid's)")
    ap.add_argument("--force", action="store_true", help="deployment: measure again even if a cell finished before")
    ap.add_argument("--out", default="runs")
    ap.add_argument("--cache", default=None)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_intermixed_args(argv)
    if args.study == "deployment":
        return deployment(args)
    cfg: RunConfig = apply_overrides(PRESETS.get(args.preset)(), args.overrides)
    cfg = replace(cfg, method="ours", n_effects=args.effects or cfg.n_effects,
                  eval=replace(cfg.eval, limit=args.limit if args.limit is not None else cfg.eval.limit))
    ws = Workspace(cfg, ArtifactCache(args.cache))
    rows = composition(ws, args.pairs) if args.study == "composition" else extension(ws, args.new)
    cid = config_hash(args.study, asdict(cfg), args.pairs, args.new)
    rows = rows.assign(run=cid, study=args.study, preset=cfg.preset, n_effects=cfg.n_effects, seed=cfg.seed,
                       ablation="none", components=json.dumps(asdict(Components())), status="ok", note="",
                       role="", synthetic=rows["metric"].isin(["gt_psnr", "gt_mae", "src_ssim"]))
    store = ResultStore(args.out)
    # a study's rows are not a grid table's: kind "study" keeps them out of the report's tables
    store.write_config(cid, cfg, kind="study")
    store.tag(cid, [args.study])
    store.write_rows(cid, rows)
    index = ("method", "effect_set") if "effect_set" in rows else ("method",)
    print(f"{args.study} ({cfg.preset}, {cfg.n_effects} effects) -> {store.cell_dir(cid)}")
    print(means_table(rows, index))
    return 0


def deployment(args: argparse.Namespace) -> int:
    """The deployment cells at ``--n`` (default: the grid's), with the same bookkeeping as every
    grid cell (skipped when finished, rows written atomically, tagged for the report's deployment
    table); prints that table."""
    from bench.grids import grid_cells
    from bench.runner import run_cell
    from reports.tables import deployment_table

    base = apply_overrides(PRESETS.get(args.preset)(), args.overrides)
    cells = grid_cells("deployment", base)
    if args.n:
        wanted = {int(x) for x in args.n.split(",")}
        cells = [c._replace(cell=replace(c.cell, n_effects=n)) for n in sorted(wanted) for c in cells[:1]]
    cache = ArtifactCache(args.cache)
    rows = [run_cell(c.cell, Path(args.out), cache, force=args.force, tags=c.tags) for c in cells]
    print(deployment_table(pd.concat(rows, ignore_index=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
