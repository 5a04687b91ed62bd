"""The disk cache of prompt embeddings of the real Qwen-Image-Edit backbone, on tiny random real
components: a cache hit is bit-identical and never calls the text encoder; the key covers the
prompt, the exact pixels the VL encoder sees and the encoder itself; it can be switched off."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from bench.cache import ArtifactCache
from bench.config import BackboneConfig, RunConfig
from bench.workspace import Workspace
from methods.backbones.prompt_cache import ENV_CACHE, prompt_cache_report, reset_prompt_cache_counts
from methods.backbones.qwen_edit import QwenEditBackbone
from methods.backbones.qwen_tiny_components import TINY_IMAGE, save_tiny_model

CFG = BackboneConfig(kind="qwen-image-edit")
COND_AREA = 64 * 64  # as tests/test_qwen_edit_backbone.py: a small image for the VL encoder
PROMPTS = ["make it red", "turn the cat into a painting", ""]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv(ENV_CACHE, raising=False)
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("qwen") / "Qwen-Image-Edit-2509", seed=0)


def _load(path, **kw) -> QwenEditBackbone:
    bb = QwenEditBackbone.load(CFG, path, **kw)
    bb.condition_image_area = COND_AREA
    return bb


def _images(n: int, seed: int = 0) -> torch.Tensor:
    arr = (np.random.RandomState(seed).rand(n, TINY_IMAGE, TINY_IMAGE, 3) * 255).astype(np.uint8)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255


def _count_encoder_calls(bb: QwenEditBackbone) -> list[int]:
    calls = [0]
    bb.text_encoder.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def _same(a, b) -> bool:
    return (a.embeds.dtype == b.embeds.dtype and a.mask.dtype == b.mask.dtype
            and torch.equal(a.embeds, b.embeds) and torch.equal(a.mask, b.mask))


def test_hit_is_bit_identical_and_skips_the_encoder(model_dir, tmp_path, capsys):
    images = _images(3)
    expected = _load(model_dir).encode_prompts(PROMPTS, images)  # no cache: the pipeline's output
    reset_prompt_cache_counts()
    bb = _load(model_dir, prompt_cache=tmp_path / "prompts")
    calls = _count_encoder_calls(bb)
    assert _same(bb.encode_prompts(PROMPTS, images), expected) and calls[0] == 3
    assert "[cache] prompt embeddings: 3 encoded, 0 cached so far" in capsys.readouterr().out
    assert _same(bb.encode_prompts(PROMPTS, images), expected) and calls[0] == 3  # from disk
    assert (bb.prompt_cache.misses, bb.prompt_cache.hits) == (3, 3)

    # another job on the same cache (a new process: a fresh backbone) reads the same files
    fresh = _load(model_dir, prompt_cache=tmp_path / "prompts")
    fresh_calls = _count_encoder_calls(fresh)
    assert _same(fresh.encode_prompts(PROMPTS, images), expected) and fresh_calls[0] == 0
    # a text-only prompt is an entry of its own, not the same prompt with an image
    assert _same(fresh.encode_prompts(["make it red"]), _load(model_dir).encode_prompts(["make it red"]))
    assert fresh_calls[0] == 1
    assert prompt_cache_report() == ("prompt embeddings: 4 encoded by the text encoder, "
                                     "6 served from the prompt cache")

    # one small file per (prompt, image) under one folder per encoder; no temporary files left
    folders = [d for d in (tmp_path / "prompts").iterdir() if d.is_dir()]
    assert len(folders) == 1 and (folders[0] / "identity.json").is_file()
    assert len(list(folders[0].rglob("*.safetensors"))) == 4
    assert not list((tmp_path / "prompts").rglob(".tmp-*"))


def test_key_covers_prompt_image_pixels_and_encoder(model_dir, tmp_path):
    root = tmp_path / "prompts"
    images = _images(2)
    bb = _load(model_dir, prompt_cache=root)
    calls = _count_encoder_calls(bb)
    bb.encode_prompts(["make it red"], images[:1])
    bb.encode_prompts(["make it red"], images[1:])   # another image
    bb.encode_prompts(["make it blue"], images[:1])  # another prompt
    bb.condition_image_area = 32 * 32                # other pixels shown to the VL encoder
    bb.encode_prompts(["make it red"], images[:1])
    assert calls[0] == 4 and bb.prompt_cache.hits == 0
    bb.encode_prompts(["x", "x"], images[[0, 0]])    # a pair repeated in one call: encoded once
    assert calls[0] == 5

    other = _load(save_tiny_model(tmp_path / "other", seed=1), prompt_cache=root)  # other weights
    other_calls = _count_encoder_calls(other)
    other.encode_prompts(["make it red"], images[:1])
    assert other_calls[0] == 1
    assert len([d for d in root.iterdir() if d.is_dir()]) == 2


def test_identity_of_an_in_memory_encoder_follows_its_weights(model_dir):
    pipe = _load(model_dir).pipe
    ident = QwenEditBackbone(CFG, pipe).text_encoder_identity()  # no folder: weights hashed in memory
    assert QwenEditBackbone(CFG, pipe).text_encoder_identity() == ident
    with torch.no_grad():
        next(pipe.text_encoder.parameters()).add_(1e-3)
    changed = QwenEditBackbone(CFG, pipe).text_encoder_identity()
    assert changed["weights"] != ident["weights"] and changed["template"] == ident["template"]


def test_switched_off_by_env_and_by_default(model_dir, tmp_path, monkeypatch):
    images = _images(1)
    assert _load(model_dir).prompt_cache is None  # a bare backbone does not write anywhere
    monkeypatch.setenv(ENV_CACHE, "off")
    bb = _load(model_dir, prompt_cache=tmp_path / "prompts")
    calls = _count_encoder_calls(bb)
    bb.encode_prompts(["make it red"], images)
    bb.encode_prompts(["make it red"], images)
    assert bb.prompt_cache is None and calls[0] == 2 and not (tmp_path / "prompts").exists()


def test_unreadable_entry_is_recomputed(model_dir, tmp_path):
    images = _images(1)
    bb = _load(model_dir, prompt_cache=tmp_path / "prompts")
    expected = bb.encode_prompts(["make it red"], images)
    (entry,) = (tmp_path / "prompts").rglob("*.safetensors")
    entry.write_bytes(b"half a file")
    again = _load(model_dir, prompt_cache=tmp_path / "prompts")
    calls = _count_encoder_calls(again)
    assert _same(again.encode_prompts(["make it red"], images), expected) and calls[0] == 1
    assert _same(again.encode_prompts(["make it red"], images), expected) and calls[0] == 1


def test_workspace_caches_prompts_next_to_its_artifacts(model_dir, tmp_path):
    cfg = RunConfig()
    cfg = replace(cfg, backbone=replace(cfg.backbone, kind="qwen-image-edit", path=str(model_dir)))
    bb = Workspace(cfg, ArtifactCache(tmp_path / "cache", verbose=False)).load_backbone()
    assert bb.prompt_cache.root == tmp_path / "cache" / "prompt_embeds" and not bb.prompt_cache.verbose
