"""The sampler against diffusers' FlowMatchEulerDiscreteScheduler, and the schedule facts."""

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from methods.flow import add_noise, generate, predict_x0, sigma_schedule, true_cfg


def test_eight_step_schedule_matches_collectionlora():
    t = sigma_schedule(8, shift=3.0)[:-1] * 1000
    expected = [1000, 954.5, 900, 833.3, 750, 642.9, 500, 300]
    assert torch.allclose(t, torch.tensor(expected), atol=0.06)
    assert sigma_schedule(8, 3.0)[-1] == 0


@pytest.mark.parametrize("cfg_scale", [1.0, 4.0])
def test_sampler_matches_diffusers_scheduler(tiny_backbone, cfg_scale):
    bb = tiny_backbone
    steps, shift = 6, 3.0
    src = bb.encode_images(torch.rand(2, 3, 16, 16))
    cond = bb.encode_prompts(["make it red", "flip it"])
    uncond = bb.encode_prompts(["", ""])
    noise = torch.randn(src.shape, generator=torch.Generator().manual_seed(3))

    ours, nfe = generate(bb, src, cond, (8, 8), steps=steps, shift=shift, cfg_scale=cfg_scale,
                         uncond=uncond, noise=noise.clone())

    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps))
    x = noise.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            sigma = (t / 1000).expand(2)
            v = bb.velocity(x, sigma, src, cond, (8, 8))
            if cfg_scale > 1:
                v_u = bb.velocity(x, sigma, src, uncond, (8, 8))
                comb = v_u + cfg_scale * (v - v_u)
                v = comb * (v.norm(dim=-1, keepdim=True) / comb.norm(dim=-1, keepdim=True))
            x = sched.step(v, t, x, return_dict=False)[0]
    assert torch.allclose(ours, x, atol=1e-5)
    assert nfe == steps * (2 if cfg_scale > 1 else 1)


def test_clean_estimate_inverts_noising():
    x0, noise = torch.randn(3, 5, 12), torch.randn(3, 5, 12)
    sigma = torch.tensor([0.1, 0.5, 0.9])
    assert torch.allclose(predict_x0(add_noise(x0, noise, sigma), noise - x0, sigma), x0, atol=1e-6)


def test_true_cfg_keeps_conditional_norm():
    cond, uncond = torch.randn(2, 4, 12), torch.randn(2, 4, 12)
    out = true_cfg(cond, uncond, 4.0)
    assert torch.allclose(out.norm(dim=-1), cond.norm(dim=-1), atol=1e-5)


def test_cfg_without_uncond_is_an_error(tiny_backbone):
    src = tiny_backbone.encode_images(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="unconditional"):
        generate(tiny_backbone, src, tiny_backbone.encode_prompts(["x"]), (8, 8), steps=2, shift=3.0,
                 cfg_scale=4.0)
