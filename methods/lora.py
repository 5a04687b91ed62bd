"""LoRA adapters on the Qwen-Image transformer, through peft and diffusers' own loaders.

Files are diffusers-format ``pytorch_lora_weights.safetensors`` written by
``QwenImagePipeline.save_lora_weights`` *with* the peft adapter metadata: without it a reload
assumes alpha = rank and outputs change (FACTS). Loading goes through the same classmethods
``QwenImageEditPlusPipeline.load_lora_weights`` uses, so what we write loads in stock diffusers.
Every load checks the weights are finite: a NaN LoRA otherwise surfaces far away (an output PNG
that cannot be written, a NaN DMD loss blamed on the learning rate).

Next to it goes the peft layout (``adapter_config.json`` + ``adapter_model.safetensors``), so
``peft.PeftModel.from_pretrained(transformer, directory)`` loads the same adapter. Both record
the base model (``base_model_name_or_path``) and are byte-reproducible (equal LoRAs, equal
sha256): peft keeps ``target_modules`` as a set, whose order follows PYTHONHASHSEED, so every set
is written sorted, and the safetensors header metadata is rewritten in sorted order.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from diffusers import QwenImagePipeline
from peft import LoraConfig
from peft.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, get_peft_model_state_dict
from safetensors.torch import save_file

import methods.lora_formats as lora_formats
from bench.cache import atomic_write, files_fingerprint, nonfinite_tensors, some
from bench.config import LoraTrainConfig, config_hash
from bench.errors import BenchError, NonFiniteError

# diffusers layout; the peft one: CONFIG_NAME + SAFETENSORS_WEIGHTS_NAME
WEIGHT_NAME = "pytorch_lora_weights.safetensors"
BASE_NAME = "_name_or_path"   # transformer config key naming its base (diffusers' from_pretrained sets it)


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


def name_base(transformer: torch.nn.Module, name: str) -> None:
    """Say which base ``transformer`` is (a repo id or path, or the synthetic base's config hash),
    for the LoRAs saved from it; the workspace calls this on every backbone it loads."""
    transformer.register_to_config(**{BASE_NAME: name})


def base_model_id(transformer: torch.nn.Module) -> str:
    """The base a LoRA of ``transformer`` belongs to: the name given by ``name_base`` or
    ``from_pretrained``, else the class and a hash of its architecture config."""
    config = dict(transformer.config)
    if config.get(BASE_NAME):
        return str(config[BASE_NAME])
    return f"{type(transformer).__name__}-{config_hash({k: v for k, v in config.items() if not k.startswith('_')})}"


def adapter_config(transformer: torch.nn.Module, name: str) -> dict[str, Any]:
    """Adapter ``name``'s peft config as a dict with every set sorted and the base recorded."""
    config = transformer.peft_config[name].to_dict()
    config = {k: sorted(v) if isinstance(v, (set, frozenset)) else v for k, v in config.items()}
    config["base_model_name_or_path"] = base_model_id(transformer)
    return config


def adapter_state(transformer: torch.nn.Module, name: str) -> dict[str, torch.Tensor]:
    """Adapter ``name``'s weights (peft's keys). ``save_embedding_layers=False``: no adapter here
    targets an embedding, and peft's default ("auto") asks the Hugging Face Hub for the base's
    config.json on every call -- a network request per saved LoRA and checkpoint, a warning offline,
    and a hang where a firewall drops the packets."""
    return get_peft_model_state_dict(transformer, adapter_name=name, save_embedding_layers=False)


def save_lora(transformer: torch.nn.Module, name: str, directory: str | Path) -> Path:
    """Write adapter ``name`` in the diffusers layout (returned) and the peft layout, one directory."""
    directory = Path(directory)
    state = adapter_state(transformer, name)
    config = adapter_config(transformer, name)
    QwenImagePipeline.save_lora_weights(directory, transformer_lora_layers=state,
                                        transformer_lora_adapter_metadata=dict(config),
                                        weight_name=WEIGHT_NAME)
    # what PeftModel.save_pretrained writes: keys under the PeftModel wrapper, sorted JSON config
    save_file({f"base_model.model.{k}": v.contiguous() for k, v in state.items()},
              directory / SAFETENSORS_WEIGHTS_NAME, metadata={"format": "pt"})
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True))
    _sort_header_metadata(directory / WEIGHT_NAME)
    return directory / WEIGHT_NAME


