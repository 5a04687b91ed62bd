"""One deployment cell's measurement: routing, storage and serving cost for N effects, as tidy rows."""

from __future__ import annotations

import math
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from bench.config import LoraTrainConfig
from bench.studies.deployment.measure import DeploymentRows
from bench.studies.deployment.routing import measure_routing
from bench.studies.deployment.serving import measure_serving, quiet_loaders
from bench.studies.deployment.storage import RANDOM_NOTE, measure_storage, write_random_loras


def measure_deployment(cell: Any, *, out: Path, cache: Any) -> pd.DataFrame:
    """All deployment measurements of one cell as tidy rows."""
    from bench.store import cell_id
    from bench.workspace import Workspace

    cfg = replace(cell.base, n_effects=cell.n_effects)
    ws = Workspace(cfg, cache)
    effects = list(ws.full_bench.select(cell.n_effects).effects)
    if len(effects) < cell.n_effects:
        raise ValueError(f"deployment at N={cell.n_effects}: the EffectBench has only {len(effects)} effects")
    rows = DeploymentRows({"run": cell_id(cell), "ablation": "none", "components": "{}", "preset": cfg.preset,
                  "n_effects": cell.n_effects, "family": "", "category": "", "role": "", "synthetic": False,
                  "seed": cell.seed}, [])
    n_collections = math.ceil(cell.n_effects / cell.capacity)

    measure_routing(rows, effects, cell.routers, capacity=cell.capacity,
                    requests_per_effect=cell.requests_per_effect, seed=cell.seed)

    bb = _deployment_backbone(ws)
    t = bb.transformer
    teacher_cfg = cfg.teacher
    lightning_cfg = LoraTrainConfig(rank=cfg.lightning.rank, alpha=cfg.lightning.alpha)
    ours_cfg = LoraTrainConfig(rank=cfg.distill.rank, alpha=cfg.distill.alpha)
    reps = max(1, cell.timing_repeats)
    with tempfile.TemporaryDirectory(prefix="deploy-") as tmp, quiet_loaders():
        tmp = Path(tmp)
        teachers = write_random_loras(t, teacher_cfg, cell.n_effects, tmp, prefix="teacher", seed=cell.seed)
        lightning = write_random_loras(t, lightning_cfg, 1, tmp, prefix="lightning", seed=cell.seed + 1)[0]
        ours = write_random_loras(t, ours_cfg, n_collections, tmp, prefix="collection", seed=cell.seed + 2)

        measure_storage(rows, teachers=teachers, lightning=lightning, ours=ours, capacity=cell.capacity,
                        note=RANDOM_NOTE)

        src = ws.images([ws.full_bench.test[0].source_image], [ws.full_bench.test[0].origin])
        measure_serving(rows, bb, effects=effects, teachers=teachers, lightning=lightning, ours=ours,
                        capacity=cell.capacity, sampling=cfg.sampling, source=src, repeats=reps, seed=cell.seed,
                        ranks=(teacher_cfg.rank, lightning_cfg.rank, ours_cfg.rank))
    return pd.DataFrame.from_records(rows.records)


def _deployment_backbone(ws: Any) -> Any:
    """A backbone of the run's shapes. Costs do not depend on the weights, so the tiny synthetic
    backbone is freshly initialised (no pretraining); a real backbone is loaded as for a run."""
    from methods.backbones import BACKBONES

    kind = ws.cfg.backbone.kind
    cls = BACKBONES.get(kind)
    if kind == "tiny-qwen":
        return cls.create(ws.cfg.backbone, seed=ws.cfg.seed)
    return ws.load_backbone()
