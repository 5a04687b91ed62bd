"""Where metric weights come from: an explicit path, then the weights directory, then the HF cache.

Resolution only looks at the local disk, it never downloads, so a missing weight fails at once
with one message naming what is missing, every place that was looked at and how to provide it
(no 46-second hub retries, no hang, no number from random weights). It imports neither
huggingface_hub nor the model libraries: the HF cache layout is read directly
(``<HF_HUB_CACHE>/models--org--name/refs/main`` names the snapshot whose files are used).

Before a model library is imported to load resolved weights, :func:`force_offline` sets
``HF_HUB_OFFLINE`` (and ``huggingface_hub.constants.HF_HUB_OFFLINE`` when already imported) so no
loader can start a download behind our back; ``BENCH_HF_ONLINE=1`` leaves the hub flags alone.

Places, in order (``<repo>`` is the HF repo id, e.g. ``timm/vit_base_patch16_224.dino``):
  1. the explicit path of the metric's config / environment variable (a file or a directory);
  2. ``$BENCH_WEIGHTS_DIR/<repo>/<file>`` (default ``$BENCH_CACHE/weights``, i.e.
     ``~/.cache/collectionlora-bench/weights``), filled with
     ``hf download <repo> <file> --local-dir $BENCH_WEIGHTS_DIR/<repo>``;
  3. the HF cache (``$HF_HUB_CACHE``, ``$HF_HOME/hub`` or ``~/.cache/huggingface/hub``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from metrics import MetricUnavailable

ENV_WEIGHTS_DIR = "BENCH_WEIGHTS_DIR"
ENV_ONLINE = "BENCH_HF_ONLINE"


class MissingWeights(MetricUnavailable):
    """Weights are not on this machine; the message says what, where we looked and how to provide them."""


def weights_dir() -> Path:
    if os.environ.get(ENV_WEIGHTS_DIR):
        return Path(os.environ[ENV_WEIGHTS_DIR]).expanduser()
    from bench.cache import default_cache_root

    return default_cache_root() / "weights"


def hf_hub_cache() -> Path:
    """The HF hub cache directory, resolved like huggingface_hub does (without importing it)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def force_offline() -> None:
    """Make every hub-backed loader fail at once instead of retrying (FACTS: ~46 s per file)."""
    if os.environ.get(ENV_ONLINE) == "1":
        return
    os.environ["HF_HUB_OFFLINE"] = "1"
    if "huggingface_hub" in sys.modules:  # already imported: the env var was read at import time
        import huggingface_hub.constants

        huggingface_hub.constants.HF_HUB_OFFLINE = True


def hf_snapshot(repo: str, revision: str = "main") -> Path | None:
    """The local snapshot directory of ``repo`` in the HF cache, or None."""
    base = hf_hub_cache() / f"models--{repo.replace('/', '--')}"
    ref = base / "refs" / revision
    if ref.is_file():
        snap = base / "snapshots" / ref.read_text().strip()
        return snap if snap.is_dir() else None
    snap = base / "snapshots" / revision  # a commit hash given as revision
    return snap if snap.is_dir() else None


def hf_cached_file(repo: str, filename: str, revision: str = "main") -> Path | None:
    snap = hf_snapshot(repo, revision)
    if snap is not None and (snap / filename).is_file():
        return snap / filename
    # A file may sit in an older snapshot only (refs/main moved on after a partial download).
    snaps = hf_hub_cache() / f"models--{repo.replace('/', '--')}" / "snapshots"
    if snaps.is_dir():
        for other in sorted(snaps.iterdir()):
            if (other / filename).is_file():
                return other / filename
    return None


@dataclass(frozen=True)
class WeightRequest:
    """What one metric needs, and how a user provides it (used for the error message)."""

    what: str                          # e.g. "CLIP ViT-B-32 (openai) weights"
    env: str                           # environment variable of the explicit path
    explicit: str | None = None        # explicit file or directory (config / env)
    repo: str | None = None            # HF repo id, also the sub-directory of the weights dir
    filenames: tuple[str, ...] = ()    # accepted file names, preferred first
    extra: tuple[str, ...] = ()        # further local candidates (e.g. a library's own cache)
    hint: str = ""                     # one more way to provide it, if any

    def how(self) -> str:
        ways = [f"set {self.env}=/path/to/{self.filenames[0] if self.filenames else 'weights'}"]
        if self.repo:
            target = weights_dir() / self.repo
            files = f" {self.filenames[0]}" if self.filenames else ""
            ways.append(f"run `hf download {self.repo}{files} --local-dir {target}` on a machine with network "
                        f"and copy {target} here")
        if self.hint:
            ways.append(self.hint)
        return "; or ".join(ways)


