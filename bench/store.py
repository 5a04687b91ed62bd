"""Results store: tidy long rows, one parquet file per run cell, written atomically.

Layout: ``<out>/cells/<cell_id>/{config.json, artifacts.json, rows.parquet, images/, logs}``
(``artifacts.json``: where the LoRAs the cell evaluated and their loss CSVs are). A cell is
finished exactly when its ``rows.parquet`` exists and reads (it is renamed into place as the last
step), so a crash never leaves a cell that looks finished and a rerun skips only finished cells.
A ``rows.parquet`` that does not read (truncated by a full disk, a copy cut short) is reported in
one line and its cell counts as unfinished: it is rerun, never skipped and then crashed on.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from bench.config import config_hash, result_dict, to_dict
from bench.effectbench import world_identity

ROWS = "rows.parquet"
ARTIFACTS = "artifacts.json"

# One row per (sample, metric). Wide identifiers repeat on every row so any pivot is possible.
COLUMNS = ["run", "method", "ablation", "components", "preset", "n_effects", "effect", "family",
           "category", "sample", "metric", "value", "status", "note", "role", "synthetic",
           "higher_is_better", "seed"]
# Evaluation rows add: ``draw`` (which of a test source's eval.draws samples), ``variation``
# (modes / texture / deterministic, from the manifest) and ``sampler`` (euler / renoise).


def cell_id(cfg: Any) -> str:
    """A cell's id: a short hash of its resolved config (bookkeeping fields left out), with a
    dataset on disk named by its content: a dataset edited in place gives new ids, so a rerun
    never "skips" a cell computed on other data."""
    d = result_dict(cfg)
    if isinstance(d, dict) and isinstance(d.get("world"), dict):
        d["world"] = result_dict(world_identity(d["world"]))
    return config_hash(d)


class UnreadableRowsError(ValueError):
    """A stored ``rows.parquet`` that does not read; its cell is rerun."""

    def __init__(self, path: Path, cause: Exception) -> None:
        super().__init__(f"{path} is unreadable ({type(cause).__name__}: {cause})")
        self.path = path


class ResultStore:
    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self._reported: set[Path] = set()  # unreadable files already said, once per store

    def cell_dir(self, cid: str) -> Path:
        return self.out / "cells" / cid

    def is_done(self, cid: str) -> bool:
        """The rows exist and their parquet footer reads (every truncation loses the footer;
        ``read_cell`` catches the rarer damage inside a file that kept it)."""
        path = self.cell_dir(cid) / ROWS
        if not path.exists():
            return False
        try:
            pq.read_metadata(path)
        except (OSError, pa.ArrowException) as err:
            self._report(UnreadableRowsError(path, err))
            return False
        return True

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
        return read_rows(self.cell_dir(cid) / ROWS)

    def read_all(self) -> pd.DataFrame:
        """Every readable cell's rows; an unreadable file is reported and left out (its cell
        counts as unfinished, as in ``is_done``)."""
        frames = []
        for f in sorted((self.out / "cells").glob(f"*/{ROWS}")):
            try:
                frames.append(read_rows(f))
            except UnreadableRowsError as err:
                self._report(err)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)

    def _report(self, err: UnreadableRowsError) -> None:
        if err.path not in self._reported:
            self._reported.add(err.path)
            print(f"warning: {err}; its cell counts as unfinished (a rerun redoes it)", file=sys.stderr)


def read_rows(path: Path) -> pd.DataFrame:
    """One cell's rows; a file that does not read raises ``UnreadableRowsError`` naming it."""
    try:
        return pd.read_parquet(path)
    except (OSError, pa.ArrowException) as err:
        raise UnreadableRowsError(path, err) from err


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
