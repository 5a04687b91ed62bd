"""JSONL, as EffectBench manifests use it: every bad line collected with its file and line."""

from __future__ import annotations

import codecs
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from bench.cache import atomic_write
from bench.data.effectbench import FILE_ORDER
from bench.data.errors import EffectBenchError


class Problems:
    """Collects problems as (file rank, line, seq, text); sorted when reported."""

    def __init__(self) -> None:
        self._items: list[tuple[int, int, int, str]] = []

    def add(self, path: Path, line: int | None, msg: str) -> None:
        loc = f"{path}:{line}: " if line else f"{path}: "
        rank = FILE_ORDER.get(path.name, 0)
        self._items.append((rank, line or 0, len(self._items), loc + msg))

    def __bool__(self) -> bool:
        return bool(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def messages(self) -> list[str]:
        return [t for *_, t in sorted(self._items)]

    def raise_if_any(self, where: str | None = None) -> None:
        if self._items:
            raise EffectBenchError.from_problems(self.messages(), where)


def json_type(v: Any) -> str:
    """The JSON name of a value's type, for error messages."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def read_jsonl_into(path: Path, problems: Problems) -> list[tuple[int, dict]] | None:
    """Parse a JSONL file, recording every bad line; ``None`` if the file cannot be read."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        problems.add(path, None, "file not found")
        return None
    except IsADirectoryError:
        problems.add(path, None, "is a directory, expected a JSONL file")
        return None
    except OSError as e:
        problems.add(path, None, f"cannot read file: {e.strerror or e}")
        return None
    rows: list[tuple[int, dict]] = []
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8):]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            problems.add(path, lineno, f"not valid UTF-8 ({e.reason} at byte {e.start})")
            continue
        stripped = text.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            problems.add(path, lineno, "comment lines ('#') are not allowed in JSONL")
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            problems.add(path, lineno, f"invalid JSON: {e.msg} (column {e.colno})")
            continue
        except RecursionError:
            problems.add(path, lineno, "invalid JSON: nested too deeply")
            continue
        if not isinstance(obj, dict):
            problems.add(path, lineno, f"expected a JSON object, got {json_type(obj)}")
            continue
        rows.append((lineno, obj))
    return rows


def read_jsonl(path: str | os.PathLike) -> list[tuple[int, dict]]:
    """Read a JSONL file as ``[(1-based line number, object), ...]``.

    Blank lines are skipped; comment lines, invalid JSON and non-object lines
    are all collected and raised as one :class:`EffectBenchError`.
    """
    p = Path(path)
    problems = Problems()
    rows = read_jsonl_into(p, problems)
    problems.raise_if_any()
    assert rows is not None
    return rows


def _json_default(o: Any) -> Any:
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    raise TypeError(f"object of type {type(o).__name__} is not JSON serializable")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Write ``rows`` (dicts) as UTF-8 JSONL, atomically; returns the number of rows.

    Paths and numpy scalars/arrays are converted; NaN/Infinity are rejected.
    """
    lines: list[str] = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise TypeError(f"write_jsonl({path}): row {i} is {type(row).__name__}, expected dict")
        try:
            lines.append(json.dumps(row, ensure_ascii=False, allow_nan=False, default=_json_default))
        except (TypeError, ValueError) as e:
            raise type(e)(f"write_jsonl({path}): row {i}: {e}") from e
    payload = "".join(s + "\n" for s in lines).encode("utf-8")
    atomic_write(path, payload)
    return len(lines)
