"""Procedural source images for the synthetic world.

Three categories stand in for the paper's test categories:

* ``pet``      - a round body with a head and two ears on a soft indoor background,
* ``animal``   - an elongated four-legged body with a tail on a sky/ground landscape,
* ``portrait`` - a face oval with hair, eyes and mouth above a pair of shoulders.

Shapes are drawn as signed-distance fields with a one-pixel anti-aliasing ramp, in
coordinates where the shorter image side spans [0, 1], so the same random draw looks
the same (and stays round) at any resolution or aspect ratio.
"""

from __future__ import annotations

import colorsys

import numpy as np

CATEGORIES: tuple[str, ...] = ("pet", "animal", "portrait")

Color = np.ndarray  # shape (3,), float in [0, 1]


# --------------------------------------------------------------------------- canvas


class _Canvas:
    """Pixel-centre coordinates (shorter side spans [0, 1]) plus the image being painted."""

    def __init__(self, height: int, width: int) -> None:
        side = min(height, width)
        ys = (np.arange(height) + 0.5 - height / 2) / side + 0.5
        xs = (np.arange(width) + 0.5 - width / 2) / side + 0.5
        self.y, self.x = np.meshgrid(ys, xs, indexing="ij")
        self.px = 1.0 / side  # one pixel in normalised units
        self.img = np.zeros((height, width, 3), dtype=np.float64)

    def coverage(self, dist: np.ndarray) -> np.ndarray:
        """Anti-aliased coverage from a signed distance (negative inside)."""
        return np.clip(0.5 - dist / self.px, 0.0, 1.0)

    def paint(self, mask: np.ndarray, color: Color | np.ndarray, alpha: float = 1.0) -> None:
        a = (mask * alpha)[..., None]
        self.img = self.img * (1.0 - a) + np.asarray(color) * a


def _parse_size(size: int | tuple[int, int]) -> tuple[int, int]:
    height, width = (size, size) if isinstance(size, (int, np.integer)) else size
    height, width = int(height), int(width)
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {size!r}")
    return height, width


# --------------------------------------------------------------------------- shapes (SDFs)


def _ellipse(c: _Canvas, cy: float, cx: float, ry: float, rx: float, angle: float = 0.0) -> np.ndarray:
    dy, dx = c.y - cy, c.x - cx
    ca, sa = np.cos(angle), np.sin(angle)
    u, v = ca * dx + sa * dy, -sa * dx + ca * dy
    q = np.sqrt((u / rx) ** 2 + (v / ry) ** 2)
    # First-order distance estimate (q - 1) / |grad q|: keeps the AA ramp ~1 px on elongated ellipses.
    grad = np.sqrt((u / rx**2) ** 2 + (v / ry**2) ** 2) / np.maximum(q, 1e-9)
    return c.coverage((q - 1.0) / np.maximum(grad, 1e-9))


def _capsule(c: _Canvas, p0: tuple[float, float], p1: tuple[float, float], radius: float) -> np.ndarray:
    (y0, x0), (y1, x1) = p0, p1
    by, bx = y1 - y0, x1 - x0
    ay, ax = c.y - y0, c.x - x0
    t = np.clip((ay * by + ax * bx) / max(by * by + bx * bx, 1e-12), 0.0, 1.0)
    dist = np.hypot(ay - t * by, ax - t * bx) - radius
    return c.coverage(dist)


def _triangle(c: _Canvas, pts: tuple[tuple[float, float], ...]) -> np.ndarray:
    """Convex triangle given (y, x) vertices in either winding order."""
    (y0, x0), (y1, x1), (y2, x2) = pts
    sign = 1.0 if (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0) > 0 else -1.0
    dist = np.full(c.y.shape, -np.inf)
    for (ya, xa), (yb, xb) in (((y0, x0), (y1, x1)), ((y1, x1), (y2, x2)), ((y2, x2), (y0, x0))):
        ey, ex = yb - ya, xb - xa
        norm = np.hypot(ey, ex) + 1e-12
        # Signed distance to the edge line; positive on the outer side.
        dist = np.maximum(dist, -sign * (ex * (c.y - ya) - ey * (c.x - xa)) / norm)
    return c.coverage(dist)


def _half_plane(c: _Canvas, y_cut: float, below: bool) -> np.ndarray:
    dist = (y_cut - c.y) if below else (c.y - y_cut)
    return c.coverage(dist)


# --------------------------------------------------------------------------- colours and backgrounds


