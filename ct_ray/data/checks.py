"""Ground-truth boxes checked against their frames (plain numpy / OpenCV): nothing bad goes in silently.

Readers do not open images, so a box that lies outside its image, or has no area, passes them; ``box_report`` reads
one frame per sequence for its size and lists such boxes by sequence and frame, for ``ct-ray data shards``,
``score`` and ``eval`` to report (a box wholly outside its frame counts as a miss) and for the demo's initial box.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ct_ray.data.sequences import FrameReadError, Sequence


@dataclass
class BoxReport:
    """Frames (sequence name -> frame indices) whose ground-truth box lies wholly or partly outside the image.
    (Boxes with no area or NaN are the readers' business: they mark such frames invalid, and the metrics count them
    as misses.)"""

    outside: dict[str, list[int]] = field(default_factory=dict)
    partly_outside: dict[str, list[int]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.outside or self.partly_outside)

    def lines(self, limit: int = 4) -> list[str]:
        """One line per kind of problem, naming up to ``limit`` sequences and their frames (numbered from 1)."""
        out = []
        for what, found in (("lie wholly outside their frame", self.outside),
                            ("lie partly outside their frame", self.partly_outside)):
            if not found:
                continue
            total = sum(len(v) for v in found.values())
            shown = "; ".join(f"{name} frame {', '.join(str(i + 1) for i in frames[:5])}"
                              f"{' ...' if len(frames) > 5 else ''}" for name, frames in list(found.items())[:limit])
            more = f"; and {len(found) - limit} more sequences" if len(found) > limit else ""
            out.append(f"{total} ground-truth boxes {what}: {shown}{more}")
        return out


def frame_size(sequence: Sequence) -> tuple[int, int] | None:
    """(height, width) of the sequence's first frame, or None when it cannot be read."""
    try:
        frame = sequence.read_frame(0)
    except FrameReadError:
        return None
    return int(frame.shape[0]), int(frame.shape[1])


def box_problems(boxes: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Masks of finite, positive boxes that lie wholly / partly outside a ``height x width`` image."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    finite = np.isfinite(boxes).all(axis=1) & (boxes[:, 2] > 0) & (boxes[:, 3] > 0)
    x, y, w, h = boxes.T
    with np.errstate(invalid="ignore"):
        outside = finite & ((x >= width) | (y >= height) | (x + w <= 0) | (y + h <= 0))
        partly = finite & ~outside & ((x < 0) | (y < 0) | (x + w > width) | (y + h > height))
    return outside, partly


def box_report(sequences: list[Sequence]) -> BoxReport:
    report = BoxReport()
    for sequence in sequences:
        size = frame_size(sequence)
        if size is not None:
            outside, partly = box_problems(sequence.boxes, *size)
            if outside.any():
                report.outside[sequence.name] = np.flatnonzero(outside).tolist()
            if partly.any():
                report.partly_outside[sequence.name] = np.flatnonzero(partly).tolist()
    return report
