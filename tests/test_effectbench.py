"""Tests for bench/data/: the EffectBench loader (bench/data/loader.py) and its error reporting."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.data.effectbench import EffectBench
from bench.data.errors import EffectBenchError, UnknownEffectError
from bench.data.image_io import load_image, save_image
from bench.data.jsonl import read_jsonl, write_jsonl
from bench.data.loader import load_effectbench

# ----------------------------------------------------------------------------- fixture


def _img(seed: int, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).random((size, size, 3), dtype=np.float32)


EFFECTS = [
    {"lora_name": "sepia", "prompt": "make it sepia", "data_type": "pet",
     "recaption_prompt_with_trigword": "zq1 sepia tone", "trigger": "zq1", "family": "color",
     "params": {"strength": 0.8}, "criteria": "brownish", "my_extra": 7},
    {"lora_name": "invert", "prompt": "invert colors", "data_type": "portrait",
     "recaption_prompt_with_trigword": "zq2 inverted", "lora_path": "loras/invert.safetensors"},
    {"lora_name": "blur", "prompt": "blur it", "data_type": "pet", "lora_path": None,
     "recaption_prompt_with_trigword": "zq3 blurred"},
]


def _write_manifests(root: Path, m: dict[str, list[dict]]) -> None:
    for name, rows in m.items():
        write_jsonl(root / name, rows)


@pytest.fixture
def ds(tmp_path):
    """Build a small valid dataset; returns (root, manifests dict) -- edit & rewrite to break it."""
    root = tmp_path / "ds"
    for i in range(8):
        save_image(root / "img" / f"{i}.png", _img(i))
    (root / "loras").mkdir()
    (root / "loras" / "invert.safetensors").write_bytes(b"\0" * 8)
    m = {
        "effects.jsonl": [dict(e) for e in EFFECTS],
        "train.jsonl": [
            {"lora_name": "sepia", "source_image": "img/0.png", "instruction": "make it sepia",
             "target_image": "img/1.png"},
            {"lora_name": "invert", "source_image": "img/2.png", "instruction": "invert colors",
             "base_pred_image": "img/3.png"},
            {"lora_name": "sepia", "source_image": "img/4.png", "instruction": "make it sepia"},
        ],
        "general.jsonl": [{"source_image": "img/5.png", "instruction": "add a hat"}],
        "test.jsonl": [
            {"source_image": "img/6.png", "data_type": "pet"},
            {"source_image": "img/7.png", "data_type": "portrait"},
            {"source_image": "img/0.png", "data_type": "pet", "lora_name": "blur",
             "target_image": "img/1.png"},
        ],
        "templates.jsonl": [
            {"lora_name": "sepia", "template_source": "img/0.png", "template_result": "img/1.png"},
            {"lora_name": "invert", "template_source": "img/2.png", "template_result": "img/3.png",
             "criteria": "negative"},
            {"lora_name": "blur", "template_source": "img/4.png", "template_result": "img/5.png"},
        ],
    }
    _write_manifests(root, m)
    (root / "meta.json").write_text(json.dumps({"world": "synthetic", "image_size": 16, "seed": 0}))
    return root, m


def _load_err(root: Path, **kw) -> EffectBenchError:
    with pytest.raises(EffectBenchError) as ei:
        load_effectbench(root, **kw)
    return ei.value


def _loc(root: Path, fname: str, line: int | None = None) -> str:
    return f"{root / fname}:{line}: " if line else f"{root / fname}: "


# ----------------------------------------------------------------------------- valid data


def test_valid_dataset_loads_and_round_trips(ds, tmp_path):
    root, _ = ds
    b = load_effectbench(root)
    assert isinstance(b, EffectBench)
    assert b.root == root.resolve()
    assert b.names == ("sepia", "invert", "blur")
    sep = b.effect("sepia")
    assert sep.origin == "effects.jsonl:1"
    assert sep.params == {"strength": 0.8} and sep.trigger == "zq1" and sep.criteria == "brownish"
    assert sep.extra == {"my_extra": 7} and sep.lora_path is None
    assert b.effect("invert").lora_path == root.resolve() / "loras" / "invert.safetensors"
    assert b.train[0].source_image == root.resolve() / "img" / "0.png"
    assert b.train[0].source_image.is_absolute() and b.train[1].base_pred_image.name == "3.png"
    assert b.meta == {"world": "synthetic", "image_size": 16, "seed": 0}
    assert len(b.general) == 1 and b.general[0].origin == "general.jsonl:1"

    # round trip: write the parsed rows back out and reload -> same benchmark
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "img").symlink_to(root / "img")
    (copy / "loras").symlink_to(root / "loras")
    for fname, rows in [("effects.jsonl", b.effects), ("train.jsonl", b.train),
                        ("general.jsonl", b.general), ("test.jsonl", b.test),
                        ("templates.jsonl", b.templates)]:
        write_jsonl(copy / fname, [r.to_row(b.root) for r in rows])
    (copy / "meta.json").write_text(json.dumps(b.meta))
    b2 = load_effectbench(copy)
    assert b2.names == b.names
    assert [e.to_row(b.root) for e in b.effects] == [e.to_row(b2.root) for e in b2.effects]
    assert [r.to_row(b.root) for r in b.test] == [r.to_row(b2.root) for r in b2.test]
    assert b2.effect("sepia").extra == {"my_extra": 7}


def test_select_and_row_accessors(ds):
    root, _ = ds
    b = load_effectbench(root)
    # generic pet sample + lora-specific blur sample, in file order
    assert [r.origin for r in b.test_rows("blur")] == ["test.jsonl:1", "test.jsonl:3"]
    assert [r.origin for r in b.test_rows("sepia")] == ["test.jsonl:1"]
    assert [r.origin for r in b.test_rows("invert")] == ["test.jsonl:2"]
    assert [r.origin for r in b.train_rows("sepia")] == ["train.jsonl:1", "train.jsonl:3"]
    assert b.train_rows("blur") == ()
    assert [t.criteria for t in b.templates_for("invert")] == ["negative"]

    s2 = b.select(2)
    assert s2.names == ("sepia", "invert")
    assert {r.lora_name for r in s2.train} == {"sepia", "invert"}
    assert [r.origin for r in s2.test] == ["test.jsonl:1", "test.jsonl:2"]  # blur-only row dropped
    assert len(s2.templates) == 2 and s2.general == b.general

    s = b.select(names=["blur", "sepia"])
    assert s.names == ("sepia", "blur")  # file order
    assert s.train_rows("blur") == () and len(s.test_rows("blur")) == 2
    with pytest.raises(KeyError):
        s.effect("invert")

    with pytest.raises(EffectBenchError, match="only 3"):
        b.select(4)
    with pytest.raises(EffectBenchError):
        b.select(0)
    with pytest.raises(UnknownEffectError, match="did you mean 'sepia'"):
        b.select(names=["sepai"])
    with pytest.raises(KeyError, match="did you mean 'blur'"):
        b.effect("blurr")


def test_blank_lines_ignored_and_read_jsonl_line_numbers(ds):
    root, _ = ds
    p = root / "train.jsonl"
    lines = p.read_text().splitlines()
    p.write_text("\n" + lines[0] + "\n   \n" + "\n".join(lines[1:]) + "\n\n")
    rows = read_jsonl(p)
    assert [n for n, _ in rows] == [2, 4, 5]
    b = load_effectbench(root)
    assert [r.origin for r in b.train] == ["train.jsonl:2", "train.jsonl:4", "train.jsonl:5"]


# ----------------------------------------------------------------------------- bad data


def test_missing_image(ds):
    root, m = ds
    m["train.jsonl"][1]["source_image"] = "img/nope.png"
    _write_manifests(root, m)
    e = _load_err(root)
    assert str(e).startswith(_loc(root, "train.jsonl", 2))
    assert "image not found" in str(e) and "nope.png" in str(e) and len(e.problems) == 1


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_corrupt_image(ds, kind):
    root, m = ds
    bad = root / "img" / "bad.png"
    if kind == "garbage":
        bad.write_bytes(b"this is not a png at all" * 4)
    else:
        bad.write_bytes((root / "img" / "0.png").read_bytes()[:60])
    m["templates.jsonl"][2]["template_result"] = "img/bad.png"
    _write_manifests(root, m)
    e = _load_err(root)
    assert str(e).startswith(_loc(root, "templates.jsonl", 3))
    assert "unreadable image" in str(e) and "bad.png" in str(e)


def test_unknown_effect_in_train_row(ds):
    root, m = ds
    m["train.jsonl"][2]["lora_name"] = "sepiaa"
    _write_manifests(root, m)
    e = _load_err(root)
    assert str(e).startswith(_loc(root, "train.jsonl", 3))
    assert "unknown effect 'sepiaa'" in str(e) and "did you mean 'sepia'" in str(e)


def test_unknown_effect_in_test_row(ds):
    root, m = ds
    m["test.jsonl"][2]["lora_name"] = "glow"
    _write_manifests(root, m)
    e = _load_err(root)
    assert _loc(root, "test.jsonl", 3) + "unknown effect 'glow'" in str(e)


def test_duplicate_effect_name(ds):
    root, m = ds
    m["effects.jsonl"][2]["lora_name"] = "sepia"
    _write_manifests(root, m)
    e = _load_err(root)
    msg = e.problems[0]
    assert msg.startswith(_loc(root, "effects.jsonl", 3)) and "duplicate lora_name 'sepia'" in msg
    assert f"{root / 'effects.jsonl'}:1" in msg  # names the first definition too


def test_empty_effects_manifest(ds):
    root, _ = ds
    (root / "effects.jsonl").write_text("\n\n")
    e = _load_err(root)
    assert str(e).startswith(_loc(root, "effects.jsonl")) and "no effects" in str(e)


def test_missing_effects_or_test_manifest(ds):
    root, _ = ds
    (root / "test.jsonl").unlink()
    e = _load_err(root)
    assert _loc(root, "test.jsonl") + "file not found" in str(e)
    (root / "test.jsonl").write_text("")
    e = _load_err(root)
    assert _loc(root, "test.jsonl") + "no test samples" in str(e) and len(e.problems) == 1


def test_missing_required_field(ds):
    root, m = ds
    del m["effects.jsonl"][1]["recaption_prompt_with_trigword"]
    m["general.jsonl"][0]["instruction"] = 5
    _write_manifests(root, m)
    e = _load_err(root)
    assert (_loc(root, "effects.jsonl", 2)
            + "missing required field 'recaption_prompt_with_trigword'") in e.problems
    assert _loc(root, "general.jsonl", 1) + "field 'instruction' must be a string, got number" in e.problems


def test_invalid_data_type(ds):
    root, m = ds
    m["effects.jsonl"][0]["data_type"] = "pets"
    _write_manifests(root, m)
    e = _load_err(root)
    assert str(e).startswith(_loc(root, "effects.jsonl", 1) + "invalid data_type 'pets'")
    assert "did you mean 'pet'" in str(e)


def test_malformed_json_line(ds):
    root, _ = ds
    p = root / "test.jsonl"
    lines = p.read_text().splitlines()
    lines[1] = lines[1][:-1]  # drop closing brace
    p.write_text("\n".join(lines) + "\n")
    e = _load_err(root)
    assert str(e).startswith(_loc(root, "test.jsonl", 2) + "invalid JSON")


def test_comment_and_non_object_lines_rejected(ds):
    root, _ = ds
    p = root / "general.jsonl"
    p.write_text("# a comment\n" + p.read_text() + "[1, 2]\n")
    e = _load_err(root)
    assert _loc(root, "general.jsonl", 1) + "comment lines ('#') are not allowed in JSONL" in e.problems
    assert _loc(root, "general.jsonl", 3) + "expected a JSON object, got array" in e.problems


def test_effect_without_template(ds):
    root, m = ds
    del m["templates.jsonl"][1]  # invert's template
    _write_manifests(root, m)
    e = _load_err(root)
    assert str(e) == _loc(root, "effects.jsonl", 2) + "effect 'invert' has no template in templates.jsonl"


def test_effect_without_test_sample(ds):
    root, m = ds
    del m["test.jsonl"][1]  # the only portrait sample
    _write_manifests(root, m)
    e = _load_err(root)
    assert str(e).startswith(_loc(root, "effects.jsonl", 2) + "effect 'invert' has no test sample")


def test_generic_test_row_with_target_rejected(ds):
    root, m = ds
    m["test.jsonl"][0]["target_image"] = "img/1.png"
    _write_manifests(root, m)
    e = _load_err(root)
    assert str(e).startswith(_loc(root, "test.jsonl", 1) + "target_image is only allowed")


def test_missing_lora_path(ds):
    root, _ = ds
    (root / "loras" / "invert.safetensors").unlink()
    e = _load_err(root)
    assert str(e).startswith(_loc(root, "effects.jsonl", 2) + "lora_path: not found")
    assert "invert.safetensors" in str(e)


def test_several_errors_reported_together(ds):
    root, m = ds
    m["effects.jsonl"][0]["data_type"] = "cat"
    m["train.jsonl"][0]["source_image"] = "img/missing.png"
    m["train.jsonl"][2]["lora_name"] = "nope"
    m["templates.jsonl"][1]["template_source"] = "img/missing2.png"
    _write_manifests(root, m)
    bad = root / "test.jsonl"
    bad.write_text(bad.read_text() + "{not json\n")
    e = _load_err(root)
    assert len(e.problems) == 5
    lines = str(e).splitlines()
    assert lines[:5] == list(e.problems)
    assert lines[-1].startswith("5 problems found")
    assert lines[0].startswith(_loc(root, "effects.jsonl", 1))
    assert lines[1].startswith(_loc(root, "train.jsonl", 1))
    assert lines[2].startswith(_loc(root, "train.jsonl", 3))
    assert lines[3].startswith(_loc(root, "test.jsonl", 4))
    assert lines[4].startswith(_loc(root, "templates.jsonl", 2))


def test_many_errors_are_capped_but_counted(ds):
    root, m = ds
    m["train.jsonl"] = [{"lora_name": "sepia", "source_image": f"img/x{i}.png", "instruction": "x"}
                        for i in range(70)]
    _write_manifests(root, m)
    e = _load_err(root)
    assert len(e.problems) == 70
    assert "20 more problem(s) not shown" in str(e) and "70 problems found" in str(e)


def test_check_images_false_still_reports_missing_files(ds):
    root, m = ds
    (root / "img" / "bad.png").write_bytes(b"garbage")
    m["general.jsonl"].append({"source_image": "img/bad.png", "instruction": "x"})  # corrupt: not decoded
    m["test.jsonl"][0]["source_image"] = "img/gone.png"
    _write_manifests(root, m)
    e = _load_err(root, check_images=False)
    assert str(e).startswith(_loc(root, "test.jsonl", 1) + "source_image: image not found")
    assert len(e.problems) == 1
    m["test.jsonl"][0]["source_image"] = "img/6.png"
    _write_manifests(root, m)
    assert len(load_effectbench(root, check_images=False).general) == 2
    assert "unreadable image" in str(_load_err(root))


def test_missing_dataset_dir(tmp_path):
    with pytest.raises(EffectBenchError, match="dataset directory not found"):
        load_effectbench(tmp_path / "nothing")


# ----------------------------------------------------------------------------- image / jsonl io


def test_load_image_resizes_and_returns_unit_float(tmp_path):
    arr = _img(3, 16)
    p = save_image(tmp_path / "a" / "b" / "x.png", arr)
    assert p.exists() and not [f for f in p.parent.iterdir() if f.name != "x.png"]  # no temp left
    x = load_image(p)
    assert x.dtype == np.float32 and x.shape == (16, 16, 3)
    assert np.abs(x - arr).max() <= 0.5 / 255 + 1e-6
    y = load_image(p, size=8)
    assert y.shape == (8, 8, 3) and y.dtype == np.float32 and 0.0 <= y.min() and y.max() <= 1.0
    z = load_image(p, size=(24, 12))  # (height, width)
    assert z.shape == (24, 12, 3) and 0.0 <= z.min() and z.max() <= 1.0
    save_image(tmp_path / "g.png", np.full((4, 5), 2.0))  # gray, clipped
    assert np.allclose(load_image(tmp_path / "g.png"), 1.0)


def test_load_image_errors_name_file_and_origin(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(EffectBenchError) as ei:
        load_image(bad, origin="train.jsonl:7")
    assert str(ei.value).startswith("train.jsonl:7: unreadable image") and str(bad) in str(ei.value)
    with pytest.raises(EffectBenchError, match="image not found"):
        load_image(tmp_path / "none.png", origin="test.jsonl:1")


def test_write_jsonl_atomic_and_converts(tmp_path):
    p = tmp_path / "sub" / "rows.jsonl"
    n = write_jsonl(p, [{"a": Path("x/y.png"), "b": np.int64(3), "c": "é"}, {"d": [1.5]}])
    assert n == 2
    assert read_jsonl(p) == [(1, {"a": "x/y.png", "b": 3, "c": "é"}), (2, {"d": [1.5]})]
    with pytest.raises(ValueError):
        write_jsonl(p, [{"a": float("nan")}])
    assert read_jsonl(p)[0][0] == 1  # old file untouched
    assert sorted(f.name for f in p.parent.iterdir()) == ["rows.jsonl"]


def test_truncated_image_caught_even_if_pil_tolerates_truncation(ds, monkeypatch):
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    root, m = ds
    (root / "img" / "cut.png").write_bytes((root / "img" / "0.png").read_bytes()[:-30])
    m["general.jsonl"][0]["source_image"] = "img/cut.png"
    _write_manifests(root, m)
    e = _load_err(root)
    assert str(e).startswith(_loc(root, "general.jsonl", 1) + "source_image: unreadable image")


def test_lora_specific_test_row_data_type_must_match_effect(ds):
    root, m = ds
    m["test.jsonl"][2]["data_type"] = "portrait"  # blur is a 'pet' effect
    _write_manifests(root, m)
    e = _load_err(root)
    assert str(e).startswith(_loc(root, "test.jsonl", 3) + "data_type 'portrait' does not match effect 'blur'")


# ---- identity: keys of a dataset on disk follow its content, not its path (issue 14 item 5)


def _keys(root: Path) -> tuple[str, str, dict[str, str], str]:
    from dataclasses import replace

    from bench.cache import ArtifactCache
    from bench.config import PRESETS
    from bench.store import cell_id
    from bench.workspace import Workspace

    cfg = PRESETS.get("smoke")()
    cfg = replace(cfg, world=replace(cfg.world, kind="effectbench", root=str(root)), n_effects=2)
    from methods.teachers import outputs_spec

    ws = Workspace(cfg, ArtifactCache(root.parent / "cache"))
    sepia = ws.full_bench.effects[0]
    outputs = outputs_spec(ws, sepia, Path("teachers/abc"), ws.full_bench.train_rows(sepia.lora_name)).key
    return cell_id(cfg), ws.base_key, ws.content_inputs([root / "img" / "0.png", root / "img" / "1.png"]), outputs


def test_a_dataset_edited_in_place_gets_new_cell_and_artifact_keys(ds):
    import shutil

    root, _ = ds
    before = _keys(root)
    copy = root.parent / "elsewhere" / "ds"
    shutil.copytree(root, copy)
    assert _keys(copy) == before                       # same content elsewhere: same cells, same artifacts
    save_image(root / "img" / "1.png", _img(99))       # one training target edited in place
    after = _keys(root)
    assert all(a != b for a, b in zip(after, before))
    assert _keys(root) == after                        # and stable while nothing changes


def test_editing_a_manifest_prompt_changes_the_keys(ds):
    root, m = ds
    before = _keys(root)
    m["effects.jsonl"][0]["prompt"] = m["effects.jsonl"][0]["prompt"] + ", stronger"
    _write_manifests(root, m)
    assert _keys(root)[0] != before[0]


class _SpecRecorder:
    """An artifact cache that records the specs asked for and builds nothing (a path named by
    the key, as a built artifact's would be)."""

    def __init__(self, root: Path) -> None:
        self.root, self.specs = root, []

    def get_or_build(self, spec, build):  # noqa: ANN001
        self.specs.append(spec)
        return self.root / spec.kind / spec.key


def _specs_of_every_kind(root: Path) -> dict[str, list]:
    """The specs a run of each training method asks for on the dataset ``root`` (2 effects:
    sepia's teacher trained here, invert's given by ``lora_path``)."""
    from dataclasses import replace

    from bench.config import PRESETS
    from bench.workspace import Workspace
    from methods import METHODS, resolve_components
    from methods.teachers import outputs_spec

    cfg = PRESETS.get("smoke")()
    cfg = replace(cfg, world=replace(cfg.world, kind="effectbench", root=str(root)), n_effects=2)
    cache = _SpecRecorder(root.parent / "cache")
    specs = {}
    for method in ("fm_all_in_1", "ours", "merge_linear"):
        ws = Workspace(replace(cfg, method=method), cache)
        effects = list(ws.bench.effects)
        cls = METHODS.get(method)
        m = cls(ws, resolve_components(cls, ()))
        if hasattr(m, "build_lora"):
            m.build_lora(effects)
        else:  # ours: its student (training stops at the recorder; nothing is built)
            from methods.distill import distilled_lora
            from methods.dmd import Objectives

            distilled_lora(ws, kind="collectionlora", cfg=cfg.distill, effects=effects, p_switch=0.5,
                           objectives=Objectives(), student_prompt=m.student_prompt, label="ours", seed=0)
        specs["base"] = [ws.base_spec]
        specs["teacher_outputs"] = [outputs_spec(ws, e, ws.teacher_dir(e), ws.full_bench.train_rows(e.lora_name))
                                    for e in effects]
    for spec in cache.specs:
        specs.setdefault(spec.kind, []).append(spec)
    return specs


def test_every_artifact_records_exactly_what_its_key_hashes(ds):
    """The config.json next to an artifact is its spec's record; re-hashing the record's inputs,
    read back from JSON, gives the artifact's key -- for every kind a run caches."""
    from bench.cache import key_of_record

    root, _ = ds
    specs = _specs_of_every_kind(root)
    assert {"base", "teachers", "teacher_outputs", "fm_all_in_1", "collectionlora", "merged"} <= set(specs)
    for kind, of_kind in specs.items():
        for spec in of_kind:
            stored = json.loads(json.dumps(spec.record(), indent=2, default=str))
            assert stored["key"] == spec.key == key_of_record(stored), kind
            assert stored["kind"] == kind


def test_a_lora_path_teacher_edited_in_place_gets_new_student_keys(ds):
    """Specs name a manifest teacher by its bytes, not by its file name (every diffusers LoRA is
    ``pytorch_lora_weights.safetensors``): rewriting it retrains what was built from it."""
    root, _ = ds
    before = _specs_of_every_kind(root)
    (root / "loras" / "invert.safetensors").write_bytes(b"\1" * 8)
    after = _specs_of_every_kind(root)
    for kind in ("fm_all_in_1", "collectionlora", "merged", "teacher_outputs"):
        assert {s.key for s in after[kind]} != {s.key for s in before[kind]}, kind
