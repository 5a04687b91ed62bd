"""Parametric image effects with exact ground truth: the catalogue of "effect LoRAs".

Each :class:`Effect` is a named, parameterised, deterministic image operation drawn
from one of several families (colour mappings, tone curves, textures, warps, local
filters, stylisations, lighting, glitches and combinations). Effects in a family
share machinery but differ in parameters, so a single student model has to spend
capacity to tell them apart.

Conventions:

* images are float32 ``HxWx3`` in ``[0, 1]``; any size from a few pixels up works;
* spatial parameters are fractions of the *shorter* image side (with pixel minima),
  so an effect looks the same at 16 px and at 512 px;
* textures come from ``pattern_seed`` params (derived from the catalogue seed and
  the effect name), never from global random state;
* **every effect is stochastic** (:class:`Variation`): a fresh draw per training pair picks
  either one of K well-separated *modes* (a palette direction, a stripe phase, a light
  direction ...) or a fresh *texture* seed (grain, dither, per-tile choices), so
  p(target | source, prompt) is multi-modal as for a real effect LoRA. ``Effect.apply`` with
  no draw gives the canonical variant (mode 0 / the catalogue's own pattern seed);
* :func:`build_effects` interleaves families so that every prefix of the catalogue
  spans many families (a run with N effects uses the first N), and leaves out the effects the
  learnability gate found to test nothing (``GATE_DROPPED``).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np
from scipy import ndimage, signal

from bench.synthetic.images import CATEGORIES

Image = np.ndarray
ParamValue = float | int | str
Params = dict[str, ParamValue]

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


# =========================================================================== Effect


@dataclass(frozen=True)
class Effect:
    """One effect of the catalogue: its identity, prompts and exact ground-truth function."""

    name: str
    family: str
    op: str
    params: tuple[tuple[str, ParamValue], ...]
    teacher_prompt: str
    trigger: str
    description: str
    data_type: str
    variation: "Variation | None" = None

    @property
    def stochastic(self) -> bool:
        return self.variation is not None

    def params_dict(self) -> Params:
        """The parameters as a plain JSON-serialisable dict (includes nothing but scalars)."""
        return dict(self.params)

    def draw(self, rng: np.random.Generator) -> Draw:
        """A fresh parameter draw (``{}`` for a deterministic effect); JSON-serialisable."""
        return self.variation.draw(rng) if self.variation is not None else {}

    def apply(self, img: np.ndarray, draw: Draw | None = None) -> np.ndarray:
        """Apply the effect with ``draw`` (None: the canonical variant): float32 HxWx3 in [0, 1]
        in and out, same shape, pure."""
        x = np.asarray(img, dtype=np.float32)
        if x.ndim != 3 or x.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 image, got shape {x.shape}")
        params = self.params_dict()
        v = self.variation
        if v is None or not draw:
            out = _OPS[self.op](x, params)
        elif v.kind == "modes":
            out = _OPS[self.op](x, {**params, **dict(v.modes[int(draw["mode"])])})
        elif v.axis == "pattern_seed":
            out = _OPS[self.op](x, {**params, "pattern_seed": int(draw["seed"])})
        else:  # grain texture, added before (random dithering) or after the op
            noise = v.grain * np.random.default_rng(int(draw["seed"])).standard_normal(
                (*x.shape[:2], 1 if v.grain_mono else 3)).astype(np.float32)
            out = _OPS[self.op](np.clip(x + noise, 0, 1), params) if v.grain_pre else _OPS[self.op](x, params) + noise
        return np.clip(out, 0.0, 1.0).astype(np.float32)

    def mode_variants(self, img: np.ndarray) -> np.ndarray:
        """(K, H, W, 3): the effect under each of its K modes (a modes effect only)."""
        if self.variation is None or self.variation.kind != "modes":
            raise ValueError(f"effect {self.name!r} has no discrete modes")
        return np.stack([self.apply(img, {"mode": k}) for k in range(len(self.variation.modes))])


Draw = dict[str, int]


@dataclass(frozen=True)
class Variation:
    """How an effect's output varies from one training pair to the next (DESIGN 3.1).

    * ``modes``: one of K well-separated variants, uniformly (``modes`` holds each variant's
      parameter overrides). Exact metrics enumerate all K (nearest mode, mode mean, coverage).
    * ``texture``: a fresh seed of high-dimensional randomness -- the op's own ``pattern_seed``
      (tile shuffles, static, watercolour paper ...) or Gaussian grain of std ``grain`` per
      pixel, added before the op (``grain_pre``: random dithering of quantisers and palettes)
      or after it. Its mode mean and expected spread are estimated by Monte Carlo.
    """

    kind: str                                   # "modes" | "texture"
    axis: str                                   # what is drawn: "mode", "pattern_seed" or "grain_seed"
    modes: tuple[tuple[tuple[str, ParamValue], ...], ...] = ()
    grain: float = 0.0
    grain_mono: bool = True
    grain_pre: bool = False

    def draw(self, rng: np.random.Generator) -> Draw:
        if self.kind == "modes":
            return {"mode": int(rng.integers(len(self.modes)))}
        return {"seed": int(rng.integers(2**31 - 1))}

    def describe(self) -> dict:
        """The parameter space, as written to ``effects.jsonl``."""
        if self.kind == "modes":
            return {"kind": "modes", "axis": "mode", "k": len(self.modes),
                    "probabilities": [1 / len(self.modes)] * len(self.modes),
                    "modes": [dict(m) for m in self.modes]}
        out = {"kind": "texture", "axis": self.axis, "distribution": "seed uniform in [0, 2^31 - 1)"}
        if self.axis == "grain_seed":
            out["grain"] = {"std": self.grain, "mono": self.grain_mono, "before_op": self.grain_pre}
        return out


# =========================================================================== primitives


def _luma(x: Image) -> np.ndarray:
    return x @ _LUMA


def _rgb(hex_color: str) -> np.ndarray:
    h = hex_color.lstrip("#")
    return np.array([int(h[i:i + 2], 16) / 255.0 for i in (0, 2, 4)], dtype=np.float32)


def _colors(spec: str) -> np.ndarray:
    """'#rrggbb-#rrggbb-...' -> (n, 3) array."""
    return np.stack([_rgb(c) for c in spec.split("-")])


def _floats(spec: str | float | int) -> np.ndarray:
    """'a,b,c' (or a scalar) -> float32 array."""
    if isinstance(spec, (int, float)):
        return np.array([spec], dtype=np.float32)
    return np.array([float(v) for v in spec.split(",")], dtype=np.float32)


def _side(x: Image) -> int:
    return min(x.shape[0], x.shape[1])


def _px(x: Image, frac: float, minimum: float = 1.0) -> float:
    """A length given as a fraction of the shorter side, in pixels, with a floor."""
    return max(minimum, frac * _side(x))


def _lerp(a: np.ndarray, b: np.ndarray | float, t: np.ndarray | float) -> np.ndarray:
    return a + (b - a) * t


def _screen(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return 1.0 - (1.0 - a) * (1.0 - b)


def _smoothstep(e0: float, e1: float, t: np.ndarray) -> np.ndarray:
    u = np.clip((t - e0) / (e1 - e0), 0.0, 1.0)
    return u * u * (3.0 - 2.0 * u)


def _saturate(x: Image, factor: float) -> Image:
    g = _luma(x)[..., None]
    return g + factor * (x - g)


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


@lru_cache(maxsize=128)
def _coords(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Centred normalised coordinates (y, x); the shorter side spans [-0.5, 0.5]."""
    s = min(h, w)
    ys = ((np.arange(h) + 0.5 - h / 2) / s).astype(np.float32)
    xs = ((np.arange(w) + 0.5 - w / 2) / s).astype(np.float32)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return _frozen(yy), _frozen(xx)


@lru_cache(maxsize=128)
def _pixel_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    return _frozen(yy), _frozen(xx)


@lru_cache(maxsize=128)
def _noise(seed: int, h: int, w: int, channels: int) -> np.ndarray:
    """Fixed uniform [0, 1) noise pattern for a (seed, size)."""
    return _frozen(np.random.default_rng(seed).random((h, w, channels), dtype=np.float32))


def _index(i: np.ndarray, n: int, mode: str) -> np.ndarray:
    if mode == "wrap":
        return i % n
    if mode == "clamp":
        return np.clip(i, 0, n - 1)
    i = i % (2 * n)  # half-sample symmetric reflection
    return np.where(i >= n, 2 * n - 1 - i, i)


def _sample(x: Image, sy: np.ndarray, sx: np.ndarray, mode: str = "reflect") -> Image:
    """Bilinear sampling of ``x`` at pixel coordinates (sy, sx)."""
    h, w = x.shape[:2]
    sy, sx = np.asarray(sy, np.float32), np.asarray(sx, np.float32)
    y0, x0 = np.floor(sy), np.floor(sx)
    fy, fx = (sy - y0)[..., None], (sx - x0)[..., None]
    y0, x0 = y0.astype(np.int64), x0.astype(np.int64)
    ya, yb = _index(y0, h, mode) * w, _index(y0 + 1, h, mode) * w
    xa, xb = _index(x0, w, mode), _index(x0 + 1, w, mode)
    flat = x.reshape(h * w, x.shape[2])
    top = flat[ya + xa] * (1 - fx) + flat[ya + xb] * fx  # gathers on flat indices are much faster
    bottom = flat[yb + xa] * (1 - fx) + flat[yb + xb] * fx
    return top * (1 - fy) + bottom * fy


def _sample_norm(x: Image, ny: np.ndarray, nx: np.ndarray, mode: str = "reflect") -> Image:
    """Bilinear sampling at centred normalised coordinates (see :func:`_coords`)."""
    h, w = x.shape[:2]
    s = min(h, w)
    return _sample(x, ny * s + h / 2 - 0.5, nx * s + w / 2 - 0.5, mode)


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    sig = (sigma, sigma) + (0.0,) * (x.ndim - 2)
    return ndimage.gaussian_filter(x, sigma=sig, mode="nearest")


