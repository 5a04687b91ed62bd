"""EffectBench: the dataset format, its row types and the dataset with its lookups.

A dataset is a directory holding JSONL manifests (all image / LoRA paths inside
rows are relative to that directory unless absolute):

``effects.jsonl`` (required, non-empty)
    one effect per line: ``lora_name`` (unique), ``prompt`` (teacher
    instruction), ``data_type`` (one of :data:`DATA_TYPES`),
    ``recaption_prompt_with_trigword`` (student prompt), optional ``lora_path``
    (teacher LoRA file or dir; null/absent = the harness trains it), ``trigger``,
    ``description``, ``family``, ``params`` (object), ``criteria``.
``train.jsonl`` (optional)
    ``lora_name``, ``source_image``, ``instruction``, optional ``target_image``,
    ``base_pred_image``.
``general.jsonl`` (optional)
    ``source_image``, ``instruction``, optional ``target_image``.
``test.jsonl`` (required, non-empty)
    ``source_image``, ``data_type``, optional ``lora_name`` (sample belongs to
    that effect only; absent = used for every effect of that data_type),
    optional ``target_image`` (only together with ``lora_name``). Stochastic effects may add
    the exact ground truth of their output *distribution* (written by the synthetic world;
    read by the mode-aware metrics): ``variant_images`` (list; the effect under each of its K
    modes), ``mode_mean_image`` (E[effect(source)]), ``expected_energy`` (E of the mean square
    high-pass residual of one draw y around the mean, ``texture_energy``'s normaliser) and
    ``expected_pairwise_mae`` (E MAE(y, y') of two independent draws).
``templates.jsonl`` (required)
    ``lora_name``, ``template_source``, ``template_result``, optional
    ``criteria``.  Every effect needs >= 1 template and >= 1 test sample.
``meta.json`` (optional)
    free JSON object.

Blank lines are ignored; ``#`` comment lines are errors.  Unknown fields are
kept in each row's ``extra`` dict.  Bad data is never skipped: every problem is
collected (file and 1-based line) and raised together as one
:class:`EffectBenchError` (``bench/data/errors.py``).

Reading and validating a directory is ``bench/data/loader.py`` (``load_effectbench``); JSONL
and image I/O are ``bench/data/jsonl.py`` and ``bench/data/image_io.py``; sub-benchmarks
(``EffectBench.select``) are ``bench/data/selection.py``; how keys see a dataset (its content
fingerprint) is ``bench/data/identity.py``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from bench.data import selection
from bench.data.errors import UnknownEffectError, unknown_effect_message

DATA_TYPES: tuple[str, ...] = ("pet", "animal", "portrait")

EFFECTS_FILE = "effects.jsonl"
TRAIN_FILE = "train.jsonl"
GENERAL_FILE = "general.jsonl"
TEST_FILE = "test.jsonl"
TEMPLATES_FILE = "templates.jsonl"
META_FILE = "meta.json"

# Order in which problems are reported, by file (then by line number).
FILE_ORDER = {
    EFFECTS_FILE: 1,
    TRAIN_FILE: 2,
    GENERAL_FILE: 3,
    TEST_FILE: 4,
    TEMPLATES_FILE: 5,
    META_FILE: 6,
}


# --------------------------------------------------------------------------- rows


def _path_to_json(p: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return p.relative_to(root).as_posix()
        except ValueError:
            pass
    return str(p)


class _RowMixin:
    """Shared helper: turn a row back into a JSON-able manifest dict."""

    def to_row(self, root: str | os.PathLike | None = None) -> dict[str, Any]:
        """Manifest dict for this row; paths under ``root`` become relative.

        ``None`` optional fields are omitted, ``origin`` is dropped and
        ``extra`` fields are merged back in.
        """
        r = Path(root) if root is not None else None
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if f.name in ("origin", "extra"):
                continue
            v = getattr(self, f.name)
            if v is None or v == ():
                continue
            if isinstance(v, Path):
                v = _path_to_json(v, r)
            elif isinstance(v, tuple) and all(isinstance(x, Path) for x in v):
                v = [_path_to_json(x, r) for x in v]
            elif isinstance(v, dict):
                v = dict(v)
            out[f.name] = v
        for k, v in getattr(self, "extra", {}).items():
            out.setdefault(k, v)
        return out


@dataclass(frozen=True, kw_only=True)
class EffectSpec(_RowMixin):
    lora_name: str
    prompt: str
    data_type: str
    recaption_prompt_with_trigword: str
    lora_path: Path | None = None
    trigger: str | None = None
    description: str | None = None
    family: str | None = None
    params: dict[str, Any] = field(default_factory=dict, hash=False)
    criteria: str | None = None
    origin: str = ""
    extra: dict[str, Any] = field(default_factory=dict, hash=False)

    @property
    def variation_kind(self) -> str:
        """"modes", "texture" or "deterministic", from the manifest's optional ``variation``."""
        variation = self.extra.get("variation")
        return variation.get("kind", "deterministic") if isinstance(variation, dict) else "deterministic"


