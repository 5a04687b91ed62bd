"""Synthetic stand-ins: every paper column has one, labelled synthetic, with the right direction."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from metrics import METRICS, EvalBatch

PAPER_COLUMNS = {"CLIP": True, "DreamSim": False, "DINO": True, "VSA": True, "EditReward": True, "BCR": False}
SYNTHETIC = ("gt_mode_psnr", "gt_mode_mae", "src_ssim", "vsa_syn", "editreward_syn", "bcr_syn")
REAL = ("clip", "dreamsim", "dino", "vsa", "editreward", "bcr")


def test_each_paper_column_has_a_synthetic_and_a_real_metric_with_its_direction():
    for names, synthetic in ((SYNTHETIC, True), (REAL, False)):
        infos = [METRICS.get(n).info for n in names]
        assert {i.role for i in infos} == set(PAPER_COLUMNS)
        for info in infos:
            assert info.synthetic is synthetic
            assert info.higher_is_better is PAPER_COLUMNS[info.role], info.name


@pytest.fixture(scope="module")
def world():
    """Sources and exact effect outputs from the synthetic world's own effect catalogue."""
    from bench.synthetic.effects import build_effects
    from bench.synthetic.images import make_source

    rng = np.random.default_rng(0)
    effects = [e for e in build_effects(0) if e.data_type == "pet"][:6]
    sources = [make_source("pet", rng, 16) for _ in range(4)]
    src = torch.from_numpy(np.stack(sources * len(effects))).permute(0, 3, 1, 2).float()
    tgt = torch.from_numpy(np.stack([e.apply(s) for e in effects for s in sources])).permute(0, 3, 1, 2).float()
    return src, tgt


def _scores(name, results, src, tgt):
    return torch.tensor(METRICS.get(name)().score(EvalBatch(results, src, [""] * len(src), tgt)), dtype=torch.float64)


def test_exact_effect_is_the_best_case(world):
    src, tgt = world
    assert torch.allclose(_scores("vsa_syn", tgt, src, tgt), torch.tensor(5.0, dtype=torch.float64))
    assert torch.allclose(_scores("editreward_syn", tgt, src, tgt), torch.tensor(1.0, dtype=torch.float64))
    assert _scores("bcr_syn", tgt, src, tgt).sum() == 0


def test_missing_effect_and_collapse_are_bad_cases(world):
    src, tgt = world
    # Returning the source: identity kept (VSA 5) but the effect is missing: bad case, reward 0.
    assert torch.allclose(_scores("vsa_syn", src, src, tgt), torch.tensor(5.0, dtype=torch.float64))
    assert torch.allclose(_scores("editreward_syn", src, src, tgt), torch.tensor(0.0, dtype=torch.float64), atol=1e-9)
    assert _scores("bcr_syn", src, src, tgt).min() == 1
    # Collapse to flat grey: structure gone.
    grey = torch.full_like(src, 0.5)
    assert _scores("vsa_syn", grey, src, tgt).mean() < 2.5
    assert _scores("bcr_syn", grey, src, tgt).mean() > 0.9


def test_directions_hold_as_results_move_from_the_target(world):
    src, tgt = world
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(src.shape, generator=g)
    near, far = (0.9 * tgt + 0.1 * noise), (0.4 * tgt + 0.6 * noise)
    for name, higher in (("vsa_syn", True), ("editreward_syn", True), ("bcr_syn", False),
                         ("gt_psnr", True), ("gt_mae", False)):
        a, b = _scores(name, near, src, tgt).mean(), _scores(name, far, src, tgt).mean()
        assert (a > b) if higher else (a < b), name


def test_batch_size_does_not_change_synthetic_scores(world):
    src, tgt = world
    results = (0.7 * tgt + 0.3 * src)
    batch = EvalBatch(results, src, [""] * len(src), tgt)
    for name in SYNTHETIC:
        metric = METRICS.get(name)()
        small = METRICS.get(name)()
        small.info = replace(small.info, batch_size=3)
        assert metric.score(batch) == pytest.approx(small.score(batch), abs=1e-9), name
