"""Results store: tidy long rows, one parquet file per run cell, written atomically.

Layout: ``<out>/cells/<cell_id>/{config.json, artifacts.json, rows.parquet, images/, logs}``
(``artifacts.json``: where the LoRAs the cell evaluated and their loss CSVs are). A cell is
finished exactly when its ``rows.parquet`` exists (it is renamed into place as the last step),
so a crash never leaves a cell that looks finished and a rerun skips only finished cells.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from bench.config import config_hash, result_dict, to_dict

ROWS = "rows.parquet"
ARTIFACTS = "artifacts.json"

# One row per (sample, metric). Wide identifiers repeat on every row so any pivot is possible.
COLUMNS = ["run", "method", "ablation", "components", "preset", "n_effects", "effect", "family",
           "category", "sample", "metric", "value", "status", "note", "role", "synthetic",
           "higher_is_better", "seed"]
# Evaluation rows add: ``draw`` (which of a test source's eval.draws samples), ``variation``
# (modes / texture / deterministic, from the manifest) and ``sampler`` (euler / renoise).


def cell_id(cfg: Any) -> str:
    """A cell's id: a short hash of its resolved config (bookkeeping fields left out)."""
    return config_hash(result_dict(cfg))


class ResultStore:
    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)

    def cell_dir(self, cid: str) -> Path:
        return self.out / "cells" / cid

    def is_done(self, cid: str) -> bool:
        return (self.cell_dir(cid) / ROWS).exists()

    def write_config(self, cid: str, cfg: Any) -> None:
        d = self.cell_dir(cid)
        d.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(d / "config.json", json.dumps(to_dict(cfg), indent=2, sort_keys=True))

    def write_artifacts(self, cid: str, artifacts: dict[str, Path]) -> Path:
        """``artifacts.json``: for each adapter of the cell's method (by role), its LoRA files and
        loss CSVs in the artifact cache, so a result can be traced to the weights it measured."""
        def files(path: Path) -> dict[str, Any]:
            path = Path(path).resolve()
            found = sorted(path.iterdir()) if path.is_dir() else [path]
            return {"dir": str(path if path.is_dir() else path.parent),
                    "lora": [str(f) for f in found if f.suffix == ".safetensors" or f.name == "adapter_config.json"],
                    "loss_csv": [str(f) for f in found if f.suffix == ".csv"]}

        d = self.cell_dir(cid)
        d.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(d / ARTIFACTS, json.dumps({r: files(p) for r, p in sorted(artifacts.items())}, indent=2))
        return d / ARTIFACTS

    def write_rows(self, cid: str, rows: pd.DataFrame) -> Path:
        missing = [c for c in COLUMNS if c not in rows.columns]
        if missing:
            raise ValueError(f"result rows lack columns {missing}")
        path = self.cell_dir(cid) / ROWS
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        rows.to_parquet(tmp, index=False)
        os.replace(tmp, path)
        return path

    def read_cell(self, cid: str) -> pd.DataFrame:
        return pd.read_parquet(self.cell_dir(cid) / ROWS)

    def read_all(self) -> pd.DataFrame:
        files = sorted((self.out / "cells").glob(f"*/{ROWS}"))
        if not files:
            return pd.DataFrame(columns=COLUMNS)
        return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
