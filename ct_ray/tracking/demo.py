"""A demo video: the online tracker's box drawn on every frame (OpenCV), so a person can see the tracker work.

Frames come from a video file (with the first frame's box given) or a sequence folder (``img/`` frames and
``groundtruth.txt``: the first line initialises the tracker and the ground truth is drawn beside the prediction).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from ct_ray.data.checks import box_problems
from ct_ray.data.readers import read_box_file
from ct_ray.errors import InputError
from ct_ray.data.sequences import FrameReadError, read_frame
from ct_ray.fileio import atomic_path
from ct_ray.models.one_stream import OneStreamTracker
from ct_ray.tracking import OnlineTracker

PREDICTION_COLOUR = (0, 255, 0)
GROUND_TRUTH_COLOUR = (255, 64, 64)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def video_frames(path: str | os.PathLike) -> Iterator[np.ndarray]:
    """RGB frames of a video file."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise FrameReadError(f"cannot open video: {path}")
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
        capture.release()


def sequence_frames(folder: str | os.PathLike) -> tuple[list[Path], np.ndarray | None]:
    """Frame paths of a sequence folder (``img/`` or the folder itself) and its ground truth, if any."""
    folder = Path(folder)
    images = folder / "img" if (folder / "img").is_dir() else folder
    paths = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FrameReadError(f"no frames ({', '.join(IMAGE_SUFFIXES)}) in {images}")
    truth = folder / "groundtruth.txt"
    return paths, read_box_file(truth, allow_nan=True) if truth.is_file() else None


def check_initial_box(box, shape: tuple[int, ...]) -> None:
    """The first frame's box must show the target: finite, of positive size, overlapping the ``(H, W)`` frame."""
    values = np.asarray(box, dtype=np.float64).reshape(-1)
    if values.shape != (4,) or not np.isfinite(values).all() or values[2] <= 0 or values[3] <= 0:
        raise InputError(f"the initial box {list(values)} is not a box with a positive width and height")
    outside, _ = box_problems(values[None], shape[0], shape[1])
    if outside[0]:
        raise InputError(f"the initial box (x, y, w, h) = {tuple(float(v) for v in values)} lies outside the first "
                         f"frame ({shape[1]} x {shape[0]} px)")


def _draw(frame: np.ndarray, box, colour, label: str) -> None:
    x, y, w, h = (int(round(v)) for v in box)
    cv2.rectangle(frame, (x, y), (x + w, y + h), colour, 2)
    cv2.putText(frame, label, (x, max(12, y - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA)


def render_demo(model: OneStreamTracker, frames, init_box, out: str | os.PathLike, fps: float = 25.0,
                ground_truth: np.ndarray | None = None, device: str = "cpu") -> dict:
    """Tracks ``frames`` (RGB arrays) from ``init_box`` and writes the annotated video to ``out`` (mp4)."""
    tracker = OnlineTracker(model, device=device)
    writer = None
    count = 0
    with atomic_path(out) as tmp:
        target = tmp.with_suffix(".mp4")
        try:
            for index, frame in enumerate(frames):
                if index == 0:
                    check_initial_box(init_box, frame.shape)
                    tracker.initialize(frame, init_box)
                    box = np.asarray(init_box, dtype=np.float64)
                else:
                    box = tracker.track(frame)
                canvas = np.ascontiguousarray(frame[..., ::-1])
                if ground_truth is not None and index < len(ground_truth) and np.isfinite(ground_truth[index]).all():
                    _draw(canvas, ground_truth[index], GROUND_TRUTH_COLOUR[::-1], "GT")
                _draw(canvas, box, PREDICTION_COLOUR[::-1], "ct-ray")
                if writer is None:
                    height, width = canvas.shape[:2]
                    writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
                    if not writer.isOpened():
                        raise OSError(f"OpenCV cannot write an mp4 video to {out}")
                writer.write(canvas)
                count += 1
        finally:
            if writer is not None:
                writer.release()
            if count == 0 or writer is None:
                target.unlink(missing_ok=True)
        if count == 0:
            raise FrameReadError("no frame to track")
        os.replace(target, tmp)
    return {"frames": count, "out": str(out)}


def render_sequence_demo(model: OneStreamTracker, folder: str | os.PathLike, out: str | os.PathLike,
                         init_box=None, fps: float = 25.0, device: str = "cpu") -> dict:
    paths, truth = sequence_frames(folder)
    if init_box is None:
        if truth is None or not np.isfinite(truth[0]).all():
            raise InputError(f"{folder}: no groundtruth.txt first box; give --init-box x,y,w,h")
        init_box = truth[0]
    return render_demo(model, (read_frame(p) for p in paths), init_box, out, fps, truth, device)
