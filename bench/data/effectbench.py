"""EffectBench: the one loader for the EffectBench dataset format.

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
:class:`EffectBenchError`.
"""

from __future__ import annotations

import codecs
import dataclasses
import difflib
import io
import json
import operator
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from PIL import Image, ImageFile, ImageOps

from bench.cache import atomic_write, files_fingerprint
from bench.errors import BenchError

__all__ = [
    "DATA_TYPES",
    "EFFECTS_FILE",
    "TRAIN_FILE",
    "GENERAL_FILE",
    "TEST_FILE",
    "TEMPLATES_FILE",
    "META_FILE",
    "MAX_REPORTED_PROBLEMS",
    "EffectBenchError",
    "UnknownEffectError",
    "EffectSpec",
    "TrainRow",
    "GeneralRow",
    "TestRow",
    "Template",
    "EffectBench",
    "load_effectbench",
    "load_image",
    "save_image",
    "read_jsonl",
    "write_jsonl",
]

DATA_TYPES: tuple[str, ...] = ("pet", "animal", "portrait")

EFFECTS_FILE = "effects.jsonl"
TRAIN_FILE = "train.jsonl"
GENERAL_FILE = "general.jsonl"
TEST_FILE = "test.jsonl"
TEMPLATES_FILE = "templates.jsonl"
META_FILE = "meta.json"

#: at most this many problems are spelled out in one error message (all are
#: counted, and all are available in ``EffectBenchError.problems``).
MAX_REPORTED_PROBLEMS = 50

# Order in which problems are reported (then by line number).
_FILE_RANK = {
    EFFECTS_FILE: 1,
    TRAIN_FILE: 2,
    GENERAL_FILE: 3,
    TEST_FILE: 4,
    TEMPLATES_FILE: 5,
    META_FILE: 6,
}


# --------------------------------------------------------------------------- errors


class EffectBenchError(BenchError, ValueError):
    """Bad EffectBench data.

    The message starts with ``path:line: `` when a row is at fault and with
    ``path: `` for file-level problems.  When several problems were found they
    are listed one per line (the first line is the first problem), followed by a
    summary line with the count.  ``problems`` holds every problem string.
    """

    def __init__(self, message: str, problems: Sequence[str] | None = None):
        super().__init__(message)
        self.problems: tuple[str, ...] = tuple(problems) if problems is not None else (message,)

    @classmethod
    def from_problems(
        cls, problems: Sequence[str], where: str | None = None, limit: int = MAX_REPORTED_PROBLEMS
    ) -> "EffectBenchError":
        problems = list(problems)
        if not problems:
            raise ValueError("from_problems() needs at least one problem")
        if len(problems) == 1:
            return cls(problems[0], problems)
        lines = problems[:limit]
        if len(problems) > limit:
            lines.append(f"... and {len(problems) - limit} more problem(s) not shown")
        suffix = f" in {where}" if where else ""
        lines.append(f"{len(problems)} problems found{suffix}; fix them all and reload")
        return cls("\n".join(lines), problems)

    def __str__(self) -> str:  # never repr-quoted (matters for the KeyError subclass)
        return str(self.args[0]) if self.args else ""


class UnknownEffectError(EffectBenchError, KeyError):
    """An effect name that the dataset does not define (both a ValueError and a KeyError)."""


