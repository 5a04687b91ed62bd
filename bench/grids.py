"""Grids are Python functions returning run cells (resolved RunConfigs); a cell's id is the hash
of its config. ``python -m bench.run --grid NAME`` runs one; finished cells are skipped."""

from __future__ import annotations

from dataclasses import replace

from bench.config import RunConfig
from bench.registry import Registry

GRIDS: Registry = Registry("grid")

# The paper's component ablation (CollectionLoRA Table 4): rows (1)-(5) as components switched off.
ABLATION_ROWS: tuple[tuple[str, ...], ...] = (
    ("pdsr", "aop", "ts", "tafm"),   # (1) vanilla multi-teacher DMD
    ("aop", "ts", "tafm"),           # (2) + PDSR
    ("ts", "tafm"),                  # (3) + AOP
    ("ts",),                         # (4) + TA-FM
    (),                              # (5) full CollectionLoRA
)


@GRIDS.register("ablation")
def ablation(base: RunConfig) -> list[RunConfig]:
    """The paper's five ablation rows over PDSR / AOP / TS / TA-FM."""
    return [replace(base, method="ours", components_off=tuple(sorted(off))) for off in ABLATION_ROWS]


@GRIDS.register("methods")
def methods(base: RunConfig) -> list[RunConfig]:
    """The four paper methods on the run's effects."""
    return [replace(base, method=m, components_off=()) for m in ("base", "lightning", "fm_all_in_1", "ours")]
