"""Flow-matching math shared by the sampler and every trainer.

Conventions (diffusers' Qwen-Image pipelines, rectified flow):
    x_sigma = (1 - sigma) * x_0 + sigma * noise,      sigma in [0, 1]   (1 = pure noise)
    v       = noise - x_0                              (what the transformer predicts)
    x_0     = x_sigma - sigma * v                      (clean estimate from one prediction)
    Euler:  x_{sigma'} = x_sigma + (sigma' - sigma) * v
Timestep shift (SD3 / Qwen-Image, static): sigma' = s * sigma / (1 + (s - 1) * sigma).
With s = 3 and 8 steps this gives the few-step schedule of CollectionLoRA (DESIGN 4.1):
t in {1000, 954.5, 900, 833.3, 750, 642.9, 500, 300}.
"""

from __future__ import annotations

import torch
from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

from methods.backbones import Backbone, TextCondition


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def sigma_schedule(num_steps: int, shift: float) -> torch.Tensor:
    """``num_steps + 1`` sigmas from 1 down to 0, as the Qwen-Image pipelines build them
    (``linspace(1, 1/N, N)`` shifted, then a final 0)."""
    base = torch.linspace(1.0, 1.0 / num_steps, num_steps, dtype=torch.float64)
    return torch.cat([shift_sigmas(base, shift), torch.zeros(1, dtype=torch.float64)]).float()


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    s = sigma.view(-1, *([1] * (x0.dim() - 1)))
    return (1 - s) * x0 + s * noise


def predict_x0(x_t: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    s = sigma.view(-1, *([1] * (x_t.dim() - 1)))
    return x_t - s * v


def true_cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float, *, rescale: bool = True) -> torch.Tensor:
    """True CFG with the norm rescaling of the Qwen-Image pipelines: the guided velocity keeps
    the per-token norm of the conditional prediction (``rescale=False``: plain CFG, as the
    reference DMD code's real score)."""
    guided = uncond + scale * (cond - uncond)
    if not rescale:
        return guided
    return guided * (cond.norm(dim=-1, keepdim=True) / guided.norm(dim=-1, keepdim=True).clamp_min(1e-8))


def sample_training_sigmas(batch: int, shift: float, *, weighting_scheme: str = "none",
                           logit_mean: float = 0.0, logit_std: float = 1.0, mode_scale: float = 1.29,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """Training sigmas: diffusers' SD3 timestep density, then the same static shift as sampling."""
    u = compute_density_for_timestep_sampling(weighting_scheme, batch, logit_mean, logit_std,
                                              mode_scale, generator=generator)
    return shift_sigmas(u.clamp(1e-3, 1.0), shift)


def fm_loss(pred_v: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor,
            weighting_scheme: str = "none") -> torch.Tensor:
    """Flow-matching loss ``w(sigma) * ||v_pred - (noise - x0)||^2`` (diffusers' weighting)."""
    w = compute_loss_weighting_for_sd3(weighting_scheme, sigma).view(-1, *([1] * (x0.dim() - 1)))
    return (w * (pred_v.float() - (noise - x0)) ** 2).mean()


@torch.no_grad()
def generate(backbone: Backbone, source: torch.Tensor, cond: TextCondition,
             grid: tuple[int, int], *, steps: int,
             shift: float, cfg_scale: float = 1.0, uncond: TextCondition | None = None,
             generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
             ) -> tuple[torch.Tensor, int]:
    """Edit ``source`` latents with Euler flow-matching sampling.

    Returns the clean latents and the NFE per image, counted from the transformer calls
    actually made (true CFG with scale > 1 calls the transformer twice per step).
    """
    x = noise if noise is not None else torch.randn(source.shape, generator=generator).to(source)
    sigmas = sigma_schedule(steps, shift).to(source.device)
    start = backbone.nfe
    use_cfg = cfg_scale > 1.0
    if use_cfg and uncond is None:
        raise ValueError("cfg_scale > 1 needs an unconditional (negative) prompt condition")
    for i in range(steps):
        sigma = sigmas[i].expand(x.shape[0])
        v = backbone.velocity(x, sigma, source, cond, grid)
        if use_cfg:
            v = true_cfg(v, backbone.velocity(x, sigma, source, uncond, grid), cfg_scale)
        x = x + (sigmas[i + 1] - sigmas[i]) * v
    return x, backbone.nfe - start

