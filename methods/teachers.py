"""Per-effect teacher LoRAs: trained with flow matching on (source, effect(source)) pairs with
the effect's own trigger prompt, on top of the frozen base, and saved as diffusers LoRAs."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from bench.cache import ArtifactSpec
from bench.config import LoraTrainConfig
from methods.backbones import Backbone
from methods.distributed import DistEnv
from methods.fm import EditPairs, FMSettings, train_flow_matching
from methods.lora import add_lora, save_lora, weights_fingerprint

TRAINING_ADAPTER = "lora_in_training"  # not "training": that is an nn.Module attribute


def train_teacher(backbone: Backbone, pairs: EditPairs, cfg: LoraTrainConfig, *, shift: float,
                  seed: int, out_dir: Path, desc: str, env: DistEnv | None = None) -> Path | None:
    """Train one LoRA on ``backbone`` (left without adapters afterwards) and save it to ``out_dir``.
    Under ``env`` with several ranks they train it together, data-parallel, and rank 0 alone
    writes (the others return None)."""
    env = env or DistEnv()
    transformer = backbone.transformer
    transformer.requires_grad_(False)
    with torch.random.fork_rng():  # LoRA init from the teacher's seed: reproducible across processes
        torch.manual_seed(seed)
        add_lora(transformer, TRAINING_ADAPTER, cfg)
    try:
        settings = FMSettings(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, shift=shift,
                              uncond_prob=cfg.uncond_prob, grad_clip=cfg.grad_clip,
                              weighting_scheme=cfg.weighting_scheme, logit_mean=cfg.logit_mean,
                              logit_std=cfg.logit_std, mode_scale=cfg.mode_scale, budget_passes=cfg.budget_passes)
        train_flow_matching(backbone, pairs, settings, seed=seed, log_path=out_dir / "loss.csv", desc=desc, env=env)
        return save_lora(transformer, TRAINING_ADAPTER, out_dir) if env.is_main else None
    finally:
        transformer.delete_adapters([TRAINING_ADAPTER])


def teacher_identity(effect, teacher: Path) -> str:  # noqa: ANN001
    """How artifact specs name a teacher LoRA: a teacher trained here by its cache key (its
    directory name, which hashes its prompt and training data); a manifest ``lora_path`` by the
    bytes of its weight file -- its name says nothing (every diffusers LoRA file is called
    ``pytorch_lora_weights.safetensors``) and an edited file must not serve stale artifacts."""
    if effect.lora_path is None:
        return teacher.name
    return weights_fingerprint(teacher)


def outputs_spec(ws, effect, teacher: Path, rows) -> ArtifactSpec:  # noqa: ANN001
    """The cached outputs of a teacher. The images depend on the base model, the teacher and
    its prompt (a teacher trained here: its key holds the prompt; a manifest ``lora_path``: its
    bytes and the effect's prompt), the sampler, the image size, the noise seed and the sources:
    by their path inside the dataset (so a moved cache or dataset keeps its keys) and, for a
    dataset on disk, their bytes."""
    from bench.config import to_dict

    who = teacher_identity(effect, teacher)
    if effect.lora_path is not None:
        who = (who, effect.prompt)
    # Sampled with euler whatever the students use: dmd_sampler stays out of the key.
    sampling = {k: v for k, v in to_dict(ws.cfg.sampling).items() if k != "dmd_sampler"}
    return ArtifactSpec("teacher_outputs", {
        "base": ws.base_key, "teacher": who, "sampling": sampling, "image_size": ws.image_size,
        "seed": ws.cfg.world.seed, "sources": [os.path.relpath(r.source_image, ws.dataset_root) for r in rows],
        **ws.content_inputs([r.source_image for r in rows])}, label=f"teacher outputs {effect.lora_name}")


def teacher_outputs(ws, effect, backbone: Backbone | None = None) -> "torch.Tensor":
    """The teacher's own edits of its training sources at Base settings (40 steps, CFG 4.0):
    the ``base_pred`` images that TA-FM / TS anchor on and FM all-in-1 trains on. Cached."""
    import torch

    from methods.flow import generate
    from methods.lora import load_lora

    rows = ws.full_bench.train_rows(effect.lora_name)
    if rows and all(r.base_pred_image is not None for r in rows):  # precomputed in the manifest
        return ws.images([r.base_pred_image for r in rows], [r.origin for r in rows])
    teacher = ws.teacher_dir(effect, backbone)
    spec = outputs_spec(ws, effect, teacher, rows)

    def build(out: Path) -> None:
        bb = backbone or ws.load_backbone()
        sources = ws.images([r.source_image for r in rows], [r.origin for r in rows])
        load_lora(bb.transformer, teacher, "_teacher_outputs")
        bb.transformer.set_adapters(["_teacher_outputs"])
        try:
            s = ws.cfg.sampling
            h, w = sources.shape[-2:]
            gen = torch.Generator().manual_seed(ws.cfg.world.seed)
            outs = []
            for start in range(0, len(rows), 64):
                src = bb.encode_images(sources[start:start + 64])
                n = src.shape[0]
                imgs = sources[start:start + 64]
                lat, _ = generate(bb, src, bb.encode_prompts([effect.prompt] * n, imgs), bb.latent_grid(h, w),
                                  steps=s.base_steps, shift=s.shift, cfg_scale=s.base_cfg,
                                  uncond=bb.encode_prompts([""] * n, imgs), generator=gen, sampler="euler")
                outs.append(bb.decode_latents(lat, h, w))
            torch.save(torch.cat(outs), out / "outputs.pt")
        finally:
            bb.transformer.delete_adapters(["_teacher_outputs"])

    path = ws.cache.get_or_build(spec, build)
    outputs = torch.load(path / "outputs.pt")
    if not bool(torch.isfinite(outputs).all()):  # cached before the cache refused NaN artifacts
        from bench.errors import NonFiniteError

        raise NonFiniteError(f"cached teacher outputs of {effect.lora_name!r} ({path / 'outputs.pt'}) hold "
                             f"NaN/inf; delete {path} and check the teacher LoRA {teacher}")
    return outputs
