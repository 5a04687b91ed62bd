"""The synthetic world's backbone: the real diffusers ``QwenImageTransformer2DModel`` at a tiny size.

Stand-ins for the parts that would need downloads:
* codec: an identity "VAE" in pixel space, ``[0,1] -> [-1,1]``, each ``p x p`` pixel patch
  packed into one token (``backbone.pixel_patch``; p = 2 is exactly
  ``QwenImagePipeline._pack_latents`` of 3 channels, 12 per token). A larger p is space-to-depth:
  a 32 px image at p = 4 has the 8 x 8 tokens of a 16 px image at p = 2 (same cost per step),
  with 48 values per token -- as if a VAE had 12 latent channels;
* text encoder: words hashed into a frozen, seeded embedding table plus fixed sinusoidal
  positions. Distinct words (e.g. orthogonal trigger words) get distinct, nearly orthogonal
  embeddings; the transformer learns what they mean during pretraining / LoRA training.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

import torch
from diffusers import QwenImageTransformer2DModel
from torch import nn

from bench.config import BackboneConfig
from methods.backbones import Backbone, TextCondition

PATCH = 2      # the transformer's own patch size (diffusers' packing of latent pixels)
CHANNELS = 3


def latent_channels(pixel_patch: int) -> int:
    """Channels of the codec's latent image: RGB space-to-depth by ``pixel_patch / PATCH``."""
    if pixel_patch % PATCH:
        raise ValueError(f"backbone.pixel_patch {pixel_patch} must be a multiple of {PATCH}")
    return CHANNELS * (pixel_patch // PATCH) ** 2


class HashTextEncoder(nn.Module):
    """Frozen word-hash embedding encoder; needs no tokenizer files or weights."""

    def __init__(self, dim: int, max_tokens: int, vocab: int = 16384, seed: int = 1234) -> None:
        super().__init__()
        self.vocab, self.max_tokens = vocab, max_tokens
        gen = torch.Generator().manual_seed(seed)
        table = torch.randn(vocab, dim, generator=gen)
        pos = torch.arange(max_tokens)[:, None] * torch.exp(
            torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
        pe = torch.zeros(max_tokens, dim)
        pe[:, 0::2], pe[:, 1::2] = torch.sin(pos), torch.cos(pos)
        self.register_buffer("table", table, persistent=False)
        self.register_buffer("positions", 0.3 * pe, persistent=False)

    def token_ids(self, prompt: str) -> list[int]:
        # id 1 is a BOS token, so an empty (unconditional) prompt still has one real token
        words = re.findall(r"[a-z0-9]+", prompt.lower())
        ids = [1] + [2 + int.from_bytes(hashlib.blake2b(w.encode(), digest_size=4).digest(), "little")
                     % (self.vocab - 2) for w in words]
        return ids[: self.max_tokens]

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> TextCondition:
        ids = torch.zeros(len(prompts), self.max_tokens, dtype=torch.long)
        mask = torch.zeros(len(prompts), self.max_tokens, dtype=torch.long)
        for i, prompt in enumerate(prompts):
            tok = self.token_ids(prompt)
            ids[i, : len(tok)] = torch.tensor(tok)
            mask[i, : len(tok)] = 1
        embeds = (self.table[ids] + self.positions) * mask[..., None]
        return TextCondition(embeds, mask)


def tiny_transformer(cfg: BackboneConfig) -> QwenImageTransformer2DModel:
    if sum(cfg.axes_dims_rope) != cfg.attention_head_dim:
        raise ValueError(f"backbone.axes_dims_rope {cfg.axes_dims_rope} must sum to "
                         f"attention_head_dim {cfg.attention_head_dim}")
    z = latent_channels(cfg.pixel_patch)
    return QwenImageTransformer2DModel(
        patch_size=PATCH,
        in_channels=z * PATCH * PATCH,
        out_channels=z,
        num_layers=cfg.num_layers,
        attention_head_dim=cfg.attention_head_dim,
        num_attention_heads=cfg.num_attention_heads,
        joint_attention_dim=cfg.joint_attention_dim,
        axes_dims_rope=tuple(cfg.axes_dims_rope),
    )


class TinyQwenBackbone(Backbone):
    def __init__(self, cfg: BackboneConfig, transformer: QwenImageTransformer2DModel) -> None:
        super().__init__()
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        self.dtype = getattr(torch, cfg.dtype)
        # only cast when needed: diffusers warns on a no-op dtype cast
        if transformer.device != self.device:
            transformer = transformer.to(self.device)
        if transformer.dtype != self.dtype:
            transformer = transformer.to(self.dtype)
        self.transformer = transformer
        self.text_encoder = HashTextEncoder(cfg.joint_attention_dim, cfg.text_max_tokens).to(self.device)

    @classmethod
    def create(cls, cfg: BackboneConfig, seed: int = 0) -> "TinyQwenBackbone":
        """A freshly initialised (untrained) backbone."""
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return cls(cfg, tiny_transformer(cfg))

    @classmethod
    def load(cls, cfg: BackboneConfig, path: str | Path) -> "TinyQwenBackbone":
        path = Path(path)
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"no pretrained tiny backbone at {path} (expected config.json + "
                                    "diffusion_pytorch_model.safetensors written by save())")
        return cls(cfg, QwenImageTransformer2DModel.from_pretrained(path))

    def save(self, path: str | Path) -> None:
        self.transformer.save_pretrained(path)

    # -- codec ------------------------------------------------------------------------------
    def latent_grid(self, height: int, width: int) -> tuple[int, int]:
        p = self.cfg.pixel_patch
        if height % p or width % p:
            raise ValueError(f"image size {height}x{width} must be divisible by backbone.pixel_patch={p}")
        return height // p, width // p

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        b, c, h, w = images.shape
        gh, gw = self.latent_grid(h, w)
        p = self.cfg.pixel_patch
        x = images.to(self.device, torch.float32) * 2 - 1
        # (c, p, p) pixel patches -> one token; for p = 2 the packing of QwenImagePipeline._pack_latents
        x = x.view(b, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, gh * gw, c * p * p)

    def decode_latents(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        b = latents.shape[0]
        gh, gw = self.latent_grid(height, width)
        p = self.cfg.pixel_patch
        x = latents.float().view(b, gh, gw, CHANNELS, p, p).permute(0, 3, 1, 4, 2, 5)
        x = x.reshape(b, CHANNELS, height, width)
        return ((x + 1) / 2).clamp(0, 1)

    def encode_prompts(self, prompts: list[str], images: torch.Tensor | None = None) -> TextCondition:
        return self.text_encoder(list(prompts))  # the hashing encoder is text-only
