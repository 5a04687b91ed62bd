"""The samplers: euler against diffusers' FlowMatchEulerDiscreteScheduler, renoise against a loop
written by hand; and the schedule facts."""

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from bench.config import RunConfig, apply_overrides
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


class _ToyBackbone:
    """v = x - c for the constant condition c (the cond argument itself): the clean estimate is
    x0 = x - sigma * v = (1 - sigma) * x + sigma * c, computable by hand."""

    def __init__(self) -> None:
        self.nfe = 0

    def velocity(self, x, sigma, source, cond, grid):
        self.nfe += 1
        return x - cond


def _toy_inputs():
    shape = (2, 4, 3)
    return torch.zeros(shape), torch.full(shape, 0.5), torch.full(shape, -0.25)


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_renoise_sampler_equals_hand_written_loop(cfg_scale):
    """x0 from the (guided) velocity at each step, re-noised to the next sigma with fresh noise
    from the same generator; the output is the last step's x0. NFE counts the real calls."""
    src, c, c_uncond = _toy_inputs()
    steps, shift = 4, 3.0
    bb = _ToyBackbone()
    out, nfe = generate(bb, src, c, (2, 2), steps=steps, shift=shift, cfg_scale=cfg_scale, uncond=c_uncond,
                        generator=torch.Generator().manual_seed(11), sampler="renoise")

    g = torch.Generator().manual_seed(11)
    sigmas = sigma_schedule(steps, shift).tolist()
    x = torch.randn(src.shape, generator=g)
    for i in range(steps):
        s = sigmas[i]
        if cfg_scale > 1:
            x0 = x - s * true_cfg(x - c, x - c_uncond, cfg_scale)
        else:
            x0 = (1 - s) * x + s * c
        if i == steps - 1:
            x = x0
        else:
            x = (1 - sigmas[i + 1]) * x0 + sigmas[i + 1] * torch.randn(src.shape, generator=g)
    torch.testing.assert_close(out, x)
    assert nfe == bb.nfe == steps * (2 if cfg_scale > 1 else 1)


def test_euler_sampler_is_the_plain_euler_loop_bit_for_bit():
    src, c, _ = _toy_inputs()
    noise = torch.randn(src.shape, generator=torch.Generator().manual_seed(2))
    out, nfe = generate(_ToyBackbone(), src, c, (2, 2), steps=5, shift=3.0, noise=noise.clone())
    explicit, _ = generate(_ToyBackbone(), src, c, (2, 2), steps=5, shift=3.0, noise=noise.clone(), sampler="euler")
    sigmas, x = sigma_schedule(5, 3.0), noise.clone()
    for i in range(5):
        x = x + (sigmas[i + 1] - sigmas[i]) * (x - c)
    assert torch.equal(out, x) and torch.equal(explicit, x) and nfe == 5


def test_renoise_draws_fresh_noise_from_the_generator_and_euler_none():
    src, c, _ = _toy_inputs()
    noise = torch.randn(src.shape, generator=torch.Generator().manual_seed(2))

    def run(sampler, seed):
        return generate(_ToyBackbone(), src, c, (2, 2), steps=4, shift=3.0, noise=noise.clone(),
                        generator=torch.Generator().manual_seed(seed), sampler=sampler)[0]

    assert torch.equal(run("euler", 0), run("euler", 1))
    assert torch.equal(run("renoise", 0), run("renoise", 0))
    assert not torch.allclose(run("renoise", 0), run("renoise", 1))
    assert not torch.allclose(run("renoise", 0), run("euler", 0))


def test_unknown_sampler_fails_with_the_valid_names():
    src, c, _ = _toy_inputs()
    with pytest.raises(ValueError, match="unknown sampler 'ddim'; valid samplers: euler, renoise"):
        generate(_ToyBackbone(), src, c, (2, 2), steps=2, shift=3.0, sampler="ddim")
    with pytest.raises(ValueError, match="sampling.dmd_sampler 'ddim'; valid samplers: euler, renoise"):
        apply_overrides(RunConfig(), ["sampling.dmd_sampler=ddim"])
    assert apply_overrides(RunConfig(), ["sampling.dmd_sampler=euler"]).sampling.dmd_sampler == "euler"
    assert RunConfig().sampling.dmd_sampler == "renoise"
