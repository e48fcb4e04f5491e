"""Online tracking with a one-stream tracker model (METHOD section 7).

Frame 1: the template is cropped around the given box (factor ``model.config.template_factor``, 2 by default, to
``model.config.template_size``), normalised and embedded once (``model.embed_template``); the tokens stay fixed for
the sequence. Each next frame: the search region is cropped (factor ``model.config.search_factor``, 4 by default, to
``model.config.search_size``) around the previous box with the project's one crop function
(:mod:`ct_ray.crop`), the network runs on the cached template tokens, its score map is multiplied by a Hann window
before the argmax, the box is decoded, scaled to crop pixels and mapped back to the image by the crop window's exact
inverse, clipped to the image (at least ``margin`` = 10 px kept inside) and kept as the state. Nothing else carries
over between frames.

The map back uses :meth:`ct_ray.crop.CropWindow.to_image`, the exact inverse of the crop. OSTrack instead takes the
crop origin as ``previous centre - side / 2`` (unrounded), while its crop starts at ``round(previous centre -
side / 2)``; the two differ by the rounding of ``x1``/``y1``, at most 0.5 source pixel.
"""
from __future__ import annotations

import math
import time
from typing import Iterable

import numpy as np
import torch
from torch import nn

from ct_ray.boxes import cxcywh_to_xywh
from ct_ray.crop import CropWindow, crop, crop_around, crop_window, normalize_crops
from ct_ray.models.one_stream import decode_boxes
from ct_ray.tracking.runtimes import NetworkRuntime, TorchRuntime

__all__ = ["OnlineTracker", "clip_box", "hann2d", "run_sequence"]


