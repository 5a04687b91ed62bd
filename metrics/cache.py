"""On-disk cache of metric features and judge answers, and a count of backbone forwards.

Entries are keyed by (model, weights, image hash): the *namespace* string names the model, the
fingerprint of its weights and its preprocessing; the image hash is a SHA-256 of the exact
float32 pixels. Re-evaluating or re-reporting the same images is then served from disk and
makes zero backbone forwards, which :func:`forward_report` prints.

Layout: ``<root>/<label>/<sha(namespace)[:16]>/{namespace.txt, ab/abcdef....npy|json}``, written
atomically (temp file + rename), so concurrent jobs sharing a cache never read half a file.
``root`` is ``$BENCH_METRIC_CACHE`` or ``$BENCH_CACHE/metric-cache``; ``BENCH_METRIC_CACHE=off``
disables the disk layer.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.cache import atomic_write
from bench.config import config_hash

ENV_CACHE = "BENCH_METRIC_CACHE"

_FORWARDS: Counter[str] = Counter()  # images (or judge calls) that went through a backbone
_HITS: Counter[str] = Counter()      # images (or judge answers) served from the cache


def count_forwards(label: str, n: int = 1) -> None:
    _FORWARDS[label] += n


def count_hits(label: str, n: int = 1) -> None:
    _HITS[label] += n


def forward_counts() -> dict[str, int]:
    return dict(_FORWARDS)


def cache_hits() -> dict[str, int]:
    return dict(_HITS)


def reset_counts() -> None:
    _FORWARDS.clear()
    _HITS.clear()


def forward_report() -> str:
    """One line: backbone forwards and cache hits per model since the counts were reset."""
    labels = sorted(set(_FORWARDS) | set(_HITS))
    if not labels:
        return "metric backbones: no forwards, no cache hits"
    parts = [f"{label} {_FORWARDS[label]} forwards / {_HITS[label]} cached" for label in labels]
    return f"metric backbones: {sum(_FORWARDS.values())} forwards in total ({'; '.join(parts)})"


def image_hash(image: torch.Tensor) -> str:
    """SHA-256 of one image's exact float32 pixels and shape."""
    arr = np.ascontiguousarray(image.detach().to("cpu", torch.float32).numpy())
    h = hashlib.sha256(str(arr.shape).encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def text_hash(*parts: Any) -> str:
    """Full SHA-256 of JSON-able parts (the tree's one JSON hash, at full length)."""
    return config_hash(*parts, length=64)


def default_root() -> Path | None:
    value = os.environ.get(ENV_CACHE)
    if value is not None and value.strip().lower() in ("off", "0", "none", "false", ""):
        return None
    if value:
        return Path(value).expanduser()
    from bench.cache import default_cache_root

    return default_cache_root() / "metric-cache"


class MetricCache:
    """Feature and answer cache; ``root=None`` and ``BENCH_METRIC_CACHE=off`` keep it in memory only."""

    def __init__(self, root: str | Path | None | bool = True) -> None:
        self.root: Path | None = default_root() if root is True else (Path(root) if root else None)
        self._memory: dict[tuple[str, str], Any] = {}

    # ---------------------------------------------------------------- features
    def features(self, label: str, namespace: str, images: torch.Tensor,
                 compute: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Features of ``images`` (N, ...): cached ones are loaded, the rest computed in one call.

        Identical images in one batch (the reference template repeated per sample) are computed
        once. ``compute`` must be per-image (no cross-sample interaction), so a feature does not
        depend on which batch it was computed in.
        """
        hashes = [image_hash(img) for img in images]
        found: dict[str, torch.Tensor] = {}
        todo: dict[str, int] = {}
        for i, h in enumerate(hashes):
            if h in found or h in todo:
                continue
            hit = self._load_array(namespace, label, h)
            if hit is None:
                todo[h] = i
            else:
                found[h] = hit
        count_hits(label, len(found))
        if todo:
            computed = compute(images[list(todo.values())]).detach().to("cpu", torch.float32)
            count_forwards(label, len(todo))
            for h, feat in zip(todo, computed):
                found[h] = feat
                self._store_array(namespace, label, h, feat)
        return torch.stack([found[h] for h in hashes])

    # ---------------------------------------------------------------- answers (judges)
    def get_json(self, label: str, namespace: str, key: str) -> dict | None:
        if (namespace, key) in self._memory:
            return self._memory[(namespace, key)]
        path = self._path(label, namespace, key, ".json")
        if path is not None and path.is_file():
            value = json.loads(path.read_text())
            self._memory[(namespace, key)] = value
            return value
        return None

    def put_json(self, label: str, namespace: str, key: str, value: dict) -> None:
        self._memory[(namespace, key)] = value
        path = self._path(label, namespace, key, ".json")
        if path is not None:
            atomic_write(path, json.dumps(value, indent=1, sort_keys=True).encode())

    # ---------------------------------------------------------------- storage
    def _dir(self, label: str, namespace: str) -> Path | None:
        if self.root is None:
            return None
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", label)
        d = self.root / safe / hashlib.sha256(namespace.encode()).hexdigest()[:16]
        if not (d / "namespace.txt").exists():
            d.mkdir(parents=True, exist_ok=True)
            atomic_write(d / "namespace.txt", namespace.encode())
        return d

    def _path(self, label: str, namespace: str, key: str, suffix: str) -> Path | None:
        d = self._dir(label, namespace)
        return None if d is None else d / key[:2] / f"{key}{suffix}"

    def _load_array(self, namespace: str, label: str, key: str) -> torch.Tensor | None:
        if (namespace, key) in self._memory:
            return self._memory[(namespace, key)]
        path = self._path(label, namespace, key, ".npy")
        if path is None or not path.is_file():
            return None
        value = torch.from_numpy(np.load(path))
        self._memory[(namespace, key)] = value
        return value

    def _store_array(self, namespace: str, label: str, key: str, value: torch.Tensor) -> None:
        self._memory[(namespace, key)] = value
        path = self._path(label, namespace, key, ".npy")
        if path is not None:
            buf = _npy_bytes(value.numpy())
            atomic_write(path, buf)


def _npy_bytes(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()