def _hsv(h: float, s: float, v: float) -> Color:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1))))


def _jitter(rng: np.random.Generator, color: Color, amount: float = 0.06) -> Color:
    return np.clip(color + rng.uniform(-amount, amount, 3), 0.0, 1.0)


def _low_freq(c: _Canvas, rng: np.random.Generator, amp: float, n_waves: int = 3) -> np.ndarray:
    """Smooth random texture: a sum of a few low-frequency plane waves."""
    field = np.zeros_like(c.y)
    for _ in range(n_waves):
        theta = rng.uniform(0, 2 * np.pi)
        freq = rng.uniform(0.6, 3.0)
        phase = rng.uniform(0, 2 * np.pi)
        field += np.sin(2 * np.pi * freq * (np.cos(theta) * c.x + np.sin(theta) * c.y) + phase)
    return amp * field / n_waves


def _gradient(c: _Canvas, rng: np.random.Generator, c0: Color, c1: Color, texture: float) -> np.ndarray:
    theta = rng.uniform(0, 2 * np.pi)
    t = np.clip(0.5 + (np.cos(theta) * (c.x - 0.5) + np.sin(theta) * (c.y - 0.5)), 0.0, 1.0)
    img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    return img + _low_freq(c, rng, texture)[..., None]


# --------------------------------------------------------------------------- categories

_PET_FURS = ((0.93, 0.55, 0.20), (0.55, 0.55, 0.58), (0.12, 0.11, 0.12), (0.95, 0.93, 0.88),
             (0.50, 0.32, 0.18), (0.92, 0.80, 0.58), (0.30, 0.24, 0.22))
_ANIMAL_COATS = ((0.55, 0.38, 0.20), (0.78, 0.62, 0.38), (0.45, 0.44, 0.42), (0.15, 0.13, 0.12),
                 (0.92, 0.90, 0.85), (0.85, 0.52, 0.15), (0.62, 0.50, 0.40))
_HAIR = ((0.08, 0.06, 0.05), (0.32, 0.20, 0.10), (0.85, 0.70, 0.38), (0.62, 0.25, 0.10), (0.70, 0.70, 0.70))


def _pet(c: _Canvas, rng: np.random.Generator) -> None:
    hue = rng.uniform()
    c0 = _hsv(hue, rng.uniform(0.1, 0.35), rng.uniform(0.78, 0.98))
    c1 = _hsv(hue + rng.uniform(-0.15, 0.15), rng.uniform(0.1, 0.4), rng.uniform(0.6, 0.9))
    c.img = _gradient(c, rng, c0, c1, texture=0.04)
    if rng.uniform() < 0.5:  # a floor or cushion band
        floor_y = rng.uniform(0.72, 0.86)
        c.paint(_half_plane(c, floor_y, below=True), _jitter(rng, c1 * 0.75, 0.1), alpha=0.8)

    fur = _jitter(rng, np.array(_PET_FURS[rng.integers(len(_PET_FURS))]))
    bcy, bcx = rng.uniform(0.6, 0.7), rng.uniform(0.38, 0.62)
    bry, brx = rng.uniform(0.17, 0.24), rng.uniform(0.2, 0.29)
    side = rng.choice([-1.0, 1.0])
    if rng.uniform() < 0.7:  # tail curling up from the back
        tail_end = (bcy - bry * rng.uniform(0.6, 1.4), bcx - side * (brx + rng.uniform(0.05, 0.12)))
        c.paint(_capsule(c, (bcy, bcx - side * brx * 0.8), tail_end, rng.uniform(0.025, 0.04)), fur * 0.9)
    c.paint(_ellipse(c, bcy, bcx, bry, brx, rng.uniform(-0.2, 0.2)), fur)
    c.paint(_ellipse(c, bcy + bry * 0.3, bcx, bry * 0.55, brx * 0.5), np.clip(fur * 1.25 + 0.1, 0, 1), 0.6)

    hr = rng.uniform(0.12, 0.17)
    hcy, hcx = bcy - bry - hr * rng.uniform(0.3, 0.7), bcx + side * rng.uniform(0.0, 0.1)
    ear_color = fur * rng.uniform(0.7, 1.0)
    pointy = rng.uniform() < 0.6
    for s in (-1.0, 1.0):
        if pointy:  # cat-like triangles
            base0 = (hcy - 0.45 * hr, hcx + s * 0.15 * hr)
            base1 = (hcy - 0.2 * hr, hcx + s * 0.95 * hr)
            tip = (hcy - 1.45 * hr, hcx + s * 0.85 * hr)
            c.paint(_triangle(c, (base0, base1, tip)), ear_color)
        else:  # floppy dog ears
            c.paint(_ellipse(c, hcy + 0.1 * hr, hcx + s * 0.95 * hr, 0.65 * hr, 0.3 * hr, s * 0.3), ear_color)
    c.paint(_ellipse(c, hcy, hcx, hr, hr * 1.05), fur)
    eye = np.array([0.05, 0.05, 0.05]) if fur.mean() > 0.3 else np.array([0.85, 0.8, 0.2])
    for s in (-1.0, 1.0):
        c.paint(_ellipse(c, hcy - 0.1 * hr, hcx + s * 0.4 * hr, 0.16 * hr, 0.13 * hr), eye)
    c.paint(_ellipse(c, hcy + 0.3 * hr, hcx, 0.1 * hr, 0.14 * hr), np.array([0.85, 0.45, 0.5]))


