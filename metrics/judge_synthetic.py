"""A deterministic synthetic judge: stand-ins for VSA, EditReward and BCR from exact ground truth.

The synthetic world knows ``effect(source)`` exactly, so the MLLM judge's role can be played by
fixed formulas of exact errors -- labelled ``synthetic`` in every row, never mistaken for the real
judge. Per sample, with images in [0, 1]:

* effect error ``rel = MAE(result, target) / max(MAE(source, target), EFFECT_FLOOR)`` -- the share
  of the effect's change that is still wrong: 0 for the exact effect, 1 for returning the source
  unchanged (or anything as far from the target), above 1 for worse. ``EFFECT_FLOOR`` keeps
  near-identity effects from dividing by ~0.
* structure kept ``keep = clamp(S(result, source) / max(S(target, source), STRUCT_FLOOR), 0, 1)``
  where ``S`` is the absolute Pearson correlation of the luminance detail layers (luminance minus
  its Gaussian blur, sigma 1.5 px): it ignores brightness, contrast and polarity (tone curves,
  inversions) and drops when shapes and edges are lost (collapse to flat colour or noise). Normalising by what the exact effect keeps means a geometric or texture effect is
  not charged for the change it is supposed to make; keeping more than that counts as 1. Where
  the exact effect itself keeps less than ``STRUCT_FLOOR`` of the detail (heavy pixelation of a
  16 px image) structure says nothing about identity: ``keep = 1`` and failures show in ``rel``.

Then:
* ``vsa_syn = 1 + 4 * keep`` (1-5, higher is better): identity consistency, like VSA's scale;
* ``editreward_syn = clamp(1 - rel, -1, 1)`` (higher is better): 1 exact effect, 0 no better
  than doing nothing, -1 for results twice as far off as the source (or worse);
* ``bcr_syn = 1 if rel > BAD_EFFECT or keep < BAD_STRUCTURE else 0`` (lower is better; its mean is
  the bad-case ratio): less than half of the effect right, or less than half of the structure the
  exact effect keeps (collapse).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from metrics import EvalBatch, Metric, MetricInfo

EFFECT_FLOOR = 0.02    # MAE below which an effect counts as this small when normalising errors
STRUCT_FLOOR = 0.05    # the exact effect keeps less detail than this: no identity signal, keep = 1
BAD_EFFECT = 0.5       # rel above this: the effect is missing or wrong -> bad case
BAD_STRUCTURE = 0.5    # keep below this: the subject's structure collapsed -> bad case
_LUMA = (0.299, 0.587, 0.114)


def _luma(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def structure(a: torch.Tensor, b: torch.Tensor, sigma: float = 1.5) -> torch.Tensor:
    """Per-sample |Pearson correlation| of the high-pass luminance (detail layer) of a and b, in [0, 1]."""
    x, y = _highpass(_luma(a.double()), sigma), _highpass(_luma(b.double()), sigma)
    x, y = x.flatten(1), y.flatten(1)
    x, y = x - x.mean(1, keepdim=True), y - y.mean(1, keepdim=True)
    cov = (x * y).sum(1)
    norm = (x.square().sum(1) * y.square().sum(1)).sqrt()
    return (cov.abs() / norm.clamp_min(1e-12)).clamp(0, 1)


def _highpass(x: torch.Tensor, sigma: float) -> torch.Tensor:
    window = min(2 * round(2 * sigma) + 1, (min(x.shape[-2:]) // 2) * 2 - 1)
    coords = torch.arange(window, dtype=x.dtype, device=x.device) - window // 2
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    kernel = (g[:, None] * g[None, :] / g.sum() ** 2).view(1, 1, window, window)
    pad = window // 2
    return x - F.conv2d(F.pad(x, [pad] * 4, mode="reflect"), kernel)


def effect_error(batch: EvalBatch) -> torch.Tensor:
    err = (batch.results - batch.targets).abs().flatten(1).mean(1).double()
    size = (batch.sources - batch.targets).abs().flatten(1).mean(1).double()
    return err / size.clamp_min(EFFECT_FLOOR)


def structure_kept(batch: EvalBatch) -> torch.Tensor:
    kept = structure(batch.results, batch.sources)
    reference = structure(batch.targets, batch.sources)
    ratio = (kept / reference.clamp_min(STRUCT_FLOOR)).clamp(0, 1)
    return torch.where(reference < STRUCT_FLOOR, torch.ones_like(ratio), ratio)


class SyntheticVSA(Metric):
    info = MetricInfo("vsa_syn", higher_is_better=True, compares=("results", "sources", "targets"), role="VSA",
                      synthetic=True, description="synthetic judge: 1 + 4 * structure kept relative to the exact effect")

    def _score(self, batch: EvalBatch) -> torch.Tensor:
        return 1 + 4 * structure_kept(batch)


class SyntheticEditReward(Metric):
    info = MetricInfo("editreward_syn", higher_is_better=True, compares=("results", "sources", "targets"),
                      role="EditReward", synthetic=True,
                      description="synthetic judge: clamp(1 - effect error / effect size, -1, 1)")

    def _score(self, batch: EvalBatch) -> torch.Tensor:
        return (1 - effect_error(batch)).clamp(-1, 1)


class SyntheticBCR(Metric):
    info = MetricInfo("bcr_syn", higher_is_better=False, compares=("results", "sources", "targets"), role="BCR",
                      synthetic=True,
                      description=f"synthetic judge: 1 if effect error > {BAD_EFFECT} of the effect or structure kept "
                                  f"< {BAD_STRUCTURE}, else 0")

    def _score(self, batch: EvalBatch) -> torch.Tensor:
        bad = (effect_error(batch) > BAD_EFFECT) | (structure_kept(batch) < BAD_STRUCTURE)
        return bad.double()
