#!/usr/bin/env bash
# Regenerates docs/reference/: the default preset's reference results on a CPU machine (world
# version 4; a few hours on two cores, most of it the gate and the teachers). Everything is
# cached, so a rerun only does what is missing. RUNS (default runs/reference) keeps the cells;
# the report and its figures are written here.
#
#   bash docs/reference/make.sh            # from the repository root, after the README's set-up
set -euo pipefail
PY=${PY:-.venv/bin/python}
RUNS=${RUNS:-runs/reference}
JOBS=${JOBS:-2}
# the learnability gate of every effect the grids use (an effect already in the file is read back)
$PY benchmarks/world_gate.py --effects 50 --json "$RUNS/world_gate.json"
# the scaling study at 10 / 20 effects (the four paper methods at each N; 50 is the next step:
# its first 50 effects do not pass the gate yet, see the README)
$PY -m bench.run --grid scaling --scaling-effects 10,20 --jobs "$JOBS" --out "$RUNS"
# Table 1 at N = 10 (adds the merge baselines; the four paper methods are the scaling cells)
$PY -m bench.run --grid main --effects 10 --jobs "$JOBS" --out "$RUNS"
$PY -m bench.report "$RUNS" --out docs/reference/report.md
