"""Data-parallel training over torch.distributed (gloo, 2 CPU processes) equals one process on
the full batch: the averaged gradient, and the flow-matching trainer's loss curve and weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bench.config import BackboneConfig, LoraTrainConfig
from methods.distributed import DistEnv, average_gradients, shard
from methods.fm import EditPairs, FMSettings, train_flow_matching

BATCH = 4
CFG = BackboneConfig(num_layers=1, num_attention_heads=2, attention_head_dim=32)
# uncond_prob > 0: the dropped prompts are drawn for the full batch and sharded like the rest
SETTINGS = FMSettings(steps=3, batch_size=BATCH, lr=1e-3, shift=3.0, warmup=1, uncond_prob=0.3)


def _model():
    """The same tiny backbone and LoRA (with a non-zero B, so every LoRA matrix has a gradient)
    in every process."""
    from methods.backbones.tiny_qwen import TinyQwenBackbone
    from methods.lora import add_lora

    torch.manual_seed(0)
    bb = TinyQwenBackbone.create(CFG, seed=0)
    bb.transformer.requires_grad_(False)
    add_lora(bb.transformer, "lora", LoraTrainConfig(rank=4, alpha=4))
    params = [p for p in bb.transformer.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in params:
            p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return bb, params


def _pairs() -> EditPairs:
    gen = torch.Generator().manual_seed(2)
    return EditPairs(torch.rand(6, 3, 16, 16, generator=gen), torch.rand(6, 3, 16, 16, generator=gen),
                     [f"edit number {i}" for i in range(6)])


def _shard_loss(bb, env: DistEnv) -> torch.Tensor:
    """The flow-matching loss of this rank's shard of one fixed batch."""
    from methods.flow import add_noise, fm_loss

    gen = torch.Generator().manual_seed(3)
    images = torch.rand(2 * BATCH, 3, 16, 16, generator=gen)
    src, tgt = bb.encode_images(images[:BATCH]), bb.encode_images(images[BATCH:])
    noise, sigma = torch.randn(tgt.shape, generator=gen), torch.rand(BATCH, generator=gen).clamp(0.05, 1)
    cond = bb.encode_prompts([f"edit number {i}" for i in range(BATCH)])
    s = shard(BATCH, env)
    v = bb.velocity(add_noise(tgt[s], noise[s], sigma[s]), sigma[s], src[s], cond.index(s), bb.latent_grid(16, 16))
    return fm_loss(v, tgt[s], noise[s], sigma[s])


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        env = DistEnv(rank, world, rank, "gloo")
        bb, params = _model()
        _shard_loss(bb, env).backward()
        average_gradients(params, bucket_mb=0.01)  # several buckets
        grads = [p.grad.clone() for p in params]
        for p in params:
            p.grad = None
        bb, params = _model()
        losses = train_flow_matching(bb, _pairs(), SETTINGS, seed=5, env=env)
        torch.save({"grads": grads, "losses": losses, "params": [p.detach().clone() for p in params]},
                   Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.e2e  # 30-75 s here (processes / a whole grid): out of plain pytest, in CI's -m ""
def test_two_gloo_ranks_train_as_one_process_on_the_full_batch(tmp_path: Path) -> None:
    """The averaged shard gradients are the full-batch gradient, and ``train_flow_matching`` on
    2 ranks gives one process's loss curve and weights (Adam: a few steps, where float noise in
    near-zero gradients has not yet grown into different ±lr steps)."""
    torch.set_num_threads(1)
    bb, params = _model()
    _shard_loss(bb, DistEnv()).backward()
    # parameters off the loss path (the last block's text stream) have no gradient: count as zero
    ref_grads = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params]
    assert any(g.abs().sum() > 0 for g in ref_grads)
    bb, params = _model()
    ref_losses = train_flow_matching(bb, _pairs(), SETTINGS, seed=5)
    ref_params = [p.detach().clone() for p in params]

    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)

    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for r in ranks:
        for g, ref in zip(r["grads"], ref_grads):
            torch.testing.assert_close(g, ref, rtol=1e-5, atol=1e-7)
        assert r["losses"] == pytest.approx(ref_losses, rel=1e-5)
        for p, ref in zip(r["params"], ref_params):
            torch.testing.assert_close(p, ref, rtol=1e-4, atol=1e-5)
    assert ranks[0]["losses"] == ranks[1]["losses"]  # the logged loss is the full batch's on every rank
    for a, b in zip(ranks[0]["params"], ranks[1]["params"]):
        assert torch.equal(a, b), "ranks diverged: every rank must apply the same averaged update"


def test_one_rank_is_the_single_process_trainer_bit_for_bit() -> None:
    """World size 1 is not a second code path: the same losses and weights, exactly."""
    runs = []
    for env in (None, DistEnv(0, 1, 0, "")):
        bb, params = _model()
        losses = train_flow_matching(bb, _pairs(), SETTINGS, seed=5, env=env)
        runs.append((losses, [p.detach().clone() for p in params]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


def test_shard_needs_equal_shards() -> None:
    assert shard(8, DistEnv(1, 4)) == slice(2, 4)
    with pytest.raises(ValueError, match="not divisible"):
        shard(6, DistEnv(0, 4))
