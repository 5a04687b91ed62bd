"""LoRA files in the key layouts Qwen-Image LoRAs come in, converted to diffusers/peft and back.

Layouts (one LoRA module = a down matrix A ``(r, in)``, an up matrix B ``(out, r)`` and a scale
``alpha / r``; peft's ``use_rslora`` makes it ``alpha / sqrt(r)``):

=============  ===========================================================  ======================
layout         keys                                                         alpha
=============  ===========================================================  ======================
``diffusers``  ``transformer.<module>.lora_A.weight`` / ``lora_B.weight``     file metadata
                                                                            (``lora_adapter_metadata``),
                                                                            else alpha = r
``peft``       ``base_model.model.<module>.lora_A[.<adapter>].weight``        adapter_config.json
``kohya``      ``lora_unet_<module with _ for .>.lora_down.weight`` /         ``<...>.alpha``
               ``lora_up.weight``                                           (absent: alpha = r)
``comfyui``    ``diffusion_model.<module>.lora_A.weight`` / ``lora_B`` or     ``<...>.alpha``
               ``lora_down`` / ``lora_up``
``plain``      ``<module>.lora_down.weight`` ... (e.g. the Lightning LoRA)    ``<...>.alpha``
=============  ===========================================================  ======================

Everything is read into :class:`LoraWeights` (one canonical form that keeps each module's rank
and alpha exactly), checked against the transformer it is meant for -- a module it does not have,
a shape that does not fit, a key nobody understands is an error naming the file and the key,
never a skipped tensor -- and loaded through diffusers' own
``QwenImagePipeline.load_lora_into_transformer`` with the peft config as metadata, so the result
also loads in stock ``QwenImageEditPlusPipeline.load_lora_weights``.

Every LoRA the harness loads goes through ``methods.lora.read_lora_file``: a file in a layout
other than diffusers' (a kohya or ComfyUI teacher given by ``lora_path`` in a manifest) is read
here and handed to diffusers' loader converted, so the teacher bank checks and serves it like any
other teacher.

CollectionLoRA reference checkpoints (``<dir>/model.pt`` holding a ``generator`` state dict of
the peft-wrapped transformer, and ``<dir>/lora_config/adapter_config.json``) import through
:func:`read_reference_checkpoint`.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from bench.cache import nonfinite_tensors, some
from bench.errors import BenchError, NonFiniteError

WEIGHT_NAME = "pytorch_lora_weights.safetensors"
LAYOUTS = ("diffusers", "peft", "kohya", "comfyui", "plain")

# The Linear layers of QwenImageTransformer2DModel that LoRAs target: per block, then top level.
# Kohya flattens dots to underscores; these names make that reversible without guessing.
BLOCK_LINEARS = (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
    "img_mlp.net.0.proj", "img_mlp.net.2", "txt_mlp.net.0.proj", "txt_mlp.net.2",
    "img_mod.1", "txt_mod.1",
)
TOP_LINEARS = (
    "img_in", "txt_in", "proj_out", "norm_out.linear",
    "time_text_embed.timestep_embedder.linear_1", "time_text_embed.timestep_embedder.linear_2",
)
_FLAT_BLOCK = {name.replace(".", "_"): name for name in BLOCK_LINEARS}
_FLAT_TOP = {name.replace(".", "_"): name for name in TOP_LINEARS}

# Tensors that are not a plain LoRA: refuse them rather than load part of a file.
_UNSUPPORTED = {".diff": "full weight difference", ".diff_b": "bias difference", "dora_scale": "DoRA",
                "lokr_": "LoKr", "hada_": "LoHa", "lora_te": "text-encoder LoRA",
                ".lora_magnitude_vector": "DoRA"}


class LoraFormatError(BenchError, ValueError):
    """A LoRA file that cannot be converted or does not fit the transformer."""


@dataclass
class LoraWeights:
    """One LoRA in canonical form, keyed by diffusers module names (``transformer_blocks.0.attn.to_q``)."""

    down: dict[str, torch.Tensor]              # A: (r, in_features)
    up: dict[str, torch.Tensor]                # B: (out_features, r)
    alpha: dict[str, float]                    # per module; scale = alpha / r (rslora: / sqrt(r))
    use_rslora: bool = False
    layout: str = "diffusers"                  # layout it was read from
    source: str = "<memory>"                   # file it was read from, for messages
    extra: dict = field(default_factory=dict)  # peft config entries kept as they were (e.g. dropout)

    def __post_init__(self) -> None:
        if set(self.down) != set(self.up):
            only = sorted(set(self.down) ^ set(self.up))
            raise LoraFormatError(f"{self.source}: modules with only one of down/up: {only[:5]}")
        if not self.down:
            raise LoraFormatError(f"{self.source}: no LoRA weights found")
        for m in self.down:
            if self.down[m].dim() != 2 or self.up[m].dim() != 2 or self.down[m].shape[0] != self.up[m].shape[1]:
                raise LoraFormatError(f"{self.source}: {m}: down {tuple(self.down[m].shape)} and up "
                                      f"{tuple(self.up[m].shape)} are not a rank-r pair")
        bad = nonfinite_tensors([(f"{m}.down", t) for m, t in self.down.items()]
                                + [(f"{m}.up", t) for m, t in self.up.items()])
        if bad:
            raise NonFiniteError(f"{self.source}: non-finite weights in {len(bad)} tensor(s): {some(bad)}")

    @property
    def modules(self) -> list[str]:
        return sorted(self.down)

    def rank(self, module: str) -> int:
        return self.down[module].shape[0]

    def scale(self, module: str) -> float:
        r = self.rank(module)
        return self.alpha[module] / (math.sqrt(r) if self.use_rslora else r)

    def delta(self, module: str) -> torch.Tensor:
        """The weight update ``scale * B @ A`` this LoRA adds to ``module``."""
        return self.scale(module) * (self.up[module].float() @ self.down[module].float())


# --------------------------------------------------------------------------------------------
# reading


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and (safetensors) metadata of a LoRA file; pickles load with ``weights_only``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise LoraFormatError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state, {}


def file_layout(path: str | Path) -> str | None:
    """The key layout of a LoRA file (one of ``LAYOUTS``), read from its keys alone (a
    safetensors header; other files are loaded); None when no layout fits its keys."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            keys = list(f.keys())
    else:
        keys = list(read_state_dict(path)[0])
    try:
        return detect_layout(keys)
    except LoraFormatError:
        return None


