"""LoRA key layouts (diffusers, peft, kohya, ComfyUI, plain) and CollectionLoRA reference
checkpoints, on the tiny real ``QwenImageTransformer2DModel``: conversions are exact (same
outputs, bit for bit), agree with stock diffusers' own loader, and bad files fail loudly."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from bench.config import QWEN_LORA_TARGETS, LoraTrainConfig
from methods import lora_formats as lf
from methods.backbones.qwen_tiny_components import Z_DIM, tiny_transformer
from methods.lora import add_lora, load_lora, save_lora


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models are dominated by per-op thread synchronisation: on the 2-core CI machine under
    load, one thread ran these tests in 13 s instead of 26 s (runs after conftest's 2-thread
    fixture, which is autouse at a higher level)."""
    torch.set_num_threads(1)


def _output(transformer) -> torch.Tensor:
    """One transformer call in the edit layout (16 target + 16 source tokens, 5 text tokens)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 32, 4 * Z_DIM, generator=gen)
    text = torch.randn(1, 5, transformer.config.joint_attention_dim, generator=gen)
    with torch.no_grad():
        return transformer(hidden_states=x, encoder_hidden_states=text,
                           encoder_hidden_states_mask=torch.ones(1, 5, dtype=torch.long),
                           timestep=torch.tensor([0.6]), img_shapes=[[(1, 4, 4), (1, 4, 4)]],
                           return_dict=False)[0]


def _randomise(transformer, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for name, p in transformer.named_parameters():
        if "lora_" in name:
            p.data = torch.randn(p.shape, generator=gen) * 0.2


@pytest.fixture
def adapted(tmp_path):
    """A transformer with a random rank-4 / alpha-12 adapter, its output, and its diffusers file."""
    transformer = tiny_transformer(seed=0)
    add_lora(transformer, "effect", LoraTrainConfig(rank=4, alpha=12))
    _randomise(transformer)
    return transformer, _output(transformer), save_lora(transformer, "effect", tmp_path / "diffusers")


def _stock_diffusers_output(path) -> torch.Tensor:
    """What diffusers' own loader makes of a file: the two calls
    ``QwenImageEditPlusPipeline.load_lora_weights`` makes, on a bare transformer."""
    from diffusers import QwenImageEditPlusPipeline

    fresh = tiny_transformer(seed=0)
    state, metadata = QwenImageEditPlusPipeline.lora_state_dict(str(path), return_lora_metadata=True)
    QwenImageEditPlusPipeline.load_lora_into_transformer(state, transformer=fresh, adapter_name="stock",
                                                         metadata=metadata)
    return _output(fresh)


@pytest.mark.parametrize("layout", ["kohya", "comfyui"])
def test_community_layouts_round_trip_exactly(adapted, tmp_path, layout):
    _, expected, file = adapted
    weights = lf.read_lora(file)
    assert weights.layout == "diffusers" and len(weights.modules) == 2 * len(QWEN_LORA_TARGETS)
    path = lf.save_lora_file(weights, tmp_path / f"{layout}.safetensors", layout)
    keys = load_file(str(path)).keys()
    if layout == "kohya":
        assert "lora_unet_transformer_blocks_0_attn_to_out_0.lora_down.weight" in keys
        assert "lora_unet_transformer_blocks_1_img_mlp_net_0_proj.alpha" in keys
    else:
        assert "diffusion_model.transformer_blocks.0.attn.to_out.0.lora_A.weight" in keys

    back = lf.read_lora(path)
    assert back.layout == layout and back.modules == weights.modules
    assert all(back.alpha[m] == 12 and back.rank(m) == 4 for m in back.modules)
    fresh = tiny_transformer(seed=0)
    lf.load_any_lora(fresh, path, "converted")
    assert torch.equal(_output(fresh), expected)
    # diffusers' own converter reads our files the same way (it folds alpha into the weights,
    # hence float rounding instead of bit equality)
    assert torch.allclose(_stock_diffusers_output(path), expected, atol=1e-5)


def test_converted_file_loads_in_stock_diffusers_and_methods_lora(adapted, tmp_path):
    _, expected, file = adapted
    kohya = lf.save_lora_file(lf.read_lora(file), tmp_path / "k.safetensors", "kohya")
    out = lf.convert_lora(kohya, tmp_path / "converted", transformer=tiny_transformer(seed=0))
    assert out.name == lf.WEIGHT_NAME
    assert torch.equal(_stock_diffusers_output(out), expected)  # alpha kept as metadata: exact
    fresh = tiny_transformer(seed=0)
    load_lora(fresh, out.parent, "teacher")
    assert torch.equal(_output(fresh), expected)


def test_kohya_names_cover_every_target_module():
    for leaf in lf.BLOCK_LINEARS:
        assert lf.kohya_to_module(f"transformer_blocks_59_{leaf.replace('.', '_')}") == f"transformer_blocks.59.{leaf}"
    assert lf.kohya_to_module("norm_out_linear") == "norm_out.linear"
    assert all(any(leaf == t or leaf.endswith("." + t) for leaf in lf.BLOCK_LINEARS) for t in QWEN_LORA_TARGETS)
    with pytest.raises(KeyError):
        lf.kohya_to_module("transformer_blocks_0_attn_to_x")


def test_plain_and_peft_layouts_with_mixed_ranks(tmp_path):
    """Lightning-style plain keys with per-module alpha, and peft keys with an adapter name;
    modules of different rank and alpha survive a diffusers round trip exactly."""
    fresh = tiny_transformer(seed=0)
    gen = torch.Generator().manual_seed(1)
    lin = dict(fresh.named_modules())
    plain = {}
    for i, (module, rank, alpha) in enumerate([("transformer_blocks.0.attn.to_q", 2, 1.0),
                                                ("transformer_blocks.1.img_mlp.net.2", 6, 3.0),
                                                ("proj_out", 2, 8.0)]):
        plain[f"{module}.lora_down.weight"] = torch.randn(rank, lin[module].in_features, generator=gen)
        plain[f"{module}.lora_up.weight"] = torch.randn(lin[module].out_features, rank, generator=gen)
        plain[f"{module}.alpha"] = torch.tensor(alpha)
    save_file(plain, str(tmp_path / "lightning.safetensors"))
    weights = lf.read_lora(tmp_path / "lightning.safetensors")
    assert weights.layout == "plain" and weights.scale("transformer_blocks.1.img_mlp.net.2") == 0.5

    # the update each module gets is exactly scale * up @ down
    lf.load_any_lora(fresh, tmp_path / "lightning.safetensors", "lightning")
    expected = _output(fresh)
    layer = fresh.transformer_blocks[1].img_mlp.net[2]
    assert layer.scaling["lightning"] == 0.5

    out = lf.save_lora_file(weights, tmp_path / "diffusers")
    again = tiny_transformer(seed=0)
    lf.load_any_lora(again, out, "x")
    assert torch.equal(_output(again), expected)

    peft_keys = {f"base_model.model.{k.replace('lora_down', 'lora_A.default').replace('lora_up', 'lora_B.default')}": v
                 for k, v in plain.items() if not k.endswith(".alpha")}
    cfg = {"r": 2, "lora_alpha": 1.0, "rank_pattern": {"img_mlp.net.2": 6},
           "alpha_pattern": {"img_mlp.net.2": 3.0, "proj_out": 8.0}}
    from_peft = lf.from_state_dict(peft_keys, config=cfg)
    assert from_peft.layout == "peft" and from_peft.alpha == weights.alpha


def test_bad_files_fail_loudly(adapted, tmp_path):
    transformer, _, file = adapted
    weights = lf.read_lora(file)
    state = lf.to_kohya(weights)

    extra = dict(state)  # block 7 of a 2-block model: the reference bank would skip it silently
    extra["lora_unet_transformer_blocks_7_attn_to_q.lora_down.weight"] = torch.zeros(4, 48)
    extra["lora_unet_transformer_blocks_7_attn_to_q.lora_up.weight"] = torch.zeros(48, 4)
    save_file(extra, str(tmp_path / "deep.safetensors"))
    with pytest.raises(lf.LoraFormatError, match=r"deep\.safetensors.*transformer_blocks\.7\.attn\.to_q: no such"):
        lf.load_any_lora(tiny_transformer(seed=0), tmp_path / "deep.safetensors", "deep")

    wide = dict(state)  # a LoRA made for another model width
    wide["lora_unet_transformer_blocks_0_attn_to_q.lora_down.weight"] = torch.zeros(4, 3072)
    save_file(wide, str(tmp_path / "wide.safetensors"))
    with pytest.raises(lf.LoraFormatError, match="maps 3072->48 but the layer is 48->48"):
        lf.load_any_lora(tiny_transformer(seed=0), tmp_path / "wide.safetensors", "wide")

    for key, match in [("lora_unet_transformer_blocks_0_attn_to_q.diff", "full weight difference"),
                       ("lora_unet_transformer_blocks_0_attn_to_zz.lora_down.weight", "names no"),
                       ("lora_unet_transformer_blocks_0_attn_to_q.weird", "not LoRA tensors")]:
        bad = dict(state)
        bad[key] = torch.zeros(4, 48)
        if key.endswith("to_zz.lora_down.weight"):
            bad[key.replace("lora_down", "lora_up")] = torch.zeros(48, 4)
        with pytest.raises(lf.LoraFormatError, match=match):
            lf.from_state_dict(bad, source="bad.safetensors")
    with pytest.raises(FileNotFoundError):
        lf.read_lora(tmp_path / "absent.safetensors")


def _write_reference_checkpoint(folder, transformer, rank: int = 4, alpha: int = 8):
    """The CollectionLoRA reference layout: ``torch.save({'generator': wrapper.state_dict(), ...})``
    where the wrapper's ``model`` is ``get_peft_model(transformer, cfg)``, plus ``lora_config/``."""
    from peft import LoraConfig, get_peft_model

    class GeneratorWrapper(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

    cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(QWEN_LORA_TARGETS))
    generator = GeneratorWrapper(get_peft_model(transformer, cfg))
    _randomise(generator, seed=3)
    folder.mkdir(parents=True)
    torch.save({"generator": generator.state_dict(), "critic": {}, "step": 10}, folder / "model.pt")
    cfg.save_pretrained(str(folder / "lora_config"))
    return generator


