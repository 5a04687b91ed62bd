"""Tests for the embedded synthetic world: sources, general edits and the effect catalogue."""

from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pytest

from bench.synthetic.effects import GATE_DROPPED, Effect, build_effects, effects_by_name
from bench.synthetic.general import GENERAL_EDITS, GeneralEdit, sample_general_edit
from bench.synthetic.images import CATEGORIES, make_source

MIN_CHANGE = 0.03      # mean |effect(x) - x| over the probe set
MIN_DISTINCT = 0.02    # mean |a(x) - b(x)| between any two effects over the probe set


@pytest.fixture(scope="module")
def effects() -> list[Effect]:
    return build_effects()


@pytest.fixture(scope="module")
def probes() -> np.ndarray:
    rng = np.random.default_rng(2024)
    return np.stack([make_source(c, rng, 16) for c in CATEGORIES for _ in range(3)])


@pytest.fixture(scope="module")
def outputs(effects: list[Effect], probes: np.ndarray) -> np.ndarray:
    """(n_effects, n_probes, 16, 16, 3) outputs of every effect on every probe."""
    return np.stack([np.stack([e.apply(p) for p in probes]) for e in effects])


# --------------------------------------------------------------------------- catalogue


def test_catalogue_size_and_family_spread(effects: list[Effect]) -> None:
    assert len(effects) >= 180
    families = Counter(e.family for e in effects)
    assert len(families) >= 8
    assert min(families.values()) >= 8, families  # every family has several members
    assert len({e.family for e in effects[:10]}) >= 6
    assert len({e.family for e in effects[:50]}) == len(families)


def test_effects_the_gate_dropped_are_out_and_the_others_keep_their_rows(effects: list[Effect]) -> None:
    """The gate's drops leave the catalogue; every other effect is the same as in the full order
    (trigger, data type: what its training rows and its teacher's cache key follow from)."""
    full = build_effects(0, dropped=True)
    assert set(GATE_DROPPED) <= {e.name for e in full}
    assert not GATE_DROPPED.keys() & {e.name for e in effects}
    assert effects == [e for e in full if e.name not in GATE_DROPPED]
    assert len(full) - len(effects) == len(GATE_DROPPED)


def test_names_and_triggers_are_unique_made_up_tokens(effects: list[Effect]) -> None:
    names = [e.name for e in effects]
    triggers = [e.trigger for e in effects]
    assert len(set(names)) == len(names)
    assert len(set(triggers)) == len(triggers)
    assert all(re.fullmatch(r"[a-z]{5,8}", t) for t in triggers), triggers
    prompts = " ".join(e.teacher_prompt.lower() + " " + e.description.lower() for e in effects)
    assert not [t for t in triggers if t in prompts]
    # No trigger hides inside another one.
    assert not [(a, b) for a in triggers for b in triggers if a != b and a in b]


def test_prompts_descriptions_and_metadata(effects: list[Effect]) -> None:
    prompts = [e.teacher_prompt for e in effects]
    assert len(set(prompts)) == len(prompts)
    assert all(p.startswith("Apply the ") and "effect" in p for p in prompts)
    assert all(len(e.description) > 20 and "\n" not in e.description for e in effects)
    counts = Counter(e.data_type for e in effects)
    assert set(counts) == set(CATEGORIES)
    assert max(counts.values()) - min(counts.values()) <= 1 + len(GATE_DROPPED)  # balanced before the drops
    assert effects_by_name(effects)[effects[5].name] is effects[5]


def test_params_are_json_serialisable(effects: list[Effect]) -> None:
    for e in effects:
        params = e.params_dict()
        assert json.loads(json.dumps(params)) == params


def test_catalogue_is_deterministic(effects: list[Effect], probes: np.ndarray) -> None:
    again = build_effects(0)
    assert again == effects
    for a, b in zip(effects[::7], again[::7]):
        np.testing.assert_array_equal(a.apply(probes[0]), b.apply(probes[0]))
    other = build_effects(1)
    assert [e.name for e in other] == [e.name for e in effects]
    assert [e.trigger for e in other] != [e.trigger for e in effects]


# --------------------------------------------------------------------------- ground-truth functions


@pytest.mark.parametrize("size", [16, 32, (24, 16), (16, 24), 8])
def test_outputs_keep_shape_dtype_and_range(effects: list[Effect], size: int | tuple[int, int]) -> None:
    img = make_source("animal", np.random.default_rng(3), size)
    for e in effects:
        out = e.apply(img)
        assert out.shape == img.shape and out.dtype == np.float32, e.name
        assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0, e.name


def test_apply_is_pure_and_validates_input(effects: list[Effect], probes: np.ndarray) -> None:
    img = probes[1].copy()
    for e in effects:
        e.apply(img)
    np.testing.assert_array_equal(img, probes[1])
    np.testing.assert_allclose(effects[0].apply(img.astype(np.float64)), effects[0].apply(img), atol=1e-6)
    with pytest.raises(ValueError):
        effects[0].apply(np.zeros((16, 16), np.float32))


