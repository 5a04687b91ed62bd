"""What a grid is made of: run cells and measurement cells.

A cell is a ``RunConfig`` (train or load a method's adapters, then evaluate) or a measurement
cell that trains nothing and measures through its own ``run(out, cache) -> rows``. Grids
(bench/grids.py) make them, the runner (bench/runner.py) runs and stores both the same way,
locally and in submitted jobs (``slurm.dispatch.load_cell`` rebuilds either kind from its
``config.json``). The store records each cell's kind next to its config (``ResultStore.kind``);
nothing guesses it from config keys.

This module sits low in the import graph (it needs only the config): the report and the job
code import the cell types from here, never the grids or the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from bench.config import RunConfig


@dataclass(frozen=True)
class DeploymentCell:
    """A measurement cell (no training): deployment cost of serving ``n_effects`` effects.

    ``run(out, cache)`` returns tidy rows (bench/studies/deployment/cell.py). ``method`` / ``components_off``
    let grid runners print it like a RunConfig cell.
    """
    base: RunConfig
    n_effects: int
    capacity: int = 50
    routers: tuple[str, ...] = ("exact", "embedding", "mllm")
    requests_per_effect: int = 4
    timing_repeats: int = 5
    seed: int = 0
    method: str = "deployment"
    components_off: tuple[str, ...] = ()
    kind: ClassVar[str] = "deployment"   # what the store records for it (a RunConfig is "run")

    @property
    def preset(self) -> str:
        return self.base.preset

    @classmethod
    def from_dict(cls, data: dict, run_config: Any) -> "DeploymentCell":
        """Rebuild from ``config.json``; ``run_config(dict) -> RunConfig`` rebuilds the base."""
        fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k != "base"}
        return cls(base=run_config(data["base"]), **fields)

    def run(self, out: Path, cache: Any) -> Any:
        # imported here: measuring needs a backbone, describing or rebuilding a cell does not
        from bench.studies.deployment.cell import measure_deployment

        return measure_deployment(self, out=Path(out), cache=cache)


# A grid cell: a RunConfig (train or load a method's adapters, then evaluate) or a measurement
# cell that trains nothing and measures through its own ``run(out, cache) -> rows``.
Cell = RunConfig | DeploymentCell


def is_measurement(cell: Cell) -> bool:
    """Whether ``cell`` is a measurement cell (``cell.run(out, cache)``), not a training run."""
    return not isinstance(cell, RunConfig)


def describe(cell: Cell) -> str:
    """One line naming a cell, for logs and job labels."""
    if isinstance(cell, DeploymentCell):
        return f"deployment N={cell.n_effects} capacity={cell.capacity} seed={cell.seed}"
    off = ",".join(cell.components_off) or "none"
    steps = f" steps={cell.distill.steps}" if cell.method == "ours" else ""
    return f"{cell.method} N={cell.n_effects} off={off}{steps} seed={cell.seed}"