def test_reference_checkpoint_imports_and_evaluates_identically(tmp_path):
    generator = _write_reference_checkpoint(tmp_path / "ckpt", tiny_transformer(seed=0))
    expected = _output(generator.model)

    weights = lf.read_lora(tmp_path / "ckpt")  # a directory with model.pt is a reference checkpoint
    assert weights.layout == "peft" and len(weights.modules) == 2 * len(QWEN_LORA_TARGETS)
    assert all(weights.alpha[m] == 8 for m in weights.modules)
    fresh = tiny_transformer(seed=0)
    lf.load_any_lora(fresh, tmp_path / "ckpt", "collectionlora")
    assert torch.equal(_output(fresh), expected)
    out = lf.convert_lora(tmp_path / "ckpt", tmp_path / "student")  # -> a stock diffusers file
    assert torch.equal(_stock_diffusers_output(out), expected)

    # the same adapter saved by peft itself (PeftModel.save_pretrained) reads the same
    generator.model.save_pretrained(str(tmp_path / "peft"))
    assert torch.equal(lf.read_lora(tmp_path / "peft").delta(weights.modules[0]), weights.delta(weights.modules[0]))

    # FSDP-wrapped names (what a sharded save may write) import the same
    blob = torch.load(tmp_path / "ckpt" / "model.pt", weights_only=True)
    blob["generator"] = {k.replace("transformer_blocks.", "_fsdp_wrapped_module.transformer_blocks."): v
                         for k, v in blob["generator"].items()}
    torch.save(blob, tmp_path / "ckpt" / "model.pt")
    assert lf.read_reference_checkpoint(tmp_path / "ckpt").modules == weights.modules


