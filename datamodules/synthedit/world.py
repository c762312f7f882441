"""The SynthEdit world: named palettes, shapes as signed distance functions, and the renderer.

A *scene* is a JSON-friendly dict::

    {"background": {"kind": "solid" | "gradient" | "stripes" | "checker",
                    "colors": [name, ...], "direction": "horizontal" | "vertical" | "diagonal",
                    "period": float},          # stripes / checker period, fraction of min(H, W)
     "objects": [object, ...],                 # back to front (depth order)
     "style": None | "grayscale" | "invert" | "sepia" | "posterize"}

and an *object* is::

    {"uid": int, "shape": str, "color": str, "size": "small" | "medium" | "large",
     "position": [x, y],   # centre at frame 0, fractions of the frame width / height
     "velocity": [vx, vy], # fractions of the frame per frame; bounces off the frame edges
     "angle": float, "spin": float,            # radians, radians per frame
     "pulse": float, "pulse_period": float, "pulse_phase": float}
                           # scale(t) = 1 + pulse * sin(2 pi t / pulse_period + pulse_phase)

Geometry is resolution independent: the same scene renders at any ``(H, W)`` and frame count.
Rendering is vectorised numpy in float32 on the ``[0, 255]`` scale; object edges are
anti-aliased with a one-pixel ramp of the signed distance, background patterns with 4 x 4
supersampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (240, 215, 40),
    "green": (50, 180, 70),
    "cyan": (40, 200, 220),
    "blue": (40, 90, 230),
    "purple": (145, 70, 200),
    "pink": (245, 120, 185),
}
"""Object colours (RGB). Disjoint from :data:`BACKGROUND_COLORS`."""

BACKGROUND_COLORS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
    "navy": (20, 30, 90),
    "beige": (225, 210, 170),
    "brown": (110, 70, 40),
}
"""Background colours (RGB); no object ever has one of these."""

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring", "cross")

SIZES: dict[str, float] = {"small": 0.13, "medium": 0.19, "large": 0.26}
"""Object radius (centre to the farthest point of the shape) as a fraction of ``min(H, W)``."""

BACKGROUND_KINDS: tuple[str, ...] = ("solid", "gradient", "stripes", "checker")
DIRECTIONS: tuple[str, ...] = ("horizontal", "vertical", "diagonal")
STYLES: tuple[str, ...] = ("grayscale", "invert", "sepia", "posterize")

_SUPERSAMPLE = 4
_SEPIA = np.array(
    [[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]], dtype=np.float32
)
_POSTERIZE_LEVELS = 4


# ---------------------------------------------------------------------------------------------
# signed distances, in units of the object radius (negative inside)


def _box(u: np.ndarray, v: np.ndarray, half_u: float, half_v: float) -> np.ndarray:
    qu = np.abs(u) - half_u
    qv = np.abs(v) - half_v
    outside = np.hypot(np.maximum(qu, 0.0), np.maximum(qv, 0.0))
    return outside + np.minimum(np.maximum(qu, qv), 0.0)


def _circle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.hypot(u, v) - 1.0


def _square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return _box(u, v, 0.75, 0.75)


def _ring(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.abs(np.hypot(u, v) - 0.72) - 0.28


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.minimum(_box(u, v, 0.95, 0.32), _box(u, v, 0.32, 0.95))


def _triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Equilateral triangle, apex up, centroid at the origin, circumradius 1.1."""
    half_side = 1.1 * np.sqrt(3.0) / 2.0
    root3 = np.sqrt(3.0)
    # Fold onto the right half (y axis pointing up), then onto one edge's half plane.
    x = np.abs(u) - half_side
    y = -v + half_side / root3
    flip = x + root3 * y > 0.0
    x, y = np.where(flip, (x - root3 * y) / 2.0, x), np.where(flip, (-root3 * x - y) / 2.0, y)
    x = x - np.clip(x, -2.0 * half_side, 0.0)
    return -np.hypot(x, y) * np.sign(y)


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Five-pointed star, a point up, outer radius 1.1, inner radius about 0.45."""
    outer, inner = 1.1, 0.45
    k1x, k1y = np.cos(np.pi / 5.0), -np.sin(np.pi / 5.0)
    x, y = np.abs(u), -v
    # Reflect across the two mirror lines of the star so every point lands in one sector.
    for kx in (k1x, -k1x):
        along = 2.0 * np.maximum(kx * x + k1y * y, 0.0)
        x, y = x - along * kx, y - along * k1y
    x = np.abs(x)
    y = y - outer
    # The sector's edge runs from the tip (0, outer) towards the inner vertex.
    edge_x, edge_y = -inner * k1y, inner * k1x - 1.0
    h = np.clip((x * edge_x + y * edge_y) / (edge_x**2 + edge_y**2), 0.0, outer)
    return np.hypot(x - edge_x * h, y - edge_y * h) * np.sign(y * edge_x - x * edge_y)


_SDF = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "star": _star,
    "ring": _ring,
    "cross": _cross,
}


# ---------------------------------------------------------------------------------------------
# motion


def _bounce(start: float, step: float, t: np.ndarray, low: float, high: float) -> np.ndarray:
    """Positions ``start + step * t`` reflected back and forth inside ``[low, high]``."""
    span = high - low
    if span <= 0.0:
        return np.full_like(t, (low + high) / 2.0)
    unfolded = np.mod(start + step * t - low, 2.0 * span)
    return low + span - np.abs(unfolded - span)


def object_radius(obj: dict, size: tuple[int, int]) -> float:
    """Radius of ``obj`` in pixels at scale 1."""
    return SIZES[obj["size"]] * min(size)


def travel_bounds(obj: dict, size: tuple[int, int]) -> tuple[tuple[float, float], ...]:
    """``((x_low, x_high), (y_low, y_high))``: where the centre may go, as frame fractions.

    The object, at its largest pulse, stays inside the frame.
    """
    height, width = size
    reach = object_radius(obj, size) * (1.0 + abs(obj["pulse"]))
    return ((reach / width, 1.0 - reach / width), (reach / height, 1.0 - reach / height))


def object_coverage(obj: dict, size: tuple[int, int], frames: int) -> np.ndarray:
    """Anti-aliased coverage of ``obj`` in ``[0, 1]``, float32 ``(T, H, W)``.

    Exactly 0 more than half a pixel outside the shape, exactly 1 more than half a pixel inside.
    """
    height, width = size
    t = np.arange(frames, dtype=np.float64)
    (x_low, x_high), (y_low, y_high) = travel_bounds(obj, size)
    centre_x = _bounce(obj["position"][0], obj["velocity"][0], t, x_low, x_high) * width
    centre_y = _bounce(obj["position"][1], obj["velocity"][1], t, y_low, y_high) * height
    angle = obj["angle"] + obj["spin"] * t
    scale = 1.0 + obj["pulse"] * np.sin(2.0 * np.pi * t / obj["pulse_period"] + obj["pulse_phase"])
    radius = (object_radius(obj, size) * scale)[:, None, None]

    xs = np.arange(width, dtype=np.float64)[None, None, :] + 0.5
    ys = np.arange(height, dtype=np.float64)[None, :, None] + 0.5
    dx = xs - centre_x[:, None, None]
    dy = ys - centre_y[:, None, None]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    u = (cos * dx + sin * dy) / radius
    v = (cos * dy - sin * dx) / radius
    distance = _SDF[obj["shape"]](u, v) * radius
    return np.clip(0.5 - distance, 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# backgrounds


def _pattern(background: dict, xs: np.ndarray, ys: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Weight of the background's second colour at pixel coordinates ``(xs, ys)`` (same shape)."""
    kind, direction = background["kind"], background.get("direction", "horizontal")
    height, width = size
    if kind == "gradient":
        along = {
            "horizontal": xs / width,
            "vertical": ys / height,
            "diagonal": (xs / width + ys / height) / 2.0,
        }[direction]
        return np.clip(along, 0.0, 1.0)
    period = background["period"] * min(size)
    if kind == "checker":
        return (np.floor(xs / period) + np.floor(ys / period)) % 2.0
    # Stripes: "horizontal stripes" are bands that run horizontally, so they vary along y.
    across = {"horizontal": ys, "vertical": xs, "diagonal": (xs + ys) / np.sqrt(2.0)}[direction]
    return np.floor(2.0 * across / period) % 2.0


