"""Training samples drawn when a row is read (plain numpy / OpenCV): sample-time geometry and augmentation.

A row holds what sampling needs, not the final network input (``ct_ray.data.shards``, ``ct_ray.data.stream``):

- ``template``: the template crop (no jitter, as in OSTrack: factor ``template_factor`` around the template frame's
  box), resized here if the model wants another size;
- ``context`` and ``context_box``: a square *context* crop around the search frame's ground-truth box, cut with the
  factor ``context_factor`` wide enough for every search window the jitter can draw, and that box in the context's
  pixels.

``sample_pairs`` then draws, for every row, from a generator seeded by ``(seed, epoch, pair_index)``: the search
window (the box's size scaled by ``exp(N(0,1) * scale_jitter)`` per axis, at most ``max_scale_change`` either way,
and its centre moved by ``sqrt(w'h') * center_jitter * (U(0,1) - 0.5)`` per axis; METHOD.md section 6), the crop
and resize to ``search_size``, and the augmentation of the reference pipeline (``AugmentConfig``). Two epochs give
different samples of one row, and the same (seed, epoch) gives the same samples again. Rows that cannot be used
(a corrupt JPEG, a crop of the wrong size, a NaN / zero-area box, a box the window does not overlap) are dropped
and counted by reason.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import cv2
import numpy as np

from ct_ray.boxes import xywh_to_cxcywh
from ct_ray.crop import crop, crop_window
from ct_ray.data.augment import AugmentConfig, augment_pair

DROP_REASONS = ("corrupt_jpeg", "wrong_crop_size", "invalid_box", "box_outside_crop")


@dataclass(frozen=True)
class JitterConfig:
    """The search-window jitter drawn at sample time (OSTrack's defaults; the template is never jittered)."""

    center_jitter: float = 3.0
    scale_jitter: float = 0.25
    max_scale_change: float = 1.65

    def __post_init__(self) -> None:
        for name in ("center_jitter", "scale_jitter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not (isinstance(self.max_scale_change, (int, float)) and self.max_scale_change >= 1):
            raise ValueError(f"max_scale_change must be >= 1 (the largest factor the jitter may scale a box by), "
                             f"got {self.max_scale_change!r}")

    def required_context_factor(self, search_factor: float) -> float:
        """The smallest context factor that holds every search window this jitter can draw around a box: the
        window's half side ``search_factor / 2 * s'`` plus the centre shift ``center_jitter / 2 * s'``, with
        ``s'`` at most ``max_scale_change`` times the box's side."""
        return (search_factor + self.center_jitter) * self.max_scale_change


def jitter_box(box_xywh: np.ndarray, rng: np.random.Generator, center_jitter: float, scale_jitter: float,
               max_scale_change: float | None = None) -> np.ndarray:
    """OSTrack's search-region jitter of an xywh box; ``max_scale_change`` clips the per-axis scale factor."""
    x, y, w, h = (float(v) for v in box_xywh)
    log_scale = rng.standard_normal(2) * scale_jitter
    if max_scale_change is not None:
        limit = math.log(max_scale_change)
        log_scale = np.clip(log_scale, -limit, limit)
    size = np.array([w, h]) * np.exp(log_scale)
    max_offset = np.sqrt(size.prod()) * center_jitter
    centre = np.array([x + 0.5 * w, y + 0.5 * h]) + max_offset * (rng.random(2) - 0.5)
    return np.array([centre[0] - 0.5 * size[0], centre[1] - 0.5 * size[1], size[0], size[1]])


def box_problem(box: np.ndarray, size: int) -> str | None:
    """Why a crop-pixel xywh box cannot supervise training (None when it can)."""
    if box.shape != (4,) or not np.isfinite(box).all() or box[2] <= 0 or box[3] <= 0:
        return "invalid_box"
    if box[0] >= size or box[1] >= size or box[0] + box[2] <= 0 or box[1] + box[3] <= 0:
        return "box_outside_crop"
    return None


def decode_jpeg(data) -> np.ndarray | None:
    """JPEG bytes -> RGB uint8 array, or None when they do not decode."""
    if data is None:
        return None
    buffer = np.frombuffer(bytes(data), dtype=np.uint8)
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR) if buffer.size else None
    return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def encode_jpeg(image_rgb: np.ndarray, quality: int) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return data.tobytes()


def sample_rng(seed: int, epoch: int, pair_index: int) -> np.random.Generator:
    """The generator of one sample: a pure function of (run seed, epoch, pair index)."""
    return np.random.default_rng([int(seed) % 2**63, int(epoch), int(pair_index)])


def _image(value) -> np.ndarray | None:
    return value if isinstance(value, np.ndarray) and value.ndim == 3 else decode_jpeg(value)


def sample_pairs(rows: dict[str, np.ndarray], seed: int, epoch: int, template_size: int, search_size: int,
                 search_factor: float, jitter: JitterConfig = JitterConfig(),
                 augment: AugmentConfig = AugmentConfig()) -> tuple[dict[str, np.ndarray], Counter]:
    """Rows (``pair_index``; ``template`` and ``context`` as JPEG bytes or RGB arrays; ``context_box``) -> the
    network's samples: ``template`` (B, Hz, Wz, 3) and ``search`` (B, Hx, Wx, 3) uint8, ``search_box`` (B, 4) float32
    cxcywh normalised to the search crop, ``pair_index`` (B,); and the dropped rows counted by reason."""
    templates, searches, boxes, indices = [], [], [], []
    dropped: Counter = Counter()
    for i, pair_index in enumerate(rows["pair_index"]):
        template, context = _image(rows["template"][i]), _image(rows["context"][i])
        if template is None or context is None:
            dropped["corrupt_jpeg"] += 1
            continue
        if template.shape[0] != template.shape[1] or context.shape[0] != context.shape[1]:
            dropped["wrong_crop_size"] += 1
            continue
        if template.shape[0] != template_size:
            template = cv2.resize(template, (template_size, template_size), interpolation=cv2.INTER_LINEAR)
        context_box = np.asarray(rows["context_box"][i], dtype=np.float64).reshape(-1)
        problem = box_problem(context_box, context.shape[0])
        if problem:  # a stored box outside its own context crop: a damaged row
            dropped[problem] += 1
            continue
        rng = sample_rng(seed, epoch, pair_index)
        jittered = jitter_box(context_box, rng, jitter.center_jitter, jitter.scale_jitter, jitter.max_scale_change)
        try:
            window = crop_window(jittered, search_factor, search_size)
        except ValueError:
            dropped["invalid_box"] += 1
            continue
        search = crop(context, window)
        box = np.asarray(window.to_crop(context_box), dtype=np.float64)
        problem = box_problem(box, search_size)
        if problem:
            dropped[problem] += 1
            continue
        template, search, box = augment_pair(template, search, box, rng, augment)
        templates.append(np.ascontiguousarray(template))
        searches.append(np.ascontiguousarray(search))
        boxes.append(xywh_to_cxcywh(box) / search_size)
        indices.append(int(pair_index))
    out = {
        "template": np.stack(templates) if templates else np.zeros((0, template_size, template_size, 3), np.uint8),
        "search": np.stack(searches) if searches else np.zeros((0, search_size, search_size, 3), np.uint8),
        "search_box": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        "pair_index": np.asarray(indices, dtype=np.int64),
    }
    return out, dropped
