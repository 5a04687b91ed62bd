"""Data-parallel LoRA training inside one job with torch.distributed (torchrun or SLURM tasks).

Every rank holds the frozen base and the same LoRA adapters. Each training step every rank
draws the *same* full batch (one RNG stream, seeded alike), computes the loss on its own
contiguous shard, and the LoRA gradients are averaged with an all-reduce before clipping and
the optimizer step. With equal shards the average of the shard-mean gradients is the
full-batch gradient, so N ranks take the single-process step on N times the per-rank batch
(DDP semantics; the test checks it against one process on the full batch).

Why not wrap the module in ``DistributedDataParallel``: the DMD step runs several forwards per
step on one transformer with different adapters switched in by name (student, critic, teacher
bank), and each backward leaves whole adapters unused; DDP's per-forward reducer does not fit
that, while an explicit bucketed all-reduce of the trainable LoRA gradients does, at the same
communication cost. For the 20B Qwen-Image backbone in bf16 the frozen base can additionally be
sharded with FSDP (``torch.distributed.fsdp.fully_shard`` on the transformer blocks); the
gradient averaging here is unchanged by that.

Launch (CPU: gloo; GPU: nccl, one process per GPU)::

    torchrun --nproc_per_node=2 -m methods.distributed --preset smoke --effect 0 --steps 20 --out /tmp/ddp
    # inside a SLURM job with --ntasks-per-node=<gpus>: plain ``python -m methods.distributed``;
    # the rank/world come from SLURM through submitit's TorchDistributedEnvironment
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from methods.backbones import Backbone, TextCondition
from methods.flow import add_noise, fm_loss, sample_training_sigmas


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""            # "" when running as a single process (no process group)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")


def env_from_os() -> DistEnv | None:
    """Rank and world from torchrun (RANK/WORLD_SIZE/LOCAL_RANK) or from a multi-task SLURM job;
    None when neither launched several processes."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return DistEnv(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                       int(os.environ.get("LOCAL_RANK", os.environ["RANK"])))
    if "SUBMITIT_EXECUTOR" in os.environ:  # a submitit job (SLURM or local executor) with several tasks
        import submitit

        if submitit.JobEnvironment().num_tasks > 1:
            env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
            return DistEnv(env.rank, env.world_size, env.local_rank)
    return None


def init(backend: str | None = None) -> DistEnv:
    """Join the process group the launcher set up (env://); a single process needs none."""
    env = env_from_os()
    if env is None or env.world_size == 1:
        return DistEnv()
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size)
    if backend == "nccl":
        torch.cuda.set_device(env.local_rank)
    return DistEnv(env.rank, env.world_size, env.local_rank, backend)


def current() -> DistEnv:
    """The process group this process already joined (``init``), or a single process."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return DistEnv()
    local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return DistEnv(dist.get_rank(), dist.get_world_size(), local, dist.get_backend())


def broadcast_flag(value: bool | None, src: int = 0) -> bool:
    """Rank ``src``'s decision on every rank (``value`` is ignored elsewhere)."""
    box = [value]
    dist.broadcast_object_list(box, src)
    return bool(box[0])


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast_parameters(params: list[torch.Tensor], src: int = 0) -> None:
    """Make every rank start from rank ``src``'s values (LoRA init, resumed checkpoints)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return
    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data, src)


def average_gradients(params: list[torch.Tensor], bucket_mb: float = 25.0) -> None:
    """All-reduce the gradients of ``params`` and divide by the world size, in flat buckets
    (one collective per ~``bucket_mb`` MB instead of one per LoRA matrix). A parameter without a
    gradient on this rank counts as zero, so every rank runs the same collectives."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return
    world = dist.get_world_size()
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    limit = int(bucket_mb * 2**20)
    bucket: list[torch.Tensor] = []
    size = 0
    for p in params:
        bucket.append(p.grad)
        size += p.grad.numel() * p.grad.element_size()
        if size >= limit:
            _reduce_bucket(bucket, world)
            bucket, size = [], 0
    if bucket:
        _reduce_bucket(bucket, world)


def _reduce_bucket(grads: list[torch.Tensor], world: int) -> None:
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world
    for g, reduced in zip(grads, _unflatten_dense_tensors(flat, grads)):
        g.copy_(reduced)


def shard(n: int, env: DistEnv) -> slice:
    """This rank's contiguous slice of a batch of ``n`` (equal shards: the mean of shard means is
    the full-batch mean)."""
    if n % env.world_size:
        raise ValueError(f"batch size {n} is not divisible by the world size {env.world_size}")
    per = n // env.world_size
    return slice(env.rank * per, (env.rank + 1) * per)


# --------------------------------------------------------------------------------------------
# a data-parallel flow-matching LoRA step (teachers, FM all-in-1)


@dataclass
class FMBatch:
    """A full flow-matching batch in latent space; ranks slice it with ``shard``."""

    x0: torch.Tensor            # (B, N, C) target latents
    source: torch.Tensor        # (B, N, C) source latents
    noise: torch.Tensor
    sigma: torch.Tensor         # (B,)
    cond: TextCondition
    grid: tuple[int, int]

    def slice(self, s: slice) -> "FMBatch":
        return FMBatch(self.x0[s], self.source[s], self.noise[s], self.sigma[s], self.cond.index(s), self.grid)


