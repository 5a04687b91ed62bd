"""General-edit stream used to pretrain the base editor.

These are simple, natural-language global edits (brightness, flips, colour
temperature, ...). They are deliberately *not* members of the effect catalogue in
:mod:`bench.synthetic.effects`: the base editor learns to follow instructions from
them, while effects are only ever learned through their LoRAs / triggers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage

Image = np.ndarray
# Bumped when what the general edits write changes (the edits, their phrasings, their sources
# -- ``bench.synthetic.images`` -- or how they are drawn): it keys the base model pretrained on them.
GENERAL_VERSION = 1
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class GeneralEdit:
    """A named global edit with a few phrasings of its instruction."""

    name: str
    instructions: tuple[str, ...]
    fn: Callable[[Image], Image]
    grain: float = 0.0       # stochastic edits: std of the fresh per-pixel grain each pair gets
    grain_mono: bool = True

    def apply(self, img: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Apply the edit; float32 HxWx3 in [0, 1] in and out, same shape. A stochastic edit
        (``grain`` > 0) draws its texture from ``rng``, which it then needs."""
        x = np.asarray(img, dtype=np.float32)
        if x.ndim != 3 or x.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 image, got shape {x.shape}")
        y = self.fn(x)
        if self.grain:
            if rng is None:
                raise ValueError(f"general edit {self.name!r} is stochastic: pass rng=")
            y = y + self.grain * rng.standard_normal((*x.shape[:2], 1 if self.grain_mono else 3)).astype(np.float32)
        return np.clip(y, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------- edit functions


def _gray(x: Image) -> Image:
    return (x @ _LUMA)[..., None]


def _saturation(factor: float) -> Callable[[Image], Image]:
    return lambda x: _gray(x) + factor * (x - _gray(x))


def _contrast(factor: float) -> Callable[[Image], Image]:
    return lambda x: 0.5 + factor * (x - 0.5)


def _offset(delta: float) -> Callable[[Image], Image]:
    return lambda x: x + delta


def _tint(rgb: tuple[float, float, float]) -> Callable[[Image], Image]:
    return lambda x: x + np.asarray(rgb, dtype=np.float32)


def _resize(x: Image, height: int, width: int) -> Image:
    """Bilinear resample to (height, width) with pixel-centre alignment."""
    ys = (np.arange(height) + 0.5) * x.shape[0] / height - 0.5
    xs = (np.arange(width) + 0.5) * x.shape[1] / width - 0.5
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([ndimage.map_coordinates(x[..., c], [yy, xx], order=1, mode="nearest") for c in range(3)], -1)


def _rotate90(x: Image) -> Image:
    out = np.rot90(x, 1, axes=(0, 1))
    # Non-square images are resampled back to their own shape so every edit is shape-preserving.
    return out if out.shape == x.shape else _resize(out, x.shape[0], x.shape[1])


def _zoom_in(x: Image, keep: float = 0.6) -> Image:
    h, w = x.shape[:2]
    ch, cw = max(1, round(h * keep)), max(1, round(w * keep))
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    return _resize(x[y0:y0 + ch, x0:x0 + cw], h, w)


def _zoom_out(x: Image, scale: float = 0.7) -> Image:
    h, w = x.shape[:2]
    sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
    out = np.full_like(x, 0.5)
    y0, x0 = (h - sh) // 2, (w - sw) // 2
    out[y0:y0 + sh, x0:x0 + sw] = _resize(x, sh, sw)
    return out


def _blur(x: Image) -> Image:
    sigma = 0.6 * max(1.0, min(x.shape[:2]) / 16)  # "slightly": ~0.6 px at the 16 px default
    return ndimage.gaussian_filter(x, sigma=(sigma, sigma, 0), mode="nearest")


def _border(x: Image) -> Image:
    out = x.copy()
    b = max(1, round(min(x.shape[:2]) / 16))
    out[:b], out[-b:], out[:, :b], out[:, -b:] = 0.0, 0.0, 0.0, 0.0
    return out


def _e(name: str, fn: Callable[[Image], Image], *instructions: str, grain: float = 0.0,
       grain_mono: bool = True) -> GeneralEdit:
    return GeneralEdit(name=name, instructions=tuple(instructions), fn=fn, grain=grain, grain_mono=grain_mono)


GENERAL_EDITS: tuple[GeneralEdit, ...] = (
    _e("identity", lambda x: x, "Keep the image unchanged.", "Leave the picture as it is.", "Make no changes."),
    _e("brighten_slight", _offset(0.1), "Make it slightly brighter.", "Brighten the image a little."),
    _e("brighten_strong", _offset(0.25), "Make it much brighter.", "Brighten the image a lot.", "Greatly increase the brightness."),
    _e("darken_slight", _offset(-0.1), "Make it slightly darker.", "Darken the image a little."),
    _e("darken_strong", _offset(-0.25), "Make it much darker.", "Darken the image a lot.", "Greatly reduce the brightness."),
    _e("contrast_up", _contrast(1.5), "Increase the contrast.", "Make the image more contrasty.", "Boost the contrast."),
    _e("contrast_down", _contrast(0.6), "Decrease the contrast.", "Make the image flatter and less contrasty."),
    _e("desaturate_slight", _saturation(0.5), "Desaturate the image slightly.", "Make the colours a bit more muted."),
    _e("grayscale", _saturation(0.0), "Convert the image to black and white.", "Make it grayscale.", "Remove all colour."),
    _e("saturate", _saturation(1.6), "Make the colours more vivid.", "Increase the saturation.", "Boost the colours."),
    _e("flip_horizontal", lambda x: x[:, ::-1], "Flip the image horizontally.", "Mirror the picture left to right."),
    _e("flip_vertical", lambda x: x[::-1], "Flip the image vertically.", "Turn the picture upside down by flipping it."),
    _e("rotate_90", _rotate90, "Rotate the image 90 degrees counter-clockwise.", "Turn the picture a quarter turn to the left."),
    _e("rotate_180", lambda x: x[::-1, ::-1], "Rotate the image 180 degrees.", "Turn the picture upside down."),
    _e("warmer", _tint((0.08, 0.02, -0.08)), "Make the colours warmer.", "Shift the colours towards orange.", "Give it a warmer tone."),
    _e("cooler", _tint((-0.08, 0.0, 0.08)), "Make the colours cooler.", "Shift the colours towards blue.", "Give it a colder tone."),
    _e("tint_green", _tint((-0.04, 0.08, -0.04)), "Add a slight green tint.", "Make it a little greener."),
    _e("tint_magenta", _tint((0.07, -0.06, 0.07)), "Add a slight magenta tint.", "Make it a little more pink-purple."),
    _e("zoom_in", _zoom_in, "Zoom in on the centre.", "Crop to the middle of the image and enlarge it."),
    _e("zoom_out", _zoom_out, "Zoom out, leaving a grey margin.", "Shrink the picture into the middle of a grey canvas."),
    _e("blur_slight", _blur, "Blur the image slightly.", "Make it a little softer.", "Apply a gentle blur."),
    _e("swap_red_blue", lambda x: x[..., ::-1], "Swap the red and blue channels.", "Exchange red and blue."),
    _e("invert", lambda x: 1.0 - x, "Invert the colours.", "Make a negative of the image."),
    _e("fade", lambda x: 0.65 * x + 0.35, "Fade the image towards white.", "Make it look washed out."),
    _e("black_border", _border, "Add a thin black border.", "Frame the image with a thin black line."),
    # Stochastic general edits: a fresh texture per pair, so p(target | source, instruction) is
    # spread and the plain base loses detail at few steps (what Lightning has to restore).
    _e("film_grain", lambda x: x, "Add film grain.", "Give it a grainy film look.", grain=0.12),
    _e("colour_noise", lambda x: x, "Add colour noise.", "Sprinkle the image with colour speckle.",
       grain=0.12, grain_mono=False),
    _e("grainy_bw", _saturation(0.0), "Make it a grainy black-and-white photo.", "Turn it into grainy monochrome.",
       grain=0.10),
)


def sample_general_edit(rng: np.random.Generator) -> tuple[str, GeneralEdit]:
    """Pick a general edit uniformly, then one of its phrasings uniformly."""
    edit = GENERAL_EDITS[int(rng.integers(len(GENERAL_EDITS)))]
    return edit.instructions[int(rng.integers(len(edit.instructions)))], edit
