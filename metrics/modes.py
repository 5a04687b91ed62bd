"""Exact, mode-aware metrics of the synthetic world (DESIGN 6; issue 12).

Every synthetic effect is stochastic: effect(source) is a *distribution* -- one of K modes (a
placement, a palette direction ...) or a texture (a fresh grain / pattern seed). A sampled
ground truth is the wrong yardstick for such an effect: the MAE to one random draw is smallest
for the blurry mode mean, exactly what few-step samplers produce. These metrics compare each
result with the effect's whole output distribution, which the dataset carries per test row
(``variant_images``, ``mode_mean_image``, ``expected_energy``, ``expected_pairwise_mae``; see
``bench/synthetic/world.py``). Per result r (images in [0, 1], MAE / MSE over all pixels):

* ``gt_mode_mae`` -- modes: min_k MAE(r, v_k), the error to the *nearest allowed variant*;
  textures: MAE(G r, G m) with G a 1 px Gaussian blur and m the mode mean, the error of the
  structure under the texture (a texture has no nearest variant: every draw is another one).
  The texture itself is scored by ``texture_energy``.
* ``gt_mode_psnr`` -- the same in PSNR (dB) of the MSE.
* ``mode_blur`` -- 1 if r is closer to the mode mean than to its nearest mode (modes), or its
  source's draws keep less than half the texture energy of exact draws (textures): the few-step
  average.
* ``texture_energy`` (per source) -- the high-pass energy of the source's draws around *their
  own* mean, sum_i H(r_i - mean_r) / (S - 1), divided by the exact expectation E H(y - m) of
  one draw y around the mode mean m, where H is the mean square of the high-pass part
  (x - G x). 1 is right, < 1 over-smoothed (the few-step average), > 1 noise. It is measured
  around the draws' own mean, not around m, so a systematic error of the structure (the same
  in every draw: a slightly wrong emboss or checker) is not counted as texture -- measured on
  the default preset's teachers, the residual around m was 1.6-3.7x an exact draw's for
  high-frequency effects at 80 NFE whatever the grain did; the structure is ``gt_mode_mae``'s
  job. Needs >= 2 draws per source (``eval.draws``).
* ``mode_coverage`` (per source, over the S draws of that source) -- distinct modes recovered
  divided by the number an ideal sampler is expected to hit with S draws,
  sum_k 1 - (1 - p_k)^S: 1 is ideal. A draw recovers its nearest mode only if it is not at the
  mode average (``mode_blur``): a blurred draw counted as its nearest mode gave the stripes
  coverage 1.07 at 1 NFE, where mode_blur was 0.91 (world version 3). Modes effects only.
* ``diversity_ratio`` (per source) -- mean pairwise MAE between the S draws divided by its exact
  expectation E MAE(y, y') for independent exact draws: 1 is right, 0 is collapse.

A metric that is not defined for an effect (coverage of a texture) scores NaN; the evaluation
stores such rows with status ``n/a``. Per-source metrics repeat the source's value on each of its
draws' rows, so their mean over rows is their mean over sources; intervals resample sources.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision.transforms.v2.functional import gaussian_blur

from metrics import EvalBatch, Metric, MetricInfo, MetricUnavailable

BLUR_SIGMA = 1.0          # px: the low-pass that separates a texture's structure from its grain
BLUR_ENERGY = 0.5         # a texture result with less than this share of the exact energy is "blurred"


def _mae(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().flatten(1).mean(1)


def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b) ** 2).flatten(1).mean(1)


def lowpass(x: torch.Tensor, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """Per-channel Gaussian blur (kernel 2 * round(2 sigma) + 1, reflect padding)."""
    k = 2 * max(1, round(2 * sigma)) + 1
    return gaussian_blur(x, [k, k], [sigma, sigma])


def kind(batch: EvalBatch) -> str:
    """How the batch's effect varies: "modes", "texture" or "target" (a single ground truth)."""
    if batch.variants is not None:
        return "modes"
    if batch.mode_means is not None:
        return "texture"
    return "target"


def need_ground_truth(batch: EvalBatch, name: str) -> None:
    if batch.targets is None and batch.mode_means is None:
        raise MetricUnavailable(f"{name} needs the effect's exact ground truth (synthetic world), which "
                                "this dataset does not have")


