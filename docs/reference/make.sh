#!/usr/bin/env bash
# Regenerates docs/reference/: the default preset's reference results on a CPU machine (world
# version 5). From an empty cache about 3 h on two cores (measured in sessions 11-13: the 40
# teachers not shipped with the package, the Base evaluation at 80 NFE, the gate and the seven
# 1000-step distillations are most of it). Everything is cached, so a rerun only does what is missing.
# RUNS (default runs/reference) keeps the cells; the report, its figures and each cell's config
# and tidy rows are copied here (the images are not: the report's figures hold them).
#
#   bash docs/reference/make.sh            # from the repository root, after the README's set-up
set -euo pipefail
PY=${PY:-.venv/bin/python}
RUNS=${RUNS:-runs/reference}
JOBS=${JOBS:-2}
OUT=docs/reference
# the 50 teachers, two at a time, and Base's samples at 80 NFE (Table 1's Base cell) ...
$PY -m bench.run --method base --effects 50 --jobs "$JOBS" --out "$RUNS"
# ... which the learnability gate of every effect the grids use reads back, sampling only its 1, 8
# and 40 NFE columns, before any method is compared (an effect already in the file is read back:
# copy docs/reference/world_gate.json to $RUNS first to skip the 50 gated here)
$PY benchmarks/world_gate.py --effects 50 --json "$RUNS/world_gate.json"
# the scaling study at 10 / 20 / 50 effects (the four paper methods at each N)
$PY -m bench.run --grid scaling --scaling-effects 10,20,50 --jobs "$JOBS" --out "$RUNS"
# Table 1 at N = 50 (adds the merge baselines; the four paper methods are the scaling cells)
$PY -m bench.run --grid main --effects 50 --jobs "$JOBS" --out "$RUNS"
# the component ablation at N = 50 (claim d); its runs publish the training curves' points ...
$PY -m bench.run --grid ablation --effects 50 --jobs "$JOBS" --out "$RUNS"
# ... so the curves only evaluate them
$PY -m bench.run --grid curves --effects 50 --jobs "$JOBS" --out "$RUNS"
# deployment cost at 10 / 20 / 50 / 100 / 150 effects (trains nothing: storage, routing, switching);
# one cell at a time, so no latency is timed beside another job
$PY -m bench.run --grid deployment --jobs 1 --out "$RUNS"
$PY -m bench.report "$RUNS"
rm -rf "$OUT/report_assets" "$OUT/cells"
cp -r "$RUNS/report.md" "$RUNS/report_assets" "$OUT/"
for cell in "$RUNS"/cells/*/; do
  mkdir -p "$OUT/cells/$(basename "$cell")"
  cp "$cell"config.json "$cell"cell.json "$cell"rows.parquet "$OUT/cells/$(basename "$cell")/"
done
cp "$RUNS/world_gate.json" "$OUT/world_gate.json"
