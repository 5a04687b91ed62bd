#!/usr/bin/env bash
# Regenerates docs/reference/: the default preset's reference results on a CPU machine (world
# version 5; about two hours on two cores from an empty cache, most of it the 50 teachers and
# the Base evaluation at 80 NFE). Everything is cached, so a rerun only does what is missing.
# RUNS (default runs/reference) keeps the cells; the report and its figures are written here.
#
#   bash docs/reference/make.sh            # from the repository root, after the README's set-up
set -euo pipefail
PY=${PY:-.venv/bin/python}
RUNS=${RUNS:-runs/reference}
JOBS=${JOBS:-2}
# the learnability gate of every effect the grids use (an effect already in the file is read
# back: copy docs/reference/world_gate.json to $RUNS first to skip the 50 gated here)
$PY benchmarks/world_gate.py --effects 50 --json "$RUNS/world_gate.json"
# the scaling study at 10 / 20 / 50 effects (the four paper methods at each N)
$PY -m bench.run --grid scaling --scaling-effects 10,20,50 --jobs "$JOBS" --out "$RUNS"
# Table 1 at N = 50 (adds the merge baselines; the four paper methods are the scaling cells)
$PY -m bench.run --grid main --effects 50 --jobs "$JOBS" --out "$RUNS"
$PY -m bench.report "$RUNS" --out docs/reference/report.md
cp "$RUNS/world_gate.json" docs/reference/world_gate.json
