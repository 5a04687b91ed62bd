"""Results store: the one owner of a cell directory -- tidy long rows, one parquet file per cell,
its config, kind, tags, error, images and links to its artifacts.

Layout: ``<out>/cells/<cell_id>/``

=================  ===========================================================================
``config.json``    the cell's resolved config (a submitted job rebuilds the cell from it)
``cell.json``      what the cell is: its ``kind`` (``run``, ``deployment``, ``study``) and its
                   ``tags``, the report tables it feeds, given by the grids that made it
                   (bench/grids.py; a cell made by several grids has all their tags)
``rows.parquet``   tidy long rows (``COLUMNS``); written last, so a cell is finished exactly
                   when it exists and reads
``error.txt``      the traceback of the cell's last failed run (removed when it runs again)
``artifacts.json`` where the LoRAs the cell evaluated and their loss CSVs are
``images/``        the evaluator's saved results, ``images/<effect>/NN.png``
=================  ===========================================================================

Every read and write of these files goes through :class:`ResultStore`, so the layout is written
down once. A ``rows.parquet`` that does not read (truncated by a full disk, a copy cut short) is
reported in one line and its cell counts as unfinished: it is rerun, never skipped and then
crashed on.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from bench.config import config_hash, result_dict, to_dict
from bench.data.identity import world_identity

CONFIG = "config.json"
META = "cell.json"
ROWS = "rows.parquet"
ERROR = "error.txt"
ARTIFACTS = "artifacts.json"
IMAGES = "images"
KINDS = ("run", "deployment", "study")

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

    @classmethod
    def of_config(cls, config_path: str | Path) -> tuple["ResultStore", str]:
        """The store and cell id a ``<out>/cells/<cid>/config.json`` path belongs to (jobs receive
        that path)."""
        path = Path(config_path)
        return cls(path.parent.parent.parent), path.parent.name

    # -- cells ------------------------------------------------------------------------------------
    def cell_dir(self, cid: str) -> Path:
        return self.out / "cells" / cid

    def cell_ids(self) -> list[str]:
        """Every cell of this results directory, finished or not, in id order."""
        root = self.out / "cells"
        return sorted(d.name for d in root.iterdir() if d.is_dir()) if root.is_dir() else []

    # -- config, kind, tags -------------------------------------------------------------------------
    def config_path(self, cid: str) -> Path:
        return self.cell_dir(cid) / CONFIG

    def write_config(self, cid: str, cell: Any, *, kind: str | None = None) -> Path:
        """``config.json`` (the resolved config) and the cell's kind: ``kind`` if given, else the
        cell's own (a measurement cell declares it as its ``kind`` attribute), else ``run``.
        The tags already stored are kept."""
        kind = kind or getattr(cell, "kind", "run")
        if kind not in KINDS:
            raise ValueError(f"unknown cell kind {kind!r}; valid: {', '.join(KINDS)}")
        d = self.cell_dir(cid)
        d.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(d / CONFIG, json.dumps(to_dict(cell), indent=2, sort_keys=True))
        self._write_meta(cid, {**self._meta(cid), "kind": kind})
        return d / CONFIG

    def read_config(self, cid: str) -> dict:
        """The stored config as a dict; ``{}`` for a cell whose config was never written."""
        path = self.config_path(cid)
        return json.loads(path.read_text()) if path.exists() else {}

    def kind(self, cid: str) -> str:
        """``run``, ``deployment`` or ``study``, as written with the config."""
        meta = self._meta(cid)
        if "kind" in meta:
            return meta["kind"]
        # A cell stored before the store recorded kinds: a deployment cell's config is the only
        # one holding its base run config next to a capacity.
        config = self.read_config(cid)
        return "deployment" if "base" in config and "capacity" in config else "run"

    def tag(self, cid: str, tags: Iterable[str]) -> None:
        """Add ``tags`` to the cell's (a cell made by several grids has every grid's tag)."""
        tags = set(tags)
        meta = self._meta(cid)
        if tags - set(meta.get("tags", [])):
            self._write_meta(cid, {**meta, "tags": sorted(tags | set(meta.get("tags", [])))})

    def tags(self, cid: str) -> tuple[str, ...]:
        """The cell's tags; empty for a cell no grid made (a single run, an old results directory)."""
        return tuple(self._meta(cid).get("tags", []))

    def _meta(self, cid: str) -> dict:
        path = self.cell_dir(cid) / META
        return json.loads(path.read_text()) if path.exists() else {}

    def _write_meta(self, cid: str, meta: dict) -> None:
        d = self.cell_dir(cid)
        d.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(d / META, json.dumps(meta, indent=2, sort_keys=True))

    # -- error ------------------------------------------------------------------------------------
    def error_path(self, cid: str) -> Path:
        return self.cell_dir(cid) / ERROR

    def write_error(self, cid: str, text: str) -> Path:
        """Keep the traceback of the cell's failed run (the report and ``--status`` show its last line)."""
        path = self.error_path(cid)
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(path, text)
        return path

    def read_error(self, cid: str) -> str | None:
        path = self.error_path(cid)
        return path.read_text() if path.exists() else None

    def clear_error(self, cid: str) -> None:
        """Forget an earlier failure: the cell is running again, or finished."""
        self.error_path(cid).unlink(missing_ok=True)

    # -- images, artifacts --------------------------------------------------------------------------
    def image_dir(self, cid: str) -> Path:
        """Where the evaluator saves the cell's results, ``<effect>/NN.png``."""
        return self.cell_dir(cid) / IMAGES

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

    def read_artifacts(self, cid: str) -> dict[str, dict[str, Any]]:
        """Role -> ``{dir, lora, loss_csv}`` as ``write_artifacts`` stored it; ``{}`` when absent."""
        path = self.cell_dir(cid) / ARTIFACTS
        return json.loads(path.read_text()) if path.exists() else {}

    # -- rows -------------------------------------------------------------------------------------
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

    def has_rows(self, cid: str) -> bool:
        """A rows file is there (it may still not read: ``read_cell`` says so)."""
        return (self.cell_dir(cid) / ROWS).exists()

    def finished_at(self, cid: str) -> float:
        """When the cell's rows were written (seconds since the epoch)."""
        return (self.cell_dir(cid) / ROWS).stat().st_mtime

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