def _animal(c: _Canvas, rng: np.random.Generator) -> None:
    horizon = rng.uniform(0.55, 0.72)
    sky_top = _hsv(rng.uniform(0.55, 0.65), rng.uniform(0.35, 0.7), rng.uniform(0.75, 0.95))
    sky_low = _hsv(rng.uniform(0.5, 0.62), rng.uniform(0.05, 0.3), rng.uniform(0.88, 1.0))
    t = np.clip(c.y / horizon, 0, 1)[..., None]
    c.img = sky_top * (1 - t) + sky_low * t + _low_freq(c, rng, 0.02)[..., None]
    if rng.uniform() < 0.4:  # sun
        c.paint(_ellipse(c, rng.uniform(0.1, 0.3), rng.uniform(0.1, 0.9), 0.07, 0.07), np.array([1.0, 0.93, 0.6]))
    ground = _hsv(rng.uniform(0.08, 0.33), rng.uniform(0.4, 0.75), rng.uniform(0.35, 0.7))
    hills = horizon + 0.04 * np.sin(2 * np.pi * (rng.uniform(0.5, 1.5) * c.x + rng.uniform()))
    ground_mask = c.coverage(hills - c.y)
    ground_img = ground * (1 - 0.35 * np.clip(c.y - horizon, 0, 1)[..., None]) + _low_freq(c, rng, 0.05)[..., None]
    a = ground_mask[..., None]
    c.img = c.img * (1 - a) + ground_img * a

    coat = _jitter(rng, np.array(_ANIMAL_COATS[rng.integers(len(_ANIMAL_COATS))]))
    side = rng.choice([-1.0, 1.0])
    bry, brx = rng.uniform(0.08, 0.12), rng.uniform(0.2, 0.27)
    feet = rng.uniform(horizon + 0.05, 0.92)
    bcy = feet - bry - rng.uniform(0.1, 0.18)
    bcx = rng.uniform(0.42, 0.58)
    leg_r = rng.uniform(0.018, 0.03)
    leg_color = coat * 0.8
    for off in (-0.7, -0.45, 0.45, 0.7):
        x0 = bcx + off * brx
        c.paint(_capsule(c, (bcy, x0), (feet, x0 + rng.uniform(-0.02, 0.02)), leg_r), leg_color)
    tail_root = (bcy - 0.3 * bry, bcx - side * brx * 0.95)
    tail_tip = (bcy + rng.uniform(-0.15, 0.1), bcx - side * (brx + rng.uniform(0.08, 0.14)))
    c.paint(_capsule(c, tail_root, tail_tip, leg_r * 0.6), leg_color)
    body = _ellipse(c, bcy, bcx, bry, brx, rng.uniform(-0.08, 0.08))
    if rng.uniform() < 0.3:  # striped coat (zebra/tiger-ish)
        stripes = 0.5 + 0.5 * np.sin(2 * np.pi * c.x / rng.uniform(0.05, 0.08))
        pattern = coat * (1 - 0.7 * stripes[..., None])
        a = body[..., None]
        c.img = c.img * (1 - a) + pattern * a
    else:
        c.paint(body, coat)
    hcy, hcx = bcy - bry * rng.uniform(0.9, 1.6), bcx + side * (brx + rng.uniform(0.02, 0.06))
    c.paint(_capsule(c, (bcy - 0.3 * bry, bcx + side * brx * 0.7), (hcy, hcx), bry * 0.45), coat)
    hr = rng.uniform(0.055, 0.075)
    c.paint(_ellipse(c, hcy, hcx + side * hr * 0.4, hr * 0.8, hr * 1.3, side * 0.3), coat)
    c.paint(_triangle(c, ((hcy - hr * 0.5, hcx - hr * 0.4), (hcy - hr * 0.5, hcx + hr * 0.3),
                          (hcy - hr * 1.6, hcx - side * hr * 0.2))), coat * 0.85)
    c.paint(_ellipse(c, hcy - hr * 0.2, hcx + side * hr * 0.7, hr * 0.18, hr * 0.18), np.zeros(3))


