"""A synthetic single-object tracking benchmark, written in LaSOT format (real datasets cannot be downloaded here).

Every frame is a real image drawn with OpenCV / numpy: a textured target (one of ``CLASSES``, with one of
``TEXTURES``, in one of the named ``COLOURS``) moving over a textured background that the camera pans, among moving
distractors (some of the target's colour, class and texture), with scale / aspect / rotation change, occluders that
pass over the target, exits from and re-entries into the view, motion blur, illumination change and sensor noise;
how much of each is set by a ``SynthPreset`` (``PRESETS``: ``easy``, ``standard``, ``hard``).

Layout written by ``generate_benchmark(out, ...)``::

    out/benchmark.json                       generator parameters, version, frame counts (see below)
    out/training_set.txt, out/testing_set.txt one sequence name per line (a deterministic split)
    out/<class>/<class>-<k>/img/00000001.jpg  frames, JPEG quality 90, numbered from 1
    out/<class>/<class>-<k>/groundtruth.txt   one "x,y,w,h" line of integers per frame
    out/<class>/<class>-<k>/full_occlusion.txt one line of comma-separated 0/1 flags, one per frame
    out/<class>/<class>-<k>/out_of_view.txt   the same
    out/<class>/<class>-<k>/nlp.txt           one line, e.g. "red striped disc"

Annotation rules (``render_sequence`` exposes the same numbers as data, ``SynthAnnotation``):

- The target's pixels are the pixels its drawn (anti-aliased) mask covers at least half. Its *extent* is the tight
  box of those pixels in a frame without borders (so it may reach outside the image); the ground-truth box is the
  extent clipped to the image (``xywh``, pixel ``i`` covering ``[i, i + 1)``, integers).
- ``out_of_view`` = 1 when the clipped box is less than ``MIN_VISIBLE_SIDE`` (4) px wide or high, or fewer than
  ``MIN_VISIBLE_PIXELS`` target pixels lie inside the image.
- ``full_occlusion`` = 1 when the target is not out of view and objects drawn over it (occluders, distractors that
  pass in front) hide at least ``FULL_OCCLUSION_THRESHOLD`` (95 %) of its in-image pixels, counted on the drawn
  masks. Less than that is a partial occlusion (flag 0).
- Absent frames (either flag 1) have the box line ``0,0,0,0``; every other line is a box inside the image, at least
  4 px on each side. So "visible" = not full_occlusion and not out_of_view = a positive box.
- Frame 1 always shows the whole target, unoccluded, at its preset's starting size.

Determinism: sequence ``i`` of a run with ``seed`` is drawn from ``numpy.random.default_rng([seed, 0, i])``; the same
arguments give byte-identical files (on one platform / OpenCV build).
"""
from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np

from ct_ray.fileio import atomic_write_text, umask

__all__ = [
    "CLASSES",
    "COLOURS",
    "FULL_OCCLUSION_THRESHOLD",
    "MIN_VISIBLE_PIXELS",
    "MIN_VISIBLE_SIDE",
    "PRESETS",
    "SYNTH_VERSION",
    "TEXTURES",
    "SynthAnnotation",
    "SynthPreset",
    "benchmark_sequence",
    "generate_benchmark",
    "render_sequence",
    "sequence_plan",
    "simulate_scene",
]

SYNTH_VERSION = 1
JPEG_QUALITY = 90
FULL_OCCLUSION_THRESHOLD = 0.95
MIN_VISIBLE_SIDE = 4
MIN_VISIBLE_PIXELS = 16
MIN_FRAME_SIDE = 64
MIN_TARGET_SIDE = 8.0   # px: the target's side never gets smaller (tiny frames)
MIN_START_SIDE = 10.0   # px: nor starts smaller
_TEXTURE_SIZE = 64
_TMP_PREFIX = ".synth-tmp-"


# ------------------------------------------------------------------------------------------------------- appearance
def _unit_shape(points) -> np.ndarray:
    """Polygon scaled so that its bounding box is exactly [-0.5, 0.5] x [-0.5, 0.5]."""
    pts = np.asarray(points, dtype=np.float64)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    return (pts - (lo + hi) / 2) / (hi - lo)


