"""How keys see a dataset: an EffectBench on disk by its content, not its path.

Cell ids and artifact keys hash the world config through :func:`world_identity`, so a dataset
copied elsewhere keeps its keys and an image edited in place gives new ones.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from bench.cache import files_fingerprint
from bench.data.effectbench import EFFECTS_FILE

_FINGERPRINTS: dict[tuple, str] = {}


def _signature(files: list[Path]) -> tuple:
    return tuple((str(f), st.st_size, st.st_mtime_ns) for f in files for st in [f.stat()])


def dataset_fingerprint(root: str | os.PathLike) -> str:
    """Content hash of an EffectBench directory: every file under it (manifests, images, LoRAs)
    and the ``lora_path`` files it names outside itself -- names relative to the dataset and
    bytes, so a copy elsewhere has the same fingerprint and an image edited in place a new one.
    Memoised in the process while no file's size or mtime changes (hashing reads every byte)."""
    r = Path(root).expanduser().resolve()
    files = sorted(p for p in r.rglob("*") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(r).parts))
    outside: list[Path] = []
    manifest = r / EFFECTS_FILE
    if manifest.is_file():
        for line in manifest.read_text(errors="replace").splitlines():
            try:
                lora = json.loads(line).get("lora_path") if line.strip() else None
            except (json.JSONDecodeError, AttributeError):
                continue  # the loader reports bad lines; the fingerprint only needs good ones
            if isinstance(lora, str):
                path = (r / lora).resolve() if not os.path.isabs(lora) else Path(lora)
                if path.exists() and not path.is_relative_to(r):
                    outside += sorted(path.rglob("*")) if path.is_dir() else [path]
    outside = [p for p in outside if p.is_file()]
    key = (str(r), _signature(files + outside))
    if key not in _FINGERPRINTS:
        _FINGERPRINTS[key] = "sha256:" + files_fingerprint([r, *outside])
    return _FINGERPRINTS[key]


def world_identity(world: Any) -> dict:
    """A world config as keys should see it: a dataset on disk by its content, not its path
    (``world.root`` replaced by :func:`dataset_fingerprint`); the synthetic world by its config,
    which determines every file it writes."""
    d = dataclasses.asdict(world) if dataclasses.is_dataclass(world) else dict(world)
    if d.get("kind") == "effectbench" and d.get("root") and Path(d["root"]).expanduser().is_dir():
        d["root"] = dataset_fingerprint(d["root"])
    return d
