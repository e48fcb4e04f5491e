"""The one crop function of ct-ray, shared by the training data pipeline and the online tracker (METHOD section 6).

A crop around an image box ``(x, y, w, h)`` (xywh pixels, see :mod:`ct_ray.boxes`) with context factor ``f`` is the
square window ``[x1, x1 + side) x [y1, y1 + side)`` of source pixels with

- ``side = ceil(sqrt(w * h) * f)``,
- ``x1 = round(cx - side / 2)``, ``y1 = round(cy - side / 2)`` where ``(cx, cy) = (x + w / 2, y + h / 2)``,

zero padded where it leaves the image and resized to ``output_size x output_size`` (``cv2.resize``,
``INTER_LINEAR``). ``round`` is Python's built-in ``round`` (round half to even), as OSTrack uses it; it is applied
the same way everywhere in the project because the window comes only from :func:`crop_window`.

Box mapping uses ``scale = output_size / side``: an image point ``p`` maps to ``(p - x1) * scale`` in crop pixels
(same pixel-edge convention as the image: crop pixel ``j`` covers ``[j, j + 1)``), and
:meth:`CropWindow.to_image` is the exact inverse of :meth:`CropWindow.to_crop`.

Frames and crops are RGB ``uint8`` throughout; :func:`normalize_crops` turns a batch of crops into the network's
ImageNet-normalised float ``(B, 3, H, W)`` input on the tensor's own device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeVar

import cv2
import numpy as np
import torch

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CropWindow",
    "crop",
    "crop_around",
    "crop_window",
    "normalize_crops",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Array = TypeVar("Array", np.ndarray, torch.Tensor)


def _offset_and_float(box, x1: int, y1: int):
    """``box`` as a float array/tensor and the matching ``(x1, y1, 0, 0)`` offset of the same kind."""
    if isinstance(box, torch.Tensor):
        if not box.is_floating_point():
            box = box.to(torch.float64)
        offset = torch.tensor([x1, y1, 0, 0], dtype=box.dtype, device=box.device)
        return box, offset
    box = np.asarray(box, dtype=np.float64)
    return box, np.array([x1, y1, 0.0, 0.0], dtype=np.float64)


@dataclass(frozen=True)
class CropWindow:
    """The square source window ``[x1, x1 + side) x [y1, y1 + side)`` of a crop resized to ``output_size``.

    ``x1``/``y1`` may be negative or beyond the image (those pixels are zero padding).
    """

    x1: int
    y1: int
    side: int
    output_size: int

    def __post_init__(self) -> None:
        if self.side < 1 or self.output_size < 1:
            raise ValueError(f"crop window needs side >= 1 and output_size >= 1, got {self}")

    @property
    def scale(self) -> float:
        """Crop pixels per source pixel, ``output_size / side``."""
        return self.output_size / self.side

    def to_crop(self, box_xywh: Array) -> Array:
        """Image xywh boxes ``(..., 4)`` (numpy or torch) -> xywh in crop pixels: ``((x - x1) s, (y - y1) s, w s, h s)``.

        numpy results are float64; float tensors keep their dtype and device (integer tensors become float64).
        """
        box, offset = _offset_and_float(box_xywh, self.x1, self.y1)
        return (box - offset) * self.scale

    def to_image(self, box_xywh: Array) -> Array:
        """Exact inverse of :meth:`to_crop`: crop-pixel xywh boxes ``(..., 4)`` -> image xywh boxes."""
        box, offset = _offset_and_float(box_xywh, self.x1, self.y1)
        return box * (self.side / self.output_size) + offset


def _box_values(box_xywh) -> tuple[float, float, float, float]:
    if isinstance(box_xywh, torch.Tensor):
        box_xywh = box_xywh.detach().to("cpu", torch.float64).numpy()
    values = np.asarray(box_xywh, dtype=np.float64).reshape(-1)
    if values.shape != (4,):
        raise ValueError(f"expected one xywh box of 4 values, got shape {np.shape(box_xywh)}: {box_xywh!r}")
    return tuple(float(v) for v in values)  # type: ignore[return-value]


def crop_window(box_xywh, context_factor: float, output_size: int) -> CropWindow:
    """The crop window around an image xywh box (METHOD section 6).

    ``side = ceil(sqrt(w h) * context_factor)``, ``x1 = round(cx - side / 2)``, ``y1 = round(cy - side / 2)`` with
    Python's ``round`` (half to even, as OSTrack). Raises ``ValueError`` naming the box if it is not finite, has
    ``w <= 0`` or ``h <= 0``, or gives ``side < 1``.
    """
    x, y, w, h = _box_values(box_xywh)
    if not (math.isfinite(x) and math.isfinite(y) and math.isfinite(w) and math.isfinite(h)) or w <= 0 or h <= 0:
        raise ValueError(f"cannot crop around invalid box (x, y, w, h) = {(x, y, w, h)}")
    if not (math.isfinite(context_factor) and context_factor > 0):
        raise ValueError(f"context_factor must be a positive finite number, got {context_factor!r}")
    if int(output_size) != output_size or output_size < 1:
        raise ValueError(f"output_size must be a positive integer, got {output_size!r}")
    extent = math.sqrt(w * h) * context_factor
    if not math.isfinite(extent) or extent > 2**31:
        raise ValueError(f"crop side {extent} of box (x, y, w, h) = {(x, y, w, h)} is too large")
    side = math.ceil(extent)
    if side < 1:
        raise ValueError(f"crop side {side} < 1 for box (x, y, w, h) = {(x, y, w, h)}")
    x1 = round(x + 0.5 * w - 0.5 * side)
    y1 = round(y + 0.5 * h - 0.5 * side)
    return CropWindow(x1=int(x1), y1=int(y1), side=int(side), output_size=int(output_size))


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        desc = f"{type(image).__name__} {getattr(image, 'shape', '')} {getattr(image, 'dtype', '')}"
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got {desc}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"expected a non-empty image, got shape {image.shape}")


def crop(image: np.ndarray, window: CropWindow) -> np.ndarray:
    """The ``(output_size, output_size, 3)`` uint8 crop of ``image`` (HxWx3 uint8) for ``window``.

    Source pixels ``[x1, x1 + side) x [y1, y1 + side)`` are taken, pixels outside the image are exactly 0, and the
    ``side x side`` square is resized with ``cv2.resize(..., INTER_LINEAR)``. Only the in-image part is copied (once,
    into the padded square by ``cv2.copyMakeBorder``; no copy at all when the window lies inside the image).

    OSTrack's ``sample_target`` pads one pixel too many on the right/bottom: its ``x2_pad = x2 - W + 1`` treats the
    exclusive bound ``x2 = x1 + side`` as inclusive, so whenever the window reaches the right (bottom) image edge the
    last in-image column (row) is dropped and replaced by a zero. That quirk is deliberately NOT reproduced: here
    the padded square is exactly ``side x side`` and its pixel ``(i, j)`` is source pixel ``(y1 + i, x1 + j)``
    (or 0 outside the image).
    """
    _check_image(image)
    height, width = image.shape[:2]
    x1, y1, side, out = window.x1, window.y1, window.side, window.output_size
    x2, y2 = x1 + side, y1 + side
    ix1, iy1 = max(x1, 0), max(y1, 0)
    ix2, iy2 = min(x2, width), min(y2, height)
    if ix1 >= ix2 or iy1 >= iy2:  # window entirely outside the image
        return np.zeros((out, out, 3), dtype=np.uint8)
    patch = image[iy1:iy2, ix1:ix2]
    if patch.strides[2] != 1 or patch.strides[1] != 3:  # OpenCV needs packed pixels (e.g. not a [..., ::-1] view)
        patch = np.ascontiguousarray(patch)
    top, bottom, left, right = iy1 - y1, y2 - iy2, ix1 - x1, x2 - ix2
    if top or bottom or left or right:
        patch = cv2.copyMakeBorder(patch, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    if side == out:
        return np.array(patch, copy=True, order="C")
    return cv2.resize(patch, (out, out), interpolation=cv2.INTER_LINEAR)


def crop_around(image: np.ndarray, box_xywh, context_factor: float,
                output_size: int) -> tuple[np.ndarray, CropWindow]:
    """``crop(image, crop_window(box_xywh, context_factor, output_size))`` and the window."""
    window = crop_window(box_xywh, context_factor, output_size)
    return crop(image, window), window


_NORMALIZE_CACHE: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}


def _normalize_constants(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    key = (device, dtype)
    constants = _NORMALIZE_CACHE.get(key)
    if constants is None:
        mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64)
        std = torch.tensor(IMAGENET_STD, dtype=torch.float64)
        scale = (1.0 / (255.0 * std)).view(1, 3, 1, 1).to(device=device, dtype=dtype)
        shift = (-mean / std).view(1, 3, 1, 1).to(device=device, dtype=dtype)
        constants = _NORMALIZE_CACHE[key] = (scale, shift)
    return constants


def normalize_crops(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 RGB crops ``(B, H, W, 3)`` or ``(H, W, 3)`` -> ImageNet-normalised ``(B, 3, H, W)`` of ``dtype``.

    ``(x / 255 - mean) / std`` as one fused affine ``x * scale + shift`` (per-channel constants precomputed in
    float64 and cached per device/dtype), computed on the tensor's own device; the result is contiguous NCHW.
    """
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 tensor of RGB crops, got {getattr(images, 'dtype', type(images))}")
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected crops of shape (B, H, W, 3) or (H, W, 3), got {tuple(images.shape)}")
    scale, shift = _normalize_constants(images.device, dtype)
    batch, height, width, _ = images.shape
    out = torch.empty((batch, 3, height, width), dtype=dtype, device=images.device)
    return torch.addcmul(shift, images.permute(0, 3, 1, 2), scale, out=out)