def _star(tips: int, inner: float) -> np.ndarray:
    angles = -np.pi / 2 + np.arange(2 * tips) * np.pi / tips
    radii = np.where(np.arange(2 * tips) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _regular(sides: int, start: float) -> np.ndarray:
    angles = start + np.arange(sides) * 2 * np.pi / sides
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


_ARM = 1 / 6
_SHAPES: dict[str, np.ndarray] = {
    "disc": _unit_shape(_regular(48, 0.0)),
    "square": _unit_shape([(-1, -1), (1, -1), (1, 1), (-1, 1)]),
    "triangle": _unit_shape([(0, -1), (1, 1), (-1, 1)]),
    "star": _unit_shape(_star(5, 0.45)),
    "ellipse": _unit_shape(_regular(48, 0.0)),
    "cross": _unit_shape([(-_ARM, -0.5), (_ARM, -0.5), (_ARM, -_ARM), (0.5, -_ARM), (0.5, _ARM), (_ARM, _ARM),
                          (_ARM, 0.5), (-_ARM, 0.5), (-_ARM, _ARM), (-0.5, _ARM), (-0.5, -_ARM), (-_ARM, -_ARM)]),
    "diamond": _unit_shape([(0, -1), (1, 0), (0, 1), (-1, 0)]),
    "hexagon": _unit_shape(_regular(6, 0.0)),
}
CLASSES: tuple[str, ...] = tuple(_SHAPES)
_BASE_ASPECT = {"disc": 1.0, "square": 1.0, "triangle": 1.15, "star": 1.05, "ellipse": 1.7, "cross": 1.0,
                "diamond": 0.75, "hexagon": 1.15}

TEXTURES: tuple[str, ...] = ("solid", "stripes", "checker", "dots", "gradient")
_TEXTURE_WORDS = {"solid": "plain", "stripes": "striped", "checker": "checkered", "dots": "dotted",
                  "gradient": "shaded"}

COLOURS: dict[str, tuple[int, int, int]] = {  # RGB
    "red": (215, 38, 38), "green": (40, 165, 60), "blue": (40, 85, 220), "yellow": (238, 208, 35),
    "orange": (242, 128, 24), "purple": (132, 52, 182), "cyan": (35, 196, 212), "pink": (240, 118, 182),
    "white": (236, 236, 236), "black": (26, 26, 26),
}
_COLOUR_NAMES = tuple(COLOURS)
_CONFUSABLE = {"red": {"orange", "pink"}, "orange": {"red", "yellow"}, "yellow": {"orange"}, "pink": {"red"},
               "blue": {"purple", "cyan"}, "purple": {"blue", "pink"}, "cyan": {"blue", "green"},
               "green": {"cyan"}, "white": set(), "black": set()}


def _secondary(rgb: np.ndarray) -> np.ndarray:
    """A darker (or, for dark colours, lighter) shade of the same colour."""
    luminance = float(rgb @ np.array([0.299, 0.587, 0.114]))
    return rgb * 0.5 if luminance > 90 else rgb + (255 - rgb) * 0.45


def _texture(rng: np.random.Generator, kind: str, rgb: np.ndarray) -> np.ndarray:
    """A (T, T, 3) float32 RGB texture in object coordinates, dominated by ``rgb``."""
    size = _TEXTURE_SIZE
    c1 = rgb.astype(np.float32)
    c2 = _secondary(rgb).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    proj = xx * math.cos(angle) + yy * math.sin(angle)
    if kind == "solid":
        weight = np.zeros((size, size), np.float32)
    elif kind == "stripes":
        period = rng.uniform(10, 20)
        weight = ((proj + rng.uniform(0, period)) % period < 0.42 * period).astype(np.float32)
    elif kind == "checker":
        cell = int(rng.integers(10, 19))
        ox, oy = rng.integers(0, cell, size=2)
        weight = (((xx + ox) // cell + (yy + oy) // cell) % 2).astype(np.float32)
    elif kind == "dots":
        canvas = np.zeros((size, size), np.uint8)
        step = int(rng.integers(14, 20))
        for gy in range(step // 2, size + step, step):
            for gx in range(step // 2, size + step, step):
                jx, jy = rng.uniform(-2.5, 2.5, size=2)
                cv2.circle(canvas, (int(round((gx + jx) * 16)), int(round((gy + jy) * 16))),
                           int(round(rng.uniform(3.0, 5.0) * 16)), 255, -1, cv2.LINE_AA, 4)
        weight = canvas.astype(np.float32) / 255
    elif kind == "gradient":
        weight = (proj - proj.min()) / max(float(np.ptp(proj)), 1e-6) * 0.8
    else:
        raise ValueError(f"unknown texture {kind!r}; known: {list(TEXTURES)}")
    tex = c1 + weight[..., None] * (c2 - c1)
    shading = cv2.resize(rng.normal(0, 14, (3, 3)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    tex += shading[..., None] + rng.normal(0, 4, (size, size, 1)).astype(np.float32)
    return np.clip(tex, 0, 255).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------- presets
@dataclass(frozen=True)
class SynthPreset:
    """Difficulty knobs. Lengths are fractions of ``min(H, W)`` unless said otherwise; probabilities are per frame."""

    name: str
    target_size: tuple[float, float]      # starting side sqrt(w * h) of the (unrotated) target
    size_limits: tuple[float, float]      # the side stays within these over the sequence
    scale_change: float                   # amplitude of the log-scale drift
    aspect_change: float                  # amplitude of the log-aspect drift (aspect kept within [0.5, 2])
    rotation: float                       # amplitude of the in-plane rotation, degrees
    speed: float                          # mean target speed per frame
    turn: float                           # std of the per-frame heading change, radians
    abrupt_prob: float                    # an abrupt move: a jump or a burst of speed in a new direction
    abrupt_size: float                    # jump length, in target sides
    distractors: tuple[int, int]          # how many moving distractors (inclusive range)
    same_colour_distractors: int          # of these, always this many of the target's colour, always in frame
    distractor_similarity: float          # chance that a distractor also takes the target's colour and class
    distractor_front: float               # chance that a distractor passes in front of the target
    avoid_target_colour: bool             # distractors and clutter never take the target's colour (or a near one)
    occlusion_prob: float                 # chance that an occluder starts to pass over the target
    occlusion_length: tuple[int, int]     # frames an occluder stays over the target (inclusive range)
    full_occlusion_share: float           # share of occluders big enough to hide the whole target
    out_of_view_prob: float               # chance that the target starts to leave the view
    out_of_view_length: tuple[int, int]   # frames it stays out (inclusive range)
    blur_prob: float                      # chance that a motion-blur episode (1-3 frames) starts
    blur_length: tuple[int, int]          # blur kernel length, px (inclusive range)
    illumination: float                   # amplitude of the global gain change (and half of it as a light ramp)
    clutter: float                        # background clutter, 0..1
    camera_motion: float                  # camera pan amplitude, fraction of the frame size
    camera_shake: float                   # camera jitter std, px
    noise: float                          # sensor noise std, grey levels


PRESETS: dict[str, SynthPreset] = {
    "easy": SynthPreset(
        name="easy", target_size=(0.14, 0.22), size_limits=(0.11, 0.28), scale_change=0.15, aspect_change=0.1,
        rotation=0.0, speed=0.006, turn=0.08, abrupt_prob=0.0, abrupt_size=0.0, distractors=(0, 2),
        same_colour_distractors=0, distractor_similarity=0.0, distractor_front=0.0, avoid_target_colour=True,
        occlusion_prob=0.01, occlusion_length=(2, 5), full_occlusion_share=0.2, out_of_view_prob=0.0,
        out_of_view_length=(0, 0), blur_prob=0.0, blur_length=(3, 3), illumination=0.05, clutter=0.3,
        camera_motion=0.03, camera_shake=0.0, noise=2.0),
    "standard": SynthPreset(
        name="standard", target_size=(0.11, 0.19), size_limits=(0.08, 0.26), scale_change=0.3, aspect_change=0.2,
        rotation=10.0, speed=0.015, turn=0.15, abrupt_prob=0.01, abrupt_size=1.0, distractors=(2, 4),
        same_colour_distractors=1, distractor_similarity=0.25, distractor_front=0.2, avoid_target_colour=False,
        occlusion_prob=0.03, occlusion_length=(3, 10), full_occlusion_share=0.4, out_of_view_prob=0.005,
        out_of_view_length=(3, 10), blur_prob=0.05, blur_length=(5, 9), illumination=0.15, clutter=0.6,
        camera_motion=0.08, camera_shake=0.5, noise=4.0),
    "hard": SynthPreset(
        name="hard", target_size=(0.06, 0.11), size_limits=(0.04, 0.15), scale_change=0.45, aspect_change=0.35,
        rotation=25.0, speed=0.035, turn=0.35, abrupt_prob=0.06, abrupt_size=2.0, distractors=(4, 7),
        same_colour_distractors=2, distractor_similarity=0.8, distractor_front=0.35, avoid_target_colour=False,
        occlusion_prob=0.07, occlusion_length=(5, 20), full_occlusion_share=0.6, out_of_view_prob=0.02,
        out_of_view_length=(5, 20), blur_prob=0.15, blur_length=(7, 15), illumination=0.35, clutter=1.0,
        camera_motion=0.15, camera_shake=2.0, noise=8.0),
}


def _resolve_preset(preset: str | SynthPreset) -> SynthPreset:
    if isinstance(preset, SynthPreset):
        return preset
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known presets: {sorted(PRESETS)}")
    return PRESETS[preset]


# ------------------------------------------------------------------------------------------------------ annotation
@dataclass
class SynthAnnotation:
    """The per-frame truth of one rendered sequence (arrays have one row per frame)."""

    target_class: str
    texture: str
    colour: str
    colour_rgb: tuple[int, int, int]
    description: str
    boxes: np.ndarray                 # (N, 4) int: the groundtruth.txt lines (0,0,0,0 on absent frames)
    extent: np.ndarray                # (N, 4) int: the target's full extent box, not clipped to the image
    full_occlusion: np.ndarray        # (N,) bool
    out_of_view: np.ndarray           # (N,) bool
    occluded_fraction: np.ndarray     # (N,) share of the in-image target pixels hidden by objects drawn over it
    in_frame_fraction: np.ndarray     # (N,) share of the target pixels inside the image
    target_pixels: np.ndarray         # (N,) int: target pixels (whole mask, inside the image or not)
    distractors: list[dict[str, Any]]  # per distractor: class, texture, colour, same_colour, similar, layer
    distractor_boxes: np.ndarray      # (N, D, 4) int: clipped boxes (0,0,0,0 where nothing is in the image)
    distractor_visible_pixels: np.ndarray  # (N, D) int: pixels of each distractor seen in the final image
    camera: np.ndarray                # (N, 2) camera offset into the background, px
    blur: np.ndarray                  # (N,) motion-blur kernel length (0: none)
    gain: np.ndarray                  # (N,) global illumination gain
    occluders: int = 0                # occluder passes scheduled

    @property
    def visible(self) -> np.ndarray:
        return ~(self.full_occlusion | self.out_of_view)

    @property
    def visible_fraction(self) -> np.ndarray:
        """Share of all target pixels seen in the image (inside it and not hidden)."""
        return self.in_frame_fraction * (1.0 - self.occluded_fraction)

    @property
    def partial_occlusion(self) -> np.ndarray:
        return self.visible & (self.occluded_fraction > 0)

    @property
    def centers(self) -> np.ndarray:
        """(N, 2) centre of the unclipped extent."""
        return self.extent[:, :2] + self.extent[:, 2:] / 2.0

    @property
    def same_colour_in_frame(self) -> np.ndarray:
        """(N,) how many distractors of the target's colour are seen (at least one pixel) in each frame."""
        same = np.array([d["same_colour"] for d in self.distractors], dtype=bool)
        if not same.any():
            return np.zeros(len(self.boxes), dtype=np.int64)
        return (self.distractor_visible_pixels[:, same] > 0).sum(axis=1)


# ---------------------------------------------------------------------------------------------------------- scene
@dataclass
class _Object:
    kind: str                 # "target" | "distractor" | "occluder"
    cls: str
    texture_kind: str
    colour: str
    rgb: np.ndarray
    shape: np.ndarray
    texture: np.ndarray
    z: float
    cx: np.ndarray
    cy: np.ndarray
    w: np.ndarray
    h: np.ndarray
    angle: np.ndarray         # degrees
    present: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Scene:
    height: int
    width: int
    target: _Object
    distractors: list[_Object]
    occluders: list[_Object]
    background: np.ndarray    # uint8 RGB, larger than a frame
    camera: np.ndarray        # (N, 2) offsets
    gain: np.ndarray          # (N,)
    ramp_strength: np.ndarray  # (N,)
    ramp: np.ndarray          # (H, W) float32 in [-1, 1]
    blur: np.ndarray          # (N,) int
    blur_angle: np.ndarray    # (N,) radians
    noise: float
    noise_seed: int

    @property
    def layers(self) -> list[_Object]:
        objects = [self.target, *self.distractors, *self.occluders]
        return sorted(objects, key=lambda o: o.z)  # stable: equal z keep their order


def _smooth(rng: np.random.Generator, n: int, periods: tuple[float, float] = (30.0, 150.0), k: int = 3) -> np.ndarray:
    """A smooth random curve in [-1, 1] over ``n`` frames (a sum of sinusoids)."""
    t = np.arange(n, dtype=np.float64)
    period = rng.uniform(*periods, size=k)
    phase = rng.uniform(0, 2 * np.pi, size=k)
    amp = rng.uniform(0.5, 1.0, size=k)
    return (amp[:, None] * np.sin(2 * np.pi * t[None] / period[:, None] + phase[:, None])).sum(0) / amp.sum()


def _half_extent(w, h, angle_deg):
    a = np.radians(angle_deg)
    c, s = np.abs(np.cos(a)), np.abs(np.sin(a))
    return 0.5 * (w * c + h * s), 0.5 * (w * s + h * c)


def _pick_colour(rng: np.random.Generator, avoid: set[str]) -> str:
    choices = [c for c in _COLOUR_NAMES if c not in avoid]
    return choices[int(rng.integers(len(choices)))]


def _drift(rng: np.random.Generator, n: int) -> np.ndarray:
    """A smooth random curve that starts at 0 (so frame 1 keeps its chosen size, aspect and angle)."""
    curve = _smooth(rng, n)
    return curve - curve[0]


def _size_curves(rng, n, side0, limits, scale_change, aspect0, aspect_change, angle0, rotation):
    side = np.clip(side0 * np.exp(scale_change * _drift(rng, n)), *limits)
    side[0] = side0
    aspect = np.clip(aspect0 * np.exp(aspect_change * _drift(rng, n)), 0.5, 2.0)
    angle = angle0 + rotation * _drift(rng, n)
    return side * np.sqrt(aspect), side / np.sqrt(aspect), angle


def _class_aspect(rng: np.random.Generator, cls: str) -> float:
    base = _BASE_ASPECT[cls]
    if rng.random() < 0.5 and cls in ("ellipse", "triangle", "diamond", "hexagon"):
        base = 1.0 / base
    return float(np.clip(base * math.exp(rng.uniform(-0.15, 0.15)), 0.5, 2.0))


def _simulate_target_path(rng, p: SynthPreset, n, H, W, w, h, angle):
    m = min(H, W)
    hx, hy = _half_extent(w, h, angle)
    margin = 2.0
    x = rng.uniform(min(hx[0] + 0.15 * W, W / 2), max(W - hx[0] - 0.15 * W, W / 2))
    y = rng.uniform(min(hy[0] + 0.15 * H, H / 2), max(H - hy[0] - 0.15 * H, H / 2))
    xs, ys = np.empty(n), np.empty(n)
    xs[0], ys[0] = x, y
    cruise = p.speed * m * rng.uniform(0.6, 1.4)
    fluct = _smooth(rng, n, (15.0, 60.0))
    theta = rng.uniform(0, 2 * np.pi)
    state, burst = "free", 0
    normal = tangent = np.zeros(2)
    exit_speed = drift = 0.0
    remaining = 0
    for t in range(1, n):
        if state == "free" and t < n - 2 and p.out_of_view_prob > 0 and rng.random() < p.out_of_view_prob:
            dist = [x, W - x, y, H - y]
            edge = int(np.argmin(dist))
            normal = np.array([(-1, 0), (1, 0), (0, -1), (0, 1)][edge], dtype=np.float64)
            tangent = np.array([normal[1], normal[0]])
            exit_speed = max(cruise * 1.3, 0.025 * m) * rng.uniform(1.0, 1.5)
            drift = rng.normal(0, 0.4) * exit_speed
            lo, hi = p.out_of_view_length
            remaining = int(rng.integers(lo, hi + 1))
            state = "leaving"
        if state == "free":
            theta += rng.normal(0, p.turn)
            speed = cruise * (1 + 0.35 * fluct[t])
            if burst > 0:
                speed *= 2.5
                burst -= 1
            if p.abrupt_prob > 0 and rng.random() < p.abrupt_prob:
                if rng.random() < 0.5:
                    jump_dir = rng.uniform(0, 2 * np.pi)
                    length = p.abrupt_size * math.sqrt(w[t] * h[t]) * rng.uniform(0.7, 1.3)
                    x += length * math.cos(jump_dir)
                    y += length * math.sin(jump_dir)
                else:
                    theta = rng.uniform(0, 2 * np.pi)
                    burst = int(rng.integers(2, 5))
            x += speed * math.cos(theta)
            y += speed * math.sin(theta)
            lo_x, hi_x = hx[t] + margin, W - hx[t] - margin
            lo_y, hi_y = hy[t] + margin, H - hy[t] - margin
            if x < lo_x:
                x, theta = 2 * lo_x - x, np.pi - theta
            elif x > hi_x:
                x, theta = 2 * hi_x - x, np.pi - theta
            if y < lo_y:
                y, theta = 2 * lo_y - y, -theta
            elif y > hi_y:
                y, theta = 2 * hi_y - y, -theta
            x = float(np.clip(x, lo_x, hi_x)) if lo_x <= hi_x else W / 2
            y = float(np.clip(y, lo_y, hi_y)) if lo_y <= hi_y else H / 2
        else:
            half_n = hx[t] if normal[0] else hy[t]
            along_t = (x, y)[0 if tangent[0] else 1]
            size_t = W if tangent[0] else H
            half_t = hx[t] if tangent[0] else hy[t]
            # signed distance of the target's inner side beyond the edge it leaves by (> 0: fully out)
            edge_pos = {(-1, 0): 0.0, (1, 0): W, (0, -1): 0.0, (0, 1): H}[(int(normal[0]), int(normal[1]))]
            centre_n = x if normal[0] else y
            beyond = (centre_n - edge_pos) * (normal[0] + normal[1]) - half_n
            if state == "leaving":
                step = exit_speed
                if beyond + step > 2.0:
                    state = "out"
            elif state == "out":
                step = 0.0
                remaining -= 1
                if remaining <= 0:
                    state = "returning"
            else:  # returning
                step = -exit_speed
                inside = -(beyond + 2 * half_n)  # distance of the outer side inside the edge
                if inside + exit_speed >= margin:
                    state = "free"
                    theta = math.atan2(-normal[1], -normal[0]) + rng.uniform(-0.6, 0.6)
            along_t = float(np.clip(along_t + drift, half_t, max(half_t, size_t - half_t)))
            if state == "out":  # hold just beyond the edge, whatever the scale does
                centre_n = edge_pos + (normal[0] + normal[1]) * (half_n + 3.0)
            else:
                centre_n += step * (normal[0] + normal[1])
            if normal[0]:
                x, y = centre_n, along_t
            else:
                x, y = along_t, centre_n
        xs[t], ys[t] = x, y
    return xs, ys


def _bounce_walk(rng, n, x, y, speed, turn, hx, hy, H, W, margin=2.0):
    xs, ys = np.empty(n), np.empty(n)
    theta = rng.uniform(0, 2 * np.pi)
    for t in range(n):
        if t:
            theta += rng.normal(0, turn)
            x += speed * math.cos(theta)
            y += speed * math.sin(theta)
        lo_x, hi_x = hx[t] + margin, W - hx[t] - margin
        lo_y, hi_y = hy[t] + margin, H - hy[t] - margin
        if x < lo_x:
            x, theta = 2 * lo_x - x, np.pi - theta
        elif x > hi_x:
            x, theta = 2 * hi_x - x, np.pi - theta
        if y < lo_y:
            y, theta = 2 * lo_y - y, -theta
        elif y > hi_y:
            y, theta = 2 * hi_y - y, -theta
        x = float(np.clip(x, lo_x, hi_x)) if lo_x <= hi_x else W / 2
        y = float(np.clip(y, lo_y, hi_y)) if lo_y <= hi_y else H / 2
        xs[t], ys[t] = x, y
    return xs, ys


def _background(rng, Hb, Wb, clutter, avoid: set[str]) -> np.ndarray:
    gh, gw = int(rng.integers(3, 7)), int(rng.integers(3, 7))
    base = rng.uniform(45, 205, (gh, gw, 3)).astype(np.float32)
    base = base * 0.6 + base.mean(axis=2, keepdims=True) * 0.4  # muted colours
    image = cv2.resize(base, (Wb, Hb), interpolation=cv2.INTER_CUBIC)
    mid = rng.normal(0, 10 + 16 * clutter, (max(Hb // 10, 2), max(Wb // 10, 2))).astype(np.float32)
    image += cv2.resize(mid, (Wb, Hb), interpolation=cv2.INTER_LINEAR)[..., None]
    image += rng.normal(0, 4, (Hb, Wb, 1)).astype(np.float32)
    image = np.clip(image, 0, 255).astype(np.uint8)
    scale = min(Hb, Wb)
    for _ in range(int(round(4 + 30 * clutter))):  # lines
        p1 = rng.uniform(0, (Wb, Hb))
        p2 = p1 + rng.normal(0, 0.25 * scale, 2)
        colour = tuple(float(v) for v in rng.uniform(20, 235, 3))
        cv2.line(image, tuple(int(v) for v in np.round(p1 * 16)), tuple(int(v) for v in np.round(p2 * 16)),
                 colour, int(rng.integers(1, 4)), cv2.LINE_AA, 4)
    names = [c for c in _COLOUR_NAMES if c not in avoid]
    for _ in range(int(round(6 + 50 * clutter))):  # shapes, some of the target classes, some saturated
        cls = CLASSES[int(rng.integers(len(CLASSES)))]
        side = rng.uniform(0.03, 0.15) * scale
        aspect = math.exp(rng.uniform(-0.5, 0.5))
        ang = math.radians(rng.uniform(0, 180))
        rot = np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
        pts = (_SHAPES[cls] * (side * math.sqrt(aspect), side / math.sqrt(aspect))) @ rot.T + rng.uniform(0, (Wb, Hb))
        if rng.random() < 0.5 * clutter:
            colour = np.array(COLOURS[names[int(rng.integers(len(names)))]], np.float64) * rng.uniform(0.6, 1.0)
        else:
            colour = rng.uniform(30, 225, 3) * 0.6 + 50
        poly = [np.round(pts * 16).astype(np.int32)]
        if rng.random() < 0.7:
            cv2.fillPoly(image, poly, tuple(float(v) for v in colour), cv2.LINE_AA, 4)
        else:
            cv2.polylines(image, poly, True, tuple(float(v) for v in colour), int(rng.integers(1, 3)), cv2.LINE_AA, 4)
    return image


def _make_object(rng, kind, cls, texture_kind, colour, rgb, z, w, h, angle, cx, cy, present=None) -> _Object:
    n = len(w)
    return _Object(kind=kind, cls=cls, texture_kind=texture_kind, colour=colour, rgb=np.asarray(rgb, np.float64),
                   shape=_SHAPES[cls], texture=_texture(rng, texture_kind, np.asarray(rgb, np.float64)), z=z,
                   cx=np.asarray(cx, np.float64), cy=np.asarray(cy, np.float64), w=np.asarray(w, np.float64),
                   h=np.asarray(h, np.float64), angle=np.asarray(angle, np.float64),
                   present=np.ones(n, bool) if present is None else present)


def _simulate(rng: np.random.Generator, p: SynthPreset, n: int, H: int, W: int, target_class: str | None) -> _Scene:
    m = min(H, W)
    # --- target
    cls = target_class if target_class is not None else CLASSES[int(rng.integers(len(CLASSES)))]
    if cls not in _SHAPES:
        raise ValueError(f"unknown target_class {cls!r}; known: {list(CLASSES)}")
    texture_kind = TEXTURES[int(rng.integers(len(TEXTURES)))]
    colour = _COLOUR_NAMES[int(rng.integers(len(_COLOUR_NAMES)))]
    rgb = np.clip(np.array(COLOURS[colour]) + rng.integers(-12, 13, 3), 0, 255)
    limits = (max(p.size_limits[0] * m, MIN_TARGET_SIDE), max(p.size_limits[1] * m, 1.5 * MIN_START_SIDE))
    side0 = float(np.clip(max(rng.uniform(*p.target_size) * m, MIN_START_SIDE), *limits))
    w, h, angle = _size_curves(rng, n, side0, limits, p.scale_change, _class_aspect(rng, cls), p.aspect_change,
                               rng.uniform(-0.3, 0.3) * p.rotation, p.rotation)
    cx, cy = _simulate_target_path(rng, p, n, H, W, w, h, angle)
    target = _make_object(rng, "target", cls, texture_kind, colour, rgb, 0.0, w, h, angle, cx, cy)
    target_r = 0.5 * np.hypot(w, h)
    avoid_other = {colour} | _CONFUSABLE[colour]

    # --- distractors
    lo, hi = p.distractors
    count = max(int(rng.integers(lo, hi + 1)), p.same_colour_distractors)
    distractors: list[_Object] = []
    for j in range(count):
        guaranteed = j < p.same_colour_distractors
        similar = rng.random() < p.distractor_similarity
        if guaranteed or similar:
            d_colour, d_rgb = colour, rgb
        else:
            d_colour = _pick_colour(rng, avoid_other if p.avoid_target_colour else set())
            d_rgb = np.clip(np.array(COLOURS[d_colour]) + rng.integers(-12, 13, 3), 0, 255)
        if similar:
            d_cls = cls
            d_tex = texture_kind if rng.random() < 0.6 else TEXTURES[int(rng.integers(len(TEXTURES)))]
        else:
            d_cls = CLASSES[int(rng.integers(len(CLASSES)))]
            d_tex = TEXTURES[int(rng.integers(len(TEXTURES)))]
        if guaranteed:
            z = 3.0 + j * 0.01
        elif rng.random() < p.distractor_front:
            z = 1.0 + j * 0.01
        else:
            z = -1.0 + j * 0.01
        d_side = float(np.clip(side0 * rng.uniform(0.7, 1.3), *limits))
        dw, dh, dang = _size_curves(rng, n, d_side, limits, 0.5 * p.scale_change, _class_aspect(rng, d_cls),
                                    p.aspect_change, rng.uniform(-1, 1) * p.rotation, p.rotation)
        hx, hy = _half_extent(dw, dh, dang)
        r = 0.5 * math.hypot(dw[0], dh[0])
        best, best_gap = None, -np.inf
        for _ in range(60):  # frame 1: away from the target
            px = rng.uniform(min(hx[0] + 2, W / 2), max(W - hx[0] - 2, W / 2))
            py = rng.uniform(min(hy[0] + 2, H / 2), max(H - hy[0] - 2, H / 2))
            gap = math.hypot(px - cx[0], py - cy[0]) - target_r[0] - r
            if gap > best_gap:
                best, best_gap = (px, py), gap
            if gap > 4:
                break
        if best_gap <= 2 and z > 0:  # could not keep it off the target in frame 1: it goes behind
            z = -1.0 + j * 0.01
        speed = p.speed * m * rng.uniform(0.4, 1.1)
        dx, dy = _bounce_walk(rng, n, best[0], best[1], speed, max(p.turn, 0.1), hx, hy, H, W)
        obj = _make_object(rng, "distractor", d_cls, d_tex, d_colour, d_rgb, z, dw, dh, dang, dx, dy)
        obj.info = {"class": d_cls, "texture": d_tex, "colour": d_colour, "same_colour": d_colour == colour,
                    "similar": bool(similar), "guaranteed": guaranteed,
                    "layer": "behind" if z < 0 else ("top" if z >= 3 else "front")}
        distractors.append(obj)

    # --- occluders: each passes over the target (approach, hold, leave), following it
    occluders: list[_Object] = []
    t = 1
    while t < n - 1 and p.occlusion_prob > 0:
        if rng.random() >= p.occlusion_prob:
            t += 1
            continue
        n_in, n_out = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        hold = int(rng.integers(p.occlusion_length[0], p.occlusion_length[1] + 1))
        length = 1 + n_in + hold + n_out
        frames = np.arange(t, min(t + length, n))
        r_t = float(target_r[frames].max())
        full = rng.random() < p.full_occlusion_share
        if full:
            o_cls = ("disc", "square")[int(rng.integers(2))]
            side = 2 * r_t * rng.uniform(1.25, 1.7)
            ow = oh = side
            offset = 0.0
        else:
            o_cls = CLASSES[int(rng.integers(len(CLASSES)))]
            side = math.sqrt(w[t] * h[t]) * rng.uniform(0.5, 0.95)
            aspect = math.exp(rng.uniform(-0.4, 0.4))
            ow, oh = side * math.sqrt(aspect), side / math.sqrt(aspect)
            offset = math.sqrt(w[t] * h[t]) * rng.uniform(0.25, 0.6)
        o_angle = rng.uniform(-45, 45)
        phi = rng.uniform(0, 2 * np.pi)
        u = np.array([math.cos(phi), math.sin(phi)])
        start = u * (r_t + 0.5 * math.hypot(ow, oh) + 3)
        held = u * offset
        end = -start if rng.random() < 0.5 else start
        rel = np.empty((len(frames), 2))
        for k in range(len(frames)):
            if k <= n_in:
                rel[k] = start + (held - start) * (k / n_in)
            elif k <= n_in + hold:
                rel[k] = held
            else:
                rel[k] = held + (end - held) * ((k - n_in - hold) / n_out)
        o_colour = _pick_colour(rng, avoid_other)
        o_rgb = np.clip(np.array(COLOURS[o_colour]) + rng.integers(-12, 13, 3), 0, 255)
        o_tex = TEXTURES[int(rng.integers(len(TEXTURES)))]
        ocx, ocy = np.zeros(n), np.zeros(n)
        ocx[frames] = cx[frames] + rel[:, 0]
        ocy[frames] = cy[frames] + rel[:, 1]
        present = np.zeros(n, bool)
        present[frames] = True
        occluders.append(_make_object(rng, "occluder", o_cls, o_tex, o_colour, o_rgb, 2.0 + len(occluders) * 1e-3,
                                      np.full(n, ow), np.full(n, oh), np.full(n, o_angle), ocx, ocy, present))
        t += length + int(rng.integers(1, 4))

    # --- camera, background, illumination, blur
    pan_x, pan_y = p.camera_motion * W, p.camera_motion * H
    shake_max = 3 * p.camera_shake
    mx, my = int(math.ceil(pan_x + shake_max + 2)), int(math.ceil(pan_y + shake_max + 2))
    shake = np.clip(rng.normal(0, p.camera_shake, (n, 2)) if p.camera_shake > 0 else np.zeros((n, 2)),
                    -shake_max, shake_max)
    camera = np.stack([mx + pan_x * _smooth(rng, n, (60.0, 240.0)), my + pan_y * _smooth(rng, n, (60.0, 240.0))], 1)
    camera = camera + shake
    background = _background(rng, H + 2 * my, W + 2 * mx, p.clutter,
                             avoid_other if p.avoid_target_colour else set())
    gain = 1.0 + p.illumination * _smooth(rng, n, (20.0, 100.0))
    ramp_strength = 0.5 * p.illumination * _smooth(rng, n, (20.0, 100.0))
    ramp_dir = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    ramp = ((xx - W / 2) * math.cos(ramp_dir) + (yy - H / 2) * math.sin(ramp_dir)) / (0.5 * math.hypot(W, H))
    blur = np.zeros(n, np.int64)
    blur_angle = np.zeros(n)
    t = 1
    while t < n and p.blur_prob > 0:
        if rng.random() < p.blur_prob:
            episode = int(rng.integers(1, 4))
            lo, hi = p.blur_length
            kernel = int(rng.integers(lo, hi + 1)) | 1
            vx, vy = cx[t] - cx[t - 1], cy[t] - cy[t - 1]
            direction = math.atan2(vy, vx) if abs(vx) + abs(vy) > 0.5 else rng.uniform(0, np.pi)
            blur[t:t + episode] = kernel
            blur_angle[t:t + episode] = direction
            t += episode
        else:
            t += 1
    noise_seed = int(rng.integers(0, 2 ** 62))
    return _Scene(height=H, width=W, target=target, distractors=distractors, occluders=occluders,
                  background=background, camera=camera, gain=gain, ramp_strength=ramp_strength,
                  ramp=ramp.astype(np.float32), blur=blur, blur_angle=blur_angle, noise=p.noise,
                  noise_seed=noise_seed)


# -------------------------------------------------------------------------------------------------------- drawing
@dataclass
class _Drawn:
    extent: tuple[int, int, int, int]  # x0, y0, x1, y1 of the mask, not clipped
    pixels: int                        # mask pixels in all
    in_frame: int                      # mask pixels inside the image


def _draw(frame: np.ndarray, label: np.ndarray, label_id: int, obj: _Object, t: int, paint: bool) -> _Drawn:
    H, W = label.shape
    w, h, cx, cy = obj.w[t], obj.h[t], obj.cx[t], obj.cy[t]
    a = math.radians(obj.angle[t])
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    pts = (obj.shape * (w, h)) @ rot.T + (cx, cy)
    x0, y0 = int(math.floor(pts[:, 0].min())) - 1, int(math.floor(pts[:, 1].min())) - 1
    x1, y1 = int(math.ceil(pts[:, 0].max())) + 1, int(math.ceil(pts[:, 1].max())) + 1
    pw, ph = x1 - x0, y1 - y0
    # OpenCV puts integer coordinates at pixel centres; ours put them at pixel edges: shift by half a pixel.
    local = [np.round((pts - (x0 + 0.5, y0 + 0.5)) * 16).astype(np.int32)]
    mask = np.zeros((ph, pw), np.uint8)
    cv2.fillPoly(mask, local, 255, cv2.LINE_AA, 4)
    inside = mask >= 128
    rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    if rows.size == 0:
        return _Drawn((0, 0, 0, 0), 0, 0)
    extent = (x0 + int(cols[0]), y0 + int(rows[0]), x0 + int(cols[-1]) + 1, y0 + int(rows[-1]) + 1)
    fx0, fy0, fx1, fy1 = max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)
    if fx0 >= fx1 or fy0 >= fy1:
        return _Drawn(extent, int(inside.sum()), 0)
    sub = (slice(fy0 - y0, fy1 - y0), slice(fx0 - x0, fx1 - x0))
    region = (slice(fy0, fy1), slice(fx0, fx1))
    sub_inside = inside[sub]
    if paint:
        size = _TEXTURE_SIZE
        scale = np.diag([w / size, h / size])
        lin = rot @ scale
        offset = np.array([cx - x0 - 0.5, cy - y0 - 0.5]) - rot @ np.array([w / 2, h / 2]) + lin @ np.array([0.5, 0.5])
        warp = np.hstack([lin, offset[:, None]]).astype(np.float64)
        patch = cv2.warpAffine(obj.texture, warp, (pw, ph), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        edge = tuple(float(v) for v in _secondary(obj.rgb) * 0.8)
        cv2.polylines(patch, local, True, edge, 1, cv2.LINE_AA, 4)
        alpha = (mask[sub].astype(np.float32) * (1 / 255))[..., None]
        target_region = frame[region]
        target_region += alpha * (patch[sub] - target_region)
    label[region][sub_inside] = label_id
    return _Drawn(extent, int(inside.sum()), int(sub_inside.sum()))


def _blur_kernel(length: int, angle: float) -> np.ndarray:
    kernel = np.zeros((length, length), np.float32)
    c = (length - 1) / 2
    dx, dy = math.cos(angle) * c, math.sin(angle) * c
    p1 = (int(round((c - dx) * 16)), int(round((c - dy) * 16)))
    p2 = (int(round((c + dx) * 16)), int(round((c + dy) * 16)))
    cv2.line(kernel, p1, p2, 1.0, 1, cv2.LINE_AA, 4)
    return kernel / kernel.sum()


def _clip_box(extent: tuple[int, int, int, int], H: int, W: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = extent
    x0, x1 = min(max(x0, 0), W), min(max(x1, 0), W)
    y0, y1 = min(max(y0, 0), H), min(max(y1, 0), H)
    return x0, y0, x1 - x0, y1 - y0


class _Renderer:
    """Renders the frames of one simulated scene and collects the per-frame annotation."""

    def __init__(self, scene: _Scene, n: int, draw_target: bool = True) -> None:
        self.scene, self.n, self.draw_target = scene, n, draw_target
        self.layers = scene.layers
        nd = len(scene.distractors)
        self.extent = np.zeros((n, 4), np.int64)
        self.target_pixels = np.zeros(n, np.int64)
        self.in_frame = np.zeros(n, np.int64)
        self.unoccluded = np.zeros(n, np.int64)
        self.d_boxes = np.zeros((n, nd, 4), np.int64)
        self.d_visible = np.zeros((n, nd), np.int64)

    def render(self, t: int) -> np.ndarray:
        s = self.scene
        H, W = s.height, s.width
        move = np.array([[1.0, 0.0, -s.camera[t, 0]], [0.0, 1.0, -s.camera[t, 1]]])
        frame = cv2.warpAffine(s.background, move, (W, H), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT).astype(np.float32)
        label = np.zeros((H, W), np.int16)
        drawn: dict[int, tuple[int, _Drawn]] = {}
        for label_id, obj in enumerate(self.layers, start=1):
            if obj.present[t]:
                paint = self.draw_target or obj is not s.target
                drawn[id(obj)] = (label_id, _draw(frame, label, label_id, obj, t, paint))
        counts = np.bincount(label.ravel(), minlength=len(self.layers) + 1)
        target_id, target = drawn[id(s.target)]
        self.extent[t] = (target.extent[0], target.extent[1], target.extent[2] - target.extent[0],
                          target.extent[3] - target.extent[1])
        self.target_pixels[t], self.in_frame[t], self.unoccluded[t] = target.pixels, target.in_frame, counts[target_id]
        for j, obj in enumerate(s.distractors):
            label_id, d = drawn[id(obj)]
            if d.in_frame:
                self.d_boxes[t, j] = _clip_box(d.extent, H, W)
            self.d_visible[t, j] = counts[label_id]
        if s.gain[t] != 1.0 or s.ramp_strength[t] != 0.0:
            gain = (s.gain[t] * (1.0 + s.ramp_strength[t] * s.ramp)).astype(np.float32)
            frame *= gain[..., None]
        if s.blur[t] > 1:
            frame = cv2.filter2D(frame, -1, _blur_kernel(int(s.blur[t]), float(s.blur_angle[t])),
                                 borderType=cv2.BORDER_REFLECT)
        if s.noise > 0:
            noise_rng = np.random.default_rng([s.noise_seed, t])
            frame += noise_rng.standard_normal((H, W, 3), dtype=np.float32) * np.float32(s.noise)
        frame += 0.5
        np.clip(frame, 0, 255, out=frame)
        return frame.astype(np.uint8)

    def truth(self, frames=slice(None)) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The annotation rules of the module docstring for rendered ``frames``: ground-truth boxes (0,0,0,0 when
        absent), full-occlusion and out-of-view flags, and the occluded share of the in-image target pixels."""
        s = self.scene
        extent, in_frame = self.extent[frames].reshape(-1, 4), self.in_frame[frames].reshape(-1)
        unoccluded = self.unoccluded[frames].reshape(-1)
        clipped = np.array([_clip_box((x, y, x + w, y + h), s.height, s.width) for x, y, w, h in extent],
                           np.int64).reshape(-1, 4)
        out_of_view = ((clipped[:, 2] < MIN_VISIBLE_SIDE) | (clipped[:, 3] < MIN_VISIBLE_SIDE)
                       | (in_frame < MIN_VISIBLE_PIXELS))
        occluded = np.where(in_frame > 0, 1.0 - unoccluded / np.maximum(in_frame, 1), 0.0)
        full_occlusion = ~out_of_view & (occluded >= FULL_OCCLUSION_THRESHOLD)
        boxes = np.where((~(out_of_view | full_occlusion))[:, None], clipped, 0)
        return boxes, full_occlusion, out_of_view, occluded

    def annotation(self) -> SynthAnnotation:
        s = self.scene
        H, W = s.height, s.width
        boxes, full_occlusion, out_of_view, occluded = self.truth()
        tgt = s.target
        description = f"{tgt.colour} {_TEXTURE_WORDS[tgt.texture_kind]} {tgt.cls}"
        return SynthAnnotation(
            target_class=tgt.cls, texture=tgt.texture_kind, colour=tgt.colour,
            colour_rgb=tuple(int(v) for v in tgt.rgb), description=description, boxes=boxes,
            extent=self.extent.copy(), full_occlusion=full_occlusion, out_of_view=out_of_view,
            occluded_fraction=occluded, in_frame_fraction=self.in_frame / np.maximum(self.target_pixels, 1),
            target_pixels=self.target_pixels.copy(), distractors=[dict(d.info) for d in s.distractors],
            distractor_boxes=self.d_boxes.copy(), distractor_visible_pixels=self.d_visible.copy(),
            camera=s.camera.copy(), blur=s.blur.copy(), gain=s.gain.copy(), occluders=len(s.occluders))


# ------------------------------------------------------------------------------------------------------ validation
def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_frame_size(frame_size) -> tuple[int, int]:
    try:
        height, width = frame_size
    except (TypeError, ValueError):
        raise ValueError(f"frame_size must be (height, width), got {frame_size!r}") from None
    for v in (height, width):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"frame_size must be two integers (height, width), got {frame_size!r}")
    if min(height, width) < MIN_FRAME_SIDE:
        raise ValueError(f"frame_size {tuple(frame_size)} is too small: both sides must be >= {MIN_FRAME_SIDE} px")
    return int(height), int(width)


def _as_rng(rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


# ------------------------------------------------------------------------------------------------------------ API
def _iter_sequence(rng, preset, frames, frame_size, target_class, draw_target):
    p = _resolve_preset(preset)
    frames = _check_int("frames", frames, 2)
    H, W = _check_frame_size(frame_size)
    scene = _simulate(_as_rng(rng), p, frames, H, W, target_class)
    renderer = _Renderer(scene, frames, draw_target)

    def frames_iter() -> Iterator[np.ndarray]:
        for t in range(frames):
            yield renderer.render(t)

    return frames_iter(), renderer


def simulate_scene(rng: np.random.Generator | int | list[int], preset: str | SynthPreset = "standard",
                   frames: int = 100, frame_size: tuple[int, int] = (240, 320)) -> "_Renderer":
    """A simulated sequence whose frames are rendered on demand (``renderer.render(t)`` in any order, then
    ``renderer.truth([t, ...])``): what the synthetic training stream draws pairs from without writing files."""
    p = _resolve_preset(preset)
    frames = _check_int("frames", frames, 2)
    H, W = _check_frame_size(frame_size)
    return _Renderer(_simulate(_as_rng(rng), p, frames, H, W, None), frames)


def render_sequence(rng: np.random.Generator | int | list[int], preset: str | SynthPreset = "standard",
                    frames: int = 100, frame_size: tuple[int, int] = (240, 320), *,
                    target_class: str | None = None,
                    draw_target: bool = True) -> tuple[list[np.ndarray], SynthAnnotation]:
    """Renders one sequence: RGB uint8 frames (H, W, 3) and its ``SynthAnnotation``.

    ``rng``: a numpy Generator, or a seed for one. ``draw_target=False`` renders the identical scene without painting
    the target (same annotation, same noise): the difference shows exactly where the target is.
    """
    iterator, renderer = _iter_sequence(rng, preset, frames, frame_size, target_class, draw_target)
    images = list(iterator)
    return images, renderer.annotation()


def sequence_plan(seed: int, sequences: int) -> list[tuple[str, str]]:
    """(name, class) of each sequence of a benchmark: classes are dealt in shuffled rounds, names ``<class>-<k>``."""
    plan = []
    for i in range(sequences):
        cycle, slot = divmod(i, len(CLASSES))
        order = np.random.default_rng([seed, 1, cycle]).permutation(len(CLASSES))
        cls = CLASSES[int(order[slot])]
        plan.append((f"{cls}-{cycle + 1}", cls))
    return plan


def benchmark_sequence(seed: int, index: int, preset: str = "standard", frames: int = 100,
                       frame_size: tuple[int, int] = (240, 320),
                       draw_target: bool = True) -> tuple[str, list[np.ndarray], SynthAnnotation]:
    """Sequence ``index`` of ``generate_benchmark(seed=seed, ...)``: its name, frames and annotation."""
    name, cls = sequence_plan(seed, index + 1)[index]
    images, annotation = render_sequence(np.random.default_rng([seed, 0, index]), preset, frames, frame_size,
                                         target_class=cls, draw_target=draw_target)
    return name, images, annotation


def _split(seed: int, sequences: int, test_fraction: float) -> set[int]:
    """The test sequences: ``round(sequences * test_fraction)``, at least one and (below 1.0) at least one left for
    training; 1.0 makes every sequence a test sequence (a benchmark whose training data is the stream)."""
    if test_fraction >= 1.0:
        return set(range(sequences))
    if sequences < 2:
        return set()
    n_test = min(max(int(round(sequences * test_fraction)), 1), sequences - 1)
    order = np.random.default_rng([seed, 2]).permutation(sequences)
    return {int(i) for i in order[:n_test]}


def _flags_line(flags: np.ndarray) -> str:
    return ",".join("1" if f else "0" for f in flags) + "\n"


def _write_sequence(out: Path, name: str, cls: str, rng: np.random.Generator, preset: str, frames: int,
                    frame_size: tuple[int, int]) -> SynthAnnotation:
    return write_rendered(out, name, _iter_sequence(rng, preset, frames, frame_size, cls, True))


def write_rendered(out: Path, name: str, rendered: tuple[Iterator[np.ndarray], "_Renderer"],
                   keep: int | None = None) -> SynthAnnotation:
    """Writes a rendered sequence (frames, renderer) as ``out/<class>/<name>`` in LaSOT layout, atomically; with
    ``keep``, only its first ``keep`` frames and their truth (the same scene, cut short)."""
    iterator, renderer = rendered
    if keep is not None:
        keep = _check_int("keep", keep, 2)
        iterator = itertools.islice(iterator, keep)
    cls = renderer.scene.target.cls
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{name}-", dir=out))
    try:
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes it private; the sequence folder gets the usual mode
        img = tmp / "img"
        img.mkdir()
        params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
        for t, image in enumerate(iterator):
            ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
            if not ok:
                raise OSError(f"cannot encode frame {t + 1} of {name}")
            (img / f"{t + 1:08d}.jpg").write_bytes(data.tobytes())
        ann = renderer.annotation()
        if keep is not None:
            ann = replace(ann, **{f.name: getattr(ann, f.name)[:keep] for f in fields(ann)
                                  if isinstance(getattr(ann, f.name), np.ndarray)})
        (tmp / "groundtruth.txt").write_text("".join(f"{x},{y},{w},{h}\n" for x, y, w, h in ann.boxes.tolist()))
        (tmp / "full_occlusion.txt").write_text(_flags_line(ann.full_occlusion))
        (tmp / "out_of_view.txt").write_text(_flags_line(ann.out_of_view))
        (tmp / "nlp.txt").write_text(ann.description + "\n")
        final = out / cls / name
        final.parent.mkdir(exist_ok=True)
        if final.exists():  # an incomplete leftover (complete ones are skipped before)
            shutil.rmtree(final)
        os.rename(tmp, final)
        return ann
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _read_flag_file(path: Path) -> np.ndarray:
    text = path.read_text().strip()
    return np.array([int(v) for v in text.split(",")], dtype=bool) if text else np.zeros(0, bool)


def _existing_sequence(directory: Path, frames: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The flags of a complete sequence folder, or None if it is missing or incomplete."""
    try:
        names = os.listdir(directory / "img")
        if sum(1 for f in names if f.endswith(".jpg")) != frames or not (directory / "nlp.txt").is_file():
            return None
        occlusion = _read_flag_file(directory / "full_occlusion.txt")
        out_of_view = _read_flag_file(directory / "out_of_view.txt")
        lines = (directory / "groundtruth.txt").read_text().splitlines()
    except (OSError, ValueError):
        return None
    if len(occlusion) != frames or len(out_of_view) != frames or len(lines) != frames:
        return None
    return occlusion, out_of_view


def _dumps(data: dict) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


_PARAM_KEYS = ("generator", "version", "format", "preset", "preset_params", "seed", "sequences", "frames",
               "frame_size", "test_fraction", "jpeg_quality")


def generate_benchmark(out: str | os.PathLike, sequences: int, frames: int, seed: int, preset: str = "standard",
                       frame_size: tuple[int, int] = (240, 320), test_fraction: float = 0.25,
                       progress: bool = False) -> dict:
    """Writes a synthetic LaSOT-format benchmark into ``out`` and returns the content of its ``benchmark.json``.

    Each sequence is written into a temporary folder and renamed into place, so an interrupted run leaves only
    complete sequences; running again with the same arguments skips those and writes the rest. A folder holding a
    benchmark made with other arguments, or anything else, is refused (ValueError).
    """
    sequences = _check_int("sequences", sequences, 1)
    frames = _check_int("frames", frames, 2)
    seed = _check_int("seed", seed, 0)
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known presets: {sorted(PRESETS)}")
    height, width = _check_frame_size(frame_size)
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) \
            or not 0.0 <= float(test_fraction) <= 1.0:
        raise ValueError(f"test_fraction must be a number in [0, 1], got {test_fraction!r}")
    test_fraction = float(test_fraction)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out {str(out)!r} exists and is not a folder")

    params = {"generator": "ct_ray.data.synth", "version": SYNTH_VERSION, "format": "lasot", "preset": preset,
              "preset_params": asdict(PRESETS[preset]), "seed": seed, "sequences": sequences, "frames": frames,
              "frame_size": [height, width], "test_fraction": test_fraction, "jpeg_quality": JPEG_QUALITY}
    params = json.loads(json.dumps(params))  # tuples -> lists, as read back
    meta_path = out / "benchmark.json"
    if meta_path.exists():
        try:
            existing = json.loads(meta_path.read_text())
            old = {k: existing.get(k) for k in _PARAM_KEYS}
        except (ValueError, AttributeError):
            raise ValueError(f"out {str(out)!r} holds a benchmark.json that is not a synthetic benchmark's") from None
        if old != params:
            differ = [k for k in _PARAM_KEYS if old.get(k) != params[k]]
            raise ValueError(f"out {str(out)!r} holds a synthetic benchmark with different parameters "
                             f"({', '.join(f'{k}: {old.get(k)!r} there, {params[k]!r} asked' for k in differ)}); "
                             f"use another folder or delete it")
    elif out.exists() and any(out.iterdir()):
        raise ValueError(f"out {str(out)!r} is not empty and holds no synthetic benchmark (no benchmark.json)")
    out.mkdir(parents=True, exist_ok=True)
    if not meta_path.exists():
        atomic_write_text(meta_path, _dumps({**params, "complete": False}))
    for leftover in out.glob(f"{_TMP_PREFIX}*"):  # from an interrupted run
        shutil.rmtree(leftover, ignore_errors=True)

    plan = sequence_plan(seed, sequences)
    totals = {"frames": 0, "full_occlusion": 0, "out_of_view": 0, "absent": 0}
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=sequences, desc=f"synth {preset}", unit="seq")
    try:
        for index, (name, cls) in enumerate(plan):
            flags = _existing_sequence(out / cls / name, frames)
            if flags is None:
                ann = _write_sequence(out, name, cls, np.random.default_rng([seed, 0, index]), preset, frames,
                                      (height, width))
                flags = (ann.full_occlusion, ann.out_of_view)
            occlusion, out_of_view = flags
            totals["frames"] += frames
            totals["full_occlusion"] += int(occlusion.sum())
            totals["out_of_view"] += int(out_of_view.sum())
            totals["absent"] += int((occlusion | out_of_view).sum())
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()

    test = _split(seed, sequences, test_fraction)
    train_names = [name for i, (name, _) in enumerate(plan) if i not in test]
    test_names = [name for i, (name, _) in enumerate(plan) if i in test]
    atomic_write_text(out / "training_set.txt", "".join(f"{n}\n" for n in train_names))
    atomic_write_text(out / "testing_set.txt", "".join(f"{n}\n" for n in test_names))
    info = {**params, "complete": True, "counts": totals, "train_sequences": len(train_names),
            "test_sequences": len(test_names)}
    atomic_write_text(meta_path, _dumps(info))
    return json.loads(_dumps(info))
