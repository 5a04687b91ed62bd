"""Weight-free metrics of the synthetic world, computed against the exact ground truth.

They need no downloads, so an offline run reports real numbers: effect fidelity (the result
against ``effect(source)``) and structure preservation (the result against its source).

Structure kept plays the paper's DINO column (``src_ssim`` up). Effect fidelity is measured
mode-aware in ``metrics.modes`` (``gt_mode_psnr`` plays CLIP, ``gt_mode_mae`` DreamSim);
``gt_psnr`` / ``gt_mae`` here compare with the one sampled target of a test row, which rewards
the blurry mode mean, and are kept only for comparison. The judge's columns (VSA, EditReward,
BCR) have stand-ins in ``metrics.judge_synthetic``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from metrics import EvalBatch, Metric, MetricInfo


class GroundTruthPSNR(Metric):
    info = MetricInfo("gt_psnr", higher_is_better=True, compares=("results", "targets"), synthetic=True, unit="dB",
                      description="PSNR (dB) of the result against one sampled effect(source) (rewards the mode mean)")

    def _score(self, batch: EvalBatch) -> torch.Tensor:
        mse = ((batch.results - batch.targets) ** 2).flatten(1).mean(1)
        return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


class GroundTruthMAE(Metric):
    info = MetricInfo("gt_mae", higher_is_better=False, compares=("results", "targets"), synthetic=True, unit="MAE 0-1",
                      description="MAE of the result against one sampled effect(source) (rewards the mode mean)")

    def _score(self, batch: EvalBatch) -> torch.Tensor:
        return (batch.results - batch.targets).abs().flatten(1).mean(1)


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 7, sigma: float = 1.5) -> torch.Tensor:
    """Per-sample SSIM of luminance (Wang et al. 2004), Gaussian window.

    Written here because neither torch nor torchvision ships SSIM and a dependency for ten lines
    is not worth it; the 7x7 window (not 11x11) suits the synthetic world's 16 px images.
    """
    weights = torch.tensor([0.299, 0.587, 0.114], device=a.device).view(1, 3, 1, 1)
    x, y = (a * weights).sum(1, keepdim=True), (b * weights).sum(1, keepdim=True)
    coords = torch.arange(window, device=a.device) - window // 2
    g = torch.exp(-(coords.float() ** 2) / (2 * sigma ** 2))
    kernel = (g[:, None] * g[None, :] / g.sum() ** 2).view(1, 1, window, window)
    blur = lambda t: F.conv2d(F.pad(t, [window // 2] * 4, mode="reflect"), kernel)  # noqa: E731
    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


class SourceSSIM(Metric):
    info = MetricInfo("src_ssim", higher_is_better=True, compares=("results", "sources"), unit="SSIM",
                      role="DINO", synthetic=True,
                      description="luminance SSIM of the result against its source (structure kept)")

    def _score(self, batch: EvalBatch) -> torch.Tensor:
        return ssim(batch.results, batch.sources)
