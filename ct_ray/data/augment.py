"""Training-time augmentation of a template/search pair (METHOD.md section 5), in numpy / OpenCV.

The reference pipeline (OSTrack's, which CompressTracker's public code uses) in two stages:

1. joint, with one draw for both crops: grayscale (p = 0.05) and a horizontal flip (p = 0.5, the search box
   mirrored with it);
2. per crop, with its own draws: brightness jitter (a factor in [1 - 0.2, 1 + 0.2]) and a second horizontal flip
   (p = 0.5; OSTrack's ``RandomHorizontalFlip_Norm``), so the search crop is mirrored relative to the template in
   half of the samples.

The randomness comes from the caller's generator (``ct_ray.data.samples.sample_rng``: seeded by run seed, epoch and
pair index), so a sample is the same whatever batch or worker it lands in.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    brightness: float = 0.2
    grayscale_probability: float = 0.05
    flip_probability: float = 0.5
    crop_flip_probability: float = 0.5
    enabled: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.brightness < 1:
            raise ValueError(f"augment.brightness must be in [0, 1), got {self.brightness}")
        for name in ("grayscale_probability", "flip_probability", "crop_flip_probability"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"augment.{name} must be in [0, 1], got {getattr(self, name)}")


def _brightness(image: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    factor = rng.uniform(max(0.0, 1.0 - amount), 1.0 + amount)
    return np.clip(image.astype(np.float32) * factor + 0.5, 0, 255).astype(np.uint8)


def _grayscale(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)


def _mirror(box: np.ndarray, size: int) -> np.ndarray:
    return np.array([size - box[0] - box[2], box[1], box[2], box[3]], dtype=np.float64)


def augment_pair(template: np.ndarray, search: np.ndarray, search_box: np.ndarray, rng: np.random.Generator,
                 config: AugmentConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The augmented template, search crop and search box (xywh crop pixels); unchanged when disabled."""
    if not config.enabled:
        return template, search, search_box
    if rng.random() < config.grayscale_probability:
        template, search = _grayscale(template), _grayscale(search)
    if rng.random() < config.flip_probability:
        template, search = template[:, ::-1], search[:, ::-1]
        search_box = _mirror(search_box, search.shape[1])
    template = _brightness(template, rng, config.brightness)
    if rng.random() < config.crop_flip_probability:
        template = template[:, ::-1]
    search = _brightness(search, rng, config.brightness)
    if rng.random() < config.crop_flip_probability:
        search = search[:, ::-1]
        search_box = _mirror(search_box, search.shape[1])
    return template, search, search_box