def render_background(background: dict, size: tuple[int, int]) -> np.ndarray:
    """The (static) background as float32 ``(H, W, 3)`` on the ``[0, 255]`` scale."""
    height, width = size
    colors = [np.array(BACKGROUND_COLORS[name], dtype=np.float32) for name in background["colors"]]
    if background["kind"] == "solid":
        return np.broadcast_to(colors[0], (height, width, 3)).copy()
    # Average the pattern over a 4 x 4 grid of sub-pixel samples.
    xs, ys = np.meshgrid(
        (np.arange(width * _SUPERSAMPLE) + 0.5) / _SUPERSAMPLE,
        (np.arange(height * _SUPERSAMPLE) + 0.5) / _SUPERSAMPLE,
    )
    weight = _pattern(background, xs, ys, size)
    weight = weight.reshape(height, _SUPERSAMPLE, width, _SUPERSAMPLE).mean(axis=(1, 3))
    weight = weight.astype(np.float32)[..., None]
    return colors[0] * (1.0 - weight) + colors[1] * weight


# ---------------------------------------------------------------------------------------------
# scenes


@dataclass
class Rendering:
    """A rendered scene.

    ``frames``: uint8 ``(T, H, W, 3)`` RGB (style applied). ``visibility``: for every layer
    (object ``uid`` as int, and ``"background"``), float32 ``(T, H, W)``: how much of each
    pixel that layer contributes after occlusion by the layers in front (sums to 1 per pixel).
    ``coverage``: each object's own coverage, float32 ``(T, H, W)``, before occlusion.
    """

    frames: np.ndarray
    visibility: dict[int | str, np.ndarray]
    coverage: dict[int, np.ndarray]


