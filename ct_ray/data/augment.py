"""Decoding and training-time augmentation of a batch of shard rows (METHOD.md section 5), in numpy/OpenCV.

Grayscale (p = 0.05) and horizontal flip (p = 0.5) are applied jointly to the template and search crops (the flip
also mirrors the boxes); brightness jitter (factor in [1 - 0.2, 1 + 0.2]) is drawn per crop, as OSTrack does. Each
row's randomness comes from a generator seeded by ``(seed, pair_index)``, so a row always gets the same
augmentation whatever batch it lands in. Rows that training cannot use are dropped and counted by reason: a corrupt
JPEG, a crop of the wrong size, a NaN / negative / zero-area box, or a box entirely outside the search crop.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import cv2
import numpy as np

from ct_ray.boxes import xywh_to_cxcywh

DROP_REASONS = ("corrupt_jpeg", "wrong_crop_size", "invalid_box", "box_outside_crop")


@dataclass(frozen=True)
class AugmentConfig:
    brightness: float = 0.2
    grayscale_probability: float = 0.05
    flip_probability: float = 0.5
    enabled: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.brightness < 1:
            raise ValueError(f"augment.brightness must be in [0, 1), got {self.brightness}")
        for name in ("grayscale_probability", "flip_probability"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"augment.{name} must be in [0, 1], got {getattr(self, name)}")


def _decode(data) -> np.ndarray | None:
    if data is None:
        return None
    buffer = np.frombuffer(bytes(data), dtype=np.uint8)
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR) if buffer.size else None
    return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _box_problem(box: np.ndarray, size: int) -> str | None:
    if box.shape != (4,) or not np.isfinite(box).all() or box[2] <= 0 or box[3] <= 0:
        return "invalid_box"
    if box[0] >= size or box[1] >= size or box[0] + box[2] <= 0 or box[1] + box[3] <= 0:
        return "box_outside_crop"
    return None


def _brightness(image: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    factor = rng.uniform(max(0.0, 1.0 - amount), 1.0 + amount)
    return np.clip(image.astype(np.float32) * factor + 0.5, 0, 255).astype(np.uint8)


def _grayscale(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)


def decode_pairs(batch: dict[str, np.ndarray], template_size: int, search_size: int, seed: int,
                 augment: AugmentConfig) -> tuple[dict[str, np.ndarray], Counter]:
    """Shard rows -> ``template`` (B, Hz, Wz, 3) uint8, ``search`` (B, Hx, Wx, 3) uint8, ``search_box`` (B, 4)
    float32 cxcywh normalised to the search crop, ``pair_index`` (B,); and the count of dropped rows by reason."""
    templates, searches, boxes, indices = [], [], [], []
    dropped: Counter = Counter()
    for i, pair_index in enumerate(batch["pair_index"]):
        template, search = _decode(batch["template_jpeg"][i]), _decode(batch["search_jpeg"][i])
        if template is None or search is None:
            dropped["corrupt_jpeg"] += 1
            continue
        if template.shape[:2] != (template_size, template_size) or search.shape[:2] != (search_size, search_size):
            dropped["wrong_crop_size"] += 1
            continue
        box = np.asarray(batch["search_box"][i], dtype=np.float64).reshape(-1)
        problem = _box_problem(box, search_size)
        if problem:
            dropped[problem] += 1
            continue
        if augment.enabled:
            rng = np.random.default_rng([seed, int(pair_index)])
            if rng.random() < augment.grayscale_probability:
                template, search = _grayscale(template), _grayscale(search)
            if rng.random() < augment.flip_probability:
                template, search = template[:, ::-1], search[:, ::-1]
                box = np.array([search_size - box[0] - box[2], box[1], box[2], box[3]])
            template = _brightness(template, rng, augment.brightness)
            search = _brightness(search, rng, augment.brightness)
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
