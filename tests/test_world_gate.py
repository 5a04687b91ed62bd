"""The learnability gate's verdicts on known figures (benchmarks/world_gate.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

_spec = importlib.util.spec_from_file_location("world_gate", Path(__file__).parents[1] / "benchmarks" / "world_gate.py")
gate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gate)


def _series(mean: float, n: int = 16, spread: float = 0.002, seed: int = 0) -> pd.Series:
    return pd.Series(mean + spread * np.random.default_rng(seed).standard_normal(n))


def _texture(teacher_err: float, energies: dict[int, float], source: float = 0.018, draw: float = 0.029) -> dict:
    nfe = {n: {"gt_mode_mae": _series(teacher_err, seed=n), "fidelity": _series(e, seed=n + 1),
               "mode_coverage": _series(np.nan)} for n, e in energies.items()}
    return {"kind": "texture", "nfe": nfe, "source_mae": _series(source, seed=90), "draw_mae": _series(draw, seed=91)}


def test_a_texture_whose_source_is_below_an_exact_draw_is_learned_when_as_close_as_a_draw():
    # fine pixelation at 16 px: the grain of an exact draw leaks more low-pass error than the
    # unchanged source has, so "below the source" cannot be met; as close as a draw is learned
    res = _texture(0.028, {1: 0.02, 8: 0.25, 40: 0.78, 80: 0.82})
    assert gate.learned_at(res) == [8, 40, 80]
    assert gate.verdict(res) == (True, False)           # and it tests the few-step gap


def test_a_texture_teacher_far_from_both_is_not_learned():
    res = _texture(0.060, {1: 0.02, 8: 0.25, 40: 0.78, 80: 0.82})
    assert gate.learned_at(res) == [] and gate.verdict(res) == (False, False)


def test_a_modes_teacher_must_beat_the_source_and_the_mode_mean():
    nfe = {n: {"gt_mode_mae": _series(0.05, seed=n), "fidelity": _series(0.05, seed=n),
               "mode_coverage": _series(0.9)} for n in (1, 8, 40, 80)}
    res = {"kind": "modes", "nfe": nfe, "source_mae": _series(0.09, seed=5), "mean_mae": _series(0.10, seed=6)}
    assert gate.learned_at(res) == [8, 40, 80] and gate.verdict(res) == (False, True)
    res["mean_mae"] = _series(0.05, seed=7)              # no better than averaging the modes
    assert gate.learned_at(res) == []