def hann1d(size: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """OSTrack's centred Hann window ``0.5 * (1 - cos(2 pi k / (size + 1)))`` for ``k = 1 .. size`` (no zero ends)."""
    k = torch.arange(1, size + 1, dtype=torch.float64)
    window = 0.5 * (1.0 - torch.cos(2.0 * math.pi * k / (size + 1)))
    return window.to(device=device, dtype=dtype)


def hann2d(size: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """The ``(size, size)`` Hann window: the outer product of :func:`hann1d` with itself (rows = y, columns = x)."""
    if int(size) != size or size < 1:
        raise ValueError(f"Hann window size must be a positive integer, got {size!r}")
    window = hann1d(int(size), dtype=torch.float64)
    return torch.outer(window, window).to(device=device, dtype=dtype)


def clip_box(box_xywh, height: int, width: int, margin: float = 10) -> np.ndarray:
    """OSTrack's ``clip_box``: keep an xywh box inside a ``height x width`` image with at least ``margin`` px of it.

    ``x1 = min(max(0, x1), W - margin)``, ``x2 = min(max(margin, x2), W)``, the same for y, then
    ``w = max(margin, x2 - x1)``, ``h = max(margin, y2 - y1)``. Returns a float64 ``(4,)`` array.
    """
    x, y, w, h = (float(v) for v in np.asarray(box_xywh, dtype=np.float64).reshape(4))
    x2, y2 = x + w, y + h
    x1 = min(max(0.0, x), width - margin)
    x2 = min(max(float(margin), x2), float(width))
    y1 = min(max(0.0, y), height - margin)
    y2 = min(max(float(margin), y2), float(height))
    return np.array([x1, y1, max(float(margin), x2 - x1), max(float(margin), y2 - y1)], dtype=np.float64)


def _check_frame(frame: np.ndarray) -> None:
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        desc = f"{type(frame).__name__} {getattr(frame, 'shape', '')} {getattr(frame, 'dtype', '')}"
        raise ValueError(f"expected an HxWx3 uint8 RGB frame, got {desc}")
    if frame.shape[0] < 1 or frame.shape[1] < 1:
        raise ValueError(f"expected a non-empty frame, got shape {frame.shape}")


class OnlineTracker:
    """Single-object online tracker around a model with the one-stream tracker API.

    The model must provide ``config.template_size``, ``config.search_size``, ``feat_size``,
    ``embed_template(template)`` and ``forward_with_template_tokens(template_tokens, search)`` returning
    ``score_map``/``size_map``/``offset_map`` (see :mod:`ct_ray.models`). The model is moved to ``device`` and put in
    eval mode. Per frame the work is: one crop on the host, one host->device copy of the uint8 crop, normalisation on
    the device, one network pass on the cached template tokens, the Hann-windowed decode and one 4-value copy back.

    ``runtime`` runs the network (default: PyTorch eager on ``device``; see :mod:`ct_ray.tracking.runtimes` for
    ``torch.compile`` and ONNX Runtime); the crop, window, decode and map back are the same for every runtime.
    """

    def __init__(self, model: nn.Module, device: str | torch.device = "cpu", template_factor: float | None = None,
                 search_factor: float | None = None, margin: float = 10,
                 runtime: NetworkRuntime | None = None) -> None:
        self.runtime = runtime if runtime is not None else TorchRuntime(model, device)
        self.device = self.runtime.device
        self.model = model.eval()
        self.template_size = int(model.config.template_size)
        self.search_size = int(model.config.search_size)
        self.feat_size = int(model.feat_size)
        # The crops the model was trained on (its config records them); an explicit factor overrides.
        self.template_factor = float(template_factor or getattr(model.config, "template_factor", 2.0))
        self.search_factor = float(search_factor or getattr(model.config, "search_factor", 4.0))
        self.margin = margin
        param = next(iter(model.parameters()), None)
        self.dtype = (param.dtype if isinstance(self.runtime, TorchRuntime) and param is not None
                      and param.is_floating_point() else torch.float32)
        self.window = hann2d(self.feat_size, dtype=torch.float32, device=self.device).view(
            1, 1, self.feat_size, self.feat_size)
        self.template_tokens: torch.Tensor | None = None
        self.state: np.ndarray | None = None
        self.last_window: CropWindow | None = None

    def _to_input(self, crop_rgb: np.ndarray) -> torch.Tensor:
        """Host uint8 HxWx3 crop -> normalised (1, 3, H, W) on the device (one uint8 copy, affine on the device)."""
        return normalize_crops(torch.from_numpy(crop_rgb).to(self.device), dtype=self.dtype)

    @torch.inference_mode()
    def initialize(self, frame: np.ndarray, box_xywh) -> None:
        """Start a sequence on ``frame`` (HxWx3 uint8 RGB) with the target box (image xywh)."""
        _check_frame(frame)
        template, _ = crop_around(frame, box_xywh, self.template_factor, self.template_size)
        self.template_tokens = self.runtime.embed_template(self._to_input(template))
        if isinstance(box_xywh, torch.Tensor):
            box_xywh = box_xywh.detach().to("cpu", torch.float64).numpy()
        self.state = np.array(box_xywh, dtype=np.float64).reshape(4)
        self.last_window = None

    @torch.inference_mode()
    def track(self, frame: np.ndarray) -> np.ndarray:
        """The target box (image xywh, float64 ``(4,)``) in the next ``frame`` (HxWx3 uint8 RGB)."""
        if self.template_tokens is None or self.state is None:
            raise RuntimeError("OnlineTracker.track() called before initialize()")
        _check_frame(frame)
        height, width = frame.shape[:2]
        window = crop_window(self.state, self.search_factor, self.search_size)
        search = crop(frame, window)
        out = self.runtime.track(self.template_tokens, self._to_input(search))
        score = out["score_map"] * self.window
        box = decode_boxes(score, out["size_map"], out["offset_map"])[0]
        box_crop = cxcywh_to_xywh(box.to("cpu", torch.float64).numpy() * self.search_size)
        box_image = window.to_image(box_crop)
        if not np.isfinite(box_image).all():  # non-finite network output: keep the previous box
            box_image = self.state
        self.state = clip_box(box_image, height, width, self.margin)
        self.last_window = window
        return self.state.copy()


def run_sequence(tracker: OnlineTracker, frames: Iterable[np.ndarray], init_box) -> tuple[np.ndarray, np.ndarray]:
    """Track ``frames`` from ``init_box`` (xywh on frame 0).

    Returns the ``(N, 4)`` float64 xywh boxes (row 0 is ``init_box``) and the ``(N,)`` wall-clock seconds spent per
    frame (``time.perf_counter``; frame 0 is the initialisation).
    """
    boxes: list[np.ndarray] = []
    times: list[float] = []
    for index, frame in enumerate(frames):
        start = time.perf_counter()
        if index == 0:
            tracker.initialize(frame, init_box)
            box = np.asarray(init_box, dtype=np.float64).reshape(4).copy()
        else:
            box = tracker.track(frame)
        times.append(time.perf_counter() - start)
        boxes.append(box)
    if not boxes:
        return np.zeros((0, 4), dtype=np.float64), np.zeros((0,), dtype=np.float64)
    return np.stack(boxes), np.asarray(times, dtype=np.float64)
