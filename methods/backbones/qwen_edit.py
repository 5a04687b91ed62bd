"""The real backbone: Qwen-Image-Edit(-2509) through diffusers.

The backbone is assembled from the six components of the diffusers repo layout
(``transformer/ vae/ text_encoder/ tokenizer/ processor/ scheduler/``) into a stock diffusers
pipeline object, and delegates to that pipeline's own helpers wherever one exists
(``encode_prompt``, ``_encode_vae_image``, ``_pack_latents``/``_unpack_latents``,
``image_processor``), so its conditioning is the pipeline's and a LoRA trained here behaves the
same in stock ``QwenImageEditPlusPipeline``.

Two variants:

* ``edit-plus`` -- ``Qwen/Qwen-Image-Edit-2509`` (``QwenImageEditPlusPipeline``): the VL text
  encoder sees the source image resized to ~384x384 (the pipeline's ``CONDITION_IMAGE_SIZE``)
  inside a "Picture 1: <image>" prompt; a prompt without an image is encoded text-only.
* ``edit`` -- the original ``Qwen/Qwen-Image-Edit`` (``QwenImageEditPipeline``): the image is part
  of the prompt template, so prompts must come with their images.

Where this departs from the stock ``__call__``: the source image is VAE-encoded at the size it
is given (the stock pipelines resize it to ~1024x1024 area first, as ``VAE_IMAGE_SIZE``; the
CollectionLoRA reference code also keeps the given size), and sampling uses the harness's loop
(``methods.flow.generate``: Euler, or the re-noising sampler of DMD students) with the harness's
static shift rather than the scheduler's resolution-dependent one
(:meth:`QwenEditBackbone.scheduler_shift` reports the latter).

Weights come from a local directory or the Hugging Face cache, never from the network: a missing
component raises :class:`MissingWeightsError` naming it and how to download it.

Prompt embeddings can be cached on disk (``prompt_cache=``; :mod:`methods.backbones.prompt_cache`):
the Workspace turns it on under the artifact cache, so a distillation or teacher-output build
encodes each (prompt, source image) pair with the 7B VL encoder once across runs and jobs.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import replace
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    QwenImageEditPipeline,
    QwenImageEditPlusPipeline,
    QwenImageTransformer2DModel,
)
from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as _plus
from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer, Qwen2VLProcessor

from bench.cache import files_fingerprint
from bench.config import QWEN_LORA_TARGETS, BackboneConfig, RunConfig
from bench.errors import BenchError
from methods.backbones import Backbone, TextCondition
from methods.backbones.prompt_cache import (
    PromptCache,
    image_digest,
    module_fingerprint,
    resolve_prompt_cache,
)

PIPELINES = {"edit-plus": QwenImageEditPlusPipeline, "edit": QwenImageEditPipeline}
DEFAULT_REPOS = {"edit-plus": "Qwen/Qwen-Image-Edit-2509", "edit": "Qwen/Qwen-Image-Edit"}
VAE_CHUNK = 4  # images per VAE call: the real VAE at 1024 px is memory-hungry in big batches

# What each component folder must hold: files that must all exist, then alternatives of which
# one must be complete (sharded weights are followed through their index file).
_SAFETENSORS = (("diffusion_pytorch_model.safetensors",), ("diffusion_pytorch_model.safetensors.index.json",))
_REQUIRED: dict[str, tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]] = {
    "transformer": (("config.json",), _SAFETENSORS),
    "vae": (("config.json",), _SAFETENSORS),
    "text_encoder": (("config.json",), (("model.safetensors",), ("model.safetensors.index.json",))),
    "tokenizer": (("tokenizer_config.json",), (("tokenizer.json",), ("vocab.json", "merges.txt"))),
    "processor": ((), (("preprocessor_config.json",), ("processor_config.json",))),
    "scheduler": (("scheduler_config.json",), ((),)),
}
COMPONENTS = tuple(_REQUIRED)


class MissingWeightsError(BenchError, FileNotFoundError):
    """A model directory, or a component inside it, is not on disk."""


# --------------------------------------------------------------------------------------------
# finding the weights (fast, file checks only; nothing is downloaded)


def _download_hint(repo_id: str) -> str:
    return (f"download it with `hf download {repo_id} --local-dir DIR` (formerly `huggingface-cli "
            f"download`) and set backbone.path=DIR, or leave out --local-dir to fill the HF cache")


def resolve_model_dir(path: str | os.PathLike | None, variant: str = "edit-plus",
                      cache_dir: str | os.PathLike | None = None) -> Path:
    """A local model directory, or a repo id looked up in the HF cache with ``local_files_only``."""
    repo_id = DEFAULT_REPOS[variant]
    if path is None:
        path = repo_id
    if Path(path).expanduser().is_dir():
        return Path(path).expanduser()
    text = str(path)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", text) and not text.startswith("."):
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            return Path(snapshot_download(text, local_files_only=True, cache_dir=cache_dir))
        except LocalEntryNotFoundError:
            where = cache_dir or "the HF cache (HF_HUB_CACHE)"
            raise MissingWeightsError(f"{text} is neither a local directory nor in {where}; "
                                      f"{_download_hint(text)}") from None
    raise MissingWeightsError(f"backbone.path {text!r}: no such directory; expected the diffusers "
                              f"layout of {repo_id} ({', '.join(c + '/' for c in COMPONENTS)}); "
                              f"{_download_hint(repo_id)}")


def _component_problem(folder: Path, required: tuple[str, ...],
                       alternatives: tuple[tuple[str, ...], ...]) -> str | None:
    if not folder.is_dir():
        return "folder missing"
    absent = [f for f in required if not (folder / f).exists()]
    if absent:
        return "no " + ", ".join(absent)
    for alt in alternatives:
        if all((folder / f).exists() for f in alt):
            index = next((folder / f for f in alt if f.endswith(".index.json")), None)
            if index is None:
                return None
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            missing = [s for s in shards if not (folder / s).exists()]
            return f"shards missing: {', '.join(missing)}" if missing else None
    return "none of " + " / ".join(" + ".join(alt) for alt in alternatives)


def missing_components(root: str | os.PathLike) -> dict[str, str]:
    """``{component: what is wrong}`` for every component that cannot be loaded from ``root``."""
    root = Path(root)
    problems = {name: _component_problem(root / name, *spec) for name, spec in _REQUIRED.items()}
    return {name: p for name, p in problems.items() if p is not None}


def check_model_dir(root: str | os.PathLike, variant: str = "edit-plus") -> None:
    missing = missing_components(root)
    if missing:
        listed = "; ".join(f"{name}/ ({why})" for name, why in missing.items())
        repo_id = DEFAULT_REPOS[variant]
        raise MissingWeightsError(f"{variant} backbone at {root}: missing component(s) {listed}. "
                                  f"Expected the diffusers layout of {repo_id}; {_download_hint(repo_id)}")


# --------------------------------------------------------------------------------------------
# the backbone


class QwenEditBackbone(Backbone):
    """Qwen-Image-Edit(-2509) behind the harness's :class:`Backbone` interface."""

    pretrained = True  # real weights: the harness must not pretrain a base for this backbone

    def __init__(self, cfg: BackboneConfig, pipe: QwenImageEditPipeline | QwenImageEditPlusPipeline,
                 *, variant: str = "edit-plus", root: Path | None = None,
                 prompt_cache: PromptCache | str | os.PathLike | bool | None = None) -> None:
        """``prompt_cache``: where prompt embeddings are cached on disk -- a directory, ``True``
        for ``$BENCH_CACHE/prompt_embeds``, or ``None`` (default) for no cache; the environment
        variable ``BENCH_PROMPT_CACHE=off`` disables it whatever is passed."""
        super().__init__()
        if variant not in PIPELINES:
            raise ValueError(f"unknown Qwen-Image-Edit variant {variant!r}; valid: {', '.join(PIPELINES)}")
        self.cfg, self.variant, self.root = cfg, variant, root
        self.device = torch.device(cfg.device)
        self.dtype = getattr(torch, cfg.dtype)
        for module in (pipe.transformer, pipe.vae, pipe.text_encoder):
            module.requires_grad_(False).eval()
            # only cast when needed: diffusers warns on every dtype cast of a loaded model
            if module.device != self.device:
                module.to(self.device)
            if module.dtype != self.dtype:
                module.to(self.dtype)
        self.pipe = pipe
        self.transformer: QwenImageTransformer2DModel = pipe.transformer
        self.vae: AutoencoderKLQwenImage = pipe.vae
        self.text_encoder = pipe.text_encoder
        self.scheduler: FlowMatchEulerDiscreteScheduler = pipe.scheduler
        self.vae_scale_factor: int = pipe.vae_scale_factor
        # area (px^2) of the image the VL encoder sees with edit-plus; the stock pipeline's 384^2
        self.condition_image_area: int = getattr(cfg, "condition_image_area", None) or _plus.CONDITION_IMAGE_SIZE
        if getattr(cfg, "gradient_checkpointing", False):
            self.transformer.enable_gradient_checkpointing()
        self.prompt_cache = resolve_prompt_cache(prompt_cache)
        self._opened_prompt_cache: PromptCache | None = None

    @classmethod
    def missing_weights(cls, cfg: BackboneConfig) -> list[str]:
        variant = getattr(cfg, "variant", "edit-plus")
        try:
            check_model_dir(resolve_model_dir(getattr(cfg, "path", None), variant), variant)
        except MissingWeightsError as err:
            return [str(err)]
        return []

    @classmethod
    def load(cls, cfg: BackboneConfig, path: str | os.PathLike | None = None, *,
             cache_dir: str | os.PathLike | None = None,
             prompt_cache: PromptCache | str | os.PathLike | bool | None = None) -> "QwenEditBackbone":
        """Load from ``path`` (a local directory or a repo id in the HF cache); default
        ``cfg.path``, else the variant's repo id. Never downloads. ``prompt_cache`` as in
        :meth:`__init__`."""
        variant = getattr(cfg, "variant", "edit-plus")
        if variant not in PIPELINES:
            raise ValueError(f"backbone.variant {variant!r}; valid: {', '.join(PIPELINES)}")
        root = resolve_model_dir(path if path is not None else getattr(cfg, "path", None), variant, cache_dir)
        check_model_dir(root, variant)
        dtype = getattr(torch, cfg.dtype)
        kw = {"local_files_only": True}
        pipe = PIPELINES[variant](
            transformer=QwenImageTransformer2DModel.from_pretrained(root / "transformer", torch_dtype=dtype, **kw),
            vae=AutoencoderKLQwenImage.from_pretrained(root / "vae", torch_dtype=dtype, **kw),
            text_encoder=Qwen2_5_VLForConditionalGeneration.from_pretrained(root / "text_encoder", dtype=dtype, **kw),
            tokenizer=Qwen2Tokenizer.from_pretrained(root / "tokenizer", **kw),
            processor=Qwen2VLProcessor.from_pretrained(root / "processor", **kw),
            scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(root / "scheduler", **kw),
        )
        pipe.set_progress_bar_config(disable=True)
        return cls(cfg, pipe, variant=variant, root=root, prompt_cache=prompt_cache)

    # -- geometry -------------------------------------------------------------------------------
    def latent_grid(self, height: int, width: int) -> tuple[int, int]:
        multiple = self.vae_scale_factor * 2  # VAE downsampling, then 2x2 packing
        if height % multiple or width % multiple:
            raise ValueError(f"image size {height}x{width} must be divisible by {multiple} "
                             f"(VAE factor {self.vae_scale_factor} x 2x2 packing)")
        return height // multiple, width // multiple

    def scheduler_shift(self, height: int, width: int) -> float:
        """The static shift equivalent to the model's own scheduler at this size: with
        exponential dynamic shifting ``sigma' = e^mu sigma / (1 + (e^mu - 1) sigma)``, i.e.
        shift ``e^mu`` with ``mu`` interpolated from the token count (diffusers'
        ``calculate_shift``). The harness samples with ``sampling.shift`` (3.0, as the
        paper); this reports what the stock pipeline would use."""
        c = self.scheduler.config
        if not c.use_dynamic_shifting:
            return float(c.shift)
        gh, gw = self.latent_grid(height, width)
        mu = _plus.calculate_shift(gh * gw, c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift)
        if c.time_shift_type != "exponential":
            raise NotImplementedError(f"time_shift_type {c.time_shift_type!r} has no static equivalent")
        return math.exp(mu)

    # -- codec ----------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) in [0,1] -> packed, normalised latents (B, N, 4 z), as the pipeline's
        ``prepare_latents`` builds the source-image latents (VAE mode, then
        ``(z - latents_mean) / latents_std``, then 2x2 packing)."""
        b, _, h, w = images.shape
        self.latent_grid(h, w)
        out = []
        for chunk in images.split(VAE_CHUNK):
            x = chunk.to(self.device, self.vae.dtype) * 2 - 1          # VaeImageProcessor.normalize
            lat = self.pipe._encode_vae_image(x.unsqueeze(2), generator=None)  # (b, z, 1, h', w')
            out.append(self.pipe._pack_latents(lat, len(chunk), lat.shape[1], lat.shape[3], lat.shape[4]))
        return torch.cat(out).float()

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Packed latents -> (B,3,H,W) in [0,1], exactly as the pipeline's output stage."""
        self.latent_grid(height, width)
        z_dim = self.vae.config.z_dim
        out = []
        for chunk in latents.split(VAE_CHUNK):
            lat = self.pipe._unpack_latents(chunk.to(self.device), height, width, self.vae_scale_factor)
            lat = lat.to(self.vae.dtype)
            mean = torch.tensor(self.vae.config.latents_mean).view(1, z_dim, 1, 1, 1).to(lat.device, lat.dtype)
            inv_std = 1.0 / torch.tensor(self.vae.config.latents_std).view(1, z_dim, 1, 1, 1).to(lat.device, lat.dtype)
            image = self.vae.decode(lat / inv_std + mean, return_dict=False)[0][:, :, 0]
            out.append(self.pipe.image_processor.postprocess(image, output_type="pt"))
        return torch.cat(out).float()

    # -- text -----------------------------------------------------------------------------------
    def _condition_image(self, image: torch.Tensor):
        """One (3,H,W) [0,1] tensor -> the PIL image the pipeline hands to the VL encoder."""
        proc = self.pipe.image_processor
        pil = proc.numpy_to_pil(proc.pt_to_numpy(image[None].float().clamp(0, 1)))[0]
        if self.variant == "edit":  # the original pipeline shows the VL encoder the VAE-sized image
            return pil
        w, h = _plus.calculate_dimensions(self.condition_image_area, pil.width / pil.height)
        return proc.resize(pil, h, w)

    def text_encoder_identity(self) -> dict:
        """Everything an embedding depends on besides the prompt and the image: the key of the
        prompt cache's folder. Weights, tokenizer and processor are fingerprinted from their
        files when loaded from a folder (fast even at 7B), else from memory."""
        import diffusers
        import transformers

        pipe = self.pipe
        if self.root is not None:
            weights = files_fingerprint([self.root / "text_encoder", self.root / "tokenizer",
                                         self.root / "processor"])
        else:
            weights = module_fingerprint(self.text_encoder, pipe.tokenizer.get_vocab(),
                                         pipe.processor.image_processor.to_dict())
        return {
            "pipeline": type(pipe).__name__,
            "template": pipe.prompt_template_encode,
            "drop_idx": pipe.prompt_template_encode_start_idx,
            "max_length": pipe.tokenizer_max_length,
            "weights": weights,
            "dtype": str(self.text_encoder.dtype),
            "device": self.device.type,
            "attention": getattr(self.text_encoder.config, "_attn_implementation", None),
            "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                         "transformers": transformers.__version__},
        }

    def _encode_one(self, prompt: str, image) -> TextCondition:
        embeds, mask = self.pipe.encode_prompt(prompt=[prompt], image=image, device=self.device)
        if mask is None:  # the pipeline drops an all-ones mask
            mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        return TextCondition(embeds, mask.long())

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], images: torch.Tensor | None = None) -> TextCondition:
        """Prompts (each with its source image) -> the pipeline's own ``encode_prompt`` output.

        One prompt per call, as the stock pipelines encode them: ``edit-plus`` numbers the images
        of *one* prompt ("Picture 1: ..."), so a batch of images cannot share a call. Sequences
        of different lengths are right-padded and masked. With a prompt cache, each (prompt,
        conditioning image) pair is looked up on disk first and the encoder runs only for the
        missing ones; a hit is the stored tensor, bit for bit.
        """
        prompts = list(prompts)
        if images is not None and len(images) != len(prompts):
            raise ValueError(f"encode_prompts: {len(prompts)} prompts but {len(images)} images")
        if images is None and self.variant == "edit":
            raise ValueError("the original Qwen-Image-Edit encodes every prompt with its source image "
                             "(its template holds the image); pass images=")
        cache = self.prompt_cache
        if cache is not None and self._opened_prompt_cache is not cache:
            cache.open(self.text_encoder_identity())  # once: it reads the weight files' fingerprints
            self._opened_prompt_cache = cache
        done: dict[tuple, TextCondition] = {}  # repeated (prompt, image) pairs are encoded once per call
        parts, hits, misses = [], 0, 0
        for i, prompt in enumerate(prompts):
            image = cond = None
            if images is not None:
                cond = self._condition_image(images[i])
                image = [cond] if self.variant == "edit-plus" else cond
            if cache is None:
                parts.append(self._encode_one(prompt, image))
                continue
            digest = image_digest(cond)  # the exact pixels the VL encoder is shown
            if (prompt, digest) not in done:
                key = cache.key(prompt, digest)
                stored = cache.get(key, prompt)
                if stored is not None:
                    part = TextCondition(stored["embeds"].to(self.device), stored["mask"].to(self.device))
                    hits += 1
                else:
                    part = self._encode_one(prompt, image)
                    cache.put(key, prompt, digest, {"embeds": part.embeds, "mask": part.mask})
                    misses += 1
                done[(prompt, digest)] = part
            parts.append(done[(prompt, digest)])
        if cache is not None:
            cache.record(hits, misses)
        return TextCondition.cat(parts)