def detect_layout(keys) -> str:
    keys = [k for k in keys if not k.endswith(".alpha")] or list(keys)
    for prefix, layout in (("lora_unet_", "kohya"), ("diffusion_model.", "comfyui"),
                           ("base_model.model.", "peft"), ("transformer.", "diffusers")):
        if keys and all(k.startswith(prefix) for k in keys):
            return layout
    prefixes = sorted({k.split(".")[0] for k in keys})
    if any(p.startswith("transformer_blocks") or p in _FLAT_TOP for p in prefixes):
        return "plain"
    raise LoraFormatError(f"unrecognised LoRA key layout (first keys: {sorted(keys)[:3]}); "
                          f"known: {', '.join(LAYOUTS)}")


def kohya_to_module(flat: str) -> str:
    """``transformer_blocks_3_attn_to_out_0`` -> ``transformer_blocks.3.attn.to_out.0``."""
    if flat in _FLAT_TOP:
        return _FLAT_TOP[flat]
    match = re.fullmatch(r"transformer_blocks_(\d+)_(.+)", flat)
    if match is None or match.group(2) not in _FLAT_BLOCK:
        raise KeyError(flat)
    return f"transformer_blocks.{match.group(1)}.{_FLAT_BLOCK[match.group(2)]}"


# one LoRA tensor: <module>.<suffix>, suffix in lora_A/lora_B(.adapter), lora_down/lora_up, lora.down/lora.up
_TENSOR = re.compile(r"(?P<module>.+?)\.(?:(?P<ab>lora_[AB])(?:\.(?P<adapter>[^.]+))?|"
                     r"(?P<du>lora_down|lora_up|lora\.down|lora\.up))\.weight")


