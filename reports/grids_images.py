"""Qualitative image grids (PNG): one row per test sample, columns source | ground truth (or
teacher) | each method's result. Images are read from disk only: sources and targets from the
EffectBench, results from ``<runs>/cells/<cid>/images/<effect>/NN.png`` as the evaluator saved
them. Tiny synthetic images are enlarged with nearest-neighbour so pixels stay visible."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

CELL = 112        # side of one image tile in the grid (pixels)
HEADER = 30       # header band height
GAP = 4


@dataclass
class GridColumn:
    title: str
    images: Sequence[Path | None]   # one per grid row; None: not available


def _font(size: int = 12):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _tile(path: Path | None) -> Image.Image:
    if path is None or not Path(path).exists():
        tile = Image.new("RGB", (CELL, CELL), (235, 235, 235))
        ImageDraw.Draw(tile).text((CELL // 2 - 12, CELL // 2 - 6), "n/a", fill=(120, 120, 120), font=_font())
        return tile
    img = Image.open(path).convert("RGB")
    resample = Image.NEAREST if max(img.size) * 2 <= CELL else Image.BICUBIC
    return img.resize((CELL, CELL), resample)


def _fit(text: str, width: int, draw: ImageDraw.ImageDraw, font) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def image_grid(columns: Sequence[GridColumn], path: Path, *, title: str = "", row_labels: Sequence[str] = ()) -> Path:
    """Write a grid of ``columns`` (each with one image per row) to ``path``."""
    n_rows = max((len(c.images) for c in columns), default=0)
    label_w = 0
    font = _font(12)
    if row_labels:
        probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        label_w = int(max(probe.textlength(r, font=font) for r in row_labels)) + 10
    title_h = 22 if title else 0
    width = label_w + len(columns) * (CELL + GAP) + GAP
    height = title_h + HEADER + n_rows * (CELL + GAP) + GAP
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((GAP, 4), _fit(title, width - 2 * GAP, draw, _font(14)), fill="black", font=_font(14))
    for j, col in enumerate(columns):
        x = label_w + GAP + j * (CELL + GAP)
        draw.text((x, title_h + 8), _fit(col.title, CELL, draw, font), fill="black", font=font)
        for i in range(n_rows):
            img = col.images[i] if i < len(col.images) else None
            canvas.paste(_tile(img), (x, title_h + HEADER + i * (CELL + GAP)))
    for i, r in enumerate(row_labels[:n_rows]):
        draw.text((GAP, title_h + HEADER + i * (CELL + GAP) + CELL // 2 - 6), r, fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def result_images(image_dir: Path, effect: str, n: int) -> list[Path | None]:
    """The evaluator's saved results ``<effect>/NN.png`` of one cell, under its
    ``ResultStore.image_dir`` (None where absent)."""
    folder = Path(image_dir) / effect
    return [(folder / f"{i:02d}.png") if (folder / f"{i:02d}.png").exists() else None for i in range(n)]