# --------------------------------------------------------------------------------------------
# preset


def qwen_image_edit_preset() -> RunConfig:
    """The paper's real-world settings (DESIGN 3.2, 4.1) on Qwen-Image-Edit-2509.

    * 1024 x 1024 images (the reference config's latent shape 128 x 128), an EffectBench on disk;
    * Base: 40 steps x true CFG 4.0 (NFE 80); Lightning / CollectionLoRA: 8 steps, no CFG;
      static shift 3.0 (the reference ``timestep_shift``); real score with CFG 4.0;
    * LoRA rank 128 / alpha 128 on the 14 module names for the student, critic, FM all-in-1 and
      teachers trained here; batch 1 per GPU, AdamW lr 1e-4 (generator and critic), critic 5:1;
    * bf16 on CUDA with gradient checkpointing.

    Give the dataset with ``world.root=PATH`` (or ``--effects`` as a manifest path); the weights
    come from ``backbone.path`` (a local directory or a repo id in the HF cache).
    """
    cfg = RunConfig()
    wanted = {"kind": "qwen-image-edit", "device": "cuda", "dtype": "bfloat16",
              "path": "Qwen/Qwen-Image-Edit-2509", "variant": "edit-plus", "gradient_checkpointing": True}
    backbone = replace(cfg.backbone, **wanted)
    lora = dict(rank=128, alpha=128, batch_size=1, lr=1e-4)
    return replace(
        cfg,
        preset="qwen-image-edit",
        world=replace(cfg.world, kind="effectbench", image_size=1024),
        backbone=backbone,
        teacher=replace(cfg.teacher, target_modules=QWEN_LORA_TARGETS, **lora),
        fm_all=replace(cfg.fm_all, target_modules=QWEN_LORA_TARGETS, **lora),
        distill=replace(cfg.distill, real_cfg=4.0, gen_update_ratio=5, p_switch=0.5, **lora),
        lightning=replace(cfg.lightning, **lora),
        sampling=replace(cfg.sampling, shift=3.0, base_steps=40, base_cfg=4.0, fast_steps=8),
        eval=replace(cfg.eval, batch_size=1),
    )
