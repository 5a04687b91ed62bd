"""``python -m bench.report RUNS_DIR``: turn finished result rows into one markdown report.

Examples:
  python -m bench.report runs                       # -> runs/report.md (+ runs/report_assets/)
  python -m bench.report runs --out paper.md --categories
  python -m bench.report runs --cache /tmp/cache    # where the synthetic EffectBench lives (image grids)
  python -m bench.report runs --check               # CI: exit 1 unless every table, plot and grid is filled

Re-reporting only reads rows, configs and saved images: no backbone is loaded and torch is not
even imported, so it takes seconds and makes zero forward passes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n")[0],
                                epilog=__doc__.split("\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", help="results directory written by bench.run (holds cells/)")
    p.add_argument("--out", default=None, help="markdown file to write (default: RUNS/report.md)")
    p.add_argument("--categories", action="store_true", help="also break the main table out per category")
    p.add_argument("--cache", default=None,
                   help="artifact cache holding the synthetic EffectBench (default: $BENCH_CACHE or ~/.cache/...)")
    p.add_argument("--grid-effects", type=int, default=4, metavar="K", help="effects shown as image grids (default 4)")
    p.add_argument("--check", action="store_true",
                   help="exit 1 unless every table, plot and image grid is filled (linked and on disk) "
                        "and every cell finished")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from reports.report import ReportOptions, build_report

    runs = Path(args.runs)
    if not (runs / "cells").is_dir():
        print(f"error: {runs} holds no cells/ directory (run `python -m bench.run ... --out {runs}` first)",
              file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    out = Path(args.out) if args.out else runs / "report.md"
    result = build_report(runs, out, ReportOptions(categories=args.categories,
                                                   cache=Path(args.cache) if args.cache else None,
                                                   grid_effects=args.grid_effects))
    print(f"report -> {out} ({time.perf_counter() - t0:.1f}s)")
    for name, ok in result.filled.items():
        print(f"  {'ok  ' if ok else 'EMPTY'} {name}")
    if result.failed:
        print(f"  {len(result.failed)} unfinished cell(s) (failed, running or killed): {', '.join(result.failed)}")
    if args.check and (result.missing() or result.failed):
        lines = [f"  empty: {name}" for name in result.missing()]
        lines += [f"  unfinished cell: {cid} ({runs / 'cells' / cid})" for cid in result.failed]
        print(f"CHECK FAILED ({out}):\n" + "\n".join(lines), file=sys.stderr)
        return 1
    if args.check:
        print(f"check ok: every table, plot and image grid is filled, every cell finished ({out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
