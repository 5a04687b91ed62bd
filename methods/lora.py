"""LoRA adapters on the Qwen-Image transformer, through peft and diffusers' own loaders.

Files are diffusers-format ``pytorch_lora_weights.safetensors`` written by
``QwenImagePipeline.save_lora_weights`` *with* the peft adapter metadata: without it a reload
assumes alpha = rank and outputs change (FACTS). Loading goes through the same classmethods
``QwenImageEditPlusPipeline.load_lora_weights`` uses, so what we write loads in stock diffusers.
Every load checks the weights are finite: a NaN LoRA otherwise surfaces far away (an output PNG
that cannot be written, a NaN DMD loss blamed on the learning rate).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import QwenImagePipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from bench.cache import nonfinite_tensors, some
from bench.config import LoraTrainConfig
from bench.errors import BenchError, NonFiniteError

WEIGHT_NAME = "pytorch_lora_weights.safetensors"


class MissingLoraError(BenchError, FileNotFoundError):
    """A LoRA file that is not on disk."""


def lora_config(cfg: LoraTrainConfig) -> LoraConfig:
    return LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, init_lora_weights="gaussian",
                      target_modules=list(cfg.target_modules))


def add_lora(transformer: torch.nn.Module, name: str, cfg: LoraTrainConfig) -> None:
    """Attach a fresh trainable adapter ``name`` and make it the only active one.

    LoRA weights are kept in float32 even on a bf16 base: AdamW updates at lr 1e-4 would mostly
    round away in bf16 (diffusers' training scripts do the same with ``cast_training_params``).
    """
    transformer.add_adapter(lora_config(cfg), adapter_name=name)
    transformer.set_adapters([name])
    for pname, p in transformer.named_parameters():
        if f".{name}." in pname:
            p.data = p.data.float()


def save_lora(transformer: torch.nn.Module, name: str, directory: str | Path) -> Path:
    directory = Path(directory)
    state = get_peft_model_state_dict(transformer, adapter_name=name)
    metadata = transformer.peft_config[name].to_dict()
    QwenImagePipeline.save_lora_weights(directory, transformer_lora_layers=state,
                                        transformer_lora_adapter_metadata=metadata,
                                        weight_name=WEIGHT_NAME)
    return directory / WEIGHT_NAME


def load_lora(transformer: torch.nn.Module, path: str | Path, name: str) -> None:
    """Load a diffusers/peft LoRA file (or a directory holding one) as adapter ``name``."""
    path = Path(path)
    file = path / WEIGHT_NAME if path.is_dir() else path
    if not file.exists():
        raise MissingLoraError(f"LoRA {name!r}: no weights at {file}")
    state, metadata = QwenImagePipeline.lora_state_dict(str(file), return_lora_metadata=True)
    check_finite_lora(state, f"LoRA {name!r} ({file})")
    QwenImagePipeline.load_lora_into_transformer(state, transformer=transformer, adapter_name=name,
                                                 metadata=metadata)


def check_finite_lora(state: dict[str, torch.Tensor], what: str) -> None:
    """Raise ``NonFiniteError`` naming ``what`` and the tensors when any weight is NaN or inf."""
    bad = nonfinite_tensors(state.items())
    if bad:
        raise NonFiniteError(f"{what} has non-finite weights in {len(bad)} of {len(state)} tensors: {some(bad)}")


def lora_bytes(path: str | Path) -> int:
    path = Path(path)
    file = path / WEIGHT_NAME if path.is_dir() else path
    return file.stat().st_size