def _gradients(lum: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel luminance derivatives (Sobel, normalised to a unit ramp)."""
    gy = ndimage.sobel(lum, axis=0, mode="nearest") / 8.0
    gx = ndimage.sobel(lum, axis=1, mode="nearest") / 8.0
    return gy, gx


def _edge_mag(lum: np.ndarray) -> np.ndarray:
    gy, gx = _gradients(lum)
    return np.hypot(gy, gx)


def _gradient_map(t: np.ndarray, stops: np.ndarray) -> Image:
    pos = np.linspace(0.0, 1.0, len(stops))
    return np.stack([np.interp(t, pos, stops[:, c]) for c in range(3)], axis=-1).astype(np.float32)


def _posterize(x: np.ndarray, levels: int) -> np.ndarray:
    return np.round(np.clip(x, 0, 1) * (levels - 1)) / (levels - 1)


def _stripe_mask(h: int, w: int, angle_deg: float, period: float, duty: float, phase: float = 0.0) -> np.ndarray:
    """Anti-aliased stripes: 1 on the stripes, ``period`` in px across the stripes."""
    yy, xx = _pixel_grid(h, w)
    a = np.deg2rad(angle_deg)
    # Stripe centres pass through pixel centres, so even 2 px stripes render as crisp on/off rows.
    d = (np.cos(a) * xx + np.sin(a) * yy) / period + 0.5 + phase
    dist = np.abs(d - np.floor(d) - 0.5) * period  # px from the stripe centre
    return np.clip(duty * period / 2 - dist + 0.5, 0.0, 1.0)


def _dot_mask(x: Image, cell: float, radius: np.ndarray | float, angle_deg: float = 0.0) -> np.ndarray:
    """Anti-aliased dots on a (rotated) grid of ``cell`` px; ``radius`` in px (may vary per pixel)."""
    yy, xx = _pixel_grid(*x.shape[:2])
    a = np.deg2rad(angle_deg)
    u = np.cos(a) * xx + np.sin(a) * yy
    v = -np.sin(a) * xx + np.cos(a) * yy
    du = (u / cell - np.floor(u / cell) - 0.5) * cell
    dv = (v / cell - np.floor(v / cell) - 0.5) * cell
    return np.clip(radius - np.hypot(du, dv) + 0.5, 0.0, 1.0)


def _cells(h: int, w: int, grid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split into grid x grid cells: (cell row, cell col, local y frac, local x frac, row edges, col edges)."""
    ey = np.linspace(0, h, grid + 1)
    ex = np.linspace(0, w, grid + 1)
    yy, xx = _pixel_grid(h, w)
    cy = np.clip(np.searchsorted(ey, yy + 0.5, side="right") - 1, 0, grid - 1)
    cx = np.clip(np.searchsorted(ex, xx + 0.5, side="right") - 1, 0, grid - 1)
    ly = (yy + 0.5 - ey[cy]) / (ey[cy + 1] - ey[cy])
    lx = (xx + 0.5 - ex[cx]) / (ex[cx + 1] - ex[cx])
    return cy, cx, ly, lx, ey, ex


def _label_mean(x: Image, labels: np.ndarray) -> Image:
    """Replace every pixel by the mean colour of its label (a block / cell)."""
    flat = labels.ravel()
    counts = np.bincount(flat)
    means = np.stack([np.bincount(flat, weights=x[..., c].ravel()) for c in range(3)], -1)
    means /= np.maximum(counts, 1)[:, None]
    return means[labels].astype(np.float32)


def _block_labels(h: int, w: int, by: float, bx: float, row_offset: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Block index per pixel; odd block rows shifted by ``row_offset`` blocks (brick layout)."""
    yy, xx = _pixel_grid(h, w)
    row = np.floor(yy / by).astype(np.int64)
    col = np.floor(xx / bx + (row % 2) * row_offset).astype(np.int64)
    ncol = int(np.ceil(w / bx)) + 2
    return row * ncol + col, row, col


def _grain(x: Image, seed: int, grain_px: int, channels: int) -> np.ndarray:
    """Zero-mean fixed noise in [-1, 1] with clumps of ``grain_px`` pixels."""
    h, w = x.shape[:2]
    n = _noise(seed, -(-h // grain_px), -(-w // grain_px), channels)
    n = np.repeat(np.repeat(n, grain_px, 0), grain_px, 1)[:h, :w]
    return 2.0 * n - 1.0


def _block_px(x: Image, frac: float, minimum: int = 1) -> int:
    """A whole-pixel block size from a fraction of the shorter side."""
    return max(minimum, round(frac * _side(x)))


def _pixelate(x: Image, by: float, bx: float) -> Image:
    labels, _, _ = _block_labels(*x.shape[:2], by, bx)
    return _label_mean(x, labels)


def _tile(x: Image, n: int) -> Image:
    """n x n shrunken copies of the image."""
    h, w = x.shape[:2]
    yy, xx = _pixel_grid(h, w)
    src = _blur(x, 0.4 * (n - 1))  # pre-filter so the shrink does not alias
    sy = np.mod((yy + 0.5) * n / h, 1.0) * h - 0.5
    sx = np.mod((xx + 0.5) * n / w, 1.0) * w - 0.5
    return _sample(src, sy, sx, "clamp")


def _halftone(x: Image, cell: float, angle: float, darkness: np.ndarray) -> np.ndarray:
    # Radius grows with sqrt(darkness) so ink area tracks darkness; 0.71*cell fully covers a cell.
    return _dot_mask(x, cell, 0.71 * cell * np.sqrt(np.clip(darkness, 0, 1)), angle)


def _vignette_mask(x: Image, radius: float, softness: float) -> np.ndarray:
    yy, xx = _coords(*x.shape[:2])
    return _smoothstep(radius, radius + softness, np.hypot(yy, xx))


def _scanlines(x: Image, strength: float) -> Image:
    period = _px(x, 1 / 8, 2.0)
    mask = _stripe_mask(*x.shape[:2], 90.0, period, 0.5)
    return x * (1 - strength * mask[..., None])


def _hue_matrix(degrees: float, saturation: float) -> np.ndarray:
    """Rotate chroma in YIQ space by ``degrees`` and scale it by ``saturation``."""
    to_yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    a = np.deg2rad(degrees)
    rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rot[1:, 1:] *= saturation
    return (np.linalg.inv(to_yiq) @ rot @ to_yiq).astype(np.float32)


def _hue_colors(x: Image) -> Image:
    """Fully saturated, full-value version of each pixel's hue (white where grey)."""
    lo, hi = x.min(-1, keepdims=True), x.max(-1, keepdims=True)
    return np.where(hi - lo > 1e-3, (x - lo) / np.maximum(hi - lo, 1e-3), 1.0)


def _band_offsets(seed: int, n: int, bands: int, max_shift: float) -> np.ndarray:
    """Per-row (or per-column) shifts: random band boundaries and shifts, fixed by seed."""
    rng = np.random.default_rng(seed)
    cuts = (np.arange(1, bands) + rng.uniform(-0.3, 0.3, bands - 1)) / bands  # jittered, never empty
    shifts = rng.uniform(0.35, 1.0, bands) * max_shift * rng.choice([-1.0, 1.0], bands)
    shifts[::3] = 0.0  # some bands stay in place so the glitch reads as displacement
    band = np.searchsorted(cuts, (np.arange(n) + 0.5) / n)
    return shifts[band]


# =========================================================================== ops

_OPS: dict[str, Callable[[Image, Params], Image]] = {}


def _op(name: str) -> Callable[[Callable[[Image, Params], Image]], Callable[[Image, Params], Image]]:
    def register(fn: Callable[[Image, Params], Image]) -> Callable[[Image, Params], Image]:
        _OPS[name] = fn
        return fn

    return register


# --------------------------------------------------------------------------- colour


@_op("gradient_map")
def _op_gradient_map(x: Image, p: Params) -> Image:
    stops = _colors(str(p["stops"]))
    return _gradient_map(_luma(x), stops[::-1] if int(p.get("reverse", 0)) else stops)


@_op("hue_rotate")
def _op_hue_rotate(x: Image, p: Params) -> Image:
    return x @ _hue_matrix(float(p["degrees"]), float(p["saturation"])).T


@_op("color_matrix")
def _op_color_matrix(x: Image, p: Params) -> Image:
    m = _floats(str(p["matrix"])).reshape(3, 3)
    return x @ m.T + _floats(str(p.get("offset", "0,0,0")))


# --------------------------------------------------------------------------- tone


def _s_curve(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    return y + s * (y * y * (3 - 2 * y) - y)  # s=1: smoothstep; s<0: flattening


@_op("tone_curve")
def _op_tone_curve(x: Image, p: Params) -> Image:
    y = np.clip(x, 0, 1) ** _floats(p["gamma"])
    y = _s_curve(np.clip(y, 0, 1), _floats(p["s"]))
    y = _floats(p["lift"]) + (_floats(p["gain"]) - _floats(p["lift"])) * y
    return _saturate(y, float(p.get("saturation", 1.0)))


@_op("wave_curve")
def _op_wave_curve(x: Image, p: Params) -> Image:
    return 0.5 - 0.5 * np.cos(2 * np.pi * (float(p["freq"]) * x + _floats(p["phase"])))


@_op("posterize")
def _op_posterize(x: Image, p: Params) -> Image:
    levels, mode = int(p["levels"]), str(p["mode"])
    if mode == "rgb":
        return _posterize(x, levels)
    lum = _luma(x)
    q = _posterize(lum, levels)
    if mode == "gray":
        return np.repeat(q[..., None], 3, -1)
    return x * ((q + 0.04) / (lum + 0.04))[..., None]  # "bands": quantise brightness, keep hue


@_op("solarize")
def _op_solarize(x: Image, p: Params) -> Image:
    t = float(p["threshold"])
    return np.where(x > t, 1.0 - x, x) / max(t, 1 - t)  # rescaled so the peak reaches white


@_op("threshold")
def _op_threshold(x: Image, p: Params) -> Image:
    m = np.clip((_luma(x) - float(p["threshold"])) / 0.04 + 0.5, 0, 1)[..., None]
    return _lerp(_rgb(str(p["dark"])), _rgb(str(p["light"])), m)


@lru_cache(maxsize=8)
def _bayer(n: int) -> np.ndarray:
    m = np.zeros((1, 1))
    while m.shape[0] < n:
        m = np.block([[4 * m, 4 * m + 2], [4 * m + 3, 4 * m + 1]])
    return _frozen(((m + 0.5) / m.size).astype(np.float32))


@_op("dither")
def _op_dither(x: Image, p: Params) -> Image:
    levels, mode, matrix = int(p["levels"]), str(p["mode"]), str(p["matrix"])
    h, w = x.shape[:2]
    if matrix == "noise":
        thr = _noise(int(p["pattern_seed"]), h, w, 1)[..., 0]
    else:
        b = _bayer(int(matrix))
        thr = np.tile(b, (-(-h // b.shape[0]), -(-w // b.shape[1])))[:h, :w]
    v = _luma(x)[..., None] if mode == "gray" else x
    q = np.floor(np.clip(v, 0, 1) * (levels - 1) + thr[..., None]) / (levels - 1)
    return np.broadcast_to(q, x.shape)


# --------------------------------------------------------------------------- textures


@_op("stripes")
def _op_stripes(x: Image, p: Params) -> Image:
    period = _px(x, float(p["period"]), 2.0)
    m = _stripe_mask(*x.shape[:2], float(p["angle"]), period, float(p["duty"]),
                     float(p.get("phase", 0.0)))[..., None] * float(p["strength"])
    style = str(p["style"])
    if style == "dark":
        return x * (1 - m)
    return _lerp(x, _screen(x, _rgb(str(p["color"]))), m)


@_op("checker")
def _op_checker(x: Image, p: Params) -> Image:
    cell = _px(x, float(p["cell"]), 2.0)
    yy, xx = _pixel_grid(*x.shape[:2])
    c = ((np.floor(yy / cell) + np.floor(xx / cell) + int(p.get("phase", 0))) % 2)[..., None]
    if str(p["style"]) == "invert":
        return _lerp(x, 1 - x, c)
    return x * (1 - float(p["strength"]) * c)


@_op("diamonds")
def _op_diamonds(x: Image, p: Params) -> Image:
    cell = _px(x, float(p["cell"]), 2.0)
    yy, xx = _pixel_grid(*x.shape[:2])
    u, v = (xx + yy) / cell, (xx - yy) / cell
    c = ((np.floor(u) + np.floor(v)) % 2)[..., None]
    return _lerp(x, x * _rgb(str(p["color"])), c)


@_op("halftone")
def _op_halftone(x: Image, p: Params) -> Image:
    cell = _px(x, float(p["cell"]), 3.0)
    angle = float(p["angle"])
    if str(p["mode"]) == "cmy":
        inks = [1 - _halftone(x, cell, angle + 30 * c, 1 - x[..., c]) for c in range(3)]
        return np.stack(inks, -1)
    m = _halftone(x, cell, angle, 1 - _luma(x))[..., None]
    return _lerp(_rgb(str(p["paper"])), _rgb(str(p["ink"])), m)


@_op("grain")
def _op_grain(x: Image, p: Params) -> Image:
    grain_px = max(1, round(_side(x) * float(p["grain"])))
    n = _grain(x, int(p["pattern_seed"]), grain_px, 1 if int(p["mono"]) else 3)
    return x + float(p["strength"]) * n


@_op("grid_lines")
def _op_grid_lines(x: Image, p: Params) -> Image:
    period = _px(x, float(p["period"]), 3.0)
    h, w = x.shape[:2]
    m = np.maximum(_stripe_mask(h, w, 0.0, period, 1.0 / period), _stripe_mask(h, w, 90.0, period, 1.0 / period))
    return _lerp(x, _rgb(str(p["color"])), float(p["alpha"]) * m[..., None])


@_op("polka")
def _op_polka(x: Image, p: Params) -> Image:
    cell = _px(x, float(p["cell"]), 3.0)
    m = _dot_mask(x, cell, float(p["radius"]) * cell, float(p["angle"]))[..., None]
    return _lerp(x, _rgb(str(p["color"])), float(p["alpha"]) * m)


@_op("crosshatch")
def _op_crosshatch(x: Image, p: Params) -> Image:
    period = _px(x, float(p["period"]), 3.0)
    h, w = x.shape[:2]
    duty = min(0.6, 1.2 / period)
    m = np.maximum(_stripe_mask(h, w, 45.0, period, duty), _stripe_mask(h, w, 135.0, period, duty))
    return x * (1 - float(p["strength"]) * m[..., None])


@_op("rings")
def _op_rings(x: Image, p: Params) -> Image:
    period = float(p["period"])
    yy, xx = _coords(*x.shape[:2])
    r = np.hypot(yy, xx) / period
    wave = 0.5 + 0.5 * np.cos(2 * np.pi * r)
    return x * (1 - float(p["strength"]) * wave[..., None])


@_op("sunburst")
def _op_sunburst(x: Image, p: Params) -> Image:
    yy, xx = _coords(*x.shape[:2])
    theta = np.arctan2(yy, xx)
    rays = (0.5 + 0.5 * np.cos(int(p["rays"]) * theta)) ** 2
    return _lerp(x, _screen(x, _rgb(str(p["color"]))), float(p["alpha"]) * rays[..., None])


@_op("weave")
def _op_weave(x: Image, p: Params) -> Image:
    cell = _px(x, float(p["cell"]), 4.0)
    h, w = x.shape[:2]
    yy, xx = _pixel_grid(h, w)
    checker = (np.floor(yy / cell) + np.floor(xx / cell)) % 2
    fine = max(2.0, cell / 2)
    horiz, vert = _stripe_mask(h, w, 90.0, fine, 0.5), _stripe_mask(h, w, 0.0, fine, 0.5)
    m = np.where(checker > 0, horiz, vert)
    return x * (1 - float(p["strength"]) * m[..., None]) + 0.08 * (1 - m[..., None])


# --------------------------------------------------------------------------- geometric warps


@_op("mirror")
def _op_mirror(x: Image, p: Params) -> Image:
    side = str(p["side"])
    out = x.copy()
    h, w = x.shape[:2]
    if side == "left":  # keep the left half, reflect it onto the right
        out[:, w - w // 2:] = x[:, : w // 2][:, ::-1]
    elif side == "right":
        out[:, : w // 2] = x[:, w - w // 2:][:, ::-1]
    elif side == "top":
        out[h - h // 2:] = x[: h // 2][::-1]
    else:
        out[: h // 2] = x[h - h // 2:][::-1]
    return out


@_op("kaleido_quad")
def _op_kaleido_quad(x: Image, p: Params) -> Image:
    return _op_mirror(_op_mirror(x, {"side": "left"}), {"side": "top"})


@_op("kaleido_polar")
def _op_kaleido_polar(x: Image, p: Params) -> Image:
    yy, xx = _coords(*x.shape[:2])
    seg = 2 * np.pi / int(p["segments"])
    theta = np.mod(np.arctan2(yy, xx) + np.pi / 2, seg)
    theta = np.minimum(theta, seg - theta) - np.pi / 2  # fold each wedge onto the upward one
    r = np.hypot(yy, xx)
    return _sample_norm(x, r * np.sin(theta), r * np.cos(theta))


@_op("swirl")
def _op_swirl(x: Image, p: Params) -> Image:
    yy, xx = _coords(*x.shape[:2])
    r = np.hypot(yy, xx)
    radius = float(p["radius"])
    twist = float(p["strength"]) * np.clip(1 - r / radius, 0, 1) ** 2
    theta = np.arctan2(yy, xx) + twist
    return _sample_norm(x, r * np.sin(theta), r * np.cos(theta))


@_op("wave")
def _op_wave(x: Image, p: Params) -> Image:
    yy, xx = _coords(*x.shape[:2])
    amp, freq = float(p["amp"]), float(p["freq"])
    if str(p["axis"]) == "x":  # horizontal displacement that varies down the image
        return _sample_norm(x, yy, xx + amp * np.sin(2 * np.pi * freq * yy))
    return _sample_norm(x, yy + amp * np.sin(2 * np.pi * freq * xx), xx)


@_op("lens")
def _op_lens(x: Image, p: Params) -> Image:
    yy, xx = _coords(*x.shape[:2])
    r = np.hypot(yy, xx)
    scale = (np.maximum(r, 1e-6) / 0.5) ** float(p["power"])  # >0: bulge (fisheye), <0: pinch
    return _sample_norm(x, yy * scale, xx * scale)


@_op("roll")
def _op_roll(x: Image, p: Params) -> Image:
    h, w = x.shape[:2]
    return np.roll(x, (round(float(p["dy"]) * h), round(float(p["dx"]) * w)), axis=(0, 1))


@_op("ripple")
def _op_ripple(x: Image, p: Params) -> Image:
    yy, xx = _coords(*x.shape[:2])
    r = np.maximum(np.hypot(yy, xx), 1e-6)
    scale = 1 + float(p["amp"]) * np.sin(2 * np.pi * float(p["freq"]) * r) / r
    return _sample_norm(x, yy * scale, xx * scale)


@_op("shear")
def _op_shear(x: Image, p: Params) -> Image:
    yy, xx = _coords(*x.shape[:2])
    return _sample_norm(x, yy, xx + float(p["k"]) * yy, "wrap")


# --------------------------------------------------------------------------- blocks


@_op("pixelate")
def _op_pixelate(x: Image, p: Params) -> Image:
    return _pixelate(x, _block_px(x, float(p["by"])), _block_px(x, float(p["bx"])))


@_op("tile")
def _op_tile(x: Image, p: Params) -> Image:
    return _tile(x, int(p["n"]))


def _derangement(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    while True:
        perm = rng.permutation(n)
        if not np.any(perm == np.arange(n)):
            return perm


@_op("shuffle")
def _op_shuffle(x: Image, p: Params) -> Image:
    grid = int(p["grid"])
    h, w = x.shape[:2]
    cy, cx, ly, lx, ey, ex = _cells(h, w, grid)
    perm = _derangement(int(p["pattern_seed"]), grid * grid)[cy * grid + cx]
    sy, sx = perm // grid, perm % grid
    py = ey[sy] + ly * (ey[sy + 1] - ey[sy]) - 0.5
    px = ex[sx] + lx * (ex[sx + 1] - ex[sx]) - 0.5
    return x[np.clip(np.round(py).astype(int), 0, h - 1), np.clip(np.round(px).astype(int), 0, w - 1)]


@_op("cell_flip")
def _op_cell_flip(x: Image, p: Params) -> Image:
    h, w = x.shape[:2]
    cy, cx, ly, lx, ey, ex = _cells(h, w, int(p["grid"]))
    mode = str(p["mode"])
    if mode in ("h", "rot180"):
        lx = 1 - lx
    if mode in ("v", "rot180"):
        ly = 1 - ly
    py = ey[cy] + ly * (ey[cy + 1] - ey[cy]) - 0.5
    px = ex[cx] + lx * (ex[cx + 1] - ex[cx]) - 0.5
    return x[np.clip(np.round(py).astype(int), 0, h - 1), np.clip(np.round(px).astype(int), 0, w - 1)]


@_op("mosaic")
def _op_mosaic(x: Image, p: Params) -> Image:
    b = _block_px(x, float(p["cell"]), 3)
    labels, _, _ = _block_labels(*x.shape[:2], b, b, float(p["row_offset"]))
    out = _label_mean(x, labels)
    # Grout on pixels whose right or lower neighbour lies in another tile.
    edge = np.zeros(labels.shape, dtype=bool)
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    return _lerp(out, _rgb(str(p["grout"])), float(p["grout_alpha"]) * edge[..., None])


# --------------------------------------------------------------------------- blur-like


def _sigma(x: Image, frac: float) -> float:
    return max(0.5, frac * _side(x))


_MAX_TAPS = 24  # streak blurs average at most this many shifted copies


def _taps(streak_px: float) -> tuple[int, Image | None]:
    """Number of copies for a streak of ``streak_px``, and the pre-blur sigma that hides gaps between them."""
    n = max(3, min(_MAX_TAPS, int(np.ceil(streak_px)) + 1))
    spacing = streak_px / (n - 1)
    return n, (0.5 * spacing if spacing > 1.0 else None)


def _prefiltered(x: Image, sigma: float | None) -> Image:
    return x if sigma is None else _blur(x, sigma)


@_op("motion_blur")
def _op_motion_blur(x: Image, p: Params) -> Image:
    length = _px(x, float(p["length"]), 2.0)
    a = np.deg2rad(float(p["angle"]))
    yy, xx = _pixel_grid(*x.shape[:2])
    n, sigma = _taps(length)
    src = _prefiltered(x, sigma)
    steps = np.linspace(-length / 2, length / 2, n)
    return sum(_sample(src, yy + t * np.sin(a), xx + t * np.cos(a), "clamp") for t in steps) / n


@_op("zoom_blur")
def _op_zoom_blur(x: Image, p: Params) -> Image:
    yy, xx = _coords(*x.shape[:2])
    amount = float(p["amount"])
    n, sigma = _taps(amount * 0.5 * _side(x))  # streak length at the edge midpoints
    src = _prefiltered(x, sigma)
    return sum(_sample_norm(src, yy * s, xx * s, "clamp") for s in 1 - amount * np.linspace(0, 1, n)) / n


@_op("spin_blur")
def _op_spin_blur(x: Image, p: Params) -> Image:
    yy, xx = _coords(*x.shape[:2])
    angle = float(p["angle"])
    n, sigma = _taps(angle * 0.5 * _side(x))  # arc length at the edge midpoints
    src = _prefiltered(x, sigma)
    out = np.zeros_like(x)
    for a in np.linspace(-angle / 2, angle / 2, n):
        c, s = np.cos(a), np.sin(a)
        out += _sample_norm(src, s * xx + c * yy, c * xx - s * yy)
    return out / n


@_op("glow")
def _op_glow(x: Image, p: Params) -> Image:
    t = float(p["threshold"])
    hi = np.clip((x - t) / (1 - t), 0, 1)
    return _screen(x, float(p["strength"]) * _blur(hi, _sigma(x, float(p["sigma"]))) * _rgb(str(p["color"])))


@_op("soft_focus")
def _op_soft_focus(x: Image, p: Params) -> Image:
    soft = _lerp(x, _blur(x, _sigma(x, float(p["sigma"]))), float(p["mix"]))
    return soft * (1 - float(p["lift"])) + float(p["lift"])


@_op("tilt_shift")
def _op_tilt_shift(x: Image, p: Params) -> Image:
    yy, _ = _coords(*x.shape[:2])
    m = _smoothstep(float(p["focus"]), float(p["focus"]) + 0.2, np.abs(yy))[..., None]
    return _saturate(_lerp(x, _blur(x, _sigma(x, float(p["sigma"]))), m), float(p["saturation"]))


@_op("frosted")
def _op_frosted(x: Image, p: Params) -> Image:
    h, w = x.shape[:2]
    amp = _px(x, float(p["amp"]), 1.0)
    n = 2 * _noise(int(p["pattern_seed"]), h, w, 2) - 1
    yy, xx = _pixel_grid(h, w)
    sy = np.clip(np.round(yy + amp * n[..., 0]), 0, h - 1).astype(int)
    sx = np.clip(np.round(xx + amp * n[..., 1]), 0, w - 1).astype(int)
    return x[sy, sx]


@_op("defocus")
def _op_defocus(x: Image, p: Params) -> Image:
    r = _px(x, float(p["radius"]), 1.5)
    k = int(np.ceil(r))
    yk, xk = np.mgrid[-k:k + 1, -k:k + 1]
    disk = np.clip(r + 0.5 - np.hypot(yk, xk), 0, 1)
    disk /= disk.sum()
    # Blurring in a gamma-expanded space lets highlights spread into bright bokeh discs.
    g = float(p["gamma"])
    padded = np.pad(x**g, ((k, k), (k, k), (0, 0)), mode="edge")
    blurred = signal.fftconvolve(padded, disk[..., None], mode="valid", axes=(0, 1))
    return np.maximum(blurred, 0.0) ** (1 / g) * float(p["gain"])


@_op("ghost")
def _op_ghost(x: Image, p: Params) -> Image:
    h, w = x.shape[:2]
    dy, dx = round(float(p["dy"]) * h), round(float(p["dx"]) * w)
    yy, xx = _pixel_grid(h, w)
    shifted = _sample(x, yy - dy, xx - dx, "clamp")
    return _lerp(x, shifted, float(p["alpha"]))


@_op("halation")
def _op_halation(x: Image, p: Params) -> Image:
    hi = np.clip((_luma(x) - float(p["threshold"])) / (1 - float(p["threshold"])), 0, 1)
    halo = _blur(hi, _sigma(x, float(p["sigma"])))[..., None]
    return x * (1 - 0.15 * float(p["strength"])) + float(p["strength"]) * halo * _rgb(str(p["color"]))


# --------------------------------------------------------------------------- local filters


@_op("emboss")
def _op_emboss(x: Image, p: Params) -> Image:
    gy, gx = _gradients(_luma(x))
    a = np.deg2rad(float(p["angle"]))
    relief = float(p["strength"]) * (np.cos(a) * gx + np.sin(a) * gy)
    if int(p["color"]):
        return x + relief[..., None]
    return np.repeat((0.5 + relief)[..., None], 3, -1)


@_op("edges")
def _op_edges(x: Image, p: Params) -> Image:
    mode, gain = str(p["mode"]), float(p["gain"])
    if mode == "color":
        return np.stack([_edge_mag(x[..., c]) for c in range(3)], -1) * gain
    lum = _luma(x)
    if mode == "laplacian":
        e = np.abs(ndimage.laplace(_blur(lum, 0.5), mode="nearest")) * gain
    else:
        e = _edge_mag(lum) * gain
    e = np.clip(e, 0, 1)
    if mode == "sobel_inv":
        e = 1 - e
    return np.repeat(e[..., None], 3, -1)


@_op("unsharp")
def _op_unsharp(x: Image, p: Params) -> Image:
    sigma = max(0.6, float(p["sigma"]) * _side(x))
    return x + float(p["amount"]) * (x - _blur(x, sigma))


@_op("morph")
def _op_morph(x: Image, p: Params) -> Image:
    size = max(3, int(round(float(p["size"]) * _side(x))) | 1)
    f = ndimage.minimum_filter if str(p["mode"]) == "min" else ndimage.maximum_filter
    return f(x, size=(size, size, 1), mode="nearest")


@_op("high_pass")
def _op_high_pass(x: Image, p: Params) -> Image:
    detail = x - _blur(x, _sigma(x, float(p["sigma"])))
    if int(p["color"]):
        return 0.5 + float(p["gain"]) * detail
    return np.repeat((0.5 + float(p["gain"]) * _luma(detail))[..., None], 3, -1)


# --------------------------------------------------------------------------- stylisation


def _cartoon(x: Image, levels: int, edge_t: float, thick: bool, saturation: float) -> Image:
    base = _posterize(_saturate(_blur(x, 0.5 * max(1.0, _side(x) / 16)), saturation), levels)
    mag = _edge_mag(_luma(x))
    edges = _smoothstep(edge_t, 2 * edge_t, mag)
    if thick:  # outlines ~1/16 of the side thick: none added at 16 px, where edges are already 1-2 px
        size = 1 + 2 * round(_side(x) / 48)
        edges = ndimage.maximum_filter(edges, size=size, mode="nearest") if size > 1 else np.clip(1.5 * edges, 0, 1)
    return base * (1 - edges[..., None])


@_op("cartoon")
def _op_cartoon(x: Image, p: Params) -> Image:
    return _cartoon(x, int(p["levels"]), float(p["edge"]), bool(int(p["thick"])), float(p["saturation"]))


@_op("pencil")
def _op_pencil(x: Image, p: Params) -> Image:
    g = _luma(x)
    b = _blur(1 - g, _sigma(x, float(p["sigma"])))
    sketch = np.clip(g / np.maximum(1 - b, 1e-3), 0, 1) ** 2.5  # colour dodge, darkened
    if int(p["color"]):
        return _lerp(np.ones(3, np.float32), _saturate(x, 1.5), 0.7) * sketch[..., None]
    return np.repeat(sketch[..., None], 3, -1)


@_op("neon")
def _op_neon(x: Image, p: Params) -> Image:
    e = np.clip(_edge_mag(_luma(x)) * float(p["gain"]), 0, 1)
    e = np.clip(e + 0.8 * _blur(e, max(0.8, _side(x) / 20)), 0, 1)[..., None]
    color = _hue_colors(x) if str(p["color"]) == "rainbow" else _rgb(str(p["color"]))
    return 0.08 * x + color * e


def _tones(lum: np.ndarray, colors: np.ndarray, lo: float = 0.3, hi: float = 0.65) -> Image:
    """Hard (anti-aliased) quantisation of luminance into len(colors) flat tones."""
    cuts = np.linspace(lo, hi, len(colors) - 1) if len(colors) > 2 else np.array([(lo + hi) / 2])
    idx = sum(_smoothstep(c - 0.02, c + 0.02, lum) for c in cuts)
    lower = np.clip(np.floor(idx).astype(int), 0, len(colors) - 2)
    return _lerp(colors[lower], colors[lower + 1], (idx - lower)[..., None])


@_op("stencil")
def _op_stencil(x: Image, p: Params) -> Image:
    return _tones(_luma(x), _colors(str(p["colors"])), float(p["lo"]), float(p["hi"]))


@_op("woodcut")
def _op_woodcut(x: Image, p: Params) -> Image:
    h, w = x.shape[:2]
    period = _px(x, float(p["period"]), 2.5)
    yy, xx = _pixel_grid(h, w)
    lines = 0.5 + 0.5 * np.sin(2 * np.pi * (yy + 0.5) / period + 0.35 * np.sin(2 * np.pi * xx / (4 * period)))
    ink = np.clip((0.1 + 0.55 * lines - _luma(x)) / 0.08 + 0.5, 0, 1)[..., None]
    return _lerp(_rgb(str(p["paper"])), _rgb(str(p["ink"])), ink)


@_op("hatch")
def _op_hatch(x: Image, p: Params) -> Image:
    h, w = x.shape[:2]
    period = _px(x, float(p["period"]), 3.0)
    lum = _luma(x)
    ink = np.zeros((h, w), np.float32)
    for angle, level in ((45.0, 0.82), (135.0, 0.6), (90.0, 0.38)):
        layer = _stripe_mask(h, w, angle, period, min(0.6, 1.2 / period))
        ink = np.maximum(ink, layer * _smoothstep(level, level - 0.1, lum))
    return _lerp(_rgb(str(p["paper"])), _rgb(str(p["ink"])), ink[..., None])


_POP_PALETTES = ("#1b1464-#ff2e88-#fff200", "#00204a-#00c2ba-#ffdd00", "#3a0ca3-#f72585-#ffffff",
                 "#001b2e-#ff6d00-#b8f2e6")


@_op("pop_art")
def _op_pop_art(x: Image, p: Params) -> Image:
    small = _tile(x, 2)
    h, w = x.shape[:2]
    yy, xx = _pixel_grid(h, w)
    quad = ((yy >= h / 2).astype(int) * 2 + (xx >= w / 2).astype(int))
    lum = _luma(small)
    out = np.zeros_like(x)
    for q, pal in enumerate(_POP_PALETTES):
        sel = quad == q
        out[sel] = _tones(lum[sel], _colors(pal), 0.3, 0.6)
    return out


@_op("watercolor")
def _op_watercolor(x: Image, p: Params) -> Image:
    soft = _blur(_saturate(x, 1.3), _sigma(x, 0.06))
    washes = _lerp(soft, _posterize(soft, 5), 0.5)
    edges = _smoothstep(0.03, 0.12, _edge_mag(_luma(soft)))[..., None]
    paper = 1 + 0.06 * _grain(x, int(p["pattern_seed"]), max(1, _side(x) // 16), 1)
    return (0.15 + 0.85 * washes) * (1 - 0.35 * edges) * paper


# --------------------------------------------------------------------------- light


@_op("vignette")
def _op_vignette(x: Image, p: Params) -> Image:
    m = _vignette_mask(x, float(p["radius"]), float(p["softness"]))[..., None]
    return _lerp(x, _rgb(str(p["color"])), float(p["strength"]) * m)


def _blob(x: Image, cy: float, cx: float, radius: float) -> np.ndarray:
    yy, xx = _coords(*x.shape[:2])
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))


@_op("light_leak")
def _op_light_leak(x: Image, p: Params) -> Image:
    g = _blob(x, float(p["cy"]), float(p["cx"]), float(p["radius"]))[..., None]
    return _screen(x, float(p["strength"]) * g * _rgb(str(p["color"])))


@_op("band_leak")
def _op_band_leak(x: Image, p: Params) -> Image:
    yy, xx = _coords(*x.shape[:2])
    a = np.deg2rad(float(p["angle"]))
    d = np.cos(a) * xx + np.sin(a) * yy
    g = np.exp(-((d - float(p["offset"])) ** 2) / (2 * float(p["width"]) ** 2))[..., None]
    return _screen(x, float(p["strength"]) * g * _rgb(str(p["color"])))


@_op("spotlight")
def _op_spotlight(x: Image, p: Params) -> Image:
    m = 1 - _vignette_mask(x, float(p["radius"]), 0.12)
    gain = float(p["dark"]) + (float(p["boost"]) - float(p["dark"])) * m
    return x * gain[..., None]


@_op("lens_flare")
def _op_lens_flare(x: Image, p: Params) -> Image:
    cy, cx = float(p["cy"]), float(p["cx"])
    yy, xx = _coords(*x.shape[:2])
    core = _blob(x, cy, cx, 0.09)
    ring = np.exp(-((np.hypot(yy - cy, xx - cx) - 0.18) ** 2) / (2 * 0.025**2)) * 0.35
    ghosts = 0.5 * _blob(x, -0.4 * cy, -0.4 * cx, 0.05) + 0.35 * _blob(x, -0.9 * cy, -0.9 * cx, 0.08)
    light = core[..., None] * np.array([1.0, 0.95, 0.8]) + ring[..., None] * np.array([1.0, 0.7, 0.3])
    light = light + ghosts[..., None] * np.array([0.4, 0.8, 1.0])
    return _screen(x, float(p["strength"]) * light)


@_op("gradient_overlay")
def _op_gradient_overlay(x: Image, p: Params) -> Image:
    yy, xx = _coords(*x.shape[:2])
    a = np.deg2rad(float(p["angle"]))
    t = np.clip(0.5 + np.sin(a) * yy + np.cos(a) * xx, 0, 1)
    g = _gradient_map(t, _colors(str(p["stops"])))
    mode = str(p["mode"])
    blended = x * g if mode == "multiply" else (_screen(x, g) if mode == "screen" else
                                               np.where(g < 0.5, 2 * x * g, _screen(x, 2 * g - 1)))
    return _lerp(x, blended, float(p["strength"]))


@_op("sun_rays")
def _op_sun_rays(x: Image, p: Params) -> Image:
    yy, xx = _coords(*x.shape[:2])
    cy, cx = float(p["cy"]), float(p["cx"])
    theta = np.arctan2(yy - cy, xx - cx)
    rays = (0.5 + 0.5 * np.cos(int(p["rays"]) * theta)) ** 3
    fall = np.exp(-np.hypot(yy - cy, xx - cx) / 0.6)
    return _screen(x, float(p["strength"]) * (rays * fall)[..., None] * _rgb(str(p["color"])))


@_op("side_shadow")
def _op_side_shadow(x: Image, p: Params) -> Image:
    yy, xx = _coords(*x.shape[:2])
    a = np.deg2rad(float(p["angle"]))
    t = np.clip(0.5 + np.cos(a) * xx + np.sin(a) * yy, 0, 1)
    return x * (1 - float(p["strength"]) * t[..., None]) + float(p["warm"]) * (1 - t)[..., None] * np.array([0.2, 0.1, 0])


# --------------------------------------------------------------------------- glitches


def _shift_channel(c: np.ndarray, dy: int, dx: int) -> np.ndarray:
    h, w = c.shape
    yi = np.clip(np.arange(h) - dy, 0, h - 1)
    xi = np.clip(np.arange(w) - dx, 0, w - 1)
    return c[yi][:, xi]


def _offset_px(x: Image, frac: float) -> int:
    """A signed offset given as a fraction of the shorter side; non-zero fractions give >= 1 px."""
    return 0 if frac == 0 else int(np.sign(frac)) * max(1, round(abs(frac) * _side(x)))


@_op("rgb_split")
def _op_rgb_split(x: Image, p: Params) -> Image:
    dy, dx = _offset_px(x, float(p["dy"])), _offset_px(x, float(p["dx"]))
    return np.stack([_shift_channel(x[..., 0], -dy, -dx), x[..., 1], _shift_channel(x[..., 2], dy, dx)], -1)


@_op("chroma_radial")
def _op_chroma_radial(x: Image, p: Params) -> Image:
    yy, xx = _coords(*x.shape[:2])
    s = float(p["scale"])
    red = _sample_norm(x, yy * (1 - s), xx * (1 - s), "clamp")[..., 0]
    blue = _sample_norm(x, yy * (1 + s), xx * (1 + s), "clamp")[..., 2]
    return np.stack([red, x[..., 1], blue], -1)


@_op("band_shift")
def _op_band_shift(x: Image, p: Params) -> Image:
    h, w = x.shape[:2]
    vertical = str(p["axis"]) == "columns"
    n, length = (w, h) if vertical else (h, w)
    shifts = np.round(_band_offsets(int(p["pattern_seed"]), n, int(p["bands"]), float(p["max_shift"])) * length)
    idx = (np.arange(length)[None, :] - shifts[:, None].astype(int)) % length
    if vertical:
        return x[idx.T, np.arange(w)[None, :]]
    return x[np.arange(h)[:, None], idx]


@_op("interlace")
def _op_interlace(x: Image, p: Params) -> Image:
    out = x.copy()
    shift = max(1, round(float(p["shift"]) * x.shape[1]))
    out[1::2] = np.roll(x[1::2], shift, axis=1) * float(p["gain"])
    return out


@_op("pixel_sort")
def _op_pixel_sort(x: Image, p: Params) -> Image:
    axis = 1 if str(p["axis"]) == "rows" else 0
    lum = _luma(x)
    order = np.argsort(-lum if int(p["descending"]) else lum, axis=axis, kind="stable")
    return np.take_along_axis(x, order[..., None], axis=axis)


@_op("band_swap")
def _op_band_swap(x: Image, p: Params) -> Image:
    h = x.shape[0]
    band = np.floor(np.arange(h) / h * int(p["bands"])).astype(int)
    perms = np.array([[0, 1, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]])
    rng = np.random.default_rng(int(p["pattern_seed"]))
    chosen = perms[rng.integers(1, len(perms), int(p["bands"]))]
    chosen[::2] = perms[0]  # every other band keeps its colours
    return np.take_along_axis(x, chosen[band][:, None, :].repeat(x.shape[1], 1), axis=2)


@_op("noise_bands")
def _op_noise_bands(x: Image, p: Params) -> Image:
    h, w = x.shape[:2]
    rng = np.random.default_rng(int(p["pattern_seed"]))
    centres = rng.uniform(0.1, 0.9, int(p["bands"]))
    t = (np.arange(h) + 0.5) / h
    m = np.zeros(h)
    for c in centres:
        m = np.maximum(m, (np.abs(t - c) < float(p["height"]) / 2).astype(float))
    static = np.repeat(_noise(int(p["pattern_seed"]), h, w, 1), 3, -1)
    return _lerp(x, static, float(p["alpha"]) * m[:, None, None])


@_op("block_corrupt")
def _op_block_corrupt(x: Image, p: Params) -> Image:
    grid = int(p["grid"])
    h, w = x.shape[:2]
    cy, cx, ly, lx, ey, ex = _cells(h, w, grid)
    rng = np.random.default_rng(int(p["pattern_seed"]))
    bad = rng.random(grid * grid) < float(p["fraction"])
    src = rng.integers(0, grid * grid, grid * grid)
    cell = cy * grid + cx
    sc = np.where(bad[cell], src[cell], cell)
    sy, sx = sc // grid, sc % grid
    py = np.clip(np.round(ey[sy] + ly * (ey[sy + 1] - ey[sy]) - 0.5).astype(int), 0, h - 1)
    px = np.clip(np.round(ex[sx] + lx * (ex[sx + 1] - ex[sx]) - 0.5).astype(int), 0, w - 1)
    out = x[py, px]
    return np.where(bad[cell][..., None], out[..., [2, 0, 1]], out)


# --------------------------------------------------------------------------- combinations


_SEPIA = "#2a1a0e-#8a5a30-#e8c99a-#fff4e0"
_THERMAL = "#000010-#4b0c8c-#c2185b-#ff6f00-#ffe082-#ffffff"


@_op("old_film")
def _op_old_film(x: Image, p: Params) -> Image:
    y = _gradient_map(_luma(x), _colors(_SEPIA)) * 0.85 + 0.1
    y = y + 0.07 * _grain(x, int(p["pattern_seed"]), 1, 1)
    scratch = _stripe_mask(*x.shape[:2], 0.0, _px(x, 0.45, 6.0), 1.0 / _px(x, 0.45, 6.0))[..., None]
    y = _lerp(y, 0.95, 0.4 * scratch)
    return y * (1 - 0.5 * _vignette_mask(x, 0.32, 0.3)[..., None])


@_op("crt")
def _op_crt(x: Image, p: Params) -> Image:
    y = _op_rgb_split(_saturate(x, 1.3), {"dy": 0.0, "dx": 0.04})
    y = _scanlines(y, 0.55) * 1.15
    return y * (1 - 0.5 * _vignette_mask(x, 0.38, 0.25)[..., None])


@_op("lomo")
def _op_lomo(x: Image, p: Params) -> Image:
    y = _op_tone_curve(x, {"gamma": "0.9,0.95,1.1", "s": "1.6,1.6,1.2", "lift": "0,0,0.12", "gain": "1,1,0.9",
                           "saturation": 1.5})
    return y * (1 - 0.8 * _vignette_mask(x, 0.2, 0.3)[..., None])


@_op("risograph")
def _op_risograph(x: Image, p: Params) -> Image:
    dark = 1 - _luma(x)
    grain = 0.08 * _grain(x, int(p["pattern_seed"]), 1, 1)[..., 0]
    a = np.clip(1.3 * dark - 0.15 + grain, 0, 1)
    b = np.clip(_shift_channel(dark, 1, 1) ** 2 * 1.4 + grain, 0, 1)
    pink, blue, paper = _rgb("#ff48b0"), _rgb("#0078bf"), _rgb("#f7f1e3")
    return paper * (1 - a[..., None] * (1 - pink)) * (1 - b[..., None] * (1 - blue))


@_op("vaporwave")
def _op_vaporwave(x: Image, p: Params) -> Image:
    y = _gradient_map(_luma(x), _colors("#1b0b3a-#ff4fa3-#59f8e8-#fff6ff"))
    lines = _stripe_mask(*x.shape[:2], 90.0, _px(x, 0.2, 3.0), 0.3)[..., None]
    return _lerp(y, _screen(y, np.array([0.3, 0.9, 1.0])), 0.5 * lines)


@_op("comic")
def _op_comic(x: Image, p: Params) -> Image:
    base = _cartoon(x, 5, 0.06, True, 1.6)
    shade = _smoothstep(0.55, 0.25, _luma(x))
    dots = _dot_mask(x, _px(x, 1 / 6, 3.0), 0.32 * _px(x, 1 / 6, 3.0), 45.0) * shade
    return base * (1 - 0.6 * dots[..., None])


@_op("blueprint")
def _op_blueprint(x: Image, p: Params) -> Image:
    e = np.clip(_edge_mag(_luma(x)) * 5, 0, 1)[..., None]
    bg = _op_grid_lines(np.broadcast_to(_rgb("#0b3d91"), x.shape).copy(), {"period": 0.25, "color": "#6f9fe0", "alpha": 0.6})
    return _lerp(bg, np.array([0.92, 0.96, 1.0]), e)


@_op("night_vision")
def _op_night_vision(x: Image, p: Params) -> Image:
    lum = np.clip(_luma(x) * 1.5 + 0.05, 0, 1) + 0.12 * _grain(x, int(p["pattern_seed"]), 1, 1)[..., 0]
    y = lum[..., None] * np.array([0.25, 1.0, 0.35])
    y = _scanlines(y, 0.3)
    return y * (1 - _vignette_mask(x, 0.38, 0.12)[..., None])


_GAMEBOY = "#0f380f-#306230-#8bac0f-#cadc9f"


@_op("retro_game")
def _op_retro_game(x: Image, p: Params) -> Image:
    b = _block_px(x, 1 / 8, 2)
    return _tones(_luma(_pixelate(x, b, b)), _colors(_GAMEBOY), 0.25, 0.65)


@_op("newspaper")
def _op_newspaper(x: Image, p: Params) -> Image:
    cell = _px(x, 0.1, 3.0)
    lum = _luma(_blur(x, 0.5))
    m = _halftone(x, cell, 45.0, 1 - lum * 1.1)[..., None]
    return _lerp(_rgb("#efe6cf"), _rgb("#262220"), m)


@_op("stained_glass")
def _op_stained_glass(x: Image, p: Params) -> Image:
    y = _op_mosaic(_saturate(x, 1.9) * 1.1, {"cell": 0.25, "row_offset": 0.5, "grout": "#000000", "grout_alpha": 1.0})
    return _screen(y, 0.3 * _blur(y, _sigma(x, 0.06)))


@_op("thermal_cam")
def _op_thermal_cam(x: Image, p: Params) -> Image:
    b = _block_px(x, 1 / 8, 2)
    y = _gradient_map(_luma(_pixelate(x, b, b)), _colors(_THERMAL))
    h, w = x.shape[:2]
    cross = np.zeros((h, w), np.float32)
    cross[h // 2, w // 4: w - w // 4] = 1
    cross[h // 4: h - h // 4, w // 2] = 1
    return _lerp(y, 1.0, 0.8 * cross[..., None])


@_op("security_cam")
def _op_security_cam(x: Image, p: Params) -> Image:
    lum = 0.5 + 1.3 * (_luma(_op_lens(x, {"power": 0.35})) - 0.5)
    lum = lum + 0.1 * _grain(x, int(p["pattern_seed"]), 1, 1)[..., 0]
    y = _scanlines(np.repeat(lum[..., None], 3, -1) * np.array([0.9, 1.0, 0.95]), 0.35)
    return y * (1 - 0.5 * _vignette_mask(x, 0.3, 0.3)[..., None])


@_op("glitch_pop")
def _op_glitch_pop(x: Image, p: Params) -> Image:
    y = _op_hue_rotate(x, {"degrees": 180.0, "saturation": 1.6})
    y = _op_band_shift(y, {"axis": "rows", "bands": 6, "max_shift": 0.25, "pattern_seed": int(p["pattern_seed"])})
    return _op_rgb_split(y, {"dy": 0.0, "dx": 0.1})


# =========================================================================== catalogue


@dataclass(frozen=True)
class _Spec:
    short: str
    title: str
    description: str
    op: str
    params: tuple[tuple[str, ParamValue], ...]


def _s(short: str, title: str, description: str, op: str, **params: ParamValue) -> _Spec:
    return _Spec(short, title, description, op, tuple(params.items()))


_PALETTES = (
    ("sepia", "sepia gradient map", _SEPIA, "dark brown shadows through tan to cream highlights, like an old photograph"),
    ("cyanotype", "cyanotype", "#0a1e4d-#1f5fa8-#9cc8ee-#f4fbff", "deep Prussian blue shadows to pale blue-white highlights"),
    ("thermal", "thermal false colour", _THERMAL, "a heat-camera palette from black through purple, red and orange to white"),
    ("spectrum", "rainbow false colour", "#2b00ff-#00b3ff-#00e070-#ffee00-#ff3000", "a rainbow false-colour map: dark areas blue, mid-tones green-yellow, bright areas red"),
    ("sunset", "sunset gradient map", "#1e0b3c-#8e1e5c-#f0622a-#ffd27a", "deep violet shadows through magenta and orange to golden highlights"),
    ("ocean", "ocean gradient map", "#001428-#005f73-#0a9396-#94d2bd-#e9f5db", "navy shadows through teal to pale sea-foam highlights"),
    ("forest", "forest gradient map", "#0b1d0e-#2d5a27-#8fb339-#e9f0c9", "almost black-green shadows through moss green to pale lime highlights"),
    ("neon_duo", "magenta-cyan neon duotone", "#1a0033-#ff00aa-#00ffee", "a neon duotone: dark purple shadows, hot magenta mid-tones, cyan highlights"),
    ("teal_orange", "teal and orange duotone", "#003b46-#ff8a3d", "a two-colour duotone from dark teal shadows to orange highlights"),
    ("purple_gold", "purple and gold duotone", "#2e0854-#ffd400", "a two-colour duotone from deep purple shadows to bright yellow highlights"),
    ("mint_rose", "mint and rose tritone", "#0f3d3e-#7fd1b9-#ffc2d1", "dark green-teal shadows, mint mid-tones and rose-pink highlights"),
    ("gold_leaf", "gold leaf gradient map", "#1a1200-#8c6d1f-#ffd95a-#fffbe6", "black-brown shadows to rich gold and pale yellow highlights, like gilding"),
    ("ice_negative", "inverted ice gradient map", "#ffffff-#7fc8ff-#0a2a66", "a reversed blue map: dark areas become white and bright areas become deep navy"),
    ("emerald_pink", "emerald and pink tritone", "#062a1e-#1fa37a-#ffb3c7", "near-black green shadows, emerald mid-tones and pink highlights"),
    ("pastel", "pastel gradient map", "#7b6cf6-#f6a6c1-#fff3b0", "soft pastels only: lavender shadows, pink mid-tones, cream highlights, no dark tones"),
    ("blood_moon", "crimson gradient map", "#000000-#7a0010-#ff3b3b-#ffe0d0", "black shadows through deep crimson and red to pale peach highlights"),
)


def _palette_family() -> list[_Spec]:
    return [_s(k, t, f"The image is recoloured by brightness as a gradient map: {d}.", "gradient_map", stops=stops)
            for k, t, stops, d in _PALETTES]


def _channel_mix_family() -> list[_Spec]:
    specs = [_s(f"hue{deg}", f"hue shift {deg} degree", f"All hues are rotated by {deg} degrees around the colour wheel"
                f"{' and colours made more vivid' if sat > 1 else ''}, keeping brightness.", "hue_rotate",
                degrees=float(deg), saturation=sat)
             for deg, sat in ((45, 1.4), (90, 1.3), (135, 1.4), (180, 1.2), (225, 1.3), (270, 1.4), (315, 1.3))]
    mixes = (
        ("gbr", "green-blue-red channel cycle", "0,1,0,0,0,1,1,0,0", "0,0,0",
         "Colour channels are cycled so red takes green's values, green takes blue's and blue takes red's."),
        ("brg", "blue-red-green channel cycle", "0,0,1,1,0,0,0,1,0", "0,0,0",
         "Colour channels are cycled so red takes blue's values, green takes red's and blue takes green's."),
        ("nightgreen", "green monochrome", "0.08,0.15,0.03,0.3,0.59,0.11,0.08,0.15,0.03", "0,0.05,0",
         "The image becomes a green monochrome, like an old phosphor monitor."),
        ("redfilter", "red filter black-and-white", "0.9,0.2,-0.1,0.9,0.2,-0.1,0.9,0.2,-0.1", "0,0,0",
         "A black-and-white conversion through a red filter: reds turn light, blues and greens turn dark."),
        ("twostrip", "two-strip film colour", "1,0,0,0,0.55,0.45,0,0.55,0.45", "0,0,0",
         "Two-strip film colour: only reds and cyans remain, other hues collapse into them."),
        ("ultraviolet", "ultraviolet channel mix", "0.6,0,0.6,0,0.35,0.1,0.35,0,1", "0.05,0,0.05",
         "An ultraviolet channel mix: the whole image shifts to violets and purples with weak greens."),
        ("no_blue", "blue channel removal", "1.05,0,0,0,1.05,0,0,0,0", "0,0,0.05",
         "The blue channel is removed, leaving a yellow-olive cast with no blues."),
        ("no_red", "red channel removal", "0.05,0,0,0,1,0,0,0,1", "0,0,0",
         "The red channel is removed, leaving a cyan cast with skin and warm tones turned teal."),
        ("no_green", "green channel removal", "1,0,0,0,0.05,0,0,0,1", "0,0,0",
         "The green channel is removed, leaving a magenta cast."),
    )
    specs += [_s(k, t, d, "color_matrix", matrix=m, offset=o) for k, t, m, o, d in mixes]
    return specs


def _curve_family() -> list[_Spec]:
    def c(k: str, t: str, d: str, gamma: str = "1,1,1", s: str = "0,0,0", lift: str = "0,0,0", gain: str = "1,1,1",
          saturation: float = 1.0) -> _Spec:
        return _s(k, t, d, "tone_curve", gamma=gamma, s=s, lift=lift, gain=gain, saturation=saturation)

    return [
        c("gamma_bright", "bright gamma lift", "Mid-tones are lifted strongly with a low gamma, shadows opened up.", gamma="0.4,0.4,0.4"),
        c("gamma_dark", "deep gamma", "Mid-tones are pushed down with a high gamma, leaving a dark moody image.", gamma="2.3,2.3,2.3"),
        c("s_strong", "strong S-curve", "A strong S-shaped tone curve crushes shadows and blows out highlights.", s="2,2,2", saturation=1.2),
        c("crushed", "crushed blacks", "Blacks are crushed and whites clipped for a harsh, punchy look.", gamma="1.4,1.4,1.4", lift="-0.35,-0.35,-0.35", gain="1.2,1.2,1.2", saturation=1.4),
        c("faded", "faded matte film", "Blacks are lifted to grey and highlights dulled, giving a faded matte look.", s="-0.6,-0.6,-0.6", lift="0.25,0.23,0.2", gain="0.85,0.85,0.82", saturation=0.8),
        c("cross", "cross-processed curve", "Cross-processed colour: contrasty yellow-green highlights and blue-lifted shadows.", gamma="0.8,0.85,1.3", s="1.5,1,-0.7", lift="0,0,0.18", gain="1,1,0.8"),
        c("warm_curve", "golden warm curve", "Per-channel curves warm the image strongly towards gold and amber.", gamma="0.6,0.95,1.8"),
        c("cold_curve", "icy cold curve", "Per-channel curves cool the image strongly towards steel blue.", gamma="1.8,1.1,0.6"),
        c("high_key", "high-key curve", "A high-key look: everything is bright, airy and pastel with pale grey shadows.", gamma="0.8,0.8,0.8", s="-0.5,-0.5,-0.5", lift="0.4,0.4,0.4", saturation=0.6),
        c("low_key", "low-key curve", "A low-key look: deep shadows, dim mid-tones, only highlights stay visible.", gamma="2,2,2", s="0.6,0.6,0.6", gain="0.85,0.85,0.85"),
        c("split_tone", "green-magenta split tone", "Split toning: green-tinted shadows and magenta-tinted highlights.", gamma="1.1,0.9,1.1", lift="0,0.15,0.05", gain="1,0.85,0.95"),
        c("teal_orange_grade", "teal-orange cinematic grade", "A cinematic grade: teal shadows and orange highlights with extra contrast.", s="0.8,0.6,0.4", lift="0.02,0.12,0.16", gain="1,0.9,0.75", saturation=1.2),
        c("bleach", "bleach bypass", "Bleach bypass: colours are mostly drained and contrast is harsh and metallic.", s="1.6,1.6,1.6", saturation=0.35),
        c("red_boost", "crimson curve", "Per-channel curves boost reds and suppress greens and blues for a crimson cast.", gamma="0.5,1.3,1.3", s="0.3,0.3,0.3"),
        _s("psychedelic", "psychedelic tone wave", "A non-monotonic wave curve on each channel gives psychedelic shifted colours and fake contours.",
           "wave_curve", freq=1.0, phase="0,0.2,0.4"),
        _s("contours", "contour band curve", "Brightness folds over several times, turning smooth gradients into bright and dark contour bands.",
           "wave_curve", freq=2.0, phase="0,0,0"),
    ]


def _quantize_family() -> list[_Spec]:
    specs = [_s(f"posterize{n}", f"{n}-level posterize", f"Each colour channel is reduced to {n} flat levels, giving hard-edged colour bands.",
                "posterize", levels=n, mode="rgb") for n in (2, 3, 4, 6)]
    specs += [
        _s("gray3", "3-tone grey posterize", "The image becomes three flat shades of grey: black, mid grey and white.", "posterize", levels=3, mode="gray"),
        _s("bands4", "brightness banding", "Brightness is quantised into four bands while keeping each pixel's hue.", "posterize", levels=4, mode="bands"),
    ]
    specs += [_s(f"solarize{int(t * 100)}", f"solarize at {int(t * 100)} percent", f"Tones brighter than {int(t * 100)}% are inverted (solarised), so "
                 f"{'most of the image turns negative' if t < 0.4 else 'highlights turn dark' if t > 0.6 else 'bright areas flip to dark'}.",
                 "solarize", threshold=t) for t in (0.3, 0.5, 0.7)]
    specs += [
        _s("bw_hard", "hard black-and-white threshold", "A hard threshold: every pixel becomes pure black or white, with the cut at mid-dark.",
           "threshold", threshold=0.4, dark="#000000", light="#ffffff"),
        _s("ink_paper", "ink on paper threshold", "A high threshold draws everything but the highlights in dark ink on cream paper.",
           "threshold", threshold=0.62, dark="#1c1c3a", light="#f3ead2"),
        _s("bayer_bw", "black-and-white ordered dither", "Ordered (Bayer) dithering to pure black and white, with a regular cross-hatch dot pattern.",
           "dither", levels=2, mode="gray", matrix="4", pattern_seed=0),
        _s("bayer_rgb", "8-colour ordered dither", "Ordered dithering to 8 pure colours, like an early computer display.",
           "dither", levels=2, mode="rgb", matrix="4", pattern_seed=0),
        _s("bayer_rgb3", "27-colour ordered dither", "Ordered dithering with three levels per channel, a fine regular pattern over flattened colours.",
           "dither", levels=3, mode="rgb", matrix="2", pattern_seed=0),
        _s("noise_dither", "random dither", "Random-noise dithering to black and white, a speckled grainy rendition.",
           "dither", levels=2, mode="gray", matrix="noise", pattern_seed=1),
    ]
    return specs


_STRIPE_DIRS = ((0.0, "vertical"), (45.0, "diagonal"), (90.0, "horizontal"), (135.0, "anti-diagonal"))
_STRIPE_COLORS = ("#ff3fa4", "#38e1ff", "#ffe23f", "#7dff5a")


def _stripes_family() -> list[_Spec]:
    specs = []
    for i, (angle, word) in enumerate(_STRIPE_DIRS):
        for period, width in ((0.25, "wide"), (0.125, "fine")):
            specs.append(_s(f"{word.replace('-', '')}_{width}_dark", f"{width} dark {word} stripes",
                            f"Darkened {word} stripes, {width}ly spaced, are laid over the image.",
                            "stripes", angle=angle, period=period, duty=0.5, style="dark", color="#000000", strength=0.6))
            color = _STRIPE_COLORS[i]
            specs.append(_s(f"{word.replace('-', '')}_{width}_color", f"{width} coloured {word} stripes",
                            f"Glowing {word} stripes tinted {_color_word(color)}, {width}ly spaced, are screened over the image.",
                            "stripes", angle=angle, period=period, duty=0.4, style="color", color=color, strength=0.75))
    return specs


def _color_word(hex_color: str) -> str:
    return {"#ff3fa4": "pink", "#38e1ff": "cyan", "#ffe23f": "yellow", "#7dff5a": "lime green"}.get(hex_color, hex_color)


def _pattern_family() -> list[_Spec]:
    return [
        _s("checker_dark", "dark checkerboard", "A checkerboard of darkened squares covers the image.", "checker", cell=0.25, style="dark", strength=0.5),
        _s("checker_invert", "negative checkerboard", "Large checkerboard squares alternate between the normal image and its colour negative.",
           "checker", cell=0.25, style="invert", strength=1.0),
        _s("halftone_mono", "black halftone", "The image is printed as black halftone dots on white, dot size following darkness.",
           "halftone", cell=1 / 6, angle=45.0, mode="mono", ink="#000000", paper="#ffffff"),
        _s("halftone_cmy", "colour halftone", "A colour halftone: overlapping cyan, magenta and yellow dot screens at different angles.",
           "halftone", cell=1 / 6, angle=15.0, mode="cmy", ink="#000000", paper="#ffffff"),
        _s("halftone_red", "red ink halftone", "Red ink halftone dots on cream paper on a square grid.",
           "halftone", cell=0.2, angle=0.0, mode="mono", ink="#d7263d", paper="#fff4dc"),
        _s("grain_mono", "film grain", "Fine monochrome film grain is added across the whole image.", "grain", strength=0.22, mono=1, grain=0.0, pattern_seed=0),
        _s("grain_color", "colour noise", "Strong per-pixel colour noise speckles the image with red, green and blue specks.",
           "grain", strength=0.3, mono=0, grain=0.0, pattern_seed=0),
        _s("grain_coarse", "coarse grain", "Coarse clumped monochrome grain, in blocks larger than a pixel, roughens the image.",
           "grain", strength=0.3, mono=1, grain=0.125, pattern_seed=0),
        _s("grid_white", "white grid lines", "A grid of thin white lines divides the image into squares.", "grid_lines", period=0.25, color="#ffffff", alpha=0.8),
        _s("polka_white", "white polka dots", "Semi-opaque white polka dots on a regular grid cover the image.", "polka", cell=0.25, radius=0.28, angle=0.0, color="#ffffff", alpha=0.8),
        _s("crosshatch_lines", "crosshatch overlay", "A uniform crosshatch of thin dark diagonal lines covers the image.", "crosshatch", period=0.2, strength=0.6),
        _s("diamonds_gold", "gold diamond pattern", "A harlequin pattern of diamonds, alternate diamonds tinted gold.", "diamonds", cell=0.25, color="#ffc23a"),
        _s("rings_dark", "concentric rings", "Dark concentric rings radiate from the image centre.", "rings", period=0.12, strength=0.55),
        _s("sunburst_yellow", "sunburst rays", "Yellow sunburst rays fan out from the centre over the image.", "sunburst", rays=12, color="#ffe066", alpha=0.7),
        _s("weave", "basket weave texture", "A basket-weave texture: checker cells alternately filled with horizontal and vertical dark threads.", "weave", cell=0.25, strength=0.45),
    ]


def _warp_family() -> list[_Spec]:
    return [
        _s("mirror_left", "left-half mirror", "The left half is mirrored onto the right, making the image symmetric about a vertical axis.", "mirror", side="left"),
        _s("mirror_right", "right-half mirror", "The right half is mirrored onto the left, making the image symmetric about a vertical axis.", "mirror", side="right"),
        _s("mirror_top", "top-half mirror", "The top half is reflected onto the bottom, like a reflection in still water.", "mirror", side="top"),
        _s("mirror_bottom", "bottom-half mirror", "The bottom half is reflected onto the top, making a vertically symmetric image.", "mirror", side="bottom"),
        _s("kaleido4", "four-way mirror kaleidoscope", "The top-left quarter is mirrored into all four quarters, a four-way symmetric kaleidoscope.", "kaleido_quad"),
        _s("kaleido6", "six-fold kaleidoscope", "A six-fold kaleidoscope: one wedge is reflected around the centre into a star-shaped symmetric pattern.", "kaleido_polar", segments=6),
        _s("swirl_cw", "clockwise swirl", "The centre of the image is twisted in a strong swirl, straight lines curving around the middle.", "swirl", strength=3.0, radius=0.55),
        _s("swirl_ccw", "counter-clockwise swirl", "The centre is twisted in a strong swirl the other way, curving around the middle.", "swirl", strength=-3.0, radius=0.55),
        _s("wave_x", "horizontal wave distortion", "Rows are shifted sideways in a sine wave, so vertical edges become wavy.", "wave", axis="x", amp=0.12, freq=1.5),
        _s("wave_y", "vertical wave distortion", "Columns are shifted up and down in a sine wave, so horizontal edges become wavy.", "wave", axis="y", amp=0.12, freq=1.5),
        _s("fisheye", "fisheye bulge", "A fisheye lens bulge magnifies the centre and squeezes the edges.", "lens", power=0.7),
        _s("pinch", "pinch distortion", "A pinch pulls the image in towards the centre, shrinking the middle.", "lens", power=-0.5),
        _s("roll_half", "half-width wrap shift", "The image is shifted by half its width with wrap-around, so left and right halves swap.", "roll", dx=0.5, dy=0.0),
        _s("roll_third", "one-third vertical wrap shift", "The image is shifted down by a third of its height with wrap-around.", "roll", dx=0.0, dy=1 / 3),
        _s("ripple", "pond ripple", "Concentric ripples spread from the centre, like a stone dropped in a pond.", "ripple", amp=0.1, freq=3.0),
        _s("shear", "slanted wrap shear", "The image is sheared sideways into a slant, wrapping around the edges.", "shear", k=0.6),
    ]


def _blocks_family() -> list[_Spec]:
    return [
        _s("pixelate_fine", "fine pixelation", "The image is pixelated into small square blocks of flat colour (a fifth of the side).", "pixelate", by=0.2, bx=0.2),
        _s("pixelate_coarse", "coarse pixelation", "The image is pixelated into big square blocks (a third of the side).", "pixelate", by=1 / 3, bx=1 / 3),
        _s("bars_h", "horizontal smear blocks", "Pixels are averaged in wide, one-pixel-tall horizontal bars, a horizontal smeared pixelation.", "pixelate", by=0.0, bx=0.34),
        _s("bars_v", "vertical smear blocks", "Pixels are averaged in tall, one-pixel-wide vertical bars, a vertical smeared pixelation.", "pixelate", by=0.34, bx=0.0),
        _s("tile2", "2x2 tiling", "The image is shrunk and repeated in a 2 by 2 grid of identical copies.", "tile", n=2),
        _s("tile3", "3x3 tiling", "The image is shrunk and repeated in a 3 by 3 grid of identical copies.", "tile", n=3),
        _s("shuffle2", "quarter shuffle", "The four quarters of the image are swapped around like a scrambled puzzle.", "shuffle", grid=2, pattern_seed=0),
        _s("shuffle4", "4x4 tile shuffle", "The image is cut into a 4 by 4 grid whose tiles are scrambled.", "shuffle", grid=4, pattern_seed=0),
        _s("cellflip2", "quarter flip", "Each quarter of the image is flipped left-to-right in place.", "cell_flip", grid=2, mode="h"),
        _s("cellrot3", "3x3 tile rotation", "The image is cut into a 3 by 3 grid and every tile is turned upside down in place.", "cell_flip", grid=3, mode="rot180"),
        _s("mosaic", "tile mosaic", "A tile mosaic: flat-coloured square tiles separated by dark grout lines.", "mosaic", cell=0.2, row_offset=0.0, grout="#202020", grout_alpha=0.7),
        _s("brick", "brick mosaic", "A brick-pattern mosaic: flat-coloured blocks in staggered rows with light mortar lines.", "mosaic", cell=1 / 6, row_offset=0.5, grout="#e8e0d0", grout_alpha=0.6),
    ]


def _blur_family() -> list[_Spec]:
    return [
        _s("motion_h", "horizontal motion blur", "A horizontal motion blur streaks everything sideways.", "motion_blur", angle=0.0, length=0.4),
        _s("motion_v", "vertical motion blur", "A vertical motion blur streaks everything up and down.", "motion_blur", angle=90.0, length=0.4),
        _s("motion_diag", "diagonal motion blur", "A diagonal motion blur streaks everything from top-left to bottom-right.", "motion_blur", angle=45.0, length=0.4),
        _s("zoom", "zoom burst blur", "A radial zoom burst: streaks radiate outward from a sharp centre.", "zoom_blur", amount=0.3),
        _s("spin", "spin blur", "A rotational spin blur smears everything in circles around the centre.", "spin_blur", angle=1.0),
        _s("bloom", "bloom glow", "Highlights bloom into a soft white glow that spills over their surroundings.", "glow", sigma=0.08, strength=1.0, threshold=0.45, color="#ffffff"),
        _s("soft_dream", "dreamy soft focus", "A dreamy soft focus: the image is hazy, blurred and lightened.", "soft_focus", sigma=0.07, mix=0.7, lift=0.18),
        _s("tilt_shift", "tilt-shift miniature", "Tilt-shift miniature: a sharp middle band with strongly blurred top and bottom and vivid colours.", "tilt_shift", focus=0.08, sigma=0.1, saturation=1.5),
        _s("frosted", "frosted glass", "Viewed through frosted glass: pixels are scattered into a jittery diffuse texture.", "frosted", amp=0.12, pattern_seed=0),
        _s("bokeh", "bokeh defocus", "An out-of-focus lens blur where highlights swell into bright bokeh discs.", "defocus", radius=0.15, gamma=3.0, gain=1.1),
        _s("ghost", "double exposure ghost", "A ghosted double exposure: a faint offset copy overlaps the image.", "ghost", dy=0.18, dx=0.22, alpha=0.45),
        _s("halation", "red halation", "Film halation: bright areas are surrounded by a red-orange glow.", "halation", sigma=0.08, strength=0.9, threshold=0.4, color="#ff4a1c"),
    ]


def _edge_family() -> list[_Spec]:
    return [
        _s("emboss_tl", "grey emboss", "A grey embossed relief, lit from the top-left, with no colour.", "emboss", angle=225.0, strength=5.0, color=0),
        _s("emboss_br", "inverse grey emboss", "A grey embossed relief lit from the bottom-right, so edges look engraved.", "emboss", angle=45.0, strength=5.0, color=0),
        _s("emboss_side", "side-lit emboss", "A grey relief lit from the left side, showing only vertical edges.", "emboss", angle=180.0, strength=6.0, color=0),
        _s("emboss_color", "colour emboss", "The image keeps its colours but gains a raised embossed relief along edges.", "emboss", angle=225.0, strength=3.0, color=1),
        _s("sobel", "white edge map", "An edge map: bright white outlines on a black background.", "edges", mode="sobel", gain=3.0),
        _s("sobel_inv", "dark outline drawing", "Only the outlines remain, as dark grey lines on white.", "edges", mode="sobel_inv", gain=3.0),
        _s("edges_color", "colour edge map", "A colour edge map: coloured outlines glowing on black.", "edges", mode="color", gain=3.0),
        _s("laplacian", "laplacian line map", "Thin double-edged laplacian lines on black, highlighting fine detail.", "edges", mode="laplacian", gain=5.0),
        _s("sharpen", "heavy sharpening", "Heavily over-sharpened: halos and crunchy contrast along every edge.", "unsharp", sigma=0.06, amount=2.5),
        _s("erode", "dark erosion", "A minimum filter: dark regions grow and swallow thin bright details.", "morph", mode="min", size=0.15),
        _s("dilate", "bright dilation", "A maximum filter: bright regions grow into blocky blobs over dark details.", "morph", mode="max", size=0.15),
        _s("high_pass", "grey high-pass", "A high-pass filter: flat grey everywhere except for light and dark detail at edges.", "high_pass", sigma=0.08, gain=2.5, color=0),
    ]


def _stylize_family() -> list[_Spec]:
    return [
        _s("cartoon", "cartoon", "A cartoon: flat colour areas with bold dark outlines.", "cartoon", levels=4, edge=0.05, thick=0, saturation=1.3),
        _s("cartoon_bold", "bold comic cartoon", "A bold cartoon: very few flat vivid colours and thick black outlines.", "cartoon", levels=3, edge=0.04, thick=1, saturation=1.8),
        _s("pencil", "pencil sketch", "A grey pencil sketch: dark pencil lines on white paper.", "pencil", sigma=0.1, color=0),
        _s("pencil_color", "coloured pencil", "A coloured-pencil drawing: pale colours with sketchy dark lines.", "pencil", sigma=0.1, color=1),
        _s("neon_cyan", "cyan neon outline", "Glowing cyan neon outlines on a nearly black background.", "neon", color="#00f0ff", gain=4.0),
        _s("neon_magenta", "magenta neon outline", "Glowing magenta neon outlines on a nearly black background.", "neon", color="#ff2bd6", gain=4.0),
        _s("neon_rainbow", "rainbow neon outline", "Glowing neon outlines in each region's own vivid hue on a dark background.", "neon", color="rainbow", gain=4.0),
        _s("stencil_red", "red stencil", "A two-tone stencil: black shapes on a bright red background.", "stencil", colors="#111111-#e63946", lo=0.45, hi=0.45),
        _s("poster_hope", "three-tone poster", "A three-tone propaganda poster in navy, red and beige with a light blue top tone.",
           "stencil", colors="#0b2545-#c1121f-#8db1cc-#f1e3c6", lo=0.3, hi=0.7),
        _s("woodcut", "woodcut engraving", "A woodcut engraving: black ink lines on cream paper, thicker in dark areas.", "woodcut", period=0.15, ink="#151010", paper="#f2e8cf"),
        _s("hatch", "pen crosshatching", "Pen-and-ink crosshatching: layers of dark diagonal lines build up the shadows on white.", "hatch", period=0.18, ink="#1a1a2a", paper="#fbfaf5"),
        _s("pop_art", "pop art quad", "Pop art: four small copies in a 2 by 2 grid, each in a different bold flat colour scheme.", "pop_art"),
        _s("watercolor", "watercolour painting", "A watercolour painting: soft blended washes of colour with darker pigment edges on paper.", "watercolor", pattern_seed=0),
    ]


def _light_family() -> list[_Spec]:
    return [
        _s("vignette_dark", "dark vignette", "A strong dark vignette fades the corners and edges to black.", "vignette", strength=0.9, radius=0.22, softness=0.3, color="#000000"),
        _s("vignette_oval", "soft vignette", "A gentle dark vignette dims only the outer corners.", "vignette", strength=0.55, radius=0.35, softness=0.25, color="#000000"),
        _s("vignette_white", "white vignette", "A white vignette fades the edges and corners to white, like a dreamy old portrait.", "vignette", strength=0.9, radius=0.25, softness=0.25, color="#ffffff"),
        _s("vignette_blue", "blue vignette", "The edges fade into deep blue.", "vignette", strength=0.85, radius=0.22, softness=0.3, color="#0a2a8a"),
        _s("leak_orange", "orange light leak", "A warm orange light leak glows in from the top-left corner.", "light_leak", cy=-0.5, cx=-0.5, radius=0.35, color="#ff8a1f", strength=1.0),
        _s("leak_magenta", "magenta light leak", "A magenta-pink light leak glows in from the bottom-right corner.", "light_leak", cy=0.5, cx=0.5, radius=0.45, color="#ff2bbf", strength=1.0),
        _s("leak_band", "red light band", "A vertical band of red light washes over the right side.", "band_leak", angle=0.0, offset=0.3, width=0.12, color="#ff2d2d", strength=1.0),
        _s("spotlight", "spotlight", "A spotlight: the centre is brightly lit and everything around it is dark.", "spotlight", radius=0.22, dark=0.2, boost=1.3),
        _s("lens_flare", "lens flare", "A lens flare: a bright sun spot at the top right with a ring and coloured ghosts across the image.", "lens_flare", cy=-0.32, cx=0.32, strength=1.0),
        _s("sunset_overlay", "sunset gradient overlay", "A sunset gradient is blended over the image: orange at the top, purple at the bottom.",
           "gradient_overlay", stops="#ff9a3c-#ff5e62-#6a2c91", angle=90.0, mode="softlight", strength=1.0),
        _s("rainbow_overlay", "rainbow overlay", "A diagonal rainbow gradient is screened over the image.",
           "gradient_overlay", stops="#ff0000-#ffa500-#ffff00-#00c000-#0080ff-#8000ff", angle=45.0, mode="screen", strength=0.6),
        _s("sun_rays", "sun rays", "Warm sun rays stream diagonally from the top-left corner.", "sun_rays", cy=-0.6, cx=-0.6, rays=12, color="#ffe9a8", strength=1.3),
        _s("side_shadow", "side shadow", "Light falls from the left: the right side sinks into deep shadow and the left is warmed.", "side_shadow", angle=0.0, strength=0.85, warm=1.0),
    ]


def _glitch_family() -> list[_Spec]:
    return [
        _s("rgb_split", "RGB split", "The red and blue channels are offset sideways, giving coloured fringes on every edge.", "rgb_split", dx=0.1, dy=0.0),
        _s("rgb_split_wide", "wide RGB split", "A wide horizontal RGB split: separate red and blue ghost copies are offset left and right.", "rgb_split", dx=0.25, dy=0.0),
        _s("rgb_split_v", "vertical RGB split", "The red and blue channels are offset vertically, giving coloured fringes above and below edges.", "rgb_split", dx=0.0, dy=0.13),
        _s("chroma", "chromatic aberration", "Radial chromatic aberration: colour fringes grow towards the image corners.", "chroma_radial", scale=0.3),
        _s("row_glitch", "row displacement glitch", "A glitch: horizontal bands of rows are displaced sideways by different amounts.", "band_shift", axis="rows", bands=7, max_shift=0.35, pattern_seed=0),
        _s("col_glitch", "column displacement glitch", "A glitch: vertical bands of columns are displaced up or down by different amounts.", "band_shift", axis="columns", bands=6, max_shift=0.35, pattern_seed=0),
        _s("interlace", "interlaced tearing", "Interlacing: every other row is shifted sideways and dimmed, like a torn video frame.", "interlace", shift=0.15, gain=0.75),
        _s("sort_rows", "row pixel sort", "Pixel sorting: each row's pixels are sorted from dark on the left to bright on the right.", "pixel_sort", axis="rows", descending=0),
        _s("sort_cols", "column pixel sort", "Pixel sorting: each column's pixels are sorted from bright at the top to dark at the bottom.", "pixel_sort", axis="columns", descending=1),
        _s("band_swap", "channel band swap", "Alternating horizontal bands have their colour channels swapped into false colours.", "band_swap", bands=6, pattern_seed=0),
        _s("static", "static noise bands", "Bands of grey TV static cut across the image.", "noise_bands", bands=3, height=0.14, alpha=0.85, pattern_seed=0),
        _s("datamosh", "block corruption", "Corrupted blocks: random tiles are replaced by false-coloured pieces from elsewhere in the image.", "block_corrupt", grid=5, fraction=0.35, pattern_seed=0),
    ]


def _combo_family() -> list[_Spec]:
    return [
        _s("old_film", "old film", "An old film still: sepia tones, faded, grainy, with vertical scratches and dark vignetted corners.", "old_film", pattern_seed=0),
        _s("crt", "retro CRT", "A retro CRT screen: saturated colours, dark scanlines and slight RGB fringing.", "crt"),
        _s("lomo", "lomo camera", "A lomo camera look: punchy saturated colours, blue-tinted shadows and heavy dark corners.", "lomo"),
        _s("risograph", "risograph print", "A risograph print in pink and blue inks on off-white paper with misregistration and grain.", "risograph", pattern_seed=0),
        _s("vaporwave", "vaporwave", "Vaporwave: purple, hot pink and cyan colours with glowing horizontal lines.", "vaporwave"),
        _s("comic", "comic book", "A comic book panel: flat vivid colours, thick outlines and halftone dots in the shadows.", "comic"),
        _s("blueprint", "blueprint", "A blueprint: white outlines of the subject on a blue grid background.", "blueprint"),
        _s("night_vision", "night vision", "Night-vision goggles: bright green monochrome, grain, scanlines and a round black border.", "night_vision", pattern_seed=0),
        _s("retro_game", "handheld game console", "An old handheld game screen: chunky pixels in four shades of green.", "retro_game"),
        _s("newspaper", "newspaper print", "A newspaper photo: fine dark halftone dots on yellowed newsprint.", "newspaper"),
        _s("stained_glass", "stained glass", "Stained glass: glowing saturated tiles in staggered rows separated by black leading.", "stained_glass"),
        _s("thermal_cam", "thermal camera", "A thermal camera readout: blocky heat-map colours with a white crosshair.", "thermal_cam"),
        _s("security_cam", "security camera", "Security camera footage: grey, bulging wide-angle lens, noise, scanlines and dark corners.", "security_cam", pattern_seed=0),
        _s("glitch_pop", "glitch pop", "Glitch pop: inverted vivid hues, sideways-displaced bands and RGB fringing.", "glitch_pop", pattern_seed=0),
    ]


# Interleaving order: the first effects of the catalogue come one from each of these in turn.
_FAMILIES: tuple[tuple[str, Callable[[], list[_Spec]]], ...] = (
    ("palette", _palette_family),
    ("warp", _warp_family),
    ("stripes", _stripes_family),
    ("edge", _edge_family),
    ("curve", _curve_family),
    ("blocks", _blocks_family),
    ("pattern", _pattern_family),
    ("stylize", _stylize_family),
    ("channel_mix", _channel_mix_family),
    ("glitch", _glitch_family),
    ("light", _light_family),
    ("quantize", _quantize_family),
    ("blur", _blur_family),
    ("combo", _combo_family),
)

# Consonant clusters that never begin an English word, so triggers cannot be real words.
_ONSETS = ("zv", "qz", "xq", "kv", "vq", "zq", "xv", "qv", "vx", "zk", "kx", "xz", "qx", "vz", "jq", "zj", "qk", "xk")
_VOWELS = "aeiouy"
_CONSONANTS = "bdfgklmnprstvz"


def _make_triggers(n: int, seed: int) -> list[str]:
    """``n`` unique made-up lowercase tokens of 5-8 letters, none a substring of another."""
    rng = np.random.default_rng([seed, 0x7219])
    out: list[str] = []
    while len(out) < n:
        length = int(rng.integers(5, 9))
        word = str(rng.choice(_ONSETS))
        while len(word) < length:
            pool = _VOWELS if (len(word) % 2 == 0) else _CONSONANTS
            word += pool[int(rng.integers(len(pool)))]
        if all(word not in t and t not in word for t in out):
            out.append(word)
    return out


def _pattern_seed(seed: int, name: str) -> int:
    return zlib.crc32(f"{seed}:{name}".encode()) & 0x7FFFFFFF


# Families whose colour mapping turns grain added *before* the op into random dithering.
_PRE_GRAIN_FAMILIES = frozenset({"palette", "curve", "quantize", "channel_mix"})
GRAIN_STD = 0.12      # per-pixel std of the texture grain (0.15 showed the few-step gap in probes)
PRE_GRAIN_STD = 0.10  # before a colour mapping the grain is amplified by the mapping's slope


def _intrinsic_modes(op: str, p: Params) -> tuple[Params, ...] | None:
    """Modes that are the op's own parameter (a palette's direction, a stripe phase, a light's
    corner, a blur's direction ...); None: the op has none."""
    if op == "gradient_map":
        return ({"reverse": 0}, {"reverse": 1})
    if op == "stripes":
        return ({"phase": 0.0}, {"phase": 0.5})
    if op == "checker":  # which squares are the marked ones
        return ({"phase": 0}, {"phase": 1})
    if op == "hue_rotate":
        return ({"degrees": float(p["degrees"])}, {"degrees": (float(p["degrees"]) + 120.0) % 360.0})
    if op == "swirl":
        return ({"strength": float(p["strength"])}, {"strength": -float(p["strength"])})
    if op in ("emboss", "motion_blur"):
        turn = 180.0 if op == "emboss" else 90.0
        return ({"angle": float(p["angle"])}, {"angle": (float(p["angle"]) + turn) % 360.0})
    if op == "mirror":
        other = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}[str(p["side"])]
        return ({"side": str(p["side"])}, {"side": other})
    if op == "rgb_split":
        return ({"dx": float(p["dx"]), "dy": float(p["dy"])}, {"dx": -float(p["dx"]), "dy": -float(p["dy"])})
    if op == "band_leak":  # a band of light on one side or the other (a quadrant could miss it)
        return ({"offset": float(p["offset"])}, {"offset": -float(p["offset"])})
    if op == "light_leak":
        cy, cx = float(p["cy"]), float(p["cx"])
        return tuple({"cy": a * cy, "cx": b * cx} for a in (1, -1) for b in (1, -1))
    return None


_MODE_WORDS = {"reverse": "the palette runs either way round (dark to light or reversed)",
               "phase": "the pattern sits at one of two phases, half a period apart",
               "degrees": "the hue turns by one of two angles",
               "strength": "the twist goes either way", "angle": "the direction is one of two",
               "dx": "the channels split one way or the other", "side": "either half is the one mirrored",
               "offset": "the band of light falls on one side or the other", "cy": "the light comes from one of the four corners"}

# A modes effect's variants must differ by at least this mean absolute error (the mean over
# pairs of modes and over _SEPARATION_SOURCES): world version 2's weaker modes were not learned by
# the teachers at all (world gate, 150 and 600 teacher steps): a mirror whose two modes are 0.078
# apart and every half / quarter placement (0.085 and 0.053 apart, and the cartoon's 0.173);
# a hue rotation 0.196 apart was learned with coverage 0.93 of the ideal sampler's.
MIN_MODE_SEPARATION = 0.15
_SEPARATION_SOURCES = 12
# Ops whose modes are a global colour choice rather than a spatial one vary by grain instead
# (world version 4): channel_mix_hue45_00's two hue rotations (+45 or +165 degrees, 0.196 apart)
# were not learned at 150 teacher steps (world gate on version 3: gt_mode_mae 0.085 at 8 NFE vs
# 0.076 for the unchanged source, mode_blur 0.94 -- the teacher averages the two), while the
# stripes' phase, a spatial choice, was (mode_blur 0.19 at 8 NFE).
_COLOUR_MODE_OPS = frozenset({"gradient_map", "hue_rotate"})


@lru_cache(maxsize=None)
def mode_separation(op: str, params: tuple[tuple[str, ParamValue], ...],
                    modes: tuple[tuple[tuple[str, ParamValue], ...], ...]) -> float:
    """Mean pairwise MAE between an op's modes on fixed 16 px sources of every category (the
    same for every world seed, so a catalogue's variations do not depend on it)."""
    from bench.synthetic.images import make_source

    rng = np.random.default_rng(0x5E9)
    gaps = []
    for i in range(_SEPARATION_SOURCES):
        x = make_source(CATEGORIES[i % len(CATEGORIES)], rng, 16)
        outs = [np.clip(_OPS[op](x, {**dict(params), **dict(m)}), 0, 1) for m in modes]
        gaps += [float(np.abs(a - b).mean()) for j, a in enumerate(outs) for b in outs[j + 1:]]
    return float(np.mean(gaps))


def _strong_modes(spec: _Spec) -> tuple[Params, ...] | None:
    """The op's intrinsic modes when they are well separated (``MIN_MODE_SEPARATION``), else None.
    Ops with a ``pattern_seed`` vary by their pattern instead (ordered Bayer dithering carries a
    pattern_seed but does not use it)."""
    params = dict(spec.params)
    if "pattern_seed" in params and not (spec.op == "dither" and params.get("matrix") != "noise"):
        return None
    if spec.op in _COLOUR_MODE_OPS:
        return None
    modes = _intrinsic_modes(spec.op, params)
    if modes is None:
        return None
    frozen = tuple(tuple(m.items()) for m in modes)
    return modes if mode_separation(spec.op, tuple(spec.params), frozen) >= MIN_MODE_SEPARATION else None


def _variation(family: str, spec: _Spec, index: int, as_modes: bool) -> tuple[Variation, str]:
    """Every effect is stochastic (DESIGN 3.1): a few global modes (coverage, mode collapse) when
    ``as_modes``, else a fresh texture seed (the few-step blur). Returns the variation and the
    sentence added to the description."""
    params = dict(spec.params)
    if as_modes:
        modes = _intrinsic_modes(spec.op, params)
        word = _MODE_WORDS[next(iter(modes[0]))]
        return Variation("modes", "mode", tuple(tuple(m.items()) for m in modes)), f"Each time {word}."
    if "pattern_seed" in params and not (spec.op == "dither" and params.get("matrix") != "noise"):
        return Variation("texture", "pattern_seed"), "Its random pattern is different every time."
    pre = family in _PRE_GRAIN_FAMILIES
    mono = index % 2 == 0
    what = ("random dithering noise" if pre else "fresh random film grain" if mono else "fresh random colour grain")
    return (Variation("texture", "grain_seed", grain=PRE_GRAIN_STD if pre else GRAIN_STD, grain_mono=mono, grain_pre=pre),
            f"It comes with {what}, different every time.")


# Effects the learnability gate found to test nothing (``benchmarks/world_gate.py --effects 50``,
# world version 4, default preset: 8 test sources x 4 draws, figures at 8 / 40 / 80 NFE; the
# whole gate file is docs/reference/world_gate.json). They keep their place in the interleaved
# order -- every other effect keeps its trigger word, data type, training rows and so its teacher's
# cache key -- and are left out of the catalogue (world version 5; the last one: world version 6).
GATE_DROPPED: dict[str, str] = {
    "pattern_checker_invert_01": "modes: the teacher puts every draw at the average of the two phases "
                                 "(mode_blur 1.00 at 8 and 40 NFE, coverage 0): never learned",
    "stylize_cartoon_bold_01": "texture: its teacher overshoots with many steps (texture energy 1.62 / 1.92 "
                               "at 40 / 80 NFE against 0.76 at 8), so 8 NFE is no worse: no few-step gap",
    "edge_emboss_color_03": "modes: 62 % of the draws at the average of the two directions at 8 and 40 NFE, "
                            "learned only at 8: neither a few-step gap nor coverage",
    # world version 6, gate version 2 (the same settings, 80 NFE from Base's samples)
    "stripes_vertical_fine_dark_02": "modes: no few-step gap (gt_mode_mae 0.035 [0.030, 0.039] at 8 NFE, 0.034 "
                                     "at 40, 0.041 at 80) and coverage 0.67 < 0.8 (6 of 8 sources put all 4 "
                                     "draws in one stripe phase); with 16 draws coverage is 0.88, still no gap",
}


def build_effects(seed: int = 0, *, dropped: bool = False) -> list[Effect]:
    """The effect catalogue, families interleaved round-robin; deterministic in ``seed``.

    The seed sets the trigger words and the canonical texture patterns (``pattern_seed``);
    the parameter grid, names, order and variations are the same for every seed. The effects
    in ``GATE_DROPPED`` are left out after their place in the order is taken (``dropped=True``
    keeps them: the order every effect was numbered in).
    """
    families = [(fam, builder()) for fam, builder in _FAMILIES]
    ordered: list[tuple[str, int, _Spec]] = []
    for k in range(max(len(specs) for _, specs in families)):
        ordered += [(fam, k, specs[k]) for fam, specs in families if k < len(specs)]
    triggers = _make_triggers(len(ordered), seed)
    effects = []
    strong = 0  # effects so far whose op has well-separated modes: the 1st, 3rd, ... use them
    for i, (fam, k, spec) in enumerate(ordered):
        name = f"{fam}_{spec.short}_{k:02d}"
        params = tuple((key, _pattern_seed(seed, name) if key == "pattern_seed" else value) for key, value in spec.params)
        as_modes = False
        if _strong_modes(spec) is not None:
            as_modes, strong = strong % 2 == 0, strong + 1
        variation, sentence = _variation(fam, spec, i, as_modes)
        effects.append(Effect(
            name=name, family=fam, op=spec.op, params=params,
            teacher_prompt=f"Apply the {spec.title} effect.", trigger=triggers[i],
            description=f"{spec.description} {sentence}", data_type=CATEGORIES[i % len(CATEGORIES)],
            variation=variation,
        ))
    return effects if dropped else [e for e in effects if e.name not in GATE_DROPPED]


def effects_by_name(effects: list[Effect] | tuple[Effect, ...]) -> dict[str, Effect]:
    """Index effects by their unique name."""
    return {e.name: e for e in effects}
