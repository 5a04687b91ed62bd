"""A deterministic synthetic judge: stand-ins for VSA, EditReward and BCR from exact ground truth.

The synthetic world knows the exact output distribution of every effect (``metrics.modes``), so
the MLLM judge's role can be played by fixed formulas of exact, mode-aware errors -- labelled
``synthetic`` in every row, never mistaken for the real judge. Per sample, images in [0, 1]:

* effect error ``rel = E(result) / max(E(source), EFFECT_FLOOR)`` with ``E`` the error to the
  effect's distribution as ``gt_mode_mae`` measures it (nearest mode; for textures the structure
  under the grain): 0 for an exact draw, 1 for returning the source unchanged, above 1 worse.
* texture kept ``tex = texture_energy`` (textures only): 1 for an exact draw, < 1 smoothed;
  its factor ``min(tex, 1 / tex)`` charges both the few-step blur and added noise.
* structure kept ``keep = clamp(S(result, source) / max(S(ref, source), STRUCT_FLOOR), 0, 1)``
  where ``S`` is the absolute Pearson correlation of the luminance detail layers (luminance minus
  its Gaussian blur, sigma 1.5 px) and ``ref`` the nearest exact variant (textures: the mode mean):
  it ignores brightness, contrast and polarity and drops when shapes and edges are lost. A
  geometric or texture effect is not charged for the change it is supposed to make; where the
  exact effect itself keeps less than ``STRUCT_FLOOR`` of the detail, ``keep = 1``.

Then:
* ``vsa_syn = 1 + 4 * keep`` (1-5, higher is better): identity consistency, like VSA's scale;
* ``editreward_syn = clamp((1 - rel) - (1 - min(tex, 1/tex)), -1, 1)`` (higher is better; the
  texture term only for textures): 1 exact, 0 no better than doing nothing;
* ``bcr_syn = 1`` if ``rel > BAD_EFFECT``, ``keep < BAD_STRUCTURE``, or the result sits at the
  mode average (``mode_blur``), else 0 (lower is better; its mean is the bad-case ratio).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from metrics import EvalBatch, Metric, MetricInfo
from metrics.modes import blurred, energy_ratio, kind, mode_error, nearest_mode, need_ground_truth

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
    err = mode_error(batch)[0].double()
    size = mode_error(batch, batch.sources)[0].double()
    return err / size.clamp_min(EFFECT_FLOOR)


def _reference(batch: EvalBatch) -> torch.Tensor:
    """The exact image whose structure a result is held to: its nearest mode, the texture's mode
    mean, or the single target."""
    k = kind(batch)
    if k == "modes":
        idx, _ = nearest_mode(batch)
        return batch.variants[torch.arange(len(batch)), idx]
    return batch.mode_means if k == "texture" else batch.targets


def texture_factor(batch: EvalBatch) -> torch.Tensor:
    """min(tex, 1/tex) for textures (1 elsewhere)."""
    if kind(batch) != "texture":
        return torch.ones(len(batch), dtype=torch.float64)
    r = energy_ratio(batch).nan_to_num(1.0).clamp_min(1e-6)
    return torch.minimum(r, 1 / r)


def structure_kept(batch: EvalBatch) -> torch.Tensor:
    kept = structure(batch.results, batch.sources)
    reference = structure(_reference(batch), batch.sources)
    ratio = (kept / reference.clamp_min(STRUCT_FLOOR)).clamp(0, 1)
    return torch.where(reference < STRUCT_FLOOR, torch.ones_like(ratio), ratio)


class _Judge(Metric):
    """Reads the whole batch of one effect at once (nearest modes need the whole variant set)."""

    def score(self, batch: EvalBatch) -> list[float]:
        need_ground_truth(batch, self.info.name)
        return self._score(batch).double().tolist()


class SyntheticVSA(_Judge):
    info = MetricInfo("vsa_syn", higher_is_better=True, compares=("results", "sources"), role="VSA", unit="score 1-5",
                      synthetic=True,
                      description="synthetic judge: 1 + 4 * structure kept relative to the exact effect")

    def _score(self, batch: EvalBatch) -> torch.Tensor:
        return 1 + 4 * structure_kept(batch)


class SyntheticEditReward(_Judge):
    info = MetricInfo("editreward_syn", higher_is_better=True, compares=("results", "sources"), unit="score -1..1",
                      role="EditReward", synthetic=True,
                      description="synthetic judge: clamp(1 - mode-aware effect error / effect size - texture "
                                  "deficit, -1, 1)")

    def _score(self, batch: EvalBatch) -> torch.Tensor:
        return ((1 - effect_error(batch)) - (1 - texture_factor(batch))).clamp(-1, 1)


class SyntheticBCR(_Judge):
    info = MetricInfo("bcr_syn", higher_is_better=False, compares=("results", "sources"), role="BCR", unit="share 0-1",
                      synthetic=True,
                      description=f"synthetic judge: 1 if mode-aware effect error > {BAD_EFFECT} of the effect, "
                                  f"structure kept < {BAD_STRUCTURE} or the result sits at the mode average, else 0")

    def _score(self, batch: EvalBatch) -> torch.Tensor:
        bad = (effect_error(batch) > BAD_EFFECT) | (structure_kept(batch) < BAD_STRUCTURE)
        return (bad | (blurred(batch).nan_to_num(0.0) > 0)).double()