def test_reference_checkpoint_errors(tmp_path):
    _write_reference_checkpoint(tmp_path / "ckpt", tiny_transformer(seed=0), rank=4)
    cfg_file = tmp_path / "ckpt" / "lora_config" / "adapter_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg_file.write_text(json.dumps(dict(cfg, r=8)))
    with pytest.raises(lf.LoraFormatError, match="has rank 4 but the adapter config says 8"):
        lf.read_reference_checkpoint(tmp_path / "ckpt")
    cfg_file.write_text(json.dumps(cfg))
    blob = torch.load(tmp_path / "ckpt" / "model.pt", weights_only=True)
    truncated = {k: v for k, v in blob["generator"].items() if "transformer_blocks.1.txt_mod.1.lora_" not in k}
    torch.save({"generator": truncated}, tmp_path / "ckpt" / "model.pt")
    with pytest.raises(lf.LoraFormatError, match=r"have no LoRA weights.*transformer_blocks\.1\.txt_mod\.1"):
        lf.read_reference_checkpoint(tmp_path / "ckpt")
    cfg_file.unlink()
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        lf.read_reference_checkpoint(tmp_path / "ckpt")
    torch.save({"generator": tiny_transformer(seed=0).state_dict()}, tmp_path / "full.pt")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "model.pt").write_bytes((tmp_path / "full.pt").read_bytes())
    (tmp_path / "full" / "lora_config").mkdir()
    (tmp_path / "full" / "lora_config" / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(lf.LoraFormatError, match="holds no LoRA tensors"):
        lf.read_reference_checkpoint(tmp_path / "full")


# ---------------------------------------------------------------------------------------------
# teachers in community layouts: the bank and every loader convert on load


@pytest.mark.parametrize("layout", ["kohya", "comfyui"])
def test_teacher_bank_loads_a_community_layout_with_the_originals_outputs(adapted, tmp_path, layout):
    """A teacher file as kohya or ComfyUI tools write it (alpha 12 on rank 4) is checked, loaded
    and switched like the diffusers original, and gives its outputs bit for bit (diffusers' own
    converter folds alpha into the weights: only close)."""
    from methods.adapters import AdapterBank

    _, expected, file = adapted
    teacher = lf.save_lora_file(lf.read_lora(file), tmp_path / f"teacher.{layout}.safetensors", layout)
    fresh = tiny_transformer(seed=0)
    bank = AdapterBank(fresh)
    bank.check({"fx": teacher, "original": file})  # one rank, one set of targets
    bank.add_teacher("fx", teacher)
    bank.add_teacher("original", file)
    with bank.active("fx"):
        converted = _output(fresh)
    with bank.active("original"):
        original = _output(fresh)
    assert torch.equal(converted, expected) and torch.equal(original, expected)
    direct = tiny_transformer(seed=0)
    load_lora(direct, teacher, "direct")  # teacher outputs, students' init: the same loader
    assert torch.equal(_output(direct), expected)


def test_a_bad_community_layout_teacher_is_named_by_the_bank(adapted, tmp_path):
    """NaN weights, a module the backbone lacks, a shape of another model: each a clear error
    naming the teacher and its file, before anything loads."""
    from bench.errors import NonFiniteError
    from methods.adapters import AdapterBank, LoraMismatchError

    _, _, file = adapted
    state = lf.to_kohya(lf.read_lora(file))
    cases = {}
    nan = dict(state)
    nan["lora_unet_transformer_blocks_1_attn_to_k.lora_up.weight"] = torch.full((48, 4), float("nan"))
    cases["nan"] = (nan, NonFiniteError, "non-finite")
    deep = dict(state)
    deep["lora_unet_transformer_blocks_7_attn_to_q.lora_down.weight"] = torch.zeros(4, 48)
    deep["lora_unet_transformer_blocks_7_attn_to_q.lora_up.weight"] = torch.zeros(48, 4)
    cases["deep"] = (deep, LoraMismatchError, "does not have")
    wide = dict(state)
    wide["lora_unet_transformer_blocks_0_attn_to_q.lora_down.weight"] = torch.zeros(4, 3072)
    cases["wide"] = (wide, LoraMismatchError, "does not fit")
    for name, (tensors, error, match) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        save_file(tensors, str(path))
        bank = AdapterBank(tiny_transformer(seed=0))
        with pytest.raises(error, match=match) as err:
            bank.check({name: path})
        assert f"teacher LoRA {name!r}" in str(err.value) and path.name in str(err.value), name
        assert not bank.frozen