def apply_style(frames: np.ndarray, style: str) -> np.ndarray:
    """A global look on uint8 ``(T, H, W, 3)`` RGB frames; returns uint8 of the same shape."""
    if style == "invert":
        return 255 - frames
    if style == "posterize":
        step = 256 // _POSTERIZE_LEVELS
        return ((frames // step) * (255 // (_POSTERIZE_LEVELS - 1))).astype(np.uint8)
    pixels = frames.astype(np.float32)
    if style == "grayscale":
        luma = pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        styled = np.repeat(luma[..., None], 3, axis=-1)
    elif style == "sepia":
        styled = pixels @ _SEPIA.T
    else:
        raise ValueError(f"unknown style {style!r}; choose from {', '.join(STYLES)}")
    return np.clip(np.floor(styled + 0.5), 0, 255).astype(np.uint8)


def render_scene(scene: dict, size: tuple[int, int], frames: int) -> Rendering:
    """Render ``scene`` (see the module docstring) to ``frames`` frames of ``size = (H, W)``.

    Objects are composited back to front (``scene["objects"]`` order) with "over" blending.
    """
    height, width = size
    image = np.broadcast_to(
        render_background(scene["background"], size), (frames, height, width, 3)
    ).copy()
    coverage: dict[int, np.ndarray] = {}
    for obj in scene["objects"]:
        alpha = object_coverage(obj, size, frames)
        coverage[obj["uid"]] = alpha
        color = np.array(COLORS[obj["color"]], dtype=np.float32)
        image += (color - image) * alpha[..., None]

    visibility: dict[int | str, np.ndarray] = {}
    transmittance = np.ones((frames, height, width), dtype=np.float32)
    for obj in reversed(scene["objects"]):
        alpha = coverage[obj["uid"]]
        visibility[obj["uid"]] = alpha * transmittance
        transmittance = transmittance * (1.0 - alpha)
    visibility["background"] = transmittance

    pixels = np.clip(np.floor(image + 0.5), 0, 255).astype(np.uint8)
    if scene.get("style"):
        pixels = apply_style(pixels, scene["style"])
    return Rendering(frames=pixels, visibility=visibility, coverage=coverage)
