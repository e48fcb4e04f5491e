"""The one interface every dataset reader produces: a ``Sequence`` of frame paths, boxes and visibility.

Boxes are image ``xywh`` in pixels (see ``ct_ray.boxes``). A frame whose ground truth is unknown (GOT-10k test after
frame 0, a UAV123 frame with an absent target) has a NaN row. ``visible`` is the dataset's own visibility
(LaSOT: not fully occluded and not out of view; GOT-10k: not absent) and false for unknown or invalid boxes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from ct_ray.boxes import is_valid_xywh
from ct_ray.errors import MissingFileError, UserError


class DatasetFormatError(UserError, ValueError):
    """A dataset file that is missing or malformed; the message names the file (and line)."""


class MissingDataError(MissingFileError, DatasetFormatError):
    """A dataset root, annotation file or frame that does not exist."""


class FrameReadError(UserError, OSError):
    """A frame that cannot be read or decoded; the message names the file."""


def read_frame(path: str | os.PathLike) -> np.ndarray:
    """An image file as an RGB uint8 array (H, W, 3)."""
    data = np.fromfile(path, dtype=np.uint8) if os.path.isfile(path) else None
    if data is None:
        raise FrameReadError(f"frame not found: {path}")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise FrameReadError(f"cannot decode frame: {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


@dataclass
class Sequence:
    """One annotated video (or, for image datasets such as COCO, one object in one image)."""

    name: str
    dataset: str
    frames: list[str]
    boxes: np.ndarray
    visible: np.ndarray
    attributes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        self.visible = np.asarray(self.visible, dtype=bool).reshape(-1)
        if not len(self.frames) == len(self.boxes) == len(self.visible):
            raise DatasetFormatError(f"sequence {self.name}: {len(self.frames)} frames, {len(self.boxes)} boxes, "
                                     f"{len(self.visible)} visibility flags")

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def valid(self) -> np.ndarray:
        """Frames usable for training: visible, with a finite box of positive size."""
        return self.visible & is_valid_xywh(self.boxes)

    def read_frame(self, index: int) -> np.ndarray:
        return read_frame(self.frames[index])


@dataclass
class DatasetIndex:
    """The sequences a reader found, and the ones it skipped (name -> reason)."""

    dataset: str
    root: str
    sequences: list[Sequence]
    skipped: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.sequences)


DatasetReader = Callable[..., DatasetIndex]
DATASETS: dict[str, DatasetReader] = {}


def register_dataset(name: str) -> Callable[[DatasetReader], DatasetReader]:
    """Registers ``reader(root, split=None) -> DatasetIndex`` under ``name`` (used as ``name:PATH`` on the CLI)."""

    def decorate(reader: DatasetReader) -> DatasetReader:
        if name in DATASETS:
            raise ValueError(f"dataset kind {name!r} is already registered")
        DATASETS[name] = reader
        return reader

    return decorate


def parse_dataset_spec(spec: str) -> tuple[str, Path]:
    """``"lasot:/data/LaSOT"`` -> ("lasot", Path("/data/LaSOT")); a root given as a store URI
    (``lasot:s3://bucket/LaSOT``) is fetched once per node into the local cache (``ct_ray.fileio.fetch``)."""
    kind, sep, path = spec.partition(":")
    if sep and "://" in path and kind in DATASETS:
        from ct_ray.fileio import fetch

        return kind, fetch(path)
    if not sep or not path:
        raise DatasetFormatError(f"dataset spec {spec!r} must be KIND:PATH with KIND one of {sorted(DATASETS)}")
    if kind not in DATASETS:
        raise DatasetFormatError(f"unknown dataset kind {kind!r} in {spec!r}; known: {sorted(DATASETS)}")
    return kind, Path(path)


def load_dataset(spec: str, split: str | None = None) -> DatasetIndex:
    """Reads the dataset named by ``KIND:PATH``."""
    kind, root = parse_dataset_spec(spec)
    if not root.exists():
        raise MissingDataError(f"{kind} dataset root not found: {root}")
    return DATASETS[kind](root, split=split)
