"""The one box-format convention of ct-ray, and conversions between its three forms.

- ``xywh``: image boxes, in pixels: top-left corner (x, y) and size (w, h). Dataset annotations, tracker results
  and metrics use this form. Coordinates are continuous with pixel edges at integers: pixel ``i`` covers
  ``[i, i + 1)``, so a box ``(0, 0, W, H)`` is the whole ``W x H`` image.
- ``cxcywh``: network boxes: centre and size, normalised to the search crop (``[0, 1]`` inside it). The tracker
  model predicts and is supervised in this form.
- ``xyxy``: corners ``(x1, y1, x2, y2)``; used inside the IoU / GIoU computations.

Every function works on numpy arrays and torch tensors of shape ``(..., 4)`` and returns the same kind.
"""
from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

Array = TypeVar("Array", np.ndarray, torch.Tensor)


def _stack(parts, like):
    if isinstance(like, torch.Tensor):
        return torch.stack(parts, dim=-1)
    return np.stack(parts, axis=-1)


def xywh_to_xyxy(box: Array) -> Array:
    x, y, w, h = box[..., 0], box[..., 1], box[..., 2], box[..., 3]
    return _stack([x, y, x + w, y + h], box)


def xyxy_to_xywh(box: Array) -> Array:
    x1, y1, x2, y2 = box[..., 0], box[..., 1], box[..., 2], box[..., 3]
    return _stack([x1, y1, x2 - x1, y2 - y1], box)


def cxcywh_to_xyxy(box: Array) -> Array:
    cx, cy, w, h = box[..., 0], box[..., 1], box[..., 2], box[..., 3]
    return _stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], box)


def xyxy_to_cxcywh(box: Array) -> Array:
    x1, y1, x2, y2 = box[..., 0], box[..., 1], box[..., 2], box[..., 3]
    return _stack([(x1 + x2) * 0.5, (y1 + y2) * 0.5, x2 - x1, y2 - y1], box)


def xywh_to_cxcywh(box: Array) -> Array:
    x, y, w, h = box[..., 0], box[..., 1], box[..., 2], box[..., 3]
    return _stack([x + 0.5 * w, y + 0.5 * h, w, h], box)


def cxcywh_to_xywh(box: Array) -> Array:
    cx, cy, w, h = box[..., 0], box[..., 1], box[..., 2], box[..., 3]
    return _stack([cx - 0.5 * w, cy - 0.5 * h, w, h], box)


def is_valid_xywh(box: Array) -> Array:
    """True where a box is finite and has positive width and height."""
    if isinstance(box, torch.Tensor):
        finite = torch.isfinite(box).all(dim=-1)
    else:
        finite = np.isfinite(box).all(axis=-1)
    return finite & (box[..., 2] > 0) & (box[..., 3] > 0)
