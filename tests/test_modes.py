"""The stochastic world and its exact, mode-aware metrics (issue 12).

A known mixture gives exact metric values; parameters drawn per pair are reproducible from the
world seed; an effect marked stochastic really varies across pairs; the dataset the world writes
carries its output distribution and one loader reads it.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from bench.config import WorldConfig
from bench.data.loader import load_effectbench
from bench.synthetic.effects import MIN_MODE_SEPARATION, build_effects, mode_separation
from bench.synthetic.images import make_source
from bench.synthetic.world import build_world, output_distribution
from bench.workspace import Workspace
from metrics import METRICS, EvalBatch
from metrics.modes import expected_distinct, highpass_energy


def _score(name: str, batch: EvalBatch) -> torch.Tensor:
    return torch.tensor(METRICS.get(name)().score(batch), dtype=torch.float64)


def test_modes_effects_have_well_separated_modes_and_the_default_ten_include_some():
    """Weak modes (a mirror 0.078 apart, placements on a half or a quarter) were never learned
    by the teachers (world version 2's gate); a modes effect's variants differ by at least
    MIN_MODE_SEPARATION, and the default 10 effects test coverage as well as the few-step gap."""
    effects = build_effects(0)
    for e in (e for e in effects if e.variation.kind == "modes"):
        assert mode_separation(e.op, e.params, e.variation.modes) >= MIN_MODE_SEPARATION, e.name
        assert "placement" not in dict(e.variation.modes[0]), e.name
    weak = next(e for e in effects if e.name == "warp_mirror_left_00")  # its modes: 0.078 apart
    assert weak.variation.kind == "texture"
    assert 1 <= [e.variation.kind for e in effects[:10]].count("modes") <= 3


@pytest.fixture(scope="module")
def mixture():
    """Two well-separated modes (black / white halves swapped) of one 8 px source, 4 sources."""
    a = torch.zeros(4, 3, 8, 8)
    a[..., :4] = 1.0
    b = 1.0 - a
    variants = torch.stack([a, b], 1)                      # (4, K=2, 3, 8, 8)
    mean = variants.mean(1)
    energy = torch.full((4,), float(highpass_energy(a - mean).mean()), dtype=torch.float64)
    pairwise = torch.full((4,), 0.5 * float((a - b).abs().mean()), dtype=torch.float64)  # p_k p_l incl. k = l
    return variants, mean, energy, pairwise


def _batch(results, mixture, draws: int) -> EvalBatch:
    variants, mean, energy, pairwise = mixture
    rep = lambda t: t.repeat_interleave(draws, 0)  # noqa: E731
    n = len(results)
    src = torch.full_like(results, 0.5)
    return EvalBatch(results, src, [""] * n, variants=rep(variants), mode_means=rep(mean),
                     expected_energy=rep(energy), expected_pairwise=rep(pairwise),
                     groups=torch.arange(4).repeat_interleave(draws))


def test_exact_modes_score_perfectly_and_the_mode_mean_is_the_blur(mixture):
    variants, mean, *_ = mixture
    exact = torch.stack([variants[i // 2, i % 2] for i in range(8)])  # each source: draw 0 = mode 0, draw 1 = mode 1
    batch = _batch(exact, mixture, draws=2)
    assert torch.allclose(_score("gt_mode_mae", batch), torch.zeros(8, dtype=torch.float64))
    assert _score("mode_blur", batch).sum() == 0
    # both modes hit by 2 draws, vs 1.5 expected from an ideal sampler: 2 / 1.5
    assert torch.allclose(_score("mode_coverage", batch), torch.full((8,), 2 / expected_distinct(2, 2),
                                                                      dtype=torch.float64))
    blur = _batch(mean.repeat_interleave(2, 0), mixture, draws=2)
    assert _score("mode_blur", blur).min() == 1
    assert torch.allclose(_score("gt_mode_mae", blur), torch.full((8,), 0.5, dtype=torch.float64))
    assert torch.allclose(_score("diversity_ratio", blur), torch.zeros(8, dtype=torch.float64))  # collapse
    assert torch.allclose(_score("texture_energy", blur), torch.zeros(8, dtype=torch.float64))
    # a blurred draw recovers no mode (world version 3 counted it as its nearest: coverage > 1 at 1 NFE)
    assert _score("mode_coverage", blur).max() == 0
    near_mean = torch.stack([0.45 * variants[i // 2, i % 2] + 0.55 * mean[i // 2] for i in range(8)])
    half = torch.where(torch.arange(8)[:, None, None, None] % 2 == 0, exact, near_mean)  # one of two draws recovers
    assert torch.allclose(_score("mode_coverage", _batch(half, mixture, draws=2)),
                          torch.full((8,), 1 / expected_distinct(2, 2), dtype=torch.float64))


def test_coverage_counts_distinct_modes_and_diversity_is_one_for_an_ideal_sampler(mixture):
    variants, *_ = mixture
    collapsed = variants[:, 0].repeat_interleave(3, 0)  # every draw the same mode
    batch = _batch(collapsed, mixture, draws=3)
    assert torch.allclose(_score("mode_coverage", batch), torch.full((12,), 1 / expected_distinct(2, 3),
                                                                     dtype=torch.float64))
    assert _score("diversity_ratio", batch).max() == 0
    # Many exact draws from the uniform mixture: mean pairwise distance -> its expectation.
    rng = np.random.default_rng(0)
    draws = 200
    picks = rng.integers(0, 2, (4, draws))
    ideal = torch.stack([variants[i, picks[i, j]] for i in range(4) for j in range(draws)])
    ratio = _score("diversity_ratio", _batch(ideal, mixture, draws=draws))
    assert abs(float(ratio.mean()) - 1.0) < 0.05
    assert abs(float(_score("texture_energy", _batch(ideal, mixture, draws=draws)).mean()) - 1.0) < 0.1


def test_texture_effect_metrics_on_exact_draws_and_on_the_mean():
    e = next(e for e in build_effects(0) if e.variation.kind == "texture" and e.variation.axis == "grain_seed"
             and not e.variation.grain_pre)
    rng = np.random.default_rng(3)
    img = make_source(e.data_type, rng, 16)
    d = output_distribution(e, img, rng)
    to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).float()  # noqa: E731
    draws = 32
    exact = to_t(np.stack([e.apply(img, e.draw(rng)) for _ in range(draws)]))
    mean = to_t(d["mean"][None]).expand(draws, -1, -1, -1)
    kw = dict(mode_means=mean, expected_energy=torch.full((draws,), d["energy"], dtype=torch.float64),
              expected_pairwise=torch.full((draws,), d["pairwise"], dtype=torch.float64),
              groups=torch.zeros(draws, dtype=torch.long))
    src = to_t(img[None]).expand(draws, -1, -1, -1)
    good = EvalBatch(exact, src, [""] * draws, **kw)
    blur = EvalBatch(mean.clone(), src, [""] * draws, **kw)
    assert abs(float(_score("texture_energy", good).mean()) - 1.0) < 0.1   # right energy
    assert abs(float(_score("diversity_ratio", good)[0]) - 1.0) < 0.1
    assert float(_score("mode_blur", good).mean()) == 0 and float(_score("mode_blur", blur).mean()) == 1
    assert float(_score("texture_energy", blur).mean()) < 0.01
    # the structure under the grain is right for both; the judge charges the missing texture
    assert float(_score("gt_mode_mae", good).mean()) < 0.03 and float(_score("gt_mode_mae", blur).mean()) < 1e-6
    assert float(_score("editreward_syn", blur).mean()) < float(_score("editreward_syn", good).mean())
    assert float(_score("bcr_syn", blur).mean()) == 1
    assert np.isnan(_score("mode_coverage", good)).all()  # no discrete modes


def test_every_effect_is_stochastic_and_varies_across_draws():
    effects = build_effects(0)
    assert all(e.stochastic for e in effects)
    kinds = [e.variation.kind for e in effects]
    assert kinds.count("texture") > len(effects) / 2 and kinds.count("modes") >= 7  # 10 before the gate dropped three
    # modes are spatial choices (stripe or checker phase, emboss direction, mirrored side); a
    # global colour choice (hue rotation, palette direction) was averaged by its teacher
    assert not {e.op for e in effects if e.variation.kind == "modes"} & {"hue_rotate", "gradient_map"}
    for family in {e.family for e in effects}:  # every family has textures (the few-step gap)
        assert any(e.variation.kind == "texture" for e in effects if e.family == family), family
    rng = np.random.default_rng(0)
    img = make_source("pet", rng, 16)
    for e in effects:
        if e.variation.kind == "modes":  # every mode is its own image
            v = e.mode_variants(img)
            gap = min(np.abs(v[i] - v[j]).mean() for i in range(len(v)) for j in range(i))
        else:  # two fresh texture draws differ
            gap = np.abs(e.apply(img, e.draw(rng)) - e.apply(img, e.draw(rng))).mean()
        assert gap > 1e-3, e.name


TINY_WORLD = WorldConfig(n_train_per_effect=4, n_test_per_category=2, n_general=64)


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    """All 195 effects, few rows; a small Monte Carlo size for the texture statistics (their
    values are tested on exact draws above, not here), which is most of a world's build time."""
    root = tmp_path_factory.mktemp("world")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("bench.synthetic.world.MC_DRAWS", 2)
        build_world(root, TINY_WORLD)
    return root


def test_draws_are_recorded_per_pair_and_reproducible_from_the_world_seed(tiny_world):
    rows = [json.loads(line) for line in (tiny_world / "train.jsonl").read_text().splitlines()]
    first = [r for r in rows if r["lora_name"] == rows[0]["lora_name"]]
    assert all("params" in r for r in rows) and len({json.dumps(r["params"]) for r in first}) > 1
    # (that a rebuild draws the same parameters, whatever the test rows' Monte Carlo size, is the
    # next test's "more_test" world)
    # each training target is exactly effect(source; its recorded draw)
    effects = {e.name: e for e in build_effects(0)}
    bench = load_effectbench(tiny_world)
    from bench.data.image_io import load_image
    for row in bench.train_rows(rows[0]["lora_name"]):
        e = effects[row.lora_name]
        expected = e.apply(load_image(row.source_image), row.extra["params"])
        # both images are 8-bit on disk: the target's rounding (0.5 / 255) plus the source's,
        # amplified by the effect's slope (a palette map's is up to ~3)
        assert np.abs(load_image(row.target_image) - expected).max() <= 2 / 255 + 1e-6


def test_world_writes_the_output_distribution_and_the_loader_reads_it(tiny_world):
    bench = load_effectbench(tiny_world)
    meta = {e.lora_name: e.extra for e in bench.effects}
    modes = next(n for n, x in meta.items() if x["variation"]["kind"] == "modes")
    texture = next(n for n, x in meta.items() if x["variation"]["kind"] == "texture")
    assert meta[modes]["stochastic"] is True and meta[modes]["variation"]["k"] >= 2
    t = bench.test_rows(modes)[0]
    assert len(t.variant_images) == meta[modes]["variation"]["k"] and t.mode_mean_image.exists()
    assert t.expected_energy > 0 and t.expected_pairwise_mae > 0
    t = bench.test_rows(texture)[0]
    assert t.variant_images == () and t.mode_mean_image.exists() and t.expected_energy > 0


def test_each_part_of_the_world_has_its_own_stream_and_keys_follow_content(tiny_world, tmp_path, monkeypatch):
    """More training pairs per effect change every effect's train rows but not the general edits
    (so the pretrained base is reused); more test sources change the test rows but no effect's
    train rows (so every teacher is reused)."""
    from bench.cache import ArtifactCache
    from bench.config import PRESETS

    worlds = {"a": TINY_WORLD, "more_train": replace(TINY_WORLD, n_train_per_effect=5),
              "more_test": replace(TINY_WORLD, n_test_per_category=3)}
    (tmp_path / "a").symlink_to(tiny_world)  # built with MC_DRAWS 2
    spaces = {}
    for name, w in worlds.items():
        if name != "a":
            # another Monte Carlo size for the test rows' statistics: the train rows must not move
            monkeypatch.setattr("bench.synthetic.world.MC_DRAWS", 3 if name == "more_test" else 2)
            build_world(tmp_path / name, w)
        spaces[name] = Workspace(replace(PRESETS.get("synth")(), world=replace(w, kind="effectbench",
                                                                               root=str(tmp_path / name))),
                                 ArtifactCache(tmp_path / "cache"))
    text = lambda name, f: (tmp_path / name / f).read_text()  # noqa: E731
    assert text("a", "general.jsonl") == text("more_train", "general.jsonl") == text("more_test", "general.jsonl")
    assert text("a", "train.jsonl") != text("more_train", "train.jsonl")
    assert text("a", "train.jsonl") == text("more_test", "train.jsonl")
    assert text("a", "test.jsonl") != text("more_test", "test.jsonl")

    def teacher_inputs(name: str, effect: str) -> dict:
        rows = spaces[name].full_bench.train_rows(effect)
        return spaces[name].content_inputs([p for r in rows for p in (r.source_image, r.target_image)])

    effect = build_effects(0)[0].name
    assert teacher_inputs("a", effect) == teacher_inputs("more_test", effect)
    assert teacher_inputs("a", effect) != teacher_inputs("more_train", effect)
    synthetic = {n: Workspace(replace(PRESETS.get("synth")(), world=w), ArtifactCache(tmp_path / "c2"))
                 for n, w in worlds.items()}
    assert len({ws.base_key for ws in synthetic.values()}) == 1  # the general edits did not change