def from_state_dict(state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None, *,
                    source: str = "<memory>", config: dict | None = None) -> LoraWeights:
    """Any supported layout -> :class:`LoraWeights`.

    ``config`` is a peft ``LoraConfig`` dict giving alpha (``lora_alpha``, ``alpha_pattern``,
    ``use_rslora``); diffusers files carry it in their metadata. Per-module ``.alpha`` tensors
    win over both; where neither exists alpha = rank (the convention of every loader).
    """
    bad = [(k, what) for k in state for marker, what in _UNSUPPORTED.items() if marker in k]
    if bad:
        raise LoraFormatError(f"{source}: {bad[0][1]} tensors are not supported (e.g. {bad[0][0]!r}; "
                              f"{len(bad)} such keys); only plain LoRA (down/up/alpha) converts")
    layout = detect_layout(state.keys())
    if config is None and metadata and "lora_adapter_metadata" in metadata:
        meta = json.loads(metadata["lora_adapter_metadata"])
        config = {k.removeprefix("transformer."): v for k, v in meta.items() if k.startswith("transformer.")}
    config = dict(config or {})
    if config.get("use_dora"):
        raise LoraFormatError(f"{source}: DoRA adapters are not supported")
    prefix = {"kohya": "lora_unet_", "comfyui": "diffusion_model.", "peft": "base_model.model.",
              "diffusers": "transformer.", "plain": ""}[layout]

    down, up, alphas, unknown = {}, {}, {}, []
    adapters = set()
    for key, tensor in state.items():
        body = key[len(prefix):]
        if body.endswith(".alpha"):
            alphas[body[: -len(".alpha")]] = float(tensor.item() if torch.is_tensor(tensor) else tensor)
            continue
        match = _TENSOR.fullmatch(body)
        if match is None:
            unknown.append(key)
            continue
        if match.group("adapter"):
            adapters.add(match.group("adapter"))
        is_down = match.group("ab") == "lora_A" or match.group("du") in ("lora_down", "lora.down")
        (down if is_down else up)[match.group("module")] = tensor
    if unknown:
        raise LoraFormatError(f"{source}: {len(unknown)} key(s) that are not LoRA tensors of the "
                              f"{layout} layout, e.g. {unknown[:3]}")
    if len(adapters) > 1:
        raise LoraFormatError(f"{source}: several adapters in one state dict: {sorted(adapters)}")

    if layout == "kohya":  # flat names -> dotted diffusers names
        def dotted(flat: str) -> str:
            try:
                return kohya_to_module(flat)
            except KeyError:
                raise LoraFormatError(f"{source}: kohya key lora_unet_{flat} names no "
                                      "QwenImageTransformer2DModel linear layer") from None
        down = {dotted(k): v for k, v in down.items()}
        up = {dotted(k): v for k, v in up.items()}
        alphas = {dotted(k): v for k, v in alphas.items()}
    stray = sorted(set(alphas) - set(down))
    if stray:
        raise LoraFormatError(f"{source}: alpha without weights for {stray[:3]}")

    from peft.utils.other import get_pattern_key

    alpha_pattern = config.get("alpha_pattern") or {}
    rank_pattern = config.get("rank_pattern") or {}
    alpha = {}
    for m in down:
        r = down[m].shape[0]
        if m in alphas:
            alpha[m] = alphas[m]
            continue
        if "r" in config:  # the config's rank must be the file's rank, or alpha means something else
            want = rank_pattern.get(get_pattern_key(rank_pattern.keys(), m), config["r"])
            if want != r:
                raise LoraFormatError(f"{source}: {m} has rank {r} but the adapter config says {want}")
        alpha[m] = float(alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), m),
                                           config.get("lora_alpha", r)))
    keep = {k: config[k] for k in ("lora_dropout", "init_lora_weights") if k in config}
    return LoraWeights(down, up, alpha, use_rslora=bool(config.get("use_rslora", False)), layout=layout,
                       source=source, extra=keep)


def read_lora(path: str | Path) -> LoraWeights:
    """A LoRA file (or a directory holding ``pytorch_lora_weights.safetensors``, or a
    CollectionLoRA reference checkpoint directory) in any supported layout."""
    path = Path(path)
    if path.is_dir():
        if (path / "model.pt").exists():
            return read_reference_checkpoint(path)
        if (path / "adapter_model.safetensors").exists():  # PeftModel.save_pretrained
            if not (path / "adapter_config.json").exists():
                raise FileNotFoundError(f"{path}: adapter_model.safetensors without adapter_config.json "
                                        "(its alpha is unknown)")
            state, _ = read_state_dict(path / "adapter_model.safetensors")
            config = json.loads((path / "adapter_config.json").read_text())
            return from_state_dict(state, source=str(path / "adapter_model.safetensors"), config=config)
        if (path / WEIGHT_NAME).exists():
            path = path / WEIGHT_NAME
        else:
            files = sorted(path.glob("*.safetensors"))
            if len(files) != 1:
                raise FileNotFoundError(f"{path}: expected {WEIGHT_NAME}, one *.safetensors file or a "
                                        f"reference checkpoint (model.pt); found {[f.name for f in files]}")
            path = files[0]
    state, metadata = read_state_dict(path)
    return from_state_dict(state, metadata, source=str(path))


# --------------------------------------------------------------------------------------------
# CollectionLoRA reference checkpoints


