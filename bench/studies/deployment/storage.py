"""Storage cost: bytes on disk of the adapter files each pipeline ships.

The files are written through ``methods.lora.save_lora`` at the run's ranks and target modules
and ``stat``-ed; their weights are random (a file's size depends only on its shapes, so trained
files have the same size) -- the rows say so in ``note`` (:data:`RANDOM_NOTE`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.config import LoraTrainConfig
from bench.studies.deployment.measure import DeploymentRows

RANDOM_NOTE = "adapter files of the configured shapes with random weights (file size depends only on shapes)"


def write_random_loras(transformer: Any, cfg: LoraTrainConfig, count: int, directory: Path, *, prefix: str,
                       seed: int) -> list[Path]:
    """``count`` LoRA files of ``cfg``'s rank / targets with random weights, through ``save_lora``."""
    import torch

    from methods.lora import add_lora, save_lora

    name = f"_{prefix}_writer"
    add_lora(transformer, name, cfg)
    params = [(n, p) for n, p in transformer.named_parameters() if f".{name}." in n]
    gen = torch.Generator().manual_seed(seed)
    files = []
    try:
        for i in range(count):
            with torch.no_grad():
                for pname, p in params:  # B random too: hotswap / fuse then move real numbers
                    scale = 0.02 if "lora_B" in pname else 1.0 / math.sqrt(p.shape[-1])
                    p.copy_(torch.randn(p.shape, generator=gen) * scale)
            files.append(save_lora(transformer, name, directory / f"{prefix}-{i:04d}"))
    finally:
        transformer.delete_adapters(name)
    return files


def measure_storage(rows: DeploymentRows, *, teachers: Sequence[Path], lightning: Path, ours: Sequence[Path],
                    capacity: int, note: str = "") -> None:
    """Bytes on disk (``stat``) of what each pipeline must ship to serve these effects."""
    files = {"baseline": [*teachers, lightning], "ours": list(ours)}
    what = {"baseline": f"{len(teachers)} effect LoRAs + 1 Lightning LoRA",
            "ours": f"{len(ours)} CollectionLoRA(s) of capacity {capacity}"}
    for method, fs in files.items():
        rows.add(method, "storage_bytes", sum(Path(f).stat().st_size for f in fs), higher=False,
                 note="; ".join(filter(None, [what[method], note])))
        rows.add(method, "storage_files", len(fs), higher=False)