def _sort_header_metadata(file: Path) -> None:
    """Rewrite a safetensors header with its ``__metadata__`` keys sorted.

    safetensors serialises the metadata from a Rust HashMap, whose order is random per process,
    so two saves of one LoRA differed in their header (diffusers writes two keys). The header is
    JSON behind an 8-byte little-endian length, padded with spaces to 8 bytes; tensor offsets
    count from its end, so the tensor bytes are copied unchanged.
    """
    with file.open("rb") as src:
        n = int.from_bytes(src.read(8), "little")
        header = json.loads(src.read(n))
        header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        text += b" " * (-len(text) % 8)

        def write(dst) -> None:  # noqa: ANN001
            dst.write(len(text).to_bytes(8, "little") + text)
            shutil.copyfileobj(src, dst)

        atomic_write(file, write)


def load_lora(transformer: torch.nn.Module, path: str | Path, name: str) -> None:
    """Load a LoRA file (or a directory holding ``pytorch_lora_weights.safetensors``) in any
    layout ``read_lora_file`` reads as adapter ``name``."""
    path = Path(path)
    file = path / WEIGHT_NAME if path.is_dir() else path
    if not file.exists():
        raise MissingLoraError(f"LoRA {name!r}: no weights at {file}")
    state, metadata = read_lora_file(file)
    check_finite_lora(state, f"LoRA {name!r} ({file})")
    QwenImagePipeline.load_lora_into_transformer(state, transformer=transformer, adapter_name=name,
                                                 metadata=metadata)


# Layouts converted on load; every LoRA this harness writes is "diffusers".
CONVERTED_LAYOUTS = ("kohya", "comfyui", "plain", "peft")


def read_lora_file(file: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """A LoRA file's tensors under diffusers keys (``transformer.<module>.lora_A.weight``) and its
    peft config as diffusers' loader takes it (``transformer.<field>``; None: alpha = rank).

    A diffusers file reads through diffusers' own ``lora_state_dict``. A kohya
    (``lora_unet_...``), ComfyUI (``diffusion_model....``), plain (``<module>.lora_down``) or
    peft-keyed file -- a teacher given by ``lora_path`` in a manifest, a downloaded LoRA -- is
    converted on load by ``methods/lora_formats.py``, which keeps each module's rank and alpha
    exactly (the loaded adapter gives the outputs of the diffusers original, bit for bit) and
    refuses any key it does not understand, naming the file. A peft-keyed file takes its alpha
    from the ``adapter_config.json`` next to it.
    """
    file = Path(file)
    layout = lora_formats.file_layout(file)
    if layout not in CONVERTED_LAYOUTS:  # diffusers, or keys no layout fits: diffusers says what is wrong
        return QwenImagePipeline.lora_state_dict(str(file), return_lora_metadata=True)
    if layout == "peft":
        config_file = file.parent / CONFIG_NAME
        if not config_file.exists():
            raise lora_formats.LoraFormatError(f"{file}: a peft-layout LoRA without {CONFIG_NAME} next to it "
                                               "(its alpha is unknown)")
        state, _ = lora_formats.read_state_dict(file)
        weights = lora_formats.from_state_dict(state, source=str(file), config=json.loads(config_file.read_text()))
    else:
        weights = lora_formats.read_lora(file)
    state, config = lora_formats.to_diffusers(weights)
    return ({f"transformer.{k}": v for k, v in state.items()}, {f"transformer.{k}": v for k, v in config.items()})


def check_finite_lora(state: dict[str, torch.Tensor], what: str) -> None:
    """Raise ``NonFiniteError`` naming ``what`` and the tensors when any weight is NaN or inf."""
    bad = nonfinite_tensors(state.items())
    if bad:
        raise NonFiniteError(f"{what} has non-finite weights in {len(bad)} of {len(state)} tensors: {some(bad)}")


def weights_fingerprint(path: str | Path) -> str:
    """How keys name a LoRA given by path: the bytes of its weight file, not where it lies (a
    moved cache keeps its keys; every diffusers LoRA file has the same name, and an edited file
    must not serve stale artifacts). A missing file is named by its path (loading it says so)."""
    p = Path(path)
    file = p / WEIGHT_NAME if p.is_dir() else p
    return files_fingerprint([file]) if file.exists() else str(file)


def lora_bytes(path: str | Path) -> int:
    path = Path(path)
    file = path / WEIGHT_NAME if path.is_dir() else path
    return file.stat().st_size
