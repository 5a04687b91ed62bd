"""The backbone interface every editing model implements, and its registry.

A backbone owns a diffusers ``QwenImageTransformer2DModel`` (so peft/diffusers LoRA APIs work
on it unchanged), a codec between images and packed latent tokens, and a text encoder. The
tiny synthetic backbone and the real Qwen-Image-Edit-2509 backbone implement the same methods;
samplers and trainers only talk to this interface.

Images are float tensors ``(B, 3, H, W)`` in [0, 1]. Latents are packed tokens ``(B, N, C)``
in the model's space. Flow matching convention (as in diffusers' Qwen-Image pipelines):
``x_sigma = (1 - sigma) x_0 + sigma * noise``, the transformer predicts the velocity
``v = noise - x_0``, and receives ``sigma`` in [0, 1] as its timestep.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn

from bench.cost import count_forward
from bench.registry import Registry


@dataclass
class TextCondition:
    """Encoded prompts for one batch."""

    embeds: torch.Tensor  # (B, L, D)
    mask: torch.Tensor    # (B, L), 1 for real tokens

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def index(self, idx: torch.Tensor | slice) -> "TextCondition":
        return TextCondition(self.embeds[idx], self.mask[idx])

    @staticmethod
    def cat(parts: list["TextCondition"]) -> "TextCondition":
        length = max(p.embeds.shape[1] for p in parts)
        embeds = [nn.functional.pad(p.embeds, (0, 0, 0, length - p.embeds.shape[1])) for p in parts]
        masks = [nn.functional.pad(p.mask, (0, length - p.mask.shape[1])) for p in parts]
        return TextCondition(torch.cat(embeds), torch.cat(masks))


class Backbone(ABC):
    """An image-editing flow-matching model with LoRA-able transformer."""

    transformer: nn.Module
    device: torch.device
    dtype: torch.dtype

    def __init__(self) -> None:
        # Transformer forward passes per image, counted on every call (CFG counts twice).
        self.nfe = 0

    @classmethod
    def missing_weights(cls, cfg) -> list[str]:  # noqa: ANN001 -- a BackboneConfig
        """What :meth:`load` would not find, each with how to obtain it (file checks only, in
        seconds; nothing is loaded). Backbones built by the harness need nothing."""
        return []

    @abstractmethod
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) in [0,1] -> packed latents (B, N, C)."""

    @abstractmethod
    def decode_latents(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Packed latents -> (B,3,H,W) in [0,1]."""

    @abstractmethod
    def encode_prompts(self, prompts: list[str], images: torch.Tensor | None = None) -> TextCondition:
        """Prompts -> text condition (frozen encoder, no grad). Qwen-Image-Edit's VL encoder also
        sees the source images; encoders that do not use them ignore ``images``."""

    @abstractmethod
    def latent_grid(self, height: int, width: int) -> tuple[int, int]:
        """Token grid (h, w) of an image of this size, for RoPE ``img_shapes``."""

    def velocity(self, x_t: torch.Tensor, sigma: torch.Tensor, source: torch.Tensor,
                 cond: TextCondition, grid: tuple[int, int]) -> torch.Tensor:
        """One transformer call in the Qwen-Image-Edit layout.

        The source image's tokens are concatenated after the noisy target tokens
        (``img_shapes`` has two entries per sample) and only the target part of the output
        is returned. ``sigma`` is (B,) in [0, 1].
        """
        batch, n_tokens, _ = x_t.shape
        hidden = torch.cat([x_t, source], dim=1)
        out = self.transformer(
            hidden_states=hidden.to(self.dtype),
            encoder_hidden_states=cond.embeds.to(self.dtype),
            encoder_hidden_states_mask=cond.mask,
            timestep=sigma.to(self.dtype).expand(batch),
            img_shapes=[[(1, *grid), (1, *grid)]] * batch,
            return_dict=False,
        )[0]
        self.nfe += 1
        count_forward(batch, out)  # training cost: this forward, and its backward if autograd runs one
        return out[:, :n_tokens].float()


BACKBONES: Registry[type[Backbone]] = Registry("backbone")
BACKBONES.register("tiny-qwen", "methods.backbones.tiny_qwen:TinyQwenBackbone")
BACKBONES.register("qwen-image-edit", "methods.backbones.qwen_edit:QwenEditBackbone")
