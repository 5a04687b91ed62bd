"""Merge baselines: linear task arithmetic is the exact mean of the teachers' deltas."""

import torch

from bench.config import BackboneConfig, LoraTrainConfig
from methods.adapters import AdapterBank
from methods.backbones.tiny_qwen import TinyQwenBackbone
from methods.lora import add_lora, save_lora
from methods.merge import MERGED, MergeDare, MergeLinear, merge_teachers


def _teacher(tmp_path, name, seed):
    bb = TinyQwenBackbone.create(BackboneConfig(num_layers=1), seed=0)
    add_lora(bb.transformer, name, LoraTrainConfig(rank=4, alpha=4))
    torch.manual_seed(seed)
    for pname, p in bb.transformer.named_parameters():
        if "lora_B" in pname:
            torch.nn.init.normal_(p, std=0.05)
    return save_lora(bb.transformer, name, tmp_path / name)


def test_linear_merge_of_identical_teachers_is_that_teacher(tmp_path):
    """N copies of one teacher average to that teacher (a sum would be N times too strong)."""
    bb = TinyQwenBackbone.create(BackboneConfig(num_layers=1), seed=0)
    bank = AdapterBank(bb.transformer)
    path = _teacher(tmp_path, "t", seed=1)
    for name in ("t_a", "t_b", "t_c"):
        bank.add_teacher(name, path)
    merge_teachers(bb.transformer, ["t_a", "t_b", "t_c"], MergeLinear.spec)
    gen = torch.Generator().manual_seed(0)
    x, src = torch.randn(2, 16, 12, generator=gen), torch.randn(2, 16, 12, generator=gen)
    cond = bb.encode_prompts(["apply the effect"] * 2)
    sigma = torch.tensor([0.3, 0.8])

    def velocity(*adapters):
        bank.activate(*adapters)
        return bb.velocity(x, sigma, src, cond, (4, 4))

    with torch.no_grad():
        single, merged, none = velocity("t_a"), velocity(MERGED), velocity()
    assert not torch.allclose(single, none, atol=1e-4)  # the teacher does something
    torch.testing.assert_close(merged, single, rtol=1e-4, atol=1e-5)


def test_a_dare_merge_is_the_same_whatever_ran_before_it(tmp_path):
    """DARE's random drops come from the merge's seed, not from whatever used torch's global
    generator before (the merge is cached by a key that names no process history)."""
    paths = [_teacher(tmp_path, f"t{i}", seed=i) for i in range(3)]

    def merged(history: int, seed: int = 0) -> dict[str, torch.Tensor]:
        torch.manual_seed(history)
        torch.rand(history + 1)  # what ran before in the process
        bb = TinyQwenBackbone.create(BackboneConfig(num_layers=1), seed=0)
        bank = AdapterBank(bb.transformer)
        for i, path in enumerate(paths):
            bank.add_teacher(f"t{i}", path)
        merge_teachers(bb.transformer, ["t0", "t1", "t2"], MergeDare.spec, seed=seed)
        return {k: v.detach().clone() for k, v in bb.transformer.state_dict().items() if f".{MERGED}." in k}

    a, b = merged(1), merged(7)
    assert a and all(torch.equal(a[k], b[k]) for k in a)
    other = merged(1, seed=1)
    assert any(not torch.equal(a[k], other[k]) for k in a)  # the seed does draw the drops
