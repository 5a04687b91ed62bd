"""Disk cache of prompt embeddings for backbones whose text encoder is expensive.

Qwen-Image-Edit's text encoder is a 7B Qwen2.5-VL that also sees the source image, so an
embedding belongs to a (prompt, conditioning image) pair and a distillation run encodes
thousands of them (each effect's trigger prompt, student prompt and empty prompt per training
source). They are computed once and read back bit for bit afterwards, by this run and by every
other run or SLURM array task sharing the cache.

Keys: the *identity* of the encoder -- a fingerprint of its weights, tokenizer and processor,
the prompt template and drop index, dtype, device type and library versions -- picks a folder;
inside it one safetensors file per (prompt, sha256 of the exact pixels the encoder sees).
Layout (``root`` is ``$BENCH_CACHE/prompt_embeds`` when a Workspace builds the backbone)::

    <root>/<sha(identity)[:16]>/identity.json
    <root>/<sha(identity)[:16]>/ab/abcdef....safetensors   # embeds (1, L, D), mask (1, L)

Files are written to a temporary name and renamed (``os.replace``), so concurrent jobs never
read half an entry; two jobs encoding the same prompt both write the same content. Only the
entries a call asks for are read. ``BENCH_PROMPT_CACHE=off`` turns the cache off;
``BENCH_PROMPT_CACHE=DIR`` moves it. The hashing text encoder of the tiny synthetic backbone
costs less than a file read, so it has no cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from bench.cache import atomic_write
from bench.config import config_hash

ENV_CACHE = "BENCH_PROMPT_CACHE"
KIND = "prompt_embeds"   # folder under the artifact cache root
REPORT_EVERY_S = 60.0    # verbose caches print their counts on first use, then at most this often

_TOTALS: Counter[str] = Counter()  # "encoded" / "cached" prompts in this process, all caches


def prompt_cache_counts() -> dict[str, int]:
    return dict(_TOTALS)


def reset_prompt_cache_counts() -> None:
    _TOTALS.clear()


def prompt_cache_report() -> str:
    """One line for run logs: prompts encoded vs served from the cache since the last reset
    ("" when no backbone used the cache, e.g. the synthetic world's hashing encoder)."""
    encoded, cached = _TOTALS["encoded"], _TOTALS["cached"]
    if not encoded and not cached:
        return ""
    return (f"prompt embeddings: {encoded} encoded by the text encoder, {cached} served from the "
            f"prompt cache")


def disabled_by_env() -> bool:
    value = os.environ.get(ENV_CACHE)
    return value is not None and value.strip().lower() in ("off", "0", "none", "false", "")


def resolve_prompt_cache(value: "PromptCache | str | os.PathLike | bool | None",
                         verbose: bool = True) -> "PromptCache | None":
    """What a backbone's ``prompt_cache=`` argument means: ``None``/``False`` off, ``True`` the
    default root (``$BENCH_PROMPT_CACHE``, else ``$BENCH_CACHE/prompt_embeds``), a path, or a
    :class:`PromptCache`. ``BENCH_PROMPT_CACHE=off`` turns every one of them off."""
    if value is None or value is False or disabled_by_env():
        return None
    if isinstance(value, PromptCache):
        return value
    env = os.environ.get(ENV_CACHE)
    if value is True:
        if env:
            value = Path(env).expanduser()
        else:
            from bench.cache import default_cache_root

            value = default_cache_root() / KIND
    elif env:  # an explicit location in the environment wins over the caller's default
        value = Path(env).expanduser()
    return PromptCache(value, verbose=verbose)


# --------------------------------------------------------------------------------------------
# fingerprints


def image_digest(image) -> str | None:
    """SHA-256 of a PIL image's mode, size and pixel bytes (``None`` for a text-only prompt)."""
    if image is None:
        return None
    images = image if isinstance(image, list) else [image]
    h = hashlib.sha256()
    for img in images:
        h.update(f"{img.mode} {img.size};".encode())
        h.update(img.tobytes())
    return h.hexdigest()


def module_fingerprint(module: torch.nn.Module, *extra: Any) -> str:
    """Fingerprint of an in-memory model (config and every weight byte), for a backbone built
    from objects rather than a folder; reads all weights, so meant for small models."""
    h = hashlib.sha256(json.dumps([str(getattr(module, "config", "")), *extra], sort_keys=True,
                                  default=str).encode())
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name} {tuple(tensor.shape)} {tensor.dtype};".encode())
        h.update(flat.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _sha(*parts: Any) -> str:
    return config_hash(*parts, length=64)


# --------------------------------------------------------------------------------------------
# the cache


class PromptCache:
    """Prompt embeddings of one text encoder on disk; :meth:`open` binds it to the encoder."""

    def __init__(self, root: str | os.PathLike, *, verbose: bool = True) -> None:
        self.root = Path(root)
        self.verbose = verbose
        self.dir: Path | None = None  # <root>/<sha(identity)[:16]>, set by open()
        self.hits = 0                 # entries served from disk by this cache object
        self.misses = 0               # entries the encoder had to compute
        self._said_at: float | None = None

    def open(self, identity: dict[str, Any]) -> None:
        """Select the folder of this encoder identity (written once, atomically)."""
        folder = self.root / _sha(identity)[:16]
        if self.dir is not None and self.dir != folder:
            raise ValueError(f"this PromptCache already serves the text encoder of {self.dir}; give each "
                             "backbone its own PromptCache (or a path)")
        self.dir = folder
        if not (self.dir / "identity.json").exists():
            atomic_write(self.dir / "identity.json",
                          json.dumps(identity, indent=1, sort_keys=True, default=str).encode())

    @staticmethod
    def key(prompt: str, image: str | None) -> str:
        return _sha(prompt, image)

    def _path(self, key: str) -> Path:
        if self.dir is None:
            raise RuntimeError("PromptCache.open(identity) must be called before use")
        return self.dir / key[:2] / f"{key}.safetensors"

    def get(self, key: str, prompt: str) -> dict[str, torch.Tensor] | None:
        """The stored tensors, or ``None`` (absent, unreadable or another prompt's entry)."""
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            with safe_open(path, framework="pt") as handle:
                if (handle.metadata() or {}).get("prompt") != prompt:
                    return None  # a SHA-256 collision, in theory; recompute rather than trust it
                return {name: handle.get_tensor(name) for name in handle.keys()}
        except (SafetensorError, OSError, ValueError):
            return None  # e.g. a file from a disk that filled up: recompute and overwrite

    def put(self, key: str, prompt: str, image: str | None, tensors: dict[str, torch.Tensor]) -> None:
        cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
        atomic_write(self._path(key), save(cpu, metadata={"prompt": prompt, "image": image or ""}))

    def record(self, hits: int, misses: int) -> None:
        """Count one ``encode_prompts`` call. Printed on the first call and then at most every
        ``REPORT_EVERY_S``: a teacher trained on the real backbone encodes a batch every step."""
        self.hits += hits
        self.misses += misses
        _TOTALS["cached"] += hits
        _TOTALS["encoded"] += misses
        now = time.monotonic()
        if self.verbose and (self._said_at is None or now - self._said_at >= REPORT_EVERY_S):
            self._said_at = now
            print(f"[cache] prompt embeddings: {self.misses} encoded, {self.hits} cached so far "
                  f"({self.dir})", flush=True)
