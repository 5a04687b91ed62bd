"""``load_effectbench``: read an EffectBench directory and validate it (the format is
``bench/data/effectbench.py``). Every problem -- bad JSON, missing or mistyped fields, an unknown
or duplicate effect, a missing or undecodable image, a missing ``lora_path``, an effect without
template or test sample -- is collected with its file and line and raised as one error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.data.effectbench import (
    DATA_TYPES,
    EFFECTS_FILE,
    GENERAL_FILE,
    META_FILE,
    TEMPLATES_FILE,
    TEST_FILE,
    TRAIN_FILE,
    EffectBench,
    EffectSpec,
    GeneralRow,
    Template,
    TestRow,
    TrainRow,
)
from bench.data.errors import EffectBenchError, suggest
from bench.data.image_io import check_image_file
from bench.data.jsonl import Problems, json_type, read_jsonl_into


class _Loader:
    def __init__(self, root: Path, check_images: bool):
        self.root = root
        self.check_images = check_images
        self.problems = Problems()
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
                err(f"field {key!r} must be an object, got {json_type(v)}")
                return None
            return v
        if not isinstance(v, str):
            err(f"field {key!r} must be a string, got {json_type(v)}")
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
            err(f"field {key!r} must be a list of image paths, got {json_type(v)}")
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
        err(f"unknown effect {name!r} (not in {EFFECTS_FILE}){suggest(name, list(self.effect_lines))}")
        return False

    def _data_type(self, obj, err) -> str | None:
        v = self._field(obj, "data_type", err, required=True, kind="str")
        if v is not None and v not in DATA_TYPES:
            err(f"invalid data_type {v!r}; expected one of {', '.join(DATA_TYPES)}{suggest(v, DATA_TYPES)}")
            return None
        return v

    def _rows(self, fname: str, required: bool):
        path = self.root / fname
        if not required and not path.exists():
            return path, []
        n0 = len(self.problems)
        rows = read_jsonl_into(path, self.problems)
        if rows is not None and len(self.problems) != n0:
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
            n0 = len(self.problems)
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
            if len(self.problems) != n0:
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
            n0 = len(self.problems)
            err = self._errfn(path, line)
            name = self._name(obj, err)
            self._known_effect(name, err)
            src = self._image(obj, "source_image", path, line, err, required=True)
            instr = self._field(obj, "instruction", err, required=True, kind="str")
            tgt = self._image(obj, "target_image", path, line, err, required=False)
            pred = self._image(obj, "base_pred_image", path, line, err, required=False)
            if len(self.problems) != n0:
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
            n0 = len(self.problems)
            err = self._errfn(path, line)
            src = self._image(obj, "source_image", path, line, err, required=True)
            instr = self._field(obj, "instruction", err, required=True, kind="str")
            tgt = self._image(obj, "target_image", path, line, err, required=False)
            if len(self.problems) != n0:
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
            n0 = len(self.problems)
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
            if len(self.problems) != n0:
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
            n0 = len(self.problems)
            err = self._errfn(path, line)
            if isinstance(obj.get("lora_name"), str):
                self.names_with_template.add(obj["lora_name"])
            name = self._name(obj, err)
            self._known_effect(name, err)
            src = self._image(obj, "template_source", path, line, err, required=True)
            res = self._image(obj, "template_result", path, line, err, required=True)
            crit = self._field(obj, "criteria", err, required=False, kind="text")
            if len(self.problems) != n0:
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
            self.problems.add(path, None, f"expected a JSON object, got {json_type(meta)}")
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
            return check_image_file(ap, self.check_images)

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