def nearest_mode(batch: EvalBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(index of the nearest variant by MSE, (B, K) MSE to every variant) -- modes effects."""
    d = ((batch.results[:, None] - batch.variants) ** 2).flatten(2).mean(2)
    return d.argmin(1), d


def mode_error(batch: EvalBatch, images: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (MAE, MSE) of ``images`` (default: the results) to the effect's distribution,
    as ``gt_mode_mae`` defines it."""
    x = batch.results if images is None else images
    k = kind(batch)
    if k == "modes":
        mae = (x[:, None] - batch.variants).abs().flatten(2).mean(2)
        mse = ((x[:, None] - batch.variants) ** 2).flatten(2).mean(2)
        return mae.min(1).values, mse.min(1).values
    if k == "texture":
        a, b = lowpass(x.double()), lowpass(batch.mode_means.double())
        return _mae(a, b), _mse(a, b)
    return _mae(x, batch.targets), _mse(x, batch.targets)


def highpass_energy(residual: torch.Tensor) -> torch.Tensor:
    """Per-sample mean square of the high-pass part ``x - G x`` of (B, 3, H, W) residuals."""
    x = residual.double()
    return ((x - lowpass(x)) ** 2).flatten(1).mean(1)


def per_source_ratio(batch: EvalBatch, expected: torch.Tensor | None,
                     spread: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Per test source, repeated on each of its draws: ``spread(draws) / expected``; NaN where a
    source has one draw or the exact expectation is ~0 (no spread to compare with)."""
    out = torch.full((len(batch),), float("nan"), dtype=torch.float64)
    if expected is None:
        return out
    for idx in _groups(batch):
        ref = float(expected[idx[0]])
        if len(idx) >= 2 and ref > 1e-8:
            out[idx] = float(spread(batch.results[idx].double())) / ref
    return out


def _texture_spread(r: torch.Tensor) -> torch.Tensor:
    """sum_i H(r_i - mean) / (S - 1): unbiased, E = E H(y - m) for exact independent draws."""
    return highpass_energy(r - r.mean(0, keepdim=True)).sum() / (len(r) - 1)


def _pairwise_mae(r: torch.Tensor) -> torch.Tensor:
    x = r.flatten(1)
    n = len(x)
    return (x[:, None] - x[None]).abs().mean(2).sum() / (n * (n - 1))


def energy_ratio(batch: EvalBatch) -> torch.Tensor:
    """The draws' high-pass spread around their own mean over its exact expectation, per source
    (see ``texture_energy``)."""
    return per_source_ratio(batch, batch.expected_energy, _texture_spread)


def blurred(batch: EvalBatch) -> torch.Tensor:
    """1.0 where a result sits at the mode average (see ``mode_blur``), NaN if undefined."""
    k = kind(batch)
    if k == "modes":
        _, d = nearest_mode(batch)
        to_mean = _mse(batch.results, batch.mode_means)
        return (to_mean < d.min(1).values).double()
    if k == "texture":
        r = energy_ratio(batch)
        return torch.where(r.isnan(), r, (r < BLUR_ENERGY).double())
    return torch.full((len(batch),), float("nan"), dtype=torch.float64)


def _groups(batch: EvalBatch) -> list[torch.Tensor]:
    g = batch.groups if batch.groups is not None else torch.arange(len(batch))
    return [torch.nonzero(g == v).flatten() for v in torch.unique(g)]


class _Exact(Metric):
    """Mode-aware metrics read the whole batch of one effect at once (groups must not be split)."""

    def score(self, batch: EvalBatch) -> list[float]:
        need_ground_truth(batch, self.info.name)
        return self._score(batch).double().tolist()


class ModeMAE(_Exact):
    info = MetricInfo("gt_mode_mae", higher_is_better=False, compares=("results",), role="DreamSim", unit="MAE 0-1",
                      synthetic=True, description="MAE to the nearest allowed variant (textures: of the structure "
                                                  "under the grain)")

    def _score(self, batch: EvalBatch) -> torch.Tensor:
        return mode_error(batch)[0]


class ModePSNR(_Exact):
    info = MetricInfo("gt_mode_psnr", higher_is_better=True, compares=("results",), role="CLIP", unit="dB",
                      synthetic=True, description="PSNR (dB) to the nearest allowed variant (textures: of the "
                                                  "structure under the grain)")

    def _score(self, batch: EvalBatch) -> torch.Tensor:
        return 10 * torch.log10(1.0 / mode_error(batch)[1].clamp_min(1e-10))


class ModeBlur(_Exact):
    info = MetricInfo("mode_blur", higher_is_better=False, compares=("results",), synthetic=True, unit="share 0-1",
                      description="share of results at the mode average: closer to the mode mean than to the "
                                  f"nearest mode, or under {BLUR_ENERGY} of a draw's texture energy")

    def _score(self, batch: EvalBatch) -> torch.Tensor:
        return blurred(batch)


class TextureEnergy(_Exact):
    info = MetricInfo("texture_energy", higher_is_better=True, compares=("results",), synthetic=True,
                      unit="exact draw = 1", ideal=1.0,
                      description="high-pass spread of one source's draws / an exact draw's (1 right, < 1 "
                                  "smooth, > 1 noise)")

    def _score(self, batch: EvalBatch) -> torch.Tensor:
        return energy_ratio(batch)


def expected_distinct(k: int, draws: int) -> float:
    """Expected number of distinct modes among ``draws`` uniform draws from ``k`` modes."""
    return k * (1 - (1 - 1 / k) ** draws)


class ModeCoverage(_Exact):
    info = MetricInfo("mode_coverage", higher_is_better=True, compares=("results",), synthetic=True, unit="ideal = 1",
                      description="distinct modes recovered (not blurred) by one source's draws / the ideal "
                                  "sampler's expectation")

    def _score(self, batch: EvalBatch) -> torch.Tensor:
        out = torch.full((len(batch),), float("nan"), dtype=torch.float64)
        if kind(batch) != "modes":
            return out
        nearest, _ = nearest_mode(batch)
        recovered = blurred(batch) == 0  # a draw at the mode average recovers no mode
        k = batch.variants.shape[1]
        for idx in _groups(batch):
            hit = nearest[idx][recovered[idx]]
            out[idx] = len(torch.unique(hit)) / expected_distinct(k, len(idx))
        return out


class DiversityRatio(_Exact):
    info = MetricInfo("diversity_ratio", higher_is_better=True, compares=("results",), synthetic=True,
                      unit="exact = 1", ideal=1.0,
                      description="mean pairwise MAE of one source's draws / its exact expectation (1 right, "
                                  "0 collapse)")

    def _score(self, batch: EvalBatch) -> torch.Tensor:
        return per_source_ratio(batch, batch.expected_pairwise, _pairwise_mae)