def fm_step_loss(backbone: Backbone, batch: FMBatch) -> torch.Tensor:
    v = backbone.velocity(add_noise(batch.x0, batch.noise, batch.sigma), batch.sigma, batch.source,
                          batch.cond, batch.grid)
    return fm_loss(v, batch.x0, batch.noise, batch.sigma)


def ddp_fm_step(backbone: Backbone, params: list[torch.Tensor], opt: torch.optim.Optimizer, batch: FMBatch,
                env: DistEnv, *, grad_clip: float = 1.0, sharded: bool = False) -> float:
    """One data-parallel step: loss on this rank's shard (``batch`` itself when ``sharded``),
    averaged LoRA gradients, clip, step. Returns the full-batch loss (mean over ranks)."""
    loss = fm_step_loss(backbone, batch if sharded else batch.slice(shard(len(batch.sigma), env)))
    loss.backward()
    average_gradients(params)
    torch.nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    value = loss.detach().clone()
    if env.world_size > 1:
        dist.all_reduce(value)
        value /= env.world_size
    return float(value)


def train_lora_distributed(backbone: Backbone, sources: torch.Tensor, targets: torch.Tensor, prompts: list[str],
                           *, steps: int, batch_size: int, lr: float, shift: float, seed: int,
                           env: DistEnv, grad_clip: float = 1.0) -> list[float]:
    """Flow-matching training of the trainable (LoRA) parameters, data-parallel over ``env``.
    ``batch_size`` is the global batch; each rank computes ``batch_size / world`` samples."""
    params = [p for p in backbone.transformer.parameters() if p.requires_grad]
    broadcast_parameters(params)
    grid = backbone.latent_grid(*sources.shape[-2:])
    with torch.no_grad():
        src_lat, tgt_lat = backbone.encode_images(sources), backbone.encode_images(targets)
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999))
    gen = torch.Generator().manual_seed(seed)   # the same stream on every rank
    losses = []
    for _ in range(steps):
        idx = torch.randint(len(prompts), (batch_size,), generator=gen)
        noise = torch.randn(tgt_lat[idx].shape, generator=gen)
        sigma = sample_training_sigmas(batch_size, shift, generator=gen)
        mine = shard(batch_size, env)
        # only this rank's prompts are encoded: the text encoder is the other per-sample cost
        cond = backbone.encode_prompts([prompts[i] for i in idx[mine].tolist()], sources[idx[mine]])
        batch = FMBatch(tgt_lat[idx][mine], src_lat[idx][mine], noise[mine], sigma[mine], cond, grid)
        losses.append(ddp_fm_step(backbone, params, opt, batch, env, grad_clip=grad_clip, sharded=True))
    return losses


# --------------------------------------------------------------------------------------------
# entry point: python -m methods.distributed (under torchrun, or as SLURM tasks)


def main(argv: list[str] | None = None) -> int:
    from bench.cache import ArtifactCache
    from bench.config import PRESETS, LoraTrainConfig, apply_overrides
    from bench.threads import set_threads
    from bench.workspace import Workspace
    from methods.lora import add_lora, save_lora

    p = argparse.ArgumentParser(prog="python -m methods.distributed", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="smoke")
    p.add_argument("--effect", type=int, default=0, help="index of the effect whose teacher LoRA is trained")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=8, help="global batch (split over ranks)")
    p.add_argument("--cache", default=None)
    p.add_argument("--out", default=None, help="where rank 0 saves the LoRA")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)

    env = init()
    set_threads(share=env.world_size)
    cfg = apply_overrides(PRESETS.get(args.preset)(), args.overrides)
    ws = Workspace(cfg, ArtifactCache(args.cache, verbose=env.is_main))
    if env.world_size > 1:  # rank 0 builds the shared artifacts; the others wait, then load them
        if env.is_main:
            _ = ws.base_dir
        dist.barrier()
    effect = ws.bench.effects[args.effect]
    rows = ws.full_bench.train_rows(effect.lora_name)
    bb = ws.load_backbone()
    bb.transformer.requires_grad_(False)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        add_lora(bb.transformer, "ddp", LoraTrainConfig(rank=cfg.teacher.rank, alpha=cfg.teacher.alpha))
    sources = ws.images([r.source_image for r in rows], [r.origin for r in rows])
    targets = ws.images([r.target_image for r in rows], [r.origin for r in rows])
    t0 = time.perf_counter()
    losses = train_lora_distributed(bb, sources, targets, [effect.prompt] * len(rows), steps=args.steps,
                                    batch_size=args.batch_size, lr=cfg.teacher.lr, shift=cfg.sampling.shift,
                                    seed=cfg.seed, env=env)
    elapsed = time.perf_counter() - t0
    if env.is_main:
        print(f"[distributed] {env.world_size} rank(s) ({env.backend or 'single process'}): {args.steps} steps "
              f"of global batch {args.batch_size} in {elapsed:.1f}s; loss {losses[0]:.4f} -> {losses[-1]:.4f}")
        if args.out:
            print(f"[distributed] saved {save_lora(bb.transformer, 'ddp', Path(args.out))}")
    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
