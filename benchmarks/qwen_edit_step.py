"""Step time and peak memory of the Qwen-Image-Edit backbone, on CPU or CUDA.

Times what distillation and evaluation repeat: one LoRA training step (flow-matching loss
through ``Backbone.velocity``, backward, AdamW) and one sampling step (one NFE), on precomputed
latents and text embeddings (as the effect stream caches them), plus the VAE / text encoder
calls when a full model is loaded. Examples::

    # tiny random real components, the whole load path (seconds, CPU)
    python benchmarks/qwen_edit_step.py --config tiny-real
    # real weights (local dir or HF cache), paper settings
    python benchmarks/qwen_edit_step.py --model Qwen/Qwen-Image-Edit-2509 --device cuda \\
        --dtype bfloat16 --gradient-checkpointing --size 1024 --rank 128
    # transformer only, real widths, random weights, fewer layers (no download needed)
    python benchmarks/qwen_edit_step.py --config mid --device cuda --dtype bfloat16 --gradient-checkpointing

Prints one JSON object per run (``--out`` appends it to a JSONL file).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never download, fail at once (before huggingface_hub)

import torch  # noqa: E402
from diffusers.training_utils import cast_training_params  # noqa: E402

from bench.config import QWEN_LORA_TARGETS, BackboneConfig, LoraTrainConfig  # noqa: E402
from methods.backbones import Backbone, TextCondition  # noqa: E402
from methods.flow import add_noise, fm_loss  # noqa: E402
from methods.lora import add_lora  # noqa: E402

# Qwen-Image's transformer widths (60 layers, 24 heads x 128, text 3584, 16 latent channels)
REAL_WIDTHS = dict(patch_size=2, in_channels=64, out_channels=16, attention_head_dim=128, num_attention_heads=24,
                   joint_attention_dim=3584, axes_dims_rope=(16, 56, 56), guidance_embeds=False)
MID_LAYERS = 12


class TransformerOnly(Backbone):
    """Just the transformer, for timing without VAE / text encoder weights."""

    def __init__(self, transformer, device, dtype) -> None:
        super().__init__()
        self.transformer, self.device, self.dtype = transformer, device, dtype

    def encode_images(self, images):
        raise NotImplementedError

    def decode_latents(self, latents, height, width):
        raise NotImplementedError

    def encode_prompts(self, prompts, images=None):
        raise NotImplementedError

    def latent_grid(self, height, width):
        return height // 16, width // 16


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, repeat: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def _peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    # CPU: the process's peak resident set (Linux reports KiB)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def build(args) -> tuple[Backbone, str]:
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args.config in ("mid", "full-shape"):
        from diffusers import QwenImageTransformer2DModel

        layers = args.layers or (MID_LAYERS if args.config == "mid" else 60)
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)  # build in the target dtype (a cast afterwards doubles memory)
        try:
            with device:  # initialise in place: a full-width model is too big to build on the CPU first
                transformer = QwenImageTransformer2DModel(num_layers=layers, **REAL_WIDTHS)
        finally:
            torch.set_default_dtype(default)
        transformer.requires_grad_(False)
        if args.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        return TransformerOnly(transformer, device, dtype), f"{args.config} ({layers} layers, random weights)"

    from methods.backbones.qwen_edit import QwenEditBackbone

    cfg = BackboneConfig(kind="qwen-image-edit", device=args.device, dtype=args.dtype)
    if args.config == "tiny-real":
        from methods.backbones.qwen_tiny_components import save_tiny_model

        with tempfile.TemporaryDirectory() as tmp:  # written, then loaded like real weights
            path = "tiny random components"
            backbone = QwenEditBackbone.load(cfg, save_tiny_model(Path(tmp) / "tiny-qwen-image-edit"))
    else:
        path = args.model
        backbone = QwenEditBackbone.load(cfg, path)
    backbone.condition_image_area = args.condition_area or backbone.condition_image_area
    if args.gradient_checkpointing:
        backbone.transformer.enable_gradient_checkpointing()
    return backbone, str(path)


def run(args) -> dict:
    torch.manual_seed(0)
    t0 = time.perf_counter()
    backbone, what = build(args)
    device = backbone.device
    load_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    weights_gib = (torch.cuda.memory_allocated(device) / 2**30) if device.type == "cuda" else None

    size, batch = args.size, args.batch
    result = {"config": args.config, "model": what, "device": str(device), "dtype": args.dtype,
              "size": size, "batch": batch, "lora_rank": args.rank,
              "gradient_checkpointing": bool(args.gradient_checkpointing), "load_s": round(load_s, 2),
              "torch": torch.__version__, "host": platform.node(),
              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}

    grid = backbone.latent_grid(size, size)
    if isinstance(backbone, TransformerOnly):
        channels = backbone.transformer.config.in_channels
        source = torch.randn(batch, grid[0] * grid[1], channels, device=device)
        x0 = torch.randn_like(source)
        dim = backbone.transformer.config.joint_attention_dim
        cond = TextCondition(torch.randn(batch, args.text_tokens, dim, device=device),
                             torch.ones(batch, args.text_tokens, dtype=torch.long, device=device))
    else:  # the real encoders, timed once per call
        images = torch.rand(batch, 3, size, size)
        times = _timed(lambda: backbone.encode_images(images), device, 1, 1)
        result["vae_encode_s"] = round(times[0], 4)
        source = backbone.encode_images(images)
        x0 = backbone.encode_images(images.flip(-1))
        times = _timed(lambda: backbone.encode_prompts(["make it red"] * batch, images), device, 1, 1)
        result["text_encode_s"] = round(times[0], 4)
        cond = backbone.encode_prompts(["make it red"] * batch, images)
        times = _timed(lambda: backbone.decode_latents(x0, size, size), device, 1, 1)
        result["vae_decode_s"] = round(times[0], 4)
    result["image_tokens"] = 2 * source.shape[1]  # noisy target + source
    result["text_tokens"] = cond.embeds.shape[1]

    add_lora(backbone.transformer, "student", LoraTrainConfig(rank=args.rank, alpha=args.rank,
                                                               target_modules=QWEN_LORA_TARGETS))
    # train the adapter in float32 over a bf16 base, as diffusers' LoRA scripts do
    cast_training_params(backbone.transformer, torch.float32)
    params = [p for p in backbone.transformer.parameters() if p.requires_grad]
    result["lora_params_m"] = round(sum(p.numel() for p in params) / 1e6, 2)
    opt = torch.optim.AdamW(params, lr=1e-4)
    noise = torch.randn_like(x0)
    sigma = torch.full((batch,), 0.7, device=device)

    def train_step() -> None:
        backbone.transformer.train()
        v = backbone.velocity(add_noise(x0, noise, sigma), sigma, source, cond, grid)
        fm_loss(v, x0, noise, sigma).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def sample_step() -> None:
        backbone.transformer.eval()
        backbone.velocity(add_noise(x0, noise, sigma), sigma, source, cond, grid)

    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.autocast):
        train = _timed(train_step, device, args.repeat, args.warmup)
        sample = _timed(sample_step, device, args.repeat, args.warmup)
    result.update(
        train_step_s=round(statistics.median(train), 4), train_step_min_s=round(min(train), 4),
        sample_step_s=round(statistics.median(sample), 4), sample_step_min_s=round(min(sample), 4),
        peak_mem_gib=round(_peak_gib(device), 3),
        peak_mem_kind="torch.cuda.max_memory_allocated" if device.type == "cuda" else "process max RSS",
    )
    if weights_gib is not None:
        result["weights_mem_gib"] = round(weights_gib, 3)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=["tiny-real", "model", "mid", "full-shape"], default=None,
                   help="tiny-real: tiny random real components; model: --model; mid/full-shape: "
                        "transformer only at real widths with random weights")
    p.add_argument("--model", default=None, help="local dir or repo id in the HF cache (implies --config model)")
    p.add_argument("--layers", type=int, default=None, help="transformer layers for mid/full-shape")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--size", type=int, default=None, help="image side in px (default 32 tiny-real, 1024 otherwise)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rank", type=int, default=None, help="LoRA rank = alpha (default 128; 4 for tiny-real)")
    p.add_argument("--text-tokens", type=int, default=256, help="prompt length for transformer-only configs")
    p.add_argument("--condition-area", type=int, default=None, help="VL condition image area (px^2)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--autocast", action="store_true", help="bf16 autocast around the steps")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=None, help="append the JSON result to this JSONL file")
    args = p.parse_args(argv)
    args.config = args.config or ("model" if args.model else "tiny-real")
    if args.config == "model" and not args.model:
        p.error("--config model needs --model PATH_OR_REPO_ID")
    tiny = args.config == "tiny-real"
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    args.size = args.size or (32 if tiny else 1024)
    args.rank = args.rank or (4 if tiny else 128)
    if tiny and args.condition_area is None:
        args.condition_area = 64 * 64
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args)
    line = json.dumps(result)
    print(line)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as f:
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
