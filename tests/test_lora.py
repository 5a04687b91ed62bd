"""LoRA files: diffusers format with metadata; save -> load reproduces outputs exactly."""

import json

import pytest
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


def _random_lora(bb, name="effect"):
    add_lora(bb.transformer, name, LoraTrainConfig(rank=4, alpha=12))
    for pname, p in bb.transformer.named_parameters():
        if "lora_B" in pname:
            torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(3))


def test_peft_layout_loads_in_peft_model_with_the_same_outputs(tiny_backbone, tmp_path):
    """The directory is also a peft adapter: PeftModel.from_pretrained gives the LoRA the
    harness loads, and both layouts say which base they belong to."""
    from peft import PeftModel

    from methods.backbones.tiny_qwen import TinyQwenBackbone
    from methods.lora import name_base

    name_base(tiny_backbone.transformer, "tiny-qwen-base-abc123")
    _random_lora(tiny_backbone)
    file = save_lora(tiny_backbone.transformer, "effect", tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {file.name, "adapter_config.json", "adapter_model.safetensors"}

    harness = TinyQwenBackbone.create(tiny_backbone.cfg, seed=0)
    load_lora(harness.transformer, tmp_path, "effect")
    fresh = TinyQwenBackbone.create(tiny_backbone.cfg, seed=0)
    base_out = _outputs(fresh)
    model = PeftModel.from_pretrained(fresh.transformer, tmp_path)
    assert model.get_base_model() is fresh.transformer
    peft_out = _outputs(fresh)
    assert not torch.allclose(peft_out, base_out)  # the adapter is really active
    assert torch.allclose(peft_out, _outputs(harness))

    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny-qwen-base-abc123" and config["peft_type"] == "LORA"
    assert config["target_modules"] == sorted(config["target_modules"])
    with safe_open(str(file), "pt") as f:
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    assert meta["transformer.base_model_name_or_path"] == "tiny-qwen-base-abc123"


def test_saving_a_lora_asks_no_server(tiny_backbone, tmp_path, monkeypatch):
    """peft's default looks the base up on the Hugging Face Hub on every save (a warning offline,
    a hang behind a firewall that drops packets); a LoRA here is written without a network call."""
    import peft.utils.save_and_load

    def no_network(*args, **kwargs):
        raise AssertionError(f"asked the Hub for {args}")

    monkeypatch.setattr(peft.utils.save_and_load, "check_file_exists_on_hf_hub", no_network)
    from methods.lora import name_base

    name_base(tiny_backbone.transformer, "tiny-qwen-base-abc123")  # a name the Hub would be asked about
    _random_lora(tiny_backbone)
    save_lora(tiny_backbone.transformer, "effect", tmp_path / "a")
    load_lora(tiny_backbone.transformer, tmp_path / "a", "loaded")  # its config names the base
    assert save_lora(tiny_backbone.transformer, "loaded", tmp_path / "b").exists()


def test_unnamed_base_is_recorded_by_its_config_hash(tiny_backbone, tmp_path):
    _random_lora(tiny_backbone)
    save_lora(tiny_backbone.transformer, "effect", tmp_path)
    base = json.loads((tmp_path / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base.startswith("QwenImageTransformer2DModel-") and len(base.split("-")[-1]) == 12


_SAVE_IN_A_PROCESS = """
import hashlib, sys, torch
from bench.config import BackboneConfig, LoraTrainConfig
from methods.backbones.tiny_qwen import TinyQwenBackbone
from methods.lora import add_lora, save_lora
bb = TinyQwenBackbone.create(BackboneConfig(num_layers=2), seed=0)
torch.manual_seed(0)
add_lora(bb.transformer, "effect", LoraTrainConfig(rank=4, alpha=12))
save_lora(bb.transformer, "effect", sys.argv[1])
"""


@pytest.mark.e2e  # 30-75 s here (processes / a whole grid): out of plain pytest, in CI's -m ""
def test_equal_loras_are_equal_files_whatever_the_hash_seed(tmp_path):
    """peft keeps target_modules as a set (order from PYTHONHASHSEED) and safetensors writes its
    metadata from a Rust HashMap (order random per process): both are written sorted."""
    import hashlib
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    digests = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
        out = tmp_path / seed
        subprocess.run([sys.executable, "-c", _SAVE_IN_A_PROCESS, str(out)], check=True, env=env, cwd=root,
                       capture_output=True)
        digests.append({f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(out.iterdir())})
    assert len(digests[0]) == 3 and digests[0] == digests[1]


def test_safetensors_metadata_is_rewritten_in_sorted_order(tmp_path):
    """The header fix alone (two processes above agree on a 2-key HashMap half the time)."""
    from safetensors.torch import load_file, save_file

    from methods.lora import _sort_header_metadata

    file = tmp_path / "x.safetensors"
    tensors = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.ones(5, dtype=torch.float16)}
    save_file(tensors, str(file), metadata={f"k{i:02d}": str(i) for i in range(20)})
    _sort_header_metadata(file)
    n = int.from_bytes(file.read_bytes()[:8], "little")
    assert list(json.loads(file.read_bytes()[8:8 + n])["__metadata__"]) == [f"k{i:02d}" for i in range(20)]
    loaded = load_file(str(file))
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())


def test_a_lora_given_by_path_is_keyed_by_its_bytes_not_its_place(tiny_backbone, tmp_path):
    """What student keys hold for an extension's starting LoRA (and teacher keys for a manifest
    lora_path): the same file moved keeps its key, an edited one gets a new key."""
    import shutil

    from methods.lora import WEIGHT_NAME, weights_fingerprint

    add_lora(tiny_backbone.transformer, "k", LoraTrainConfig(rank=4, alpha=4))
    save_lora(tiny_backbone.transformer, "k", tmp_path / "a")
    tiny_backbone.transformer.delete_adapters(["k"])
    shutil.copytree(tmp_path / "a", tmp_path / "elsewhere" / "b")
    assert weights_fingerprint(tmp_path / "a") == weights_fingerprint(tmp_path / "elsewhere" / "b")
    assert weights_fingerprint(tmp_path / "a") == weights_fingerprint(tmp_path / "a" / WEIGHT_NAME)
    with open(tmp_path / "elsewhere" / "b" / WEIGHT_NAME, "ab") as f:
        f.write(b"\0")
    assert weights_fingerprint(tmp_path / "a") != weights_fingerprint(tmp_path / "elsewhere" / "b")
