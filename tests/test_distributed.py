"""Data-parallel LoRA steps over torch.distributed (gloo, 2 CPU processes) equal one process on
the full batch: same averaged gradient, same parameters after the step, on every rank."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bench.config import BackboneConfig, LoraTrainConfig
from methods.distributed import DistEnv, FMBatch, average_gradients, ddp_fm_step, fm_step_loss, shard

BATCH = 4
CFG = BackboneConfig(num_layers=1, num_attention_heads=2, attention_head_dim=32)


def _model_and_batch():
    """The same tiny backbone, LoRA (with a non-zero B, so every LoRA matrix has a gradient)
    and full batch in every process."""
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
    images = torch.rand(2 * BATCH, 3, 16, 16, generator=gen)
    src, tgt = bb.encode_images(images[:BATCH]), bb.encode_images(images[BATCH:])
    batch = FMBatch(tgt, src, torch.randn(tgt.shape, generator=gen), torch.rand(BATCH, generator=gen).clamp(0.05, 1),
                    bb.encode_prompts([f"edit number {i}" for i in range(BATCH)]), bb.latent_grid(16, 16))
    return bb, params, batch


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        env = DistEnv(rank, world, rank, "gloo")
        bb, params, batch = _model_and_batch()
        loss = fm_step_loss(bb, batch.slice(shard(BATCH, env)))
        loss.backward()
        average_gradients(params, bucket_mb=0.01)  # several buckets
        grads = [p.grad.clone() for p in params]
        for p in params:
            p.grad = None
        opt = torch.optim.SGD(params, lr=0.1)
        full_loss = ddp_fm_step(bb, params, opt, batch, env)
        torch.save({"grads": grads, "params": [p.detach().clone() for p in params], "loss": full_loss},
                   Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_match_one_process_on_the_full_batch(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    bb, params, batch = _model_and_batch()
    loss = fm_step_loss(bb, batch)
    loss.backward()
    # parameters off the loss path (the last block's text stream) have no gradient: count as zero
    ref_grads = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    # SGD: the update is linear in the gradient (Adam turns float noise of near-zero gradients
    # into ±lr steps, which says nothing about the averaging)
    opt = torch.optim.SGD(params, lr=0.1)
    ref_loss = ddp_fm_step(bb, params, opt, batch, DistEnv())
    ref_params = [p.detach().clone() for p in params]
    assert any(g.abs().sum() > 0 for g in ref_grads)

    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)

    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for r in ranks:
        for g, ref in zip(r["grads"], ref_grads):
            torch.testing.assert_close(g, ref, rtol=1e-5, atol=1e-7)
        for p, ref in zip(r["params"], ref_params):
            torch.testing.assert_close(p, ref, rtol=1e-5, atol=1e-6)
        assert r["loss"] == pytest.approx(ref_loss, rel=1e-5)
    for a, b in zip(ranks[0]["params"], ranks[1]["params"]):
        assert torch.equal(a, b), "ranks diverged: every rank must apply the same averaged update"


def test_shard_needs_equal_shards() -> None:
    assert shard(8, DistEnv(1, 4)) == slice(2, 4)
    with pytest.raises(ValueError, match="not divisible"):
        shard(6, DistEnv(0, 4))
