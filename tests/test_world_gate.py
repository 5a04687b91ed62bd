"""The learnability gate's verdicts on known figures (benchmarks/world_gate.py)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.errors import BenchError

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


class _Effect:
    def __init__(self, name: str):
        self.lora_name = name


def _stored(name: str, res: dict, key: str) -> dict:
    """An effect's figures as a gate file holds them, read back."""
    entry = gate.to_json({**res, "effect": name, "key": key, "tests": ["few-step gap"]})
    return gate.from_json(json.loads(json.dumps(entry)))


def test_a_stored_effect_with_the_same_key_is_read_back_and_a_stale_one_measured_again():
    res = _texture(0.028, {1: 0.02, 8: 0.25, 40: 0.78, 80: 0.82})
    gated = {"sepia": _stored("sepia", res, "k1"), "grain": _stored("grain", res, "old")}
    measured = []

    def measure(e):
        measured.append(e.lora_name)
        return {**res, "effect": e.lora_name}

    keys = {"sepia": "k1", "grain": "k2", "mirror": "k3"}
    out = [gate.gate_or_read(_Effect(n), gated, key=lambda e: keys[e.lora_name], measure=measure)
           for n in ("sepia", "grain", "mirror")]
    assert [was_stored for _, was_stored in out] == [True, False, False]
    assert measured == ["grain", "mirror"]                      # only the stale and the new one sampled
    assert {n: r["key"] for n, r in gated.items()} == keys       # the file will hold all three, fresh
    # the figures read back give the verdict the measured ones gave
    assert gate.verdict(out[0][0]) == gate.verdict(res) == (True, False)


def test_a_gate_file_of_another_preset_or_not_a_gate_file_is_refused(tmp_path):
    path = tmp_path / "gate.json"
    assert gate.load_gated(path, "synth") == {}                  # none yet: nothing gated
    path.write_text(json.dumps({"preset": "smoke", "counts": {}, "effects": []}))
    with pytest.raises(BenchError, match="preset 'smoke', not 'synth'"):
        gate.load_gated(path, "synth")
    path.write_text("{not json")
    with pytest.raises(BenchError, match="not a world-gate file"):
        gate.load_gated(path, "synth")


@pytest.mark.e2e  # the smoke world, base and three teachers (about a minute on a busy core)
def test_the_gate_and_the_base_rows_share_one_sampling_at_80_nfe(tmp_path, capsys):
    """The gate's Base column (40 x CFG 4; 10 x CFG at smoke size) is Base's evaluation samples:
    a Base run after the gate samples nothing, and its per-source error is the gate's figure. An
    effect the catalogue no longer has leaves the gate file."""
    import os
    import subprocess
    import sys

    from bench.run import main

    cache, out, path = tmp_path / "cache", tmp_path / "runs", tmp_path / "gate.json"
    root = Path(__file__).parents[1]  # this checkout's bench, whichever one the venv was installed from
    gone = {"effect": "dropped_by_a_world_version_00", "key": "k", "nfe": {}, "tests": ["neither"]}
    path.write_text(json.dumps({"preset": "smoke", "counts": {}, "effects": [gone]}))
    done = subprocess.run([sys.executable, str(Path(gate.__file__)), "--preset", "smoke", "--cache", str(cache),
                           "--json", str(path)], capture_output=True, text=True, cwd=root,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "building base samples of" in done.stdout
    assert "dropped from" in done.stdout and "dropped_by_a_world_version_00" in done.stdout
    entries = {e["effect"]: e for e in json.loads(path.read_text())["effects"]}
    assert len(entries) == 3 and all(sorted(e["nfe"], key=int)[-1] == "20" for e in entries.values())

    assert main(["--method", "base", "--preset", "smoke", "--out", str(out), "--cache", str(cache)]) == 0
    printed = capsys.readouterr().out
    assert "building base samples" not in printed and "cached   base samples of" in printed
    rows = pd.read_parquet(next(out.glob("cells/*/rows.parquet")))
    mae = rows[rows.metric == "gt_mode_mae"].groupby(["effect", "sample"])["value"].mean()
    for name, entry in entries.items():
        np.testing.assert_allclose(mae[name].to_numpy(), entry["nfe"]["20"]["gt_mode_mae"], rtol=1e-6)
