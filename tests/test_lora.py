"""LoRA files: diffusers format with metadata; save -> load reproduces outputs exactly."""

import json

import torch
from safetensors import safe_open

from bench.config import LoraTrainConfig
from methods.flow import generate
from methods.lora import add_lora, load_lora, save_lora


def _outputs(bb):
    src = bb.encode_images(torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)))
    noise = torch.randn(src.shape, generator=torch.Generator().manual_seed(2))
    out, _ = generate(bb, src, bb.encode_prompts(["zqvorn, warm tones", "x"]), (8, 8), steps=3,
                      shift=3.0, noise=noise)
    return out


def test_lora_save_load_roundtrip(tiny_backbone, tmp_path):
    bb = tiny_backbone
    # alpha != rank: the case that breaks when the adapter metadata is not saved
    add_lora(bb.transformer, "effect", LoraTrainConfig(rank=4, alpha=12))
    for name, p in bb.transformer.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    before = _outputs(bb)
    file = save_lora(bb.transformer, "effect", tmp_path)
    bb.transformer.delete_adapters(["effect"])
    assert not torch.allclose(_outputs(bb), before)  # the adapter really was removed

    load_lora(bb.transformer, tmp_path, "reloaded")
    bb.transformer.set_adapters(["reloaded"])
    assert torch.equal(_outputs(bb), before)

    with safe_open(str(file), "pt") as f:
        keys = list(f.keys())
        meta = f.metadata()
    assert all(k.startswith("transformer.") for k in keys)
    assert any("img_mod.1.lora_A" in k for k in keys) and any("txt_mlp.net.2.lora_B" in k for k in keys)
    adapter_meta = json.loads(meta["lora_adapter_metadata"])
    assert adapter_meta["transformer.lora_alpha"] == 12 and adapter_meta["transformer.r"] == 4


def test_missing_lora_file_is_a_clear_error(tiny_backbone, tmp_path):
    import pytest

    with pytest.raises(FileNotFoundError, match="LoRA 'ghost'"):
        load_lora(tiny_backbone.transformer, tmp_path / "nope", "ghost")
