"""Typed, frozen run configs and presets.

Presets are Python functions (big_vision style): ``smoke`` is the default ``synth`` config made
smaller, not a fork. ``key=value`` overrides address nested fields with dots
(``teacher.steps=50``) and are type-checked against the field they replace. The resolved
config is written next to every result and cached artifact.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field, fields, replace
from typing import Any

from bench.registry import Registry

# The 14 module names CollectionLoRA's reference code puts LoRA on (DESIGN 4.1); they are the
# real diffusers QwenImageTransformer2DModel names, so the tiny backbone uses them unchanged.
QWEN_LORA_TARGETS: tuple[str, ...] = (
    "to_q", "to_k", "to_v", "to_out.0",
    "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
    "img_mlp.net.0.proj", "img_mlp.net.2", "txt_mlp.net.0.proj", "txt_mlp.net.2",
    "img_mod.1", "txt_mod.1",
)

# methods/flow.py ``generate(sampler=...)``: the samplers it implements (its docstring has the math).
SAMPLERS: tuple[str, ...] = ("euler", "renoise")


@dataclass(frozen=True)
class WorldConfig:
    kind: str = "synthetic"          # "synthetic" (built into the cache) or "effectbench" (existing dir)
    root: str | None = None          # EffectBench directory for kind="effectbench"
    seed: int = 0                    # world seed: effect catalogue, sources, general edits
    image_size: int = 16             # square side in pixels (identity "VAE"; tokens of backbone.pixel_patch px)
    n_train_per_effect: int = 48     # (source, effect(source)) pairs each teacher is trained on
    n_test_per_category: int = 8     # held-out test sources per category
    n_general: int = 4096            # general-edit triples (pretraining + general stream)
    # Bumped when the synthetic world's generator changes what it writes, so cached worlds, bases
    # and cells of an older world are never reused. 2: stochastic effects, mode-aware test rows.
    # 3: modes only where an op's own modes are well separated (no placement modes). 4: modes
    # only for spatial choices (checker phase added, 4 px checker cells), the general edits on
    # their own random stream (the base key no longer follows the effects: ``general_identity``).
    # 5: the effects the learnability gate found to test nothing left out (``GATE_DROPPED``; the
    # others keep their rows, so teachers and gate entries of version 4 are reused). 6: one more
    # (gate version 2, first 50 effects), the same way.
    version: int = 6


@dataclass(frozen=True)
class BackboneConfig:
    kind: str = "tiny-qwen"          # BACKBONES registry name
    num_layers: int = 4
    num_attention_heads: int = 4
    attention_head_dim: int = 32
    joint_attention_dim: int = 64    # text hidden size
    axes_dims_rope: tuple[int, int, int] = (8, 12, 12)  # sums to attention_head_dim
    text_max_tokens: int = 24        # prompt length after hashing-tokenisation (padded, masked)
    pixel_patch: int = 2             # tiny-qwen: pixels per token side (2: 16 px = 8x8 tokens; 4: 32 px, same tokens)
    device: str = "cpu"
    dtype: str = "float32"
    path: str | None = None          # real backbones: local dir or HF repo id (HF cache, never downloaded)
    variant: str = "edit-plus"       # qwen-image-edit: "edit-plus" (2509) or "edit" (original)
    gradient_checkpointing: bool = False
    condition_image_area: int | None = None  # pixels of the image the VL text encoder sees (None: pipeline default)


@dataclass(frozen=True)
class PretrainConfig:
    """Full flow-matching training of the tiny transformer on general edits (the 'pretrained editor')."""
    steps: int = 1500
    batch_size: int = 16
    lr: float = 5e-4
    warmup: int = 100
    uncond_prob: float = 0.1         # drop the instruction so true CFG has an unconditional branch
    grad_clip: float = 1.0


@dataclass(frozen=True)
class LoraTrainConfig:
    """Flow-matching LoRA trainer settings (teachers now; FM all-in-1 later)."""
    rank: int = 16
    alpha: int = 16
    target_modules: tuple[str, ...] = QWEN_LORA_TARGETS
    steps: int = 150
    batch_size: int = 16
    lr: float = 1e-3
    weighting_scheme: str = "none"   # diffusers compute_density_for_timestep_sampling scheme
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    uncond_prob: float = 0.1
    grad_clip: float = 1.0
    # Train until this artifact's own counted transformer passes (sample forward + backward,
    # bench/cost.py) reach this many, however many steps that takes (``steps`` then only sizes
    # the progress bar; methods/fm.py BUDGET_STEP_CAP). None: train ``steps``. The
    # compute-matched main grid sets it (bench/grids.py ``main_matched``).
    budget_passes: int | None = None


@dataclass(frozen=True)
class DistillConfig:
    """DMD in flow-matching form (DESIGN 4.1); used by CollectionLoRA and by Lightning."""
    steps: int = 1500                # critic steps; the generator updates every gen_update_ratio-th
    gen_update_ratio: int = 5        # reference dfake_gen_update_ratio
    batch_size: int = 16
    lr: float = 1e-4                 # AdamW, betas (0.9, 0.999), for generator and critic
    critic_lr: float | None = None   # None: same as lr
    rank: int = 16                   # student and critic LoRA rank / alpha
    alpha: int = 16
    real_cfg: float = 4.0            # CFG of the real score (teacher or base): uncond + s * (cond - uncond)
    # Rescale the guided velocity to the conditional one's per-token norm (the Qwen-Image
    # pipelines' true CFG, also used at inference). The reference DMD code has it off
    # (qwen_image_cfg_norm: false) and writes its scale as cond + s * (cond - uncond), i.e. s + 1.
    real_cfg_norm: bool = True
    dmd_sigma_range: tuple[float, float] = (0.02, 0.98)  # DMD noise level, before the shift
    dmd_shift: float | None = None   # timestep shift of the DMD / TS / TA-FM noise levels (None: sampling.shift)
    p_switch: float = 0.5            # PDSR: probability a batch group goes to the effect stream
    stream_redraw_every: int = 20    # PDSR: steps between stream draws
    effect_per_step: bool = True     # effect stream: a fresh effect every step (reference); False: per stream draw
    tafm_weight: float = 1.0         # TA-FM flow-matching anchor loss weight
    tafm_above_dmd: bool = True      # TA-FM noise level drawn above the DMD one (reference); False: any level
    ts_weight: float = 1.0           # TS target-simulation DMD loss weight
    ts_last_steps: int = 5           # TS noises the teacher output to one of the last K schedule steps
    ts_sigma_range: tuple[float, float] = (0.5, 1.0)  # TS DMD timesteps t in [500, 1000), before the shift
    grad_clip: float = 10.0          # max grad norm, generator and critic (reference: 10)
    checkpoint_every: int = 100      # full training state every K steps (rotated)
    keep_checkpoints: int = 2
    # Every K steps publish the student as the finished artifact of this same run with
    # steps=k (a k-step run is exactly the first k steps), so a training curve costs one run.
    snapshot_every: int = 0          # 0: off. Like the two above, not part of the artifact key.
    budget_passes: int | None = None  # as LoraTrainConfig.budget_passes (no snapshots: a curve needs fixed steps)

    def __post_init__(self) -> None:
        if self.budget_passes is not None and self.snapshot_every:
            raise ValueError("distill.budget_passes and distill.snapshot_every: a budget-stopped run has no "
                             "fixed length, so its prefixes are not the shorter runs; set one of them")


@dataclass(frozen=True)
class SamplingConfig:
    shift: float = 3.0               # static timestep shift t' = s t / (1 + (s - 1) t)
    base_steps: int = 40             # Base: 40 steps ...
    base_cfg: float = 4.0            # ... with true CFG 4.0 (NFE 80)
    fast_steps: int = 8              # Lightning / CollectionLoRA: 8 steps, no CFG
    # sampler of DMD-trained generators (ours, Lightning) at inference and in backward simulation:
    # 'renoise' (reference: x0 + fresh noise) or 'euler'
    dmd_sampler: str = "renoise"

    def __post_init__(self) -> None:  # a bad override fails when parsed, not after training
        if self.dmd_sampler not in SAMPLERS:
            raise ValueError(f"sampling.dmd_sampler {self.dmd_sampler!r}; valid samplers: {', '.join(SAMPLERS)}")


@dataclass(frozen=True)
class EvalConfig:
    limit: int | None = None         # test sources per effect (None: all)
    draws: int = 4                   # samples (noise seeds) per test source: coverage and diversity need >= 2
    batch_size: int = 32
    # The synthetic stand-ins of all six paper columns (mode-aware: metrics/modes.py), the
    # distribution metrics, then the real metrics (reported as "missing, and why" where their
    # weights / judge are not available).
    metrics: tuple[str, ...] = ("gt_mode_psnr", "gt_mode_mae", "src_ssim", "vsa_syn", "editreward_syn", "bcr_syn",
                                "mode_blur", "mode_coverage", "diversity_ratio", "texture_energy",
                                "clip", "dreamsim", "dino", "vsa", "editreward", "bcr")


@dataclass(frozen=True)
class RunConfig:
    method: str = "base"
    preset: str = "synth"
    seed: int = 0                    # training / sampling seed of this run
    n_effects: int = 10              # first N effects of the catalogue
    components_off: tuple[str, ...] = ()  # ablated method components (--ablate)
    world: WorldConfig = field(default_factory=WorldConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    teacher: LoraTrainConfig = field(default_factory=LoraTrainConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)      # CollectionLoRA (ours)
    lightning: DistillConfig = field(default_factory=lambda: DistillConfig(steps=1000, p_switch=0.0))
    fm_all: LoraTrainConfig = field(default_factory=lambda: LoraTrainConfig(steps=600))  # FM all-in-1
    eval: EvalConfig = field(default_factory=EvalConfig)


PRESETS: Registry[Any] = Registry("preset")


@PRESETS.register("synth", aliases=("default",))
def synth() -> RunConfig:
    """The embedded default: synthetic world (stochastic effects), tiny Qwen-Image backbone, CPU.

    The config classes' defaults are the reference's settings (DMD lr 1e-4, TS and TA-FM weight
    1, gradient clip 10, real-score CFG 4); this preset keeps them and changes only the budget a
    2-core CPU affords:

    * ``distill``: batch 8 (the reference: 1 per GPU on 4 GPUs), 1000 critic steps = 200
      generator updates, about 10 per effect at N = 10 -- so lr 3e-4 (the reference's 1e-4
      leaves the student near its sources). World version 3, N = 10, per-step effect draw, 1000
      steps, n = 80 test sources, lr 3e-4 vs 1e-4 (paired differences, 95 % intervals):
      texture energy 0.77 vs 0.26 (+0.51 [+0.37, +0.67]), diversity 0.87 vs 0.55 (+0.32 [+0.28,
      +0.37]), mode_blur 0.53 vs 0.91 (-0.38 [-0.50, -0.26]), gt_mode_mae 0.100 vs 0.098 (+0.002
      [-0.006, +0.010], level). lr 1e-3 (with the effect held per stream group, before engine
      version 4) left the sources but not towards the effects: gt_mode_mae 0.125 at 250 steps
      and 0.141 at 500, against 0.117 at 332 and 0.112 at 664 for lr 1e-4 in the same setting;
    * ``fm_all.steps`` 1500: 150 steps per effect times the default 10 effects (half the
      teachers' per-effect budget since ``teacher.steps`` went to 300; the compute-matched grid of
      issue 15 is where budgets are equalised);
    * ``teacher.lr`` 3e-3 (the trainer's default 1e-3): at 150 steps, 1e-3 leaves teachers that
      overshoot the grain (world gate, same base and test sources, texture energy at 40 NFE, 1 is
      an exact draw's): edge_emboss_tl_00 1.08 [1.02, 1.15] at 1e-3 vs 0.82 [0.78, 0.87] at 3e-3,
      pattern_checker_dark_00 1.69 [1.51, 1.88] vs 1.44 [1.33, 1.57] (still above 1);
    * ``teacher.steps`` 300 (the trainer's default 150): at 150 steps the teachers of fine
      structures spread more than exact draws at 40 NFE and the gate finds nothing to test
      (world version 3, lr 3e-3, texture energy at 8 / 40 / 80 NFE): stylize_cartoon_00 0.69 /
      1.39 / 1.49 at 150 steps, 0.53 / 1.24 / 1.30 at 300 (few-step gap), 0.37 / 0.97 / 1.09 at
      600; the 2 px checker 1.01 / 1.44 / 1.40 at 150, 0.41 / 0.76 / 0.85 at 600. 600 steps cost
      four times 150 (a teacher 420 s vs about 105 s with other jobs on the machine).

    The previous world (deterministic effects) had tuned lr 3e-4, TS 0.1 and TA-FM 10 by probes;
    those were reset for the multi-modal world (issue 12) and only the lr came back, on the
    figures above; TS and TA-FM stay at the reference's 1.
    """
    cfg = RunConfig()
    return replace(cfg, distill=replace(cfg.distill, batch_size=8, steps=1000, lr=3e-4),
                   fm_all=replace(cfg.fm_all, steps=1500), teacher=replace(cfg.teacher, lr=3e-3, steps=300))


@PRESETS.register("smoke")
def smoke() -> RunConfig:
    """``synth`` made small enough for CI and a first try (well under a minute once installed)."""
    cfg = synth()
    return replace(
        cfg,
        preset="smoke",
        n_effects=3,
        world=replace(cfg.world, n_train_per_effect=16, n_test_per_category=4, n_general=512),
        backbone=replace(cfg.backbone, num_layers=2),
        pretrain=replace(cfg.pretrain, steps=150, batch_size=16, warmup=20),
        teacher=replace(cfg.teacher, steps=30, batch_size=8, rank=8, alpha=8),
        sampling=replace(cfg.sampling, base_steps=10),
        # stream_redraw_every=5: 8 PDSR draws in 40 steps (at 20 only two, and ablation rows (1)
        # and (2) could come out identical by chance)
        distill=replace(cfg.distill, steps=40, batch_size=8, rank=8, alpha=8, checkpoint_every=20,
                        stream_redraw_every=5),
        lightning=replace(cfg.lightning, steps=30, batch_size=8, rank=8, alpha=8, checkpoint_every=15),
        fm_all=replace(cfg.fm_all, steps=40, batch_size=8, rank=8, alpha=8),
        eval=replace(cfg.eval, limit=4),
    )


PRESETS.register("qwen-image-edit", "methods.backbones.qwen_edit:qwen_image_edit_preset")


# --------------------------------------------------------------------------------------------
# overrides, serialisation, hashing


def apply_overrides(cfg: Any, overrides: list[str] | tuple[str, ...]) -> Any:
    """Apply ``a.b=value`` strings; values are parsed to the type of the field they replace."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not key=value")
        cfg = _set(cfg, key.strip().split("."), raw.strip(), key)
    return cfg


def _set(obj: Any, path: list[str], raw: str, full: str) -> Any:
    names = {f.name: f for f in fields(obj)}
    head = path[0]
    if head not in names:
        raise ValueError(f"unknown config key {full!r}; {type(obj).__name__} has: {', '.join(names)}")
    current = getattr(obj, head)
    if len(path) > 1:
        if not dataclasses.is_dataclass(current):
            raise ValueError(f"config key {full!r}: {head!r} is not a section")
        return replace(obj, **{head: _set(current, path[1:], raw, full)})
    if dataclasses.is_dataclass(current):
        raise ValueError(f"config key {full!r} is a section; set one of its fields")
    hint = typing.get_type_hints(type(obj))[head]
    return replace(obj, **{head: _parse(raw, hint, full)})


def _parse(raw: str, hint: Any, key: str) -> Any:
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if raw.lower() in ("none", "null") and type(None) in args:
        return None
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        inner = [a for a in args if a is not type(None)]
        return _parse(raw, inner[0], key)
    if origin is tuple:
        items = [s.strip() for s in raw.strip("()[]").split(",") if s.strip()]
        elem = args[0] if args else str
        return tuple(_parse(s, elem, key) for s in items)
    try:
        if hint is bool:
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1", "yes")
        if hint in (int, float, str):
            return hint(raw)
    except ValueError:
        raise ValueError(f"config key {key!r}: cannot parse {raw!r} as {hint.__name__}") from None
    raise ValueError(f"config key {key!r}: unsupported type {hint}")


# Valid ranges by field name, in every section (lo, hi, lo_open): a value outside fails when the
# config is resolved, naming the key, instead of far away (an empty loss file, torch's message).
RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "steps": (1, None, False), "batch_size": (1, None, False), "lr": (0, None, True),
    "critic_lr": (0, None, True), "limit": (1, None, False), "draws": (1, None, False),
    "rank": (1, None, False), "alpha": (0, None, True), "gen_update_ratio": (1, None, False),
    "p_switch": (0, 1, False), "uncond_prob": (0, 1, False), "grad_clip": (0, None, True),
    "base_steps": (1, None, False), "fast_steps": (1, None, False), "base_cfg": (1, None, False),
    "real_cfg": (1, None, False), "shift": (0, None, True), "image_size": (2, None, False),
    "n_train_per_effect": (1, None, False), "n_test_per_category": (1, None, False),
    "n_general": (1, None, False), "n_effects": (1, None, False), "pixel_patch": (2, None, False),
    "stream_redraw_every": (1, None, False), "ts_last_steps": (1, None, False), "warmup": (0, None, False),
    "tafm_weight": (0, None, False), "ts_weight": (0, None, False), "checkpoint_every": (1, None, False),
}


def check_ranges(cfg: Any, prefix: str = "") -> None:
    """Raise ValueError naming the first field (as ``section.field``) outside its valid range."""
    for f in fields(cfg):
        value, key = getattr(cfg, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check_ranges(value, f"{key}.")
            continue
        if f.name not in RANGES or value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        lo, hi, lo_open = RANGES[f.name]
        bad = (lo is not None and (value <= lo if lo_open else value < lo)) or (hi is not None and value > hi)
        if bad:
            span = f"{'>' if lo_open else '>='} {lo}" if hi is None else f"in [{lo}, {hi}]"
            extra = " (or none: all)" if f.name == "limit" else ""
            raise ValueError(f"config key {key!r} = {value!r} is out of range: must be {span}{extra}")


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_json(cfg: Any) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)


# Fields that change how a run is kept (checkpointing, snapshots), never what it computes: left
# out of cell ids and artifact keys, so e.g. a curve cell that publishes snapshots *is* the
# ablation cell of the same run.
BOOKKEEPING_FIELDS = ("checkpoint_every", "keep_checkpoints", "snapshot_every")


# Fields added after artifacts were cached: left out of keys and cell ids while unset (None), so
# adding them changed no existing key; set, they are keyed like any other field.
KEYED_WHEN_SET = ("budget_passes",)


def drop_unset(value: Any) -> Any:
    """A config dict without its unset ``KEYED_WHEN_SET`` fields, at any depth."""
    if isinstance(value, dict):
        return {k: drop_unset(v) for k, v in value.items() if not (k in KEYED_WHEN_SET and v is None)}
    return value


def result_dict(cfg: Any) -> Any:
    """``to_dict(cfg)`` without the bookkeeping fields (and unset ``KEYED_WHEN_SET``), at any depth."""
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in BOOKKEEPING_FIELDS}
        return value

    return drop_unset(strip(to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg))


def config_hash(*parts: Any, length: int = 12) -> str:
    """Short content hash of configs/values (dataclasses are hashed through their dict; unset
    ``KEYED_WHEN_SET`` fields left out)."""
    norm = [drop_unset(to_dict(p)) if dataclasses.is_dataclass(p) else drop_unset(p) for p in parts]
    blob = json.dumps(norm, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]
