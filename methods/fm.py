"""Flow-matching training on (source, target, instruction) triples.

One loop serves base pretraining (all transformer weights trainable), the per-effect teacher
LoRAs and FM all-in-1 (one LoRA on every effect's teacher outputs), in one process or
data-parallel over torch.distributed ranks. What is trained is decided by which parameters
require grad; the loss is diffusers' SD3-style flow matching.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.optimization import get_scheduler

from bench.cost import count_samples, so_far
from bench.errors import BenchError
from bench.progress import progress
from methods.backbones import Backbone
from methods.distributed import (
    DistEnv,
    average_gradients,
    broadcast_parameters,
    mean_over_ranks,
    passes_over_ranks,
    shard,
)
from methods.flow import add_noise, fm_loss, sample_training_sigmas


@dataclass
class EditPairs:
    """In-memory editing triples; images are (N, 3, H, W) in [0, 1]."""

    sources: torch.Tensor
    targets: torch.Tensor
    prompts: list[str]
    effects: list[str] | None = None  # each pair's effect (or "general"), for the training cost's samples

    def __post_init__(self) -> None:
        if not (len(self.sources) == len(self.targets) == len(self.prompts)):
            raise ValueError("EditPairs: sources, targets and prompts differ in length")
        if self.effects is not None and len(self.effects) != len(self.prompts):
            raise ValueError("EditPairs: effects and prompts differ in length")
        if len(self.prompts) == 0:
            raise ValueError("EditPairs: no training pairs")


@dataclass(frozen=True)
class FMSettings:
    steps: int
    batch_size: int
    lr: float
    shift: float
    warmup: int = 0
    uncond_prob: float = 0.1     # drop the prompt so the model keeps an unconditional branch (CFG)
    grad_clip: float = 1.0
    weighting_scheme: str = "none"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    weight_decay: float = 1e-4
    budget_passes: int | None = None  # stop once this build's counted passes reach it (steps: the cap)


class NonFiniteLossError(BenchError, FloatingPointError):
    """A NaN/inf training loss: training stops at once (the message says what to change)."""


def train_flow_matching(backbone: Backbone, pairs: EditPairs, settings: FMSettings, *, seed: int,
                        log_path: str | Path | None = None, desc: str = "fm",
                        env: DistEnv | None = None) -> list[float]:
    """Train the parameters of ``backbone.transformer`` that require grad; returns the losses.

    Data-parallel when ``env`` spans several ranks (methods/distributed.py): every rank draws the
    same full batch of ``settings.batch_size`` from one RNG stream seeded alike, computes the loss
    of its own contiguous shard (encoding only its prompts), and the gradients are averaged
    before clipping and the step -- so N ranks take the single-process step on the full batch.
    The losses returned (and logged, by rank 0) are full-batch means. One process is the same
    loop with one shard: the whole batch.
    """
    env = env or DistEnv()
    params = [p for p in backbone.transformer.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{desc}: nothing to train (no parameter requires grad)")
    broadcast_parameters(params)  # ranks start from rank 0's weights (no-op in one process)
    device = backbone.device
    height, width = pairs.sources.shape[-2:]
    grid = backbone.latent_grid(height, width)
    with torch.no_grad():  # the codec is fixed: encode every image once
        src_lat = backbone.encode_images(pairs.sources)
        tgt_lat = backbone.encode_images(pairs.targets)

    opt = torch.optim.AdamW(params, lr=settings.lr, betas=(0.9, 0.999),
                            weight_decay=settings.weight_decay)
    sched = get_scheduler("constant_with_warmup", opt, num_warmup_steps=settings.warmup)
    gen = torch.Generator().manual_seed(seed)  # the same stream on every rank: the same full batch
    mine = shard(settings.batch_size, env)     # this rank's part of it (all of it in one process)
    backbone.transformer.train()
    losses: list[float] = []
    limit = step_limit(settings.steps, settings.budget_passes)
    bar = progress(range(limit), total=settings.steps, desc=desc) if env.is_main else range(limit)
    for step in bar:
        # the full batch, drawn alike on every rank (always in this order: the RNG stream is the run)
        idx = torch.randint(len(pairs.prompts), (settings.batch_size,), generator=gen)
        drop = torch.rand(settings.batch_size, generator=gen) < settings.uncond_prob  # CFG's empty prompt
        if pairs.effects is not None:
            count_samples(pairs.effects[i] for i in idx.tolist())
        x0, source = tgt_lat[idx], src_lat[idx]
        noise = torch.randn(x0.shape, generator=gen).to(device)
        sigma = sample_training_sigmas(
            settings.batch_size, settings.shift, weighting_scheme=settings.weighting_scheme,
            logit_mean=settings.logit_mean, logit_std=settings.logit_std,
            mode_scale=settings.mode_scale, generator=gen).to(device)
        # this rank's shard; only its prompts are encoded (the text encoder is a per-sample cost)
        ids, dropped = idx[mine], drop[mine]
        prompts = ["" if d else pairs.prompts[i] for i, d in zip(ids.tolist(), dropped.tolist())]
        x0, source, noise, sigma = x0[mine], source[mine], noise[mine], sigma[mine]
        v = backbone.velocity(add_noise(x0, noise, sigma), sigma, source,
                              backbone.encode_prompts(prompts, pairs.sources[ids]), grid)
        loss = fm_loss(v, x0, noise, sigma, settings.weighting_scheme)
        value = mean_over_ranks(loss.detach(), env)  # the full-batch loss, the same on every rank
        if not math.isfinite(value):  # every rank sees it and stops: none is left waiting in a collective
            raise NonFiniteLossError(f"{desc}: loss is {value} at step {step}; "
                                     f"lower the learning rate ({settings.lr}) or check the data")
        loss.backward()
        average_gradients(params)  # the shard means' mean: the full-batch gradient (no-op in one process)
        torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(value)
        if env.is_main and step % 25 == 0:
            bar.set_postfix(loss=f"{sum(losses[-25:]) / len(losses[-25:]):.4f}")
        if budget_spent(settings.budget_passes, env):
            break
    else:
        if settings.budget_passes is not None:
            raise BudgetNotReachedError(desc, settings.budget_passes, limit)
    backbone.transformer.eval()
    if log_path is not None and env.is_main:
        write_loss_csv(log_path, losses)
    return losses


BUDGET_STEP_CAP = 100  # under a pass budget, ``steps`` is an estimate; training stops at 100x it regardless


class BudgetNotReachedError(BenchError, RuntimeError):
    def __init__(self, desc: str, budget: int, steps: int) -> None:
        super().__init__(f"{desc}: the pass budget {budget} was not spent in {steps} steps; is the training counted "
                         "(a build outside ArtifactCache is not measured; bench/cost.py)?")


def step_limit(steps: int, budget: int | None) -> int:
    """The most steps a loop takes: ``steps``, or under a pass budget ``BUDGET_STEP_CAP`` x it
    (the budget decides; ``steps`` only sizes the progress bar and the cap)."""
    return steps if budget is None else BUDGET_STEP_CAP * steps


def budget_spent(budget: int | None, env: DistEnv) -> bool:
    """Whether this build's counted transformer passes (bench/cost.py), summed over ranks so every
    rank decides alike, have reached ``budget`` (None: no budget)."""
    if budget is None:
        return False
    return passes_over_ranks(so_far().passes, env) >= budget


def write_loss_csv(path: str | Path, losses: list[float]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "loss"])
        writer.writerows(enumerate(losses))