@dataclass(frozen=True, kw_only=True)
class TrainRow(_RowMixin):
    lora_name: str
    source_image: Path
    instruction: str
    target_image: Path | None = None
    base_pred_image: Path | None = None
    origin: str = ""
    extra: dict[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True, kw_only=True)
class GeneralRow(_RowMixin):
    source_image: Path
    instruction: str
    target_image: Path | None = None
    origin: str = ""
    extra: dict[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True, kw_only=True)
class TestRow(_RowMixin):
    source_image: Path
    data_type: str
    lora_name: str | None = None
    target_image: Path | None = None
    variant_images: tuple[Path, ...] = ()    # the effect's K modes on this source (modes effects)
    mode_mean_image: Path | None = None      # E[effect(source)] over the effect's parameter draws
    expected_energy: float | None = None     # E high-pass energy of (y - mode mean), y one exact draw
    expected_pairwise_mae: float | None = None  # E MAE(y, y'), two independent exact draws
    origin: str = ""
    extra: dict[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True, kw_only=True)
class Template(_RowMixin):
    lora_name: str
    template_source: Path
    template_result: Path
    criteria: str | None = None
    origin: str = ""
    extra: dict[str, Any] = field(default_factory=dict, hash=False)


# --------------------------------------------------------------------------- dataset


@dataclass(frozen=True)
class EffectBench:
    root: Path
    effects: tuple[EffectSpec, ...]
    train: tuple[TrainRow, ...] = ()
    general: tuple[GeneralRow, ...] = ()
    test: tuple[TestRow, ...] = ()
    templates: tuple[Template, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict, hash=False)

    # ---- indexes (built lazily, once)
    @cached_property
    def _by_name(self) -> dict[str, EffectSpec]:
        return {e.lora_name: e for e in self.effects}

    @cached_property
    def _train_index(self) -> dict[str, tuple[TrainRow, ...]]:
        idx: dict[str, list[TrainRow]] = {}
        for r in self.train:
            idx.setdefault(r.lora_name, []).append(r)
        return {k: tuple(v) for k, v in idx.items()}

    @cached_property
    def _templates_index(self) -> dict[str, tuple[Template, ...]]:
        idx: dict[str, list[Template]] = {}
        for t in self.templates:
            idx.setdefault(t.lora_name, []).append(t)
        return {k: tuple(v) for k, v in idx.items()}

    @cached_property
    def _test_index(self) -> dict[str, tuple[TestRow, ...]]:
        specific: dict[str, list[int]] = {}
        generic: dict[str, list[int]] = {}
        for i, r in enumerate(self.test):
            if r.lora_name is not None:
                specific.setdefault(r.lora_name, []).append(i)
            else:
                generic.setdefault(r.data_type, []).append(i)
        out = {}
        for e in self.effects:
            ids = sorted(specific.get(e.lora_name, []) + generic.get(e.data_type, []))
            out[e.lora_name] = tuple(self.test[i] for i in ids)
        return out

    # ---- public API
    @property
    def names(self) -> tuple[str, ...]:
        """Effect names in file order."""
        return tuple(e.lora_name for e in self.effects)

    def effect(self, name: str) -> EffectSpec:
        """The effect called ``name``; :class:`UnknownEffectError` (a KeyError) otherwise."""
        try:
            return self._by_name[name]
        except (KeyError, TypeError):
            raise UnknownEffectError(unknown_effect_message(name, self.names, str(self.root))) from None

    def train_rows(self, name: str) -> tuple[TrainRow, ...]:
        """Training rows of effect ``name`` (file order)."""
        self.effect(name)
        return self._train_index.get(name, ())

    def test_rows(self, name: str) -> tuple[TestRow, ...]:
        """Test rows of ``name``: its own rows plus generic rows of its data_type (file order)."""
        self.effect(name)
        return self._test_index[name]

    def templates_for(self, name: str) -> tuple[Template, ...]:
        """Template pairs of effect ``name`` (file order)."""
        self.effect(name)
        return self._templates_index.get(name, ())

    def select(
        self, n_effects: int | None = None, names: Sequence[str] | None = None
    ) -> "EffectBench":
        """Sub-benchmark with the first ``n_effects`` effects (file order) or the named ones
        (``bench.data.selection.select``); with neither argument, returns ``self``."""
        return selection.select(self, n_effects, names)