def _suggest(name: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(name), list(valid), n=3, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"


def _unknown_effect_message(name: Any, valid: Sequence[str], where: str) -> str:
    shown = ", ".join(repr(v) for v in valid[:8])
    more = f", ... ({len(valid)} in total)" if len(valid) > 8 else ""
    return f"unknown effect {name!r} in {where}{_suggest(str(name), valid)}; valid names: {shown}{more}"


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
            raise UnknownEffectError(_unknown_effect_message(name, self.names, str(self.root))) from None

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
        """Sub-benchmark with the first ``n_effects`` effects (file order) or the named ones.

        The result keeps file order, the selected effects' train / lora-specific
        test rows / templates, generic test rows whose data_type matches a kept
        effect, and all general rows.  With neither argument, returns ``self``.
        """
        if n_effects is not None and names is not None:
            raise EffectBenchError("select(): give n_effects or names, not both")
        if n_effects is None and names is None:
            return self
        if n_effects is not None:
            if isinstance(n_effects, bool):
                raise EffectBenchError(f"select(): n_effects must be an int, got {n_effects!r}")
            try:
                n = operator.index(n_effects)
            except TypeError:
                raise EffectBenchError(f"select(): n_effects must be an int, got {n_effects!r}") from None
            if n < 1:
                raise EffectBenchError(f"select(): n_effects must be >= 1, got {n}")
            if n > len(self.effects):
                raise EffectBenchError(
                    f"select(): asked for {n} effects but {self.root} has only {len(self.effects)}"
                )
            keep = self.effects[:n]
        else:
            wanted_list = [names] if isinstance(names, str) else list(names)  # type: ignore[arg-type]
            if not wanted_list:
                raise EffectBenchError("select(): names is empty")
            problems = []
            seen: set[str] = set()
            for nm in wanted_list:
                if not isinstance(nm, str) or nm not in self._by_name:
                    problems.append(_unknown_effect_message(nm, self.names, str(self.root)))
                elif nm in seen:
                    problems.append(f"select(): effect {nm!r} given twice")
                else:
                    seen.add(nm)
            if problems:
                err = EffectBenchError.from_problems(problems, "select()")
                raise UnknownEffectError(str(err), err.problems)
            keep = tuple(e for e in self.effects if e.lora_name in seen)
        kept = {e.lora_name for e in keep}
        kept_types = {e.data_type for e in keep}
        return EffectBench(
            root=self.root,
            effects=keep,
            train=tuple(r for r in self.train if r.lora_name in kept),
            general=self.general,
            test=tuple(
                r
                for r in self.test
                if (r.lora_name in kept if r.lora_name is not None else r.data_type in kept_types)
            ),
            templates=tuple(t for t in self.templates if t.lora_name in kept),
            meta=dict(self.meta),
        )


# --------------------------------------------------------------------------- JSONL


class _Problems:
    """Collects problems as (file rank, line, seq, text); sorted when reported."""

    def __init__(self) -> None:
        self._items: list[tuple[int, int, int, str]] = []

    def add(self, path: Path, line: int | None, msg: str) -> None:
        loc = f"{path}:{line}: " if line else f"{path}: "
        rank = _FILE_RANK.get(path.name, 0)
        self._items.append((rank, line or 0, len(self._items), loc + msg))

    def __bool__(self) -> bool:
        return bool(self._items)

    def messages(self) -> list[str]:
        return [t for *_, t in sorted(self._items)]

    def raise_if_any(self, where: str | None = None) -> None:
        if self._items:
            raise EffectBenchError.from_problems(self.messages(), where)


def _json_type(v: Any) -> str:
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


def _read_jsonl_into(path: Path, problems: _Problems) -> list[tuple[int, dict]] | None:
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
            problems.add(path, lineno, f"expected a JSON object, got {_json_type(obj)}")
            continue
        rows.append((lineno, obj))
    return rows


def read_jsonl(path: str | os.PathLike) -> list[tuple[int, dict]]:
    """Read a JSONL file as ``[(1-based line number, object), ...]``.

    Blank lines are skipped; comment lines, invalid JSON and non-object lines
    are all collected and raised as one :class:`EffectBenchError`.
    """
    p = Path(path)
    problems = _Problems()
    rows = _read_jsonl_into(p, problems)
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


# --------------------------------------------------------------------------- images


def _to_rgb(im: Image.Image) -> Image.Image:
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(im).astype(np.float64)
        scale = 65535.0 if im.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        im = Image.fromarray(np.clip(np.rint(a / scale * 255.0), 0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float64))
        scale = 255.0 if a.max(initial=0) > 1.0 else 1.0
        im = Image.fromarray(np.clip(np.rint(a / scale * 255.0), 0, 255).astype(np.uint8), "L")
    elif im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return im if im.mode == "RGB" else im.convert("RGB")


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, bool):
        raise ValueError(f"size must be an int or (height, width), got {size!r}")
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        try:
            h, w = (int(operator.index(s)) for s in size)
        except (TypeError, ValueError):
            raise ValueError(f"size must be an int or (height, width), got {size!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return h, w


def load_image(
    path: str | os.PathLike,
    *,
    size: int | tuple[int, int] | None = None,
    origin: str | None = None,
) -> np.ndarray:
    """Load an image as float32 ``H x W x 3`` RGB in [0, 1].

    ``size``: an int (square) or ``(height, width)``; resized with Lanczos when
    shrinking, bicubic when enlarging.  EXIF orientation is applied and alpha
    dropped.  Errors are :class:`EffectBenchError` naming ``origin`` (e.g.
    ``"train.jsonl:12"``) and the file.
    """
    p = Path(path)
    where = f"{origin}: " if origin else f"{p}: "
    hw = _hw(size) if size is not None else None
    try:
        with Image.open(p) as im:
            im.load()
            rgb = _to_rgb(im)
    except FileNotFoundError:
        raise EffectBenchError(f"{where}image not found: {p}") from None
    except IsADirectoryError:
        raise EffectBenchError(f"{where}not a file: {p}") from None
    except Exception as e:
        raise EffectBenchError(f"{where}unreadable image {p}: {type(e).__name__}: {e}") from e
    if hw is not None and (rgb.height, rgb.width) != hw:
        h, w = hw
        shrink = h * w < rgb.height * rgb.width
        rgb = rgb.resize((w, h), Image.Resampling.LANCZOS if shrink else Image.Resampling.BICUBIC)
    return np.asarray(rgb, dtype=np.float32) / np.float32(255.0)


def save_image(path: str | os.PathLike, array: Any) -> Path:
    """Write ``array`` as PNG (atomically, parent dirs created); returns the path.

    Accepts ``H x W``, ``H x W x 1``, ``H x W x 3`` or ``H x W x 4`` arrays
    (numpy or CPU/GPU torch tensors): floats are taken as [0, 1], clipped and
    rounded to uint8; uint8 / bool are written as is.
    """
    if hasattr(array, "detach") and hasattr(array, "cpu"):  # torch tensor
        array = array.detach().cpu().float().numpy() if array.dtype.is_floating_point else array.detach().cpu().numpy()
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))) or a.size == 0:
        raise ValueError(f"save_image({path}): expected HxW, HxWx1, HxWx3 or HxWx4, got shape {a.shape}")
    if a.dtype == np.uint8:
        u8 = a
    elif a.dtype == np.bool_:
        u8 = a.astype(np.uint8) * 255
    elif np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"save_image({path}): array contains NaN or Inf")
        u8 = np.rint(np.clip(a.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
    else:
        raise TypeError(f"save_image({path}): expected float in [0,1] or uint8, got dtype {a.dtype}")
    img = Image.fromarray(np.ascontiguousarray(u8))
    p = Path(path)
    atomic_write(p, lambda f: img.save(f, format="PNG"))
    return p


def _check_image_file(path: str, decode: bool) -> str | None:
    """``None`` if fine, else a problem text (without location)."""
    if not decode:
        if os.path.isfile(path):
            return None
        if os.path.isdir(path):
            return f"not a file: {path}"
        return f"image not found: {path}"
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return f"image not found: {path}"
    except IsADirectoryError:
        return f"not a file: {path}"
    except OSError as e:
        return f"unreadable image {path}: {e.strerror or e}"
    try:
        if ImageFile.LOAD_TRUNCATED_IMAGES:
            # someone switched truncation tolerance on: load() alone would pad a
            # truncated file silently, so verify() the structure/CRCs first.
            with Image.open(io.BytesIO(data)) as im:
                im.verify()
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # full decode
    except Exception as e:  # PIL raises many types for bad files
        return f"unreadable image {path}: {type(e).__name__}: {e}"
    return None


# --------------------------------------------------------------------------- loader


class _Loader:
    def __init__(self, root: Path, check_images: bool):
        self.root = root
        self.check_images = check_images
        self.problems = _Problems()
        # (abs path, jsonl path, line, field, kind) -- checked once per unique path
        self.refs: list[tuple[str, Path, int, str, str]] = []
        self.effect_lines: dict[str, int] = {}  # every syntactically valid name -> first line
        self.effects_ok = False  # effects.jsonl could be read at all
        # coverage, counted from every row that names an effect / data_type, even a
        # row rejected for another reason (so one typo does not cascade).
        self.names_with_template: set[str] = set()
        self.names_with_test: set[str] = set()
        self.generic_test_types: set[str] = set()
        self.unparsed: set[str] = set()  # manifests with lines that are not JSON objects
        self._path_cache: dict[str, tuple[str, Path]] = {}  # raw manifest path -> absolute

    # ---- field helpers
    def _resolve(self, value: str) -> tuple[str, Path]:
        hit = self._path_cache.get(value)
        if hit is None:
            ap = os.path.normpath(os.path.join(self.root, value))
            hit = self._path_cache[value] = (ap, Path(ap))
        return hit

    def _field(self, obj: dict, key: str, err: Callable[[str], None], *, required: bool, kind: str):
        """kind: 'str' (non-empty string), 'text' (any string), 'dict'."""
        if key not in obj or obj[key] is None:
            if required:
                err(f"missing required field {key!r}")
            return None
        v = obj[key]
        if kind == "dict":
            if not isinstance(v, dict):
                err(f"field {key!r} must be an object, got {_json_type(v)}")
                return None
            return v
        if not isinstance(v, str):
            err(f"field {key!r} must be a string, got {_json_type(v)}")
            return None
        if kind == "str" and not v.strip():
            err(f"field {key!r} must be a non-empty string")
            return None
        return v

    def _number(self, obj, key, err) -> float | None:
        v = obj.get(key)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0:
            err(f"field {key!r} must be a finite number >= 0, got {v!r}")
            return None
        return float(v)

    def _images(self, obj, key, path: Path, line: int, err) -> tuple[Path, ...]:
        v = obj.get(key)
        if v is None:
            return ()
        if not isinstance(v, list) or not all(isinstance(x, str) and x.strip() for x in v):
            err(f"field {key!r} must be a list of image paths, got {_json_type(v)}")
            return ()
        out = []
        for x in v:
            ap, p = self._resolve(x)
            self.refs.append((ap, path, line, key, "image"))
            out.append(p)
        return tuple(out)

    def _image(self, obj, key, path: Path, line: int, err, *, required: bool, kind: str = "image"):
        v = self._field(obj, key, err, required=required, kind="str")
        if v is None:
            return None
        ap, p = self._resolve(v)
        self.refs.append((ap, path, line, key, kind))
        return p

    def _name(self, obj, err) -> str | None:
        v = self._field(obj, "lora_name", err, required=True, kind="str")
        if v is not None and v != v.strip():
            err(f"lora_name {v!r} has leading/trailing whitespace")
            return None
        return v

    def _known_effect(self, name: str | None, err) -> bool:
        if name is None or not self.effects_ok:
            return True  # already reported / cannot judge
        if name in self.effect_lines:
            return True
        err(f"unknown effect {name!r} (not in {EFFECTS_FILE}){_suggest(name, list(self.effect_lines))}")
        return False

    def _data_type(self, obj, err) -> str | None:
        v = self._field(obj, "data_type", err, required=True, kind="str")
        if v is not None and v not in DATA_TYPES:
            err(f"invalid data_type {v!r}; expected one of {', '.join(DATA_TYPES)}{_suggest(v, DATA_TYPES)}")
            return None
        return v

    def _rows(self, fname: str, required: bool):
        path = self.root / fname
        if not required and not path.exists():
            return path, []
        n0 = len(self.problems._items)
        rows = _read_jsonl_into(path, self.problems)
        if rows is not None and len(self.problems._items) != n0:
            self.unparsed.add(fname)
        return path, rows

    def _errfn(self, path: Path, line: int) -> Callable[[str], None]:
        return lambda msg: self.problems.add(path, line, msg)

    # ---- files
    def _load_effects(self) -> list[EffectSpec]:
        path, rows = self._rows(EFFECTS_FILE, required=True)
        if rows is None:
            return []
        self.effects_ok = True
        if not rows:
            self.problems.add(path, None, "no effects defined (file is empty); at least one is required")
            return []
        known = {"lora_name", "prompt", "data_type", "lora_path", "recaption_prompt_with_trigword",
                 "trigger", "description", "family", "params", "criteria"}
        out = []
        for line, obj in rows:
            n0 = len(self.problems._items)
            err = self._errfn(path, line)
            name = self._name(obj, err)
            if name is not None:
                if name in self.effect_lines:
                    err(f"duplicate lora_name {name!r} (first defined at {path}:{self.effect_lines[name]})")
                    name = None
                else:
                    self.effect_lines[name] = line
            prompt = self._field(obj, "prompt", err, required=True, kind="str")
            dtype = self._data_type(obj, err)
            recap = self._field(obj, "recaption_prompt_with_trigword", err, required=True, kind="str")
            lora_path = self._image(obj, "lora_path", path, line, err, required=False, kind="lora")
            opt = {k: self._field(obj, k, err, required=False, kind="text")
                   for k in ("trigger", "description", "family", "criteria")}
            params = self._field(obj, "params", err, required=False, kind="dict")
            if len(self.problems._items) != n0:
                continue
            out.append(EffectSpec(
                lora_name=name, prompt=prompt, data_type=dtype, recaption_prompt_with_trigword=recap,
                lora_path=lora_path, params=dict(params or {}), origin=f"{EFFECTS_FILE}:{line}",
                extra={k: v for k, v in obj.items() if k not in known}, **opt,
            ))
        return out

    def _load_train(self) -> list[TrainRow]:
        path, rows = self._rows(TRAIN_FILE, required=False)
        known = {"lora_name", "source_image", "instruction", "target_image", "base_pred_image"}
        out = []
        for line, obj in rows or []:
            n0 = len(self.problems._items)
            err = self._errfn(path, line)
            name = self._name(obj, err)
            self._known_effect(name, err)
            src = self._image(obj, "source_image", path, line, err, required=True)
            instr = self._field(obj, "instruction", err, required=True, kind="str")
            tgt = self._image(obj, "target_image", path, line, err, required=False)
            pred = self._image(obj, "base_pred_image", path, line, err, required=False)
            if len(self.problems._items) != n0:
                continue
            out.append(TrainRow(lora_name=name, source_image=src, instruction=instr, target_image=tgt,
                                base_pred_image=pred, origin=f"{TRAIN_FILE}:{line}",
                                extra={k: v for k, v in obj.items() if k not in known}))
        return out

    def _load_general(self) -> list[GeneralRow]:
        path, rows = self._rows(GENERAL_FILE, required=False)
        known = {"source_image", "instruction", "target_image"}
        out = []
        for line, obj in rows or []:
            n0 = len(self.problems._items)
            err = self._errfn(path, line)
            src = self._image(obj, "source_image", path, line, err, required=True)
            instr = self._field(obj, "instruction", err, required=True, kind="str")
            tgt = self._image(obj, "target_image", path, line, err, required=False)
            if len(self.problems._items) != n0:
                continue
            out.append(GeneralRow(source_image=src, instruction=instr, target_image=tgt,
                                  origin=f"{GENERAL_FILE}:{line}",
                                  extra={k: v for k, v in obj.items() if k not in known}))
        return out

    def _load_test(self, effect_types: dict[str, str]) -> list[TestRow] | None:
        path, rows = self._rows(TEST_FILE, required=True)
        if rows is None:
            return None
        if not rows:
            self.problems.add(path, None, "no test samples (file is empty); at least one is required")
            return []
        known = {"source_image", "data_type", "lora_name", "target_image", "variant_images", "mode_mean_image",
                 "expected_energy", "expected_pairwise_mae"}
        out = []
        for line, obj in rows:
            n0 = len(self.problems._items)
            err = self._errfn(path, line)
            src = self._image(obj, "source_image", path, line, err, required=True)
            dtype = self._data_type(obj, err)
            raw_name, raw_type = obj.get("lora_name"), obj.get("data_type")
            if isinstance(raw_name, str):
                self.names_with_test.add(raw_name)
            elif raw_name is None and isinstance(raw_type, str):
                self.generic_test_types.add(raw_type)
            name = None
            if obj.get("lora_name") is not None:
                name = self._name(obj, err)
                if self._known_effect(name, err) and name in effect_types and dtype is not None \
                        and effect_types[name] != dtype:
                    err(f"data_type {dtype!r} does not match effect {name!r} (data_type "
                        f"{effect_types[name]!r})")
            tgt = self._image(obj, "target_image", path, line, err, required=False)
            if tgt is not None and obj.get("lora_name") is None:
                err("target_image is only allowed together with lora_name (a generic test sample has "
                    "no single ground truth)")
            variants = self._images(obj, "variant_images", path, line, err)
            mean = self._image(obj, "mode_mean_image", path, line, err, required=False)
            energy = self._number(obj, "expected_energy", err)
            pairwise = self._number(obj, "expected_pairwise_mae", err)
            if (variants or mean is not None) and obj.get("lora_name") is None:
                err("variant_images / mode_mean_image are only allowed together with lora_name")
            if len(self.problems._items) != n0:
                continue
            out.append(TestRow(source_image=src, data_type=dtype, lora_name=name, target_image=tgt,
                               variant_images=variants, mode_mean_image=mean, expected_energy=energy,
                               expected_pairwise_mae=pairwise, origin=f"{TEST_FILE}:{line}",
                               extra={k: v for k, v in obj.items() if k not in known}))
        return out

    def _load_templates(self) -> list[Template] | None:
        path, rows = self._rows(TEMPLATES_FILE, required=True)
        if rows is None:
            return None
        known = {"lora_name", "template_source", "template_result", "criteria"}
        out = []
        for line, obj in rows:
            n0 = len(self.problems._items)
            err = self._errfn(path, line)
            if isinstance(obj.get("lora_name"), str):
                self.names_with_template.add(obj["lora_name"])
            name = self._name(obj, err)
            self._known_effect(name, err)
            src = self._image(obj, "template_source", path, line, err, required=True)
            res = self._image(obj, "template_result", path, line, err, required=True)
            crit = self._field(obj, "criteria", err, required=False, kind="text")
            if len(self.problems._items) != n0:
                continue
            out.append(Template(lora_name=name, template_source=src, template_result=res, criteria=crit,
                                origin=f"{TEMPLATES_FILE}:{line}",
                                extra={k: v for k, v in obj.items() if k not in known}))
        return out

    def _load_meta(self) -> dict:
        path = self.root / META_FILE
        if not path.exists():
            return {}
        try:
            meta = json.loads(path.read_bytes().decode("utf-8-sig"))
        except json.JSONDecodeError as e:
            self.problems.add(path, e.lineno, f"invalid JSON: {e.msg} (column {e.colno})")
            return {}
        except (OSError, UnicodeDecodeError) as e:
            self.problems.add(path, None, f"cannot read file: {e}")
            return {}
        if not isinstance(meta, dict):
            self.problems.add(path, None, f"expected a JSON object, got {_json_type(meta)}")
            return {}
        return meta

    def _check_files(self) -> None:
        unique: dict[tuple[str, str], None] = {}
        for ap, _p, _l, _f, kind in self.refs:
            unique.setdefault((ap, kind), None)
        keys = list(unique)

        def check(key: tuple[str, str]) -> str | None:
            ap, kind = key
            if kind == "lora":
                return None if os.path.exists(ap) else f"not found: {ap}"
            return _check_image_file(ap, self.check_images)

        # sequential on purpose: PIL's per-file work is GIL-bound, threads measured slower
        results = {k: check(k) for k in keys}
        for ap, path, line, fld, kind in self.refs:
            msg = results[(ap, kind)]
            if msg is not None:
                self.problems.add(path, line, f"{fld}: {msg}")

    def run(self) -> EffectBench:
        effects = self._load_effects()
        effect_types = {e.lora_name: e.data_type for e in effects}
        train = self._load_train()
        general = self._load_general()
        test = self._load_test(effect_types)
        templates = self._load_templates()
        meta = self._load_meta()
        self._check_files()

        # coverage: every (valid) effect needs a template and a test sample
        eff_path = self.root / EFFECTS_FILE
        # (skipped when the manifest has unparseable lines: those may be the missing rows)
        if templates is not None and TEMPLATES_FILE not in self.unparsed:
            for e in effects:
                if e.lora_name not in self.names_with_template:
                    self.problems.add(eff_path, int(e.origin.rsplit(":", 1)[1]),
                                      f"effect {e.lora_name!r} has no template in {TEMPLATES_FILE}")
        if (self.names_with_test or self.generic_test_types) and TEST_FILE not in self.unparsed:
            for e in effects:
                if e.lora_name not in self.names_with_test and e.data_type not in self.generic_test_types:
                    self.problems.add(eff_path, int(e.origin.rsplit(":", 1)[1]),
                                      f"effect {e.lora_name!r} has no test sample in {TEST_FILE} (neither "
                                      f"with this lora_name nor generic with data_type {e.data_type!r})")

        self.problems.raise_if_any(f"EffectBench dataset {self.root}")
        return EffectBench(
            root=self.root,
            effects=tuple(effects),
            train=tuple(train),
            general=tuple(general),
            test=tuple(test or ()),
            templates=tuple(templates or ()),
            meta=meta,
        )


def load_effectbench(root: str | os.PathLike, *, check_images: bool = True) -> EffectBench:
    """Load and validate an EffectBench dataset directory.

    Every problem (bad JSON, missing/mistyped fields, invalid data_type,
    duplicate or unknown effect names, missing or undecodable images, missing
    lora_path, effects without template or test sample) is collected and raised
    together as one :class:`EffectBenchError`.  With ``check_images=False``
    images are only checked for existence, not decoded.
    """
    r = Path(root).expanduser()
    if not r.exists():
        raise EffectBenchError(f"{r}: dataset directory not found")
    if not r.is_dir():
        raise EffectBenchError(f"{r}: not a directory (an EffectBench dataset is a directory)")
    return _Loader(r.resolve(), check_images).run()


# --------------------------------------------------------------------------- identity


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
