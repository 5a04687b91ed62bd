"""Which effect does a multi-effect student apply? A confusion table of the synthetic world.

For every effect B of the run, the method's edits of B's held-out test sources (the evaluation's
own samples: same seeds, same draws) are scored against the exact structure of *every* effect A
of the run on those same sources -- ``gt_mode_mae``'s error: the nearest of A's variants for a
modes effect, the structure under the grain (1 px blur, against A's mean over ``--draws`` draws)
for a texture -- and against the source unchanged. Per effect B it prints its strength (the
source's own error to B: what "not edited" scores), the error to its own effect, to the source,
to the nearest *other* effect that changes the structure (strength >= ``MIN_STRENGTH``) and which
one that is, with 95 % intervals of the paired differences (cluster bootstrap over test sources):

* ``own`` -- the edits are nearer B than any other effect (what a working student does);
* ``confused with A`` -- significantly nearer another effect's structure: the prompt is mapped to
  the wrong effect (the interference of many effects in one LoRA);
* ``unchanged`` -- significantly nearer the source than to B: the edit is not done at all;
* ``neither`` -- inside the noise of both.

Only the synthetic world has the effect functions this needs.

    python benchmarks/confusion.py --method ours --effects 20 [--draws 8] [--csv F] [key=value ...]

The method's adapters come from the cache (trained first if missing, as ``bench.run`` would).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench.cache import ArtifactCache
from bench.errors import KNOWN_ERRORS, BenchError
from bench.evaluate import samples
from bench.runner import add_cell_arguments, make_method, quiet_expected_warnings, resolve_config
from bench.synthetic.effects import build_effects, effects_by_name
from bench.workspace import Workspace
from metrics import EvalBatch
from metrics.modes import lowpass, mode_error
from reports.stats import paired_difference

MIN_STRENGTH = 0.05  # structure error of the source itself to an effect that counts as "another effect"


def exact_batch(effect, sources: np.ndarray, results: torch.Tensor, draws: int,  # noqa: ANN001
                rng: np.random.Generator, mc: int) -> EvalBatch:
    """``results`` (n x draws, 3, H, W) against ``effect``'s exact distribution on ``sources``
    ((n, H, W, 3) numpy), as ``metrics.modes.mode_error`` reads it: every variant of a modes
    effect; for a texture its mean over ``mc`` draws (the world's ``output_distribution`` draws
    128 per source, too many for an N x N table; the 1 px blur of the structure error averages
    what fewer draws leave)."""
    def rep(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)).movedim(-1, -3).repeat_interleave(draws, 0)

    src = rep(sources)
    if effect.variation is not None and effect.variation.kind == "modes":
        return EvalBatch(results, src, [""] * len(results), variants=rep(np.stack([effect.mode_variants(x)
                                                                                    for x in sources])))
    means = np.stack([np.mean([effect.apply(x, effect.draw(rng)) for _ in range(mc)], 0) for x in sources])
    return EvalBatch(results, src, [""] * len(results), mode_means=rep(means))


def per_source(errors: torch.Tensor, draws: int) -> np.ndarray:
    return errors.reshape(-1, draws).mean(1).numpy()


def confusion(ws: Workspace, method, mc: int) -> tuple[pd.DataFrame, pd.DataFrame]:  # noqa: ANN001
    """(matrix, verdicts): the mean error of B's edits to each A (rows B, columns A), and per B
    its own / source / nearest-other errors with the paired interval and the verdict."""
    cfg = ws.cfg
    exact = effects_by_name(build_effects(cfg.world.seed, dropped=True))
    names = [e.lora_name for e in ws.bench.effects]
    matrix, verdicts = {}, []
    for b in ws.bench.effects:
        tests = ws.bench.test_rows(b.lora_name)
        if cfg.eval.limit is not None:
            tests = tests[:cfg.eval.limit]
        results, _, _ = samples(method, ws, b, tests, cfg.eval.draws)
        src = ws.images([t.source_image for t in tests], [t.origin for t in tests]).permute(0, 2, 3, 1).numpy()
        rng = np.random.default_rng([cfg.seed, 0xC0F])
        batches = {a: exact_batch(exact[a], src, results, cfg.eval.draws, rng, mc) for a in names}
        errs = {a: per_source(mode_error(bt)[0], cfg.eval.draws) for a, bt in batches.items()}
        matrix[b.lora_name] = {a: float(e.mean()) for a, e in errs.items()}
        own = errs[b.lora_name]
        # another effect counts only where its structure is far from the source's: nearness to
        # an effect that barely changes the image (fine pixelation, a mirror of a symmetric
        # source) says "not edited", which the source column tells
        strength = {a: per_source(mode_error(bt, bt.sources)[0], cfg.eval.draws).mean() for a, bt in batches.items()}
        others = [a for a in names if a != b.lora_name]
        other = min([a for a in others if strength[a] >= MIN_STRENGTH] or others, key=lambda a: errs[a].mean())
        s_src = batches[b.lora_name].sources
        unchanged = per_source((lowpass(results.double()) - lowpass(s_src.double())).abs().flatten(1).mean(1),
                               cfg.eval.draws)
        vs_other = paired_difference(pd.Series(own), pd.Series(errs[other]))
        vs_source = paired_difference(pd.Series(own), pd.Series(unchanged))
        verdict = (f"confused with {other}" if vs_other.lo > 0 else
                   "unchanged" if vs_source.lo > 0 else
                   "own" if vs_other.hi < 0 else "neither")
        verdicts.append({"effect": b.lora_name, "n": len(own), "strength": strength[b.lora_name],
                         "own": own.mean(), "source": unchanged.mean(),
                         "nearest other": other, "other": errs[other].mean(),
                         "own - other": vs_other.text(), "own - source": vs_source.text(), "verdict": verdict})
    return pd.DataFrame(matrix).T[names], pd.DataFrame(verdicts)


def main() -> None:
    quiet_expected_warnings()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cell_arguments(ap, method="ours", preset="synth", method_help="the method whose edits are read",
                       seed_help="the run's seed")
    ap.add_argument("--draws", type=int, default=8, help="draws of a texture effect averaged for its mean")
    ap.add_argument("--csv", default=None, help="also write the matrix (rows: prompt, columns: effect) here")
    ap.add_argument("--cache", default=None)
    ap.add_argument("overrides", nargs="*", metavar="key=value")
    args = ap.parse_args()
    try:
        cfg = resolve_config(args)
        if cfg.world.kind != "synthetic":
            raise BenchError("benchmarks/confusion.py needs the synthetic world (it applies the effect functions)")
        ws = Workspace(cfg, ArtifactCache(args.cache))
        ws.check_inputs()
        t0 = time.perf_counter()
        method = make_method(ws)
        method.prepare(list(ws.bench.effects))
        matrix, verdicts = confusion(ws, method, args.draws)
    except KNOWN_ERRORS as err:
        raise SystemExit(f"error: {err}") from None
    print(verdicts.to_markdown(index=False, floatfmt=".3f"))
    counts = verdicts["verdict"].str.replace(r"confused with .*", "confused", regex=True).value_counts()
    print(f"\n{cfg.method} on {len(verdicts)} effects: " + ", ".join(f"{k} {v}" for k, v in counts.items())
          + f" ({time.perf_counter() - t0:.0f} s)")
    if args.csv:
        Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
        matrix.to_csv(args.csv)
        print(f"matrix -> {args.csv}")


if __name__ == "__main__":
    main()