def _portrait(c: _Canvas, rng: np.random.Generator) -> None:
    hue = rng.uniform()
    c0 = _hsv(hue, rng.uniform(0.15, 0.5), rng.uniform(0.35, 0.75))
    c1 = _hsv(hue + 0.05, rng.uniform(0.1, 0.4), rng.uniform(0.2, 0.55))
    c.img = _gradient(c, rng, c0, c1, texture=0.03)

    tone = rng.uniform()
    skin = _jitter(rng, np.array([0.97, 0.82, 0.70]) * (1 - tone) + np.array([0.40, 0.26, 0.17]) * tone, 0.04)
    hair = _jitter(rng, np.array(_HAIR[rng.integers(len(_HAIR))]), 0.05)
    cloth = _hsv(rng.uniform(), rng.uniform(0.4, 0.9), rng.uniform(0.3, 0.9))

    fcy, fcx = rng.uniform(0.4, 0.48), rng.uniform(0.44, 0.56)
    fry = rng.uniform(0.19, 0.24)
    frx = fry * rng.uniform(0.7, 0.82)
    long_hair = rng.uniform() < 0.5
    if long_hair:  # hair falling behind the shoulders
        c.paint(_ellipse(c, fcy + 0.1, fcx, fry * 1.45, frx * 1.45), hair)
    c.paint(_ellipse(c, 1.08, fcx, rng.uniform(0.24, 0.3), rng.uniform(0.38, 0.48)), cloth)
    c.paint(_capsule(c, (fcy + fry * 0.7, fcx), (fcy + fry * 1.5, fcx), frx * 0.4), skin * 0.9)
    c.paint(_ellipse(c, fcy - fry * 0.12, fcx, fry * 1.08, frx * 1.15), hair)  # hair cap behind the face
    face = _ellipse(c, fcy, fcx, fry, frx)
    shade = 1.0 - 0.12 * np.clip((c.x - fcx) / frx, -1, 1) * rng.choice([-1.0, 1.0])
    a = face[..., None]
    c.img = c.img * (1 - a) + (skin * shade[..., None]) * a
    fringe = _ellipse(c, fcy - fry * 0.55, fcx, fry * 0.5, frx * 1.02) * _half_plane(c, fcy - fry * 0.5, below=False)
    c.paint(fringe, hair)
    for s in (-1.0, 1.0):
        c.paint(_ellipse(c, fcy - fry * 0.08, fcx + s * frx * 0.38, fry * 0.09, frx * 0.14),
                np.array([0.1, 0.07, 0.06]))
        c.paint(_ellipse(c, fcy + fry * 0.3, fcx + s * frx * 0.5, fry * 0.1, frx * 0.15),
                np.array([0.9, 0.45, 0.45]), 0.25)
    lips = _jitter(rng, np.array([0.72, 0.28, 0.3]), 0.08)
    c.paint(_capsule(c, (fcy + fry * 0.5, fcx - frx * 0.22), (fcy + fry * 0.5, fcx + frx * 0.22), fry * 0.07), lips)


_PAINTERS = {"pet": _pet, "animal": _animal, "portrait": _portrait}


def make_source(category: str, rng: np.random.Generator, size: int | tuple[int, int] = 16) -> np.ndarray:
    """Draw one random source image of ``category`` as float32 HxWx3 in [0, 1].

    ``size`` is either a side length or a ``(height, width)`` pair. Deterministic given
    the generator state; consumes a category-dependent number of draws from ``rng``.
    """
    if category not in _PAINTERS:
        raise ValueError(f"unknown category {category!r}; valid categories: {', '.join(CATEGORIES)}")
    height, width = _parse_size(size)
    canvas = _Canvas(height, width)
    _PAINTERS[category](canvas, rng)
    return np.clip(canvas.img, 0.0, 1.0).astype(np.float32)
