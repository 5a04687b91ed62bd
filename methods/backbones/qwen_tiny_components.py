"""Tiny random components of the *real* Qwen-Image-Edit classes, built offline.

They let tests and benchmarks run the real backbone code path (``QwenEditBackbone.load``) on a
CPU in seconds, without downloads: the same diffusers/transformers classes as
``Qwen/Qwen-Image-Edit-2509``, at toy sizes, saved in the same diffusers folder layout
(``transformer/ vae/ text_encoder/ tokenizer/ processor/ scheduler/ model_index.json``).

* transformer: ``QwenImageTransformer2DModel`` (diffusers' own tiny test config, so the LoRA
  target module names are the real ones);
* vae: ``AutoencoderKLQwenImage`` with 4 latent channels and non-trivial ``latents_mean/std``
  (so a codec that forgets the normalisation is caught);
* text_encoder: ``Qwen2_5_VLForConditionalGeneration`` with a 2-layer vision tower;
* tokenizer: a byte-level BPE trained here with ``tokenizers`` on the pipelines' prompt templates,
  wrapped in ``Qwen2Tokenizer`` with the Qwen special tokens. It splits the edit pipelines'
  system prompt into exactly 64 tokens, like the real tokenizer, so the pipelines' hard-coded
  ``prompt_template_encode_start_idx = 64`` drops the same part of the prompt;
* processor: ``Qwen2VLProcessor`` with the default Qwen2-VL image processor (14 px patches,
  2x2 merge);
* scheduler: ``FlowMatchEulerDiscreteScheduler`` configured as the Qwen-Image-Lightning scripts
  do (dynamic exponential shift pinned to log 3, i.e. a constant shift of 3).
"""

from __future__ import annotations

import inspect
import json
import math
import re
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    QwenImageEditPipeline,
    QwenImageEditPlusPipeline,
    QwenImageTransformer2DModel,
)
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)

# Qwen's special tokens (same strings as the real tokenizer; the ids are ours).
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>")
Z_DIM = 4           # VAE latent channels (real: 16)
TEXT_DIM = 16       # text encoder hidden size = transformer joint_attention_dim (real: 3584)
TINY_IMAGE = 32     # a size every tiny component handles: 32 px -> 8x8 latents -> 4x4 tokens

PIPELINES = {"edit-plus": QwenImageEditPlusPipeline, "edit": QwenImageEditPipeline}

# A few words prompts in tests use, so they tokenize into whole words (any text still works:
# the tokenizer is byte-level).
_EXTRA_CORPUS = ("make it red and blue, turn the cat into a painting of a dog with warm tones; "
                 "add snow, sketch style, zqvorn effect. Picture 1: 2: 3:")


def _prompt_templates() -> list[str]:
    """The edit pipelines' prompt templates, read from the installed diffusers."""
    out = []
    for cls in PIPELINES.values():
        src = inspect.getsource(cls.__init__)
        found = re.search(r'self\.prompt_template_encode = "(.*)"\n', src)
        if found is None:
            raise RuntimeError(f"cannot find the prompt template in {cls.__name__}")
        out.append(found.group(1).encode().decode("unicode_escape"))
    return out


def tiny_tokenizer() -> Qwen2Tokenizer:
    """Byte-level BPE with Qwen's pre-tokenizer, trained on the pipelines' prompt templates."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    corpus = []
    for template in _prompt_templates():
        for token in SPECIAL_TOKENS:  # special tokens are never merged: train on the text around them
            template = template.replace(token, "\n")
        corpus += [template] * 5
    corpus += [_EXTRA_CORPUS] * 3
    # a vocab_size above what the corpus can fill: every word of the templates becomes one token
    trainer = trainers.BpeTrainer(vocab_size=5000, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(corpus, trainer)
    model = json.loads(bpe.to_str())["model"]
    tok = Qwen2Tokenizer(vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]])
    tok.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[1:])})
    return tok


def tiny_processor(tokenizer: Qwen2Tokenizer) -> Qwen2VLProcessor:
    return Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=tokenizer,
                            video_processor=Qwen2VLVideoProcessor())


def tiny_text_encoder(tokenizer: Qwen2Tokenizer, seed: int = 0) -> Qwen2_5_VLForConditionalGeneration:
    ids = dict(zip(SPECIAL_TOKENS, tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))))
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": TEXT_DIM,
            "intermediate_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "max_position_embeddings": 2048,
            "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
            "rope_theta": 1000000.0,
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2,
                       "out_hidden_size": TEXT_DIM, "fullatt_block_indexes": [1]},
        vocab_size=len(tokenizer),
        hidden_size=TEXT_DIM,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return Qwen2_5_VLForConditionalGeneration(config).eval()


def tiny_vae(seed: int = 0) -> AutoencoderKLQwenImage:
    gen = torch.Generator().manual_seed(seed + 1)
    mean = (torch.randn(Z_DIM, generator=gen) * 0.5).tolist()
    std = (torch.rand(Z_DIM, generator=gen) + 0.5).tolist()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return AutoencoderKLQwenImage(base_dim=8, z_dim=Z_DIM, dim_mult=[1, 2, 4], num_res_blocks=1,
                                      temperal_downsample=[False, True], latents_mean=mean,
                                      latents_std=std).eval()


def tiny_transformer(seed: int = 0, num_layers: int = 2) -> QwenImageTransformer2DModel:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return QwenImageTransformer2DModel(
            patch_size=2, in_channels=Z_DIM * 4, out_channels=Z_DIM, num_layers=num_layers,
            attention_head_dim=16, num_attention_heads=3, joint_attention_dim=TEXT_DIM,
            guidance_embeds=False, axes_dims_rope=(8, 4, 4)).eval()


def tiny_scheduler() -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256, max_image_seq_len=8192, base_shift=math.log(3), max_shift=math.log(3),
        shift=1.0, shift_terminal=None, time_shift_type="exponential", use_dynamic_shifting=True)


def tiny_components(seed: int = 0) -> dict:
    """The six components of a Qwen-Image-Edit pipeline, tiny and random."""
    tokenizer = tiny_tokenizer()
    return {
        "transformer": tiny_transformer(seed),
        "vae": tiny_vae(seed),
        "text_encoder": tiny_text_encoder(tokenizer, seed),
        "tokenizer": tokenizer,
        "processor": tiny_processor(tokenizer),
        "scheduler": tiny_scheduler(),
    }


def save_tiny_model(directory: str | Path, *, seed: int = 0, variant: str = "edit-plus") -> Path:
    """Write a tiny random model in the diffusers layout of ``Qwen/Qwen-Image-Edit(-2509)``."""
    directory = Path(directory)
    pipe = PIPELINES[variant](**tiny_components(seed))
    pipe.save_pretrained(directory)
    return directory
