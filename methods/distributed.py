"""Data-parallel training inside one job with torch.distributed (torchrun or SLURM tasks): the
process group, and the pieces both trainers use (methods/fm.py ``train_flow_matching``,
methods/dmd.py ``DMDTrainer``).

Every rank holds the frozen base and the same trainable weights. Each training step every rank
draws the *same* full batch (one RNG stream, seeded alike), computes the loss on its own
contiguous shard (``shard``), and the gradients are averaged with an all-reduce
(``average_gradients``) before clipping and the optimizer step. With equal shards the average
of the shard-mean gradients is the full-batch gradient, so N ranks take the single-process step
on N times the per-rank batch (DDP semantics; tests/test_distributed.py checks it against one
process on the full batch).

Why not wrap the module in ``DistributedDataParallel``: the DMD step runs several forwards per
step on one transformer with different adapters switched in by name (student, critic, teacher
bank), and each backward leaves whole adapters unused; DDP's per-forward reducer does not fit
that, while an explicit bucketed all-reduce of the trainable LoRA gradients does, at the same
communication cost. For the 20B Qwen-Image backbone in bf16 the frozen base can additionally be
sharded with FSDP (``torch.distributed.fsdp.fully_shard`` on the transformer blocks); the
gradient averaging here is unchanged by that.

Launch (CPU: gloo; GPU: nccl, one process per GPU)::

    torchrun --nproc_per_node=2 -m bench.run --method ours --preset smoke    # DMD on 2 ranks
    torchrun --nproc_per_node=2 benchmarks/fm_data_parallel.py --steps 20     # one FM teacher, timed
    # inside a SLURM job with --ntasks-per-node=<gpus> (slurm.tasks_per_node): the rank/world
    # come from SLURM through submitit's TorchDistributedEnvironment
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


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


def mean_over_ranks(value: torch.Tensor, env: DistEnv) -> float:
    """The mean of a scalar tensor over the ranks (a loss of shard means: the full-batch loss);
    in one process the value itself."""
    if env.world_size == 1:
        return float(value)
    total = value.detach().clone()
    dist.all_reduce(total)
    return float(total / env.world_size)


def passes_over_ranks(passes: int, env: DistEnv) -> int:
    """A count summed over the ranks (each counts the passes of its own shard); in one process
    the count itself."""
    if env.world_size == 1:
        return passes
    total = torch.tensor(float(passes), dtype=torch.float64)
    dist.all_reduce(total)
    return int(total)


def shard(n: int, env: DistEnv) -> slice:
    """This rank's contiguous slice of a batch of ``n`` (equal shards: the mean of shard means is
    the full-batch mean)."""
    if n % env.world_size:
        raise ValueError(f"batch size {n} is not divisible by the world size {env.world_size}")
    per = n // env.world_size
    return slice(env.rank * per, (env.rank + 1) * per)
