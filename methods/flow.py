"""Flow-matching math shared by the sampler and every trainer.

Conventions (diffusers' Qwen-Image pipelines, rectified flow):
    x_sigma = (1 - sigma) * x_0 + sigma * noise,      sigma in [0, 1]   (1 = pure noise)
    v       = noise - x_0                              (what the transformer predicts)
    x_0     = x_sigma - sigma * v                      (clean estimate from one prediction)
Samplers (``generate(sampler=...)``), from sigma_i to sigma_{i+1} with one prediction v_i (the
guided one under true CFG) and its clean estimate x0_i = x_i - sigma_i * v_i:
    euler:    x_{i+1} = x_i + (sigma_{i+1} - sigma_i) * v_i
                      = (1 - sigma_{i+1}) * x0_i + sigma_{i+1} * (x0_i + v_i)   (the implied noise)
    renoise:  x_{i+1} = (1 - sigma_{i+1}) * x0_i + sigma_{i+1} * eps_i,   eps_i ~ N(0, I), fresh
Both end on the last step's x0 (sigma_N = 0). Flow-matching models (base, teachers, FM LoRAs)
sample with euler; a DMD-trained student (CollectionLoRA, Lightning) with renoise, as the
reference code (CollectionLoRA, DMD2, CausVid) runs it in backward simulation and at inference.
Timestep shift (SD3 / Qwen-Image, static): sigma' = s * sigma / (1 + (s - 1) * sigma).
With s = 3 and 8 steps this gives the few-step schedule of CollectionLoRA (DESIGN 4.1):
t in {1000, 954.5, 900, 833.3, 750, 642.9, 500, 300}.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

from bench.config import SAMPLERS
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


def check_sampler(name: str) -> str:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid samplers: {', '.join(SAMPLERS)}")
    return name


def sampler_step(sampler: str, x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor,
                 fresh_noise: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
    """One schedule step of ``sampler`` (module docstring) from ``sigma`` to ``sigma_next``
    (scalars). ``fresh_noise(x)`` draws renoise's noise shaped like ``x``; None at the last step,
    where renoise returns the clean estimate and draws nothing."""
    if sampler == "euler":
        return x + (sigma_next - sigma) * v
    x0 = x - sigma * v
    if fresh_noise is None:
        return x0
    return (1 - sigma_next) * x0 + sigma_next * fresh_noise(x)


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
             sampler: str = "euler") -> tuple[torch.Tensor, int]:
    """Edit ``source`` latents with ``sampler`` ("euler" or "renoise", module docstring); the
    initial noise (unless given) and renoise's fresh noise come from ``generator``.

    Returns the clean latents and the NFE per image, counted from the transformer calls
    actually made (true CFG with scale > 1 calls the transformer twice per step).
    """
    check_sampler(sampler)
    x = noise if noise is not None else torch.randn(source.shape, generator=generator).to(source)
    sigmas = sigma_schedule(steps, shift).to(source.device)
    start = backbone.nfe
    use_cfg = cfg_scale > 1.0
    if use_cfg and uncond is None:
        raise ValueError("cfg_scale > 1 needs an unconditional (negative) prompt condition")

    def fresh(like: torch.Tensor) -> torch.Tensor:  # renoise's noise: the initial noise's generator
        return torch.randn(like.shape, generator=generator).to(like)

    for i in range(steps):
        sigma = sigmas[i].expand(x.shape[0])
        v = backbone.velocity(x, sigma, source, cond, grid)
        if use_cfg:
            v = true_cfg(v, backbone.velocity(x, sigma, source, uncond, grid), cfg_scale)
        x = sampler_step(sampler, x, v, sigmas[i], sigmas[i + 1], fresh if i < steps - 1 else None)
    return x, backbone.nfe - start