def test_every_effect_changes_images(effects: list[Effect], probes: np.ndarray, outputs: np.ndarray) -> None:
    change = np.abs(outputs - probes[None]).mean(axis=(1, 2, 3, 4))
    weak = [(e.name, round(float(c), 4)) for e, c in zip(effects, change) if c <= MIN_CHANGE]
    assert not weak


def _l1_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean absolute difference between every row of ``a`` and every row of ``b`` (row by row: low memory)."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return np.stack([np.abs(b - row).mean(axis=1) for row in a])


def test_effects_are_pairwise_distinct(effects: list[Effect], outputs: np.ndarray) -> None:
    dist = _l1_matrix(outputs, outputs)
    np.fill_diagonal(dist, np.inf)
    i, j = np.unravel_index(np.argmin(dist), dist.shape)
    assert dist[i, j] > MIN_DISTINCT, (effects[i].name, effects[j].name, float(dist[i, j]))


# --------------------------------------------------------------------------- sources


def _layout_features(img: np.ndarray) -> np.ndarray:
    """Mean colour of the top third, the centre and the bottom third."""
    h, w, _ = img.shape
    return np.concatenate([img[: h // 3].mean((0, 1)), img[h // 3: 2 * h // 3, w // 3: 2 * w // 3].mean((0, 1)),
                           img[2 * h // 3:].mean((0, 1))])


def test_make_source_basic_contract() -> None:
    for cat in CATEGORIES:
        img = make_source(cat, np.random.default_rng(0))
        assert img.shape == (16, 16, 3) and img.dtype == np.float32
        assert img.min() >= 0.0 and img.max() <= 1.0 and img.std() > 0.05
        np.testing.assert_array_equal(img, make_source(cat, np.random.default_rng(0)))
        assert make_source(cat, np.random.default_rng(0), (24, 40)).shape == (24, 40, 3)
        assert make_source(cat, np.random.default_rng(0), 128).shape == (128, 128, 3)
    rng = np.random.default_rng(5)
    a, b = make_source("pet", rng), make_source("pet", rng)
    assert np.abs(a - b).mean() > 0.02  # consecutive draws differ


def test_make_source_rejects_unknown_category() -> None:
    with pytest.raises(ValueError, match="pet.*animal.*portrait"):
        make_source("car", np.random.default_rng(0))


def test_categories_have_distinct_statistics() -> None:
    rng = np.random.default_rng(0)
    centroids = {c: np.mean([_layout_features(make_source(c, rng)) for _ in range(20)], axis=0) for c in CATEGORIES}
    hits = []
    for c in CATEGORIES:
        for _ in range(15):
            f = _layout_features(make_source(c, rng))
            hits.append(min(CATEGORIES, key=lambda k: float(np.linalg.norm(f - centroids[k]))) == c)
    assert np.mean(hits) >= 0.85


# --------------------------------------------------------------------------- general edits


def _edit(name: str) -> GeneralEdit:
    return next(g for g in GENERAL_EDITS if g.name == name)


def test_general_edit_catalogue(effects: list[Effect]) -> None:
    names = [g.name for g in GENERAL_EDITS]
    assert 20 <= len(names) <= 40 and len(set(names)) == len(names)
    assert not set(names) & {e.name for e in effects}
    assert all(len(g.instructions) >= 2 for g in GENERAL_EDITS)
    phrasings = [i for g in GENERAL_EDITS for i in g.instructions]
    assert len(set(phrasings)) == len(phrasings)


def test_general_edits_apply_correctly(probes: np.ndarray) -> None:
    img = probes[0]
    np.testing.assert_array_equal(_edit("identity").apply(img), img)
    for name in ("flip_horizontal", "flip_vertical", "rotate_180", "swap_red_blue", "invert"):
        edit = _edit(name)
        np.testing.assert_allclose(edit.apply(edit.apply(img)), img, atol=1e-6)
    np.testing.assert_array_equal(_edit("flip_horizontal").apply(img), img[:, ::-1])
    rot = _edit("rotate_90")
    np.testing.assert_array_equal(rot.apply(rot.apply(rot.apply(rot.apply(img)))), img)
    assert _edit("brighten_slight").apply(img).mean() > img.mean()
    non_square = make_source("portrait", np.random.default_rng(1), (24, 16))
    assert all(g.apply(non_square, np.random.default_rng(0)).shape == (24, 16, 3) for g in GENERAL_EDITS)


def test_general_edits_differ_from_effects(effects: list[Effect], probes: np.ndarray, outputs: np.ndarray) -> None:
    general = np.stack([np.stack([g.apply(p, np.random.default_rng(0)) for p in probes]) for g in GENERAL_EDITS])
    dist = _l1_matrix(outputs, general)
    i, j = np.unravel_index(np.argmin(dist), dist.shape)
    assert dist[i, j] > MIN_DISTINCT, (effects[i].name, GENERAL_EDITS[j].name)


def test_sample_general_edit_is_deterministic_and_covers_edits() -> None:
    draws = [sample_general_edit(np.random.default_rng(s)) for s in range(300)]
    assert all(instr in edit.instructions for instr, edit in draws)
    assert len({edit.name for _, edit in draws}) == len(GENERAL_EDITS)
    assert sample_general_edit(np.random.default_rng(9)) == sample_general_edit(np.random.default_rng(9))