def read_reference_checkpoint(folder: str | Path, key: str = "generator") -> LoraWeights:
    """``<folder>/model.pt`` [``key``] + ``<folder>/lora_config/adapter_config.json`` -> LoRA.

    The reference code saves the state dict of its generator wrapper, whose ``model`` is the
    peft-wrapped transformer: ``model.base_model.model.<module>.lora_A.default.weight`` next to the
    frozen base weights (``...base_layer.weight``), possibly with FSDP / activation-checkpoint
    wrapper names in between. Only the LoRA tensors are taken; their rank must match the config.
    """
    folder = Path(folder)
    ckpt, cfg_file = folder / "model.pt", folder / "lora_config" / "adapter_config.json"
    missing = [str(p) for p in (ckpt, cfg_file) if not p.exists()]
    if missing:
        raise FileNotFoundError(f"reference checkpoint {folder}: missing {', '.join(missing)}")
    blob = torch.load(ckpt, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or key not in blob:
        have = sorted(blob) if isinstance(blob, dict) else type(blob).__name__
        raise LoraFormatError(f"{ckpt}: no {key!r} state dict (has: {have})")
    config = json.loads(cfg_file.read_text())
    if config.get("modules_to_save"):
        raise LoraFormatError(f"{cfg_file}: modules_to_save {config['modules_to_save']} are full weights, "
                              "not a LoRA; they cannot be imported")
    state, wrapped = {}, set()
    for name, tensor in blob[key].items():
        name = re.sub(r"(^|\.)(_fsdp_wrapped_module|_checkpoint_wrapped_module|_orig_mod|module)\.", r"\1", name)
        if ".lora_" not in name:
            if name.endswith(".base_layer.weight") and "base_model.model." in name:
                # a LoRA-wrapped layer's frozen weight: this module must come with LoRA tensors
                wrapped.add(name.split("base_model.model.", 1)[1][: -len(".base_layer.weight")])
            continue  # frozen base weights saved alongside
        if "base_model.model." not in name:
            raise LoraFormatError(f"{ckpt}: LoRA key {name!r} is not under a peft base_model.model")
        state["base_model.model." + name.split("base_model.model.", 1)[1]] = tensor
    if not state:
        raise LoraFormatError(f"{ckpt}: the {key!r} state dict holds no LoRA tensors "
                              f"({len(blob[key])} other tensors; a full fine-tune?)")
    weights = from_state_dict(state, source=str(ckpt), config=config)
    lost = sorted(wrapped - set(weights.modules))
    if lost:  # the reference loader (strict=False) would leave these at their zero init
        raise LoraFormatError(f"{ckpt}: {len(lost)} LoRA-wrapped layer(s) have no LoRA weights, e.g. {lost[:3]}")
    targets = config.get("target_modules") or []
    if isinstance(targets, list):
        outside = [m for m in weights.modules if m not in targets and not any(m.endswith("." + t) for t in targets)]
        if outside:
            raise LoraFormatError(f"{ckpt}: LoRA on modules outside target_modules {targets}: {outside[:3]}")
    return weights


# --------------------------------------------------------------------------------------------
# checking against a transformer


def check_fits(weights: LoraWeights, transformer: nn.Module) -> None:
    """Every module exists in ``transformer`` as a Linear layer of matching shape."""
    linears = {}
    for name, module in transformer.named_modules():
        base = getattr(module, "base_layer", module)  # a peft LoRA layer wraps the original Linear
        if isinstance(base, nn.Linear) and not name.endswith(".base_layer"):
            linears[name] = base
    problems = []
    for m in weights.modules:
        if m not in linears:
            problems.append(f"{m}: no such linear layer")
            continue
        lin, a, b = linears[m], weights.down[m], weights.up[m]
        if a.shape[1] != lin.in_features or b.shape[0] != lin.out_features:
            problems.append(f"{m}: LoRA maps {a.shape[1]}->{b.shape[0]} but the layer is "
                            f"{lin.in_features}->{lin.out_features}")
    if problems:
        raise LoraFormatError(f"{weights.source} ({weights.layout} layout) does not fit the transformer: "
                              f"{len(problems)} problem(s), e.g. {'; '.join(problems[:3])}")


# --------------------------------------------------------------------------------------------
# writing / loading


def peft_config_dict(weights: LoraWeights) -> dict:
    """The peft ``LoraConfig`` kwargs reproducing ``weights`` exactly: exact module names as
    targets, the most common rank/alpha as defaults, the rest as anchored patterns."""
    ranks = {m: weights.rank(m) for m in weights.modules}
    r = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(weights.alpha.values()).most_common(1)[0][0]
    exact = lambda m: "^" + re.escape(m)  # noqa: E731  (peft matches pattern keys as regexes)
    cfg = {
        "r": r,
        "lora_alpha": alpha,
        "target_modules": weights.modules,
        "rank_pattern": {exact(m): v for m, v in ranks.items() if v != r},
        "alpha_pattern": {exact(m): v for m, v in weights.alpha.items() if v != alpha},
        "use_rslora": weights.use_rslora,
        "lora_dropout": weights.extra.get("lora_dropout", 0.0),
    }
    from peft import LoraConfig

    return LoraConfig(**cfg).to_dict()  # normalised the way diffusers writes adapter metadata


def to_diffusers(weights: LoraWeights) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict without the ``transformer.`` prefix, peft config dict)."""
    state = {}
    for m in weights.modules:
        state[f"{m}.lora_A.weight"] = weights.down[m].contiguous()
        state[f"{m}.lora_B.weight"] = weights.up[m].contiguous()
    return state, peft_config_dict(weights)


def _kohya_alpha(weights: LoraWeights, m: str) -> torch.Tensor:
    # kohya scales by alpha / r; keep the same effective scale for rslora adapters
    return torch.tensor(weights.scale(m) * weights.rank(m), dtype=torch.float32)


def to_kohya(weights: LoraWeights) -> dict[str, torch.Tensor]:
    out = {}
    for m in weights.modules:
        flat = "lora_unet_" + m.replace(".", "_")
        out[f"{flat}.lora_down.weight"] = weights.down[m].contiguous()
        out[f"{flat}.lora_up.weight"] = weights.up[m].contiguous()
        out[f"{flat}.alpha"] = _kohya_alpha(weights, m)
    return out


def to_comfyui(weights: LoraWeights) -> dict[str, torch.Tensor]:
    out = {}
    for m in weights.modules:
        out[f"diffusion_model.{m}.lora_A.weight"] = weights.down[m].contiguous()
        out[f"diffusion_model.{m}.lora_B.weight"] = weights.up[m].contiguous()
        out[f"diffusion_model.{m}.alpha"] = _kohya_alpha(weights, m)
    return out


def save_lora_file(weights: LoraWeights, path: str | Path, layout: str = "diffusers") -> Path:
    """Write ``weights`` in ``layout``; a diffusers file goes to ``path`` (a directory) as
    ``pytorch_lora_weights.safetensors`` with its peft metadata, others to ``path`` (a file)."""
    path = Path(path)
    if layout == "diffusers":
        from diffusers import QwenImagePipeline

        state, config = to_diffusers(weights)
        QwenImagePipeline.save_lora_weights(path, transformer_lora_layers=state,
                                            transformer_lora_adapter_metadata=config, weight_name=WEIGHT_NAME)
        return path / WEIGHT_NAME
    writers = {"kohya": to_kohya, "comfyui": to_comfyui}
    if layout not in writers:
        raise ValueError(f"cannot write layout {layout!r}; valid: diffusers, {', '.join(writers)}")
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(writers[layout](weights), str(path))
    return path


def convert_lora(src: str | Path, out_dir: str | Path, transformer: nn.Module | None = None) -> Path:
    """Any supported LoRA (file, directory or reference checkpoint) -> a diffusers LoRA file that
    loads in stock ``QwenImageEditPlusPipeline.load_lora_weights`` with the same effect."""
    weights = read_lora(src)
    if transformer is not None:
        check_fits(weights, transformer)
    return save_lora_file(weights, out_dir)


def load_lora_weights(transformer: nn.Module, weights: LoraWeights, name: str) -> None:
    """Add ``weights`` to ``transformer`` as adapter ``name`` (through diffusers' loader)."""
    from diffusers import QwenImagePipeline

    check_fits(weights, transformer)
    state, config = to_diffusers(weights)
    # tensors keep their dtype: peft holds adapters of a bf16 model in float32 (autocast_adapter_dtype)
    state = {f"transformer.{k}": v for k, v in state.items()}
    # diffusers keys both the tensors and the metadata by component ("transformer.")
    metadata = {f"transformer.{k}": v for k, v in config.items()}
    QwenImagePipeline.load_lora_into_transformer(state, transformer=transformer, adapter_name=name,
                                                 metadata=metadata)


def load_any_lora(transformer: nn.Module, path: str | Path, name: str) -> LoraWeights:
    """Read a LoRA in any supported layout, check it fits, and add it as adapter ``name``."""
    weights = read_lora(path)
    load_lora_weights(transformer, weights, name)
    return weights
