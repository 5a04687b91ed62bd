"""Image files: load as float RGB in [0, 1], save as PNG atomically, check one without keeping it."""

from __future__ import annotations

import io
import operator
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps

from bench.cache import atomic_write
from bench.data.errors import EffectBenchError


def _to_rgb(im: Image.Image) -> Image.Image:
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(im).astype(np.float64)
        scale = 65535.0 if im.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        im = Image.fromarray(np.clip(np.rint(a / scale * 255.0), 0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float64))
        scale = 255.0 if a.max(initial=0) > 1.0 else 1.0
        im = Image.fromarray(np.clip(np.rint(a / scale * 255.0), 0, 255).astype(np.uint8), "L")
    elif im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return im if im.mode == "RGB" else im.convert("RGB")


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, bool):
        raise ValueError(f"size must be an int or (height, width), got {size!r}")
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        try:
            h, w = (int(operator.index(s)) for s in size)
        except (TypeError, ValueError):
            raise ValueError(f"size must be an int or (height, width), got {size!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return h, w


def load_image(
    path: str | os.PathLike,
    *,
    size: int | tuple[int, int] | None = None,
    origin: str | None = None,
) -> np.ndarray:
    """Load an image as float32 ``H x W x 3`` RGB in [0, 1].

    ``size``: an int (square) or ``(height, width)``; resized with Lanczos when
    shrinking, bicubic when enlarging.  EXIF orientation is applied and alpha
    dropped.  Errors are :class:`EffectBenchError` naming ``origin`` (e.g.
    ``"train.jsonl:12"``) and the file.
    """
    p = Path(path)
    where = f"{origin}: " if origin else f"{p}: "
    hw = _hw(size) if size is not None else None
    try:
        with Image.open(p) as im:
            im.load()
            rgb = _to_rgb(im)
    except FileNotFoundError:
        raise EffectBenchError(f"{where}image not found: {p}") from None
    except IsADirectoryError:
        raise EffectBenchError(f"{where}not a file: {p}") from None
    except Exception as e:
        raise EffectBenchError(f"{where}unreadable image {p}: {type(e).__name__}: {e}") from e
    if hw is not None and (rgb.height, rgb.width) != hw:
        h, w = hw
        shrink = h * w < rgb.height * rgb.width
        rgb = rgb.resize((w, h), Image.Resampling.LANCZOS if shrink else Image.Resampling.BICUBIC)
    return np.asarray(rgb, dtype=np.float32) / np.float32(255.0)


def save_image(path: str | os.PathLike, array: Any) -> Path:
    """Write ``array`` as PNG (atomically, parent dirs created); returns the path.

    Accepts ``H x W``, ``H x W x 1``, ``H x W x 3`` or ``H x W x 4`` arrays
    (numpy or CPU/GPU torch tensors): floats are taken as [0, 1], clipped and
    rounded to uint8; uint8 / bool are written as is.
    """
    if hasattr(array, "detach") and hasattr(array, "cpu"):  # torch tensor
        array = array.detach().cpu().float().numpy() if array.dtype.is_floating_point else array.detach().cpu().numpy()
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))) or a.size == 0:
        raise ValueError(f"save_image({path}): expected HxW, HxWx1, HxWx3 or HxWx4, got shape {a.shape}")
    if a.dtype == np.uint8:
        u8 = a
    elif a.dtype == np.bool_:
        u8 = a.astype(np.uint8) * 255
    elif np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"save_image({path}): array contains NaN or Inf")
        u8 = np.rint(np.clip(a.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
    else:
        raise TypeError(f"save_image({path}): expected float in [0,1] or uint8, got dtype {a.dtype}")
    img = Image.fromarray(np.ascontiguousarray(u8))
    p = Path(path)
    atomic_write(p, lambda f: img.save(f, format="PNG"))
    return p


def check_image_file(path: str, decode: bool) -> str | None:
    """``None`` if fine, else a problem text (without location)."""
    if not decode:
        if os.path.isfile(path):
            return None
        if os.path.isdir(path):
            return f"not a file: {path}"
        return f"image not found: {path}"
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return f"image not found: {path}"
    except IsADirectoryError:
        return f"not a file: {path}"
    except OSError as e:
        return f"unreadable image {path}: {e.strerror or e}"
    try:
        if ImageFile.LOAD_TRUNCATED_IMAGES:
            # someone switched truncation tolerance on: load() alone would pad a
            # truncated file silently, so verify() the structure/CRCs first.
            with Image.open(io.BytesIO(data)) as im:
                im.verify()
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # full decode
    except Exception as e:  # PIL raises many types for bad files
        return f"unreadable image {path}: {type(e).__name__}: {e}"
    return None