def resolve_file(req: WeightRequest) -> Path:
    """The first existing weight file for ``req``; raises :class:`MissingWeights` otherwise."""
    tried: list[str] = []
    if req.explicit:
        path = Path(req.explicit).expanduser()
        if path.is_file():
            return path
        if path.is_dir():
            for name in req.filenames:
                if (path / name).is_file():
                    return path / name
            tried.append(f"{path}/{{{','.join(req.filenames)}}}")
        else:
            tried.append(str(path))
        # The user named a place: do not silently fall back to another copy.
        raise MissingWeights(f"{req.what} not found at {req.env}={req.explicit} (looked for {', '.join(tried)}). "
                             f"Fix the path, or unset {req.env} to use {weights_dir()} or the HF cache.")
    if req.repo:
        for name in req.filenames:
            path = weights_dir() / req.repo / name
            tried.append(str(path))
            if path.is_file():
                return path
    for extra in req.extra:
        path = Path(extra).expanduser()
        tried.append(str(path))
        if path.is_file():
            return path
    if req.repo:
        for name in req.filenames:
            tried.append(f"HF cache {hf_hub_cache()}/models--{req.repo.replace('/', '--')}/…/{name}")
            hit = hf_cached_file(req.repo, name)
            if hit is not None:
                return hit
    raise MissingWeights(f"{req.what} not found (looked in: {'; '.join(tried)}). To provide them: {req.how()}.")


def resolve_dir(req: WeightRequest, required: Iterable[str] = ("config.json",), *, weights: bool = True) -> Path:
    """A model directory (HF ``save_pretrained`` layout) holding ``required`` files (and, with
    ``weights``, every weight shard)."""
    required = tuple(required)
    candidates: list[tuple[str, Path | None]] = []
    if req.explicit:
        candidates.append((f"{req.env}={req.explicit}", Path(req.explicit).expanduser()))
    else:
        if req.repo:
            candidates.append((str(weights_dir() / req.repo), weights_dir() / req.repo))
            candidates.append((f"HF cache {hf_hub_cache()}/models--{req.repo.replace('/', '--')}",
                               hf_snapshot(req.repo)))
    problems: list[str] = []
    for label, path in candidates:
        if path is None or not path.is_dir():
            problems.append(f"{label}: no such directory")
            continue
        missing = [name for name in required if not (path / name).is_file()]
        missing += _missing_shards(path) if weights else []
        if not missing:
            return path
        problems.append(f"{label}: missing {', '.join(missing)}")
    if req.explicit:
        raise MissingWeights(f"{req.what} not usable: {'; '.join(problems)}. Fix {req.env}, or unset it to use "
                             f"{weights_dir()} or the HF cache.")
    raise MissingWeights(f"{req.what} not found ({'; '.join(problems) or 'no location configured'}). "
                         f"To provide them: {req.how()}.")


def _missing_shards(path: Path) -> list[str]:
    """Weight files a directory lacks: every shard its index names, or one single-file checkpoint."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = path / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
            return [s for s in shards if not (path / s).is_file()]
    if any((path / name).is_file() for name in ("model.safetensors", "pytorch_model.bin")):
        return []
    return ["model.safetensors (or an index with its shards)"]


def fingerprint(path: str | Path, names: Iterable[str] | None = None) -> str:
    """Identity of a weight file or directory for cache keys, by the project's one policy
    (``bench.cache.files_fingerprint``: names relative to ``path`` and bytes -- multi-GB files by
    size and 1 MiB at their start, middle and end -- never the absolute path or mtimes), so a
    moved weights folder keeps its cached features and a replaced file invalidates them.
    ``names`` restricts a directory to the files that hold weights (libraries write other files
    there)."""
    from bench.cache import files_fingerprint

    path = Path(path)
    if path.is_file() or names is None:
        return files_fingerprint([path])[:16]
    return files_fingerprint([path / name for name in names if (path / name).exists()])[:16]
