"""The real Qwen-Image-Edit backbone on tiny *random* components of the real classes.

The components are saved in the diffusers layout of Qwen/Qwen-Image-Edit-2509 and loaded back
through ``QwenEditBackbone.load`` -- the code that loads the real weights. Images are 32 px and
the VL encoder sees 64 px condition images instead of the pipeline's ~384 px / ~1024 px.
"""

from __future__ import annotations

import json
import runpy
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.config import BackboneConfig, LoraTrainConfig, RunConfig
from methods.backbones import BACKBONES, TextCondition
from methods.backbones.qwen_edit import MissingWeightsError, QwenEditBackbone, qwen_image_edit_preset
from methods.backbones.qwen_tiny_components import TINY_IMAGE, Z_DIM, save_tiny_model
from methods.flow import generate
from methods.fm import EditPairs, FMSettings, train_flow_matching
from methods.lora import add_lora, save_lora

CFG = BackboneConfig(kind="qwen-image-edit")
COND_AREA = 64 * 64   # what the VL encoder sees here (the pipeline's CONDITION_IMAGE_SIZE is 384^2)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models are dominated by per-op thread synchronisation: on the 2-core CI machine under
    load, one thread ran these tests in 13 s instead of 26 s (runs after conftest's 2-thread
    fixture, which is autouse at a higher level)."""
    torch.set_num_threads(1)


@dataclass(frozen=True)
class OriginalEditConfig(BackboneConfig):
    variant: str = "edit"  # field the shared BackboneConfig does not have yet


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("qwen") / "Qwen-Image-Edit-2509", seed=0)


def _load(path, cfg=CFG, **kw) -> QwenEditBackbone:
    bb = QwenEditBackbone.load(cfg, path, **kw)
    bb.condition_image_area = COND_AREA
    return bb


@pytest.fixture
def backbone(model_dir) -> QwenEditBackbone:
    return _load(model_dir)


def _images(n: int, seed: int = 0) -> tuple[torch.Tensor, list[Image.Image]]:
    """Images exactly representable as 8-bit PIL images (so pipeline and backbone see the same)."""
    arr = (np.random.RandomState(seed).rand(n, TINY_IMAGE, TINY_IMAGE, 3) * 255).astype(np.uint8)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255, [Image.fromarray(a) for a in arr]


def _randomise_lora(transformer, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for name, p in transformer.named_parameters():
        if "lora_B" in name:
            p.data = torch.randn(p.shape, generator=gen) * 0.1


def test_registered_and_loads_real_classes(model_dir, backbone):
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLForConditionalGeneration

    assert BACKBONES.get("qwen-image-edit") is QwenEditBackbone
    assert isinstance(backbone.transformer, QwenImageTransformer2DModel)
    assert isinstance(backbone.vae, AutoencoderKLQwenImage)
    assert isinstance(backbone.text_encoder, Qwen2_5_VLForConditionalGeneration)
    assert not any(p.requires_grad for p in backbone.transformer.parameters())
    # the tiny tokenizer splits the pipeline's system prompt like the real one: the pipeline's
    # hard-coded drop index (64) removes exactly the system prompt
    prefix = backbone.pipe.prompt_template_encode.split("{}")[0]
    assert len(backbone.pipe.tokenizer(prefix)["input_ids"]) == backbone.pipe.prompt_template_encode_start_idx


def test_codec_shapes_and_latent_normalisation(backbone):
    images, _ = _images(3)
    lat = backbone.encode_images(images)
    grid = backbone.latent_grid(TINY_IMAGE, TINY_IMAGE)
    assert grid == (4, 4) and lat.shape == (3, 16, 4 * Z_DIM) and lat.dtype == torch.float32
    # normalised with the VAE's latents_mean/std exactly as the pipeline does, then packed
    raw = backbone.vae.encode((images * 2 - 1).unsqueeze(2)).latent_dist.mode()
    mean = torch.tensor(backbone.vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(backbone.vae.config.latents_std).view(1, -1, 1, 1, 1)
    expected = backbone.pipe._pack_latents((raw - mean) / std, 3, Z_DIM, 8, 8)
    assert torch.allclose(lat, expected, atol=1e-6)
    out = backbone.decode_latents(lat, TINY_IMAGE, TINY_IMAGE)
    assert out.shape == images.shape and 0 <= out.min() and out.max() <= 1
    with pytest.raises(ValueError, match="divisible by 8"):
        backbone.latent_grid(36, 32)


def test_prompts_are_encoded_with_their_images(backbone):
    images, pils = _images(2)
    cond = backbone.encode_prompts(["make it red", "turn the cat into a painting"], images)
    assert isinstance(cond, TextCondition) and cond.embeds.shape[-1] == backbone.transformer.config.joint_attention_dim
    # batched = one prompt at a time, as the stock pipeline encodes them (right-padded + mask)
    for i, prompt in enumerate(["make it red", "turn the cat into a painting"]):
        embeds, _ = backbone.pipe.encode_prompt(prompt=[prompt], image=[backbone._condition_image(images[i])])
        n = int(cond.mask[i].sum())
        # batch of 2 vs batch of 1: other matmul blocking, so float rounding may differ (not a bug)
        assert n == embeds.shape[1] and torch.allclose(cond.embeds[i, :n], embeds[0], atol=1e-5)
        assert not cond.embeds[i, n:].any()
    # the VL encoder really sees the image: another image, other embeddings; none: text-only
    other = backbone.encode_prompts(["make it red"], images[1:])
    assert not torch.allclose(other.embeds[0], cond.embeds[0, : other.embeds.shape[1]])
    text_only = backbone.encode_prompts(["make it red"])
    assert text_only.embeds.shape[1] < cond.embeds.shape[1]
    with pytest.raises(ValueError, match="2 prompts but 1 images"):
        backbone.encode_prompts(["a", "b"], images[:1])


def test_two_step_generation_counts_nfe(backbone):
    images, _ = _images(2)
    src = backbone.encode_images(images)
    grid = backbone.latent_grid(TINY_IMAGE, TINY_IMAGE)
    cond = backbone.encode_prompts(["make it red"] * 2, images)
    uncond = backbone.encode_prompts([" "] * 2, images)
    out, nfe = generate(backbone, src, cond, grid, steps=2, shift=3.0, cfg_scale=4.0, uncond=uncond,
                        generator=torch.Generator().manual_seed(0))
    assert nfe == 4 and out.shape == src.shape and torch.isfinite(out).all()
    _, nfe = generate(backbone, src, cond, grid, steps=2, shift=3.0)
    assert nfe == 2
    assert backbone.decode_latents(out, TINY_IMAGE, TINY_IMAGE).shape == images.shape


def test_flow_matching_lora_training_step(backbone):
    add_lora(backbone.transformer, "teacher", LoraTrainConfig(rank=4, alpha=4))
    lora = {n: p.detach().clone() for n, p in backbone.transformer.named_parameters() if p.requires_grad}
    base = {n: p.detach().clone() for n, p in backbone.transformer.named_parameters() if not p.requires_grad}
    assert lora and all("lora_" in n for n in lora)
    sources, _ = _images(2, seed=1)
    pairs = EditPairs(sources, sources.flip(-1), ["flip it", "flip it"])
    losses = train_flow_matching(backbone, pairs, FMSettings(steps=2, batch_size=2, lr=1e-2, shift=3.0),
                                 seed=0)
    assert len(losses) == 2 and all(np.isfinite(losses))
    after = dict(backbone.transformer.named_parameters())
    assert any(not torch.equal(after[n], v) for n, v in lora.items() if "lora_B" in n)
    assert all(torch.equal(after[n], v) for n, v in base.items())


def test_gradient_checkpointing_gives_the_same_lora_gradients(model_dir):
    grads = []
    for checkpointing in (False, True):
        bb = _load(model_dir, BackboneConfig(kind="qwen-image-edit"))
        if checkpointing:  # what backbone.gradient_checkpointing=True does at load
            bb.transformer.enable_gradient_checkpointing()
        torch.manual_seed(0)  # same LoRA A init in both runs
        add_lora(bb.transformer, "s", LoraTrainConfig(rank=4, alpha=4))
        _randomise_lora(bb.transformer)
        bb.transformer.train()
        images, _ = _images(1)
        src = bb.encode_images(images)
        x = torch.randn(src.shape, generator=torch.Generator().manual_seed(0))
        v = bb.velocity(x, torch.tensor([0.7]), src, bb.encode_prompts(["x"], images), (4, 4))
        v.square().mean().backward()
        # (the last block's text-stream output is discarded, so its txt_mlp / to_add_out get none)
        grads.append({n: p.grad for n, p in bb.transformer.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 20
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0])
    assert bb.transformer.is_gradient_checkpointing


def test_student_lora_loads_in_stock_pipeline_with_identical_images(model_dir, backbone, tmp_path, monkeypatch):
    """What the harness writes (methods.lora.save_lora) loads in stock diffusers
    ``QwenImageEditPlusPipeline.load_lora_weights`` and gives the same image up to float32 rounding."""
    from diffusers import QwenImageEditPlusPipeline
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as plus

    # the stock pipeline's size constants (384^2 for the VL image, 1024^2 for the VAE image)
    monkeypatch.setattr(plus, "CONDITION_IMAGE_SIZE", COND_AREA)
    monkeypatch.setattr(plus, "VAE_IMAGE_SIZE", TINY_IMAGE * TINY_IMAGE)
    add_lora(backbone.transformer, "student", LoraTrainConfig(rank=4, alpha=12))  # alpha != rank
    _randomise_lora(backbone.transformer)
    save_lora(backbone.transformer, "student", tmp_path)

    images, pils = _images(1)
    noise = torch.randn(1, 16, 4 * Z_DIM, generator=torch.Generator().manual_seed(0))
    prompt, negative = "make it red", " "
    latents, _ = generate(backbone, backbone.encode_images(images), backbone.encode_prompts([prompt], images),
                          (4, 4), steps=2, shift=3.0, cfg_scale=4.0,
                          uncond=backbone.encode_prompts([negative], images), noise=noise.clone())
    ours = backbone.decode_latents(latents, TINY_IMAGE, TINY_IMAGE)

    pipe = QwenImageEditPlusPipeline.from_pretrained(model_dir, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(tmp_path)
    kw = dict(image=pils[0], prompt=prompt, negative_prompt=negative, true_cfg_scale=4.0, height=TINY_IMAGE,
              width=TINY_IMAGE, num_inference_steps=2, output_type="pt")
    stock = pipe(latents=noise.clone(), **kw).images
    # Two code paths (the pipeline's CFG / scheduler arithmetic vs ours): equal up to float32
    # rounding, which depends on the CPU's kernels (6.9e-7 seen on an AVX-512 machine).
    assert torch.allclose(stock, ours, atol=1e-5, rtol=0)
    pipe.unload_lora_weights()  # and the adapter matters: without it the image differs
    assert (pipe(latents=noise.clone(), **kw).images - ours).abs().max() > 1e-2


def test_original_edit_variant(model_dir, tmp_path):
    from diffusers import QwenImageEditPipeline

    path = save_tiny_model(tmp_path / "Qwen-Image-Edit", seed=1, variant="edit")
    bb = _load(path, OriginalEditConfig(kind="qwen-image-edit"))
    assert isinstance(bb.pipe, QwenImageEditPipeline) and bb.variant == "edit"
    images, _ = _images(1)
    cond = bb.encode_prompts(["make it red"], images)
    embeds, _ = bb.pipe.encode_prompt(prompt=["make it red"], image=bb._condition_image(images[0]))
    assert torch.equal(cond.embeds, embeds)
    with pytest.raises(ValueError, match="pass images="):
        bb.encode_prompts(["make it red"])
    _, nfe = generate(bb, bb.encode_images(images), cond, (4, 4), steps=2, shift=3.0)
    assert nfe == 2


def test_missing_component_is_one_fast_clear_error(model_dir, tmp_path):
    broken = tmp_path / "partial"
    shutil.copytree(model_dir, broken)
    shutil.rmtree(broken / "text_encoder")
    (broken / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    start = time.perf_counter()
    with pytest.raises(MissingWeightsError) as err:
        QwenEditBackbone.load(CFG, broken)
    assert time.perf_counter() - start < 1.0
    msg = str(err.value)
    assert "text_encoder/ (folder missing)" in msg and "transformer/ (none of" in msg
    assert "vae" not in msg.split("missing component(s)")[1].split(".")[0]
    assert "hf download Qwen/Qwen-Image-Edit-2509 --local-dir" in msg

    start = time.perf_counter()
    with pytest.raises(MissingWeightsError, match="nor in .*hf download Qwen/Qwen-Image-Edit-2509"):
        QwenEditBackbone.load(CFG, "Qwen/Qwen-Image-Edit-2509", cache_dir=tmp_path / "empty-cache")
    with pytest.raises(MissingWeightsError, match="no such directory"):
        QwenEditBackbone.load(CFG, tmp_path / "nowhere")
    assert time.perf_counter() - start < 1.0


def test_loads_from_the_hf_cache_without_network(model_dir, tmp_path):
    repo = tmp_path / "hub" / "models--Qwen--Qwen-Image-Edit-2509"
    shutil.copytree(model_dir, repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    bb = _load(None, CFG, cache_dir=tmp_path / "hub")  # no path: the variant's repo id
    assert bb.root == repo / "snapshots" / "0123abcd"


def test_scheduler_shift(backbone):
    # the tiny scheduler is configured like the Lightning scripts: exponential shift pinned to log 3
    assert backbone.scheduler_shift(1024, 1024) == pytest.approx(3.0)
    from diffusers import FlowMatchEulerDiscreteScheduler

    backbone.scheduler = FlowMatchEulerDiscreteScheduler(  # dynamic shifting as Qwen-Image's own config
        use_dynamic_shifting=True, time_shift_type="exponential", base_shift=0.5, max_shift=0.9,
        base_image_seq_len=256, max_image_seq_len=8192)
    tokens = np.prod(backbone.latent_grid(1024, 1024))  # packed target tokens, as the pipeline counts
    mu = 0.5 + (0.9 - 0.5) / (8192 - 256) * (tokens - 256)
    assert backbone.scheduler_shift(1024, 1024) == pytest.approx(np.exp(mu))


def test_preset_has_the_paper_settings():
    cfg = qwen_image_edit_preset()
    assert isinstance(cfg, RunConfig) and cfg.preset == "qwen-image-edit"
    assert cfg.backbone.kind == "qwen-image-edit" and cfg.backbone.dtype == "bfloat16"
    assert cfg.world.image_size == 1024
    assert (cfg.sampling.base_steps, cfg.sampling.base_cfg, cfg.sampling.fast_steps, cfg.sampling.shift) == (
        40, 4.0, 8, 3.0)
    assert (cfg.teacher.rank, cfg.teacher.alpha, len(cfg.teacher.target_modules)) == (128, 128, 14)
    assert (cfg.distill.rank, cfg.distill.alpha, cfg.distill.batch_size, cfg.distill.lr) == (128, 128, 1, 1e-4)
    assert (cfg.distill.real_cfg, cfg.distill.gen_update_ratio) == (4.0, 5)


def test_step_benchmark_runs_on_tiny_components(tmp_path):
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "qwen_edit_step.py"
    bench = runpy.run_path(str(script), run_name="qwen_edit_step")
    out = tmp_path / "bench.jsonl"
    assert bench["main"](["--config", "tiny-real", "--device", "cpu", "--gradient-checkpointing",
                          "--repeat", "1", "--warmup", "0", "--out", str(out)]) == 0
    row = json.loads(out.read_text())
    assert row["train_step_s"] > 0 and row["sample_step_s"] > 0 and row["peak_mem_gib"] > 0
    assert row["image_tokens"] == 32 and row["gradient_checkpointing"] is True
