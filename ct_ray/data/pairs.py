"""Template/search pair sampling the OSTrack way (METHOD.md section 6), with the project's one crop function.

From one sequence: a template frame where the target is visible and a later search frame where it is visible, at
most ``max_gap`` frames away (the gap widens by ``gap_increase`` per failed try). Image datasets (one-frame
sequences, e.g. COCO) give two views of the same frame. The search box is jittered before cropping (size x
exp(N(0,1) * 0.25) per axis, centre moved by sqrt(w'h') * 3 * (U(0,1) - 0.5) per axis); the template is not.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Sequence as Seq

import numpy as np

from ct_ray.crop import crop, crop_window
from ct_ray.data.sequences import DatasetIndex, Sequence


@dataclass(frozen=True)
class PairSamplingConfig:
    max_gap: int = 200
    gap_increase: int = 5
    max_tries: int = 100
    template_factor: float = 2.0
    template_size: int = 128
    search_factor: float = 4.0
    search_size: int = 256
    center_jitter: float = 3.0
    scale_jitter: float = 0.25
    min_visible_frames: int = 2

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"pair sampling: {f.name} must be a non-negative number, got {value!r}")
        for name in ("max_gap", "max_tries", "template_size", "search_size", "min_visible_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"pair sampling: {name} must be >= 1, got {getattr(self, name)}")
        if self.template_factor <= 0 or self.search_factor <= 0:
            raise ValueError("pair sampling: context factors must be > 0")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PairRecord:
    """One training pair: RGB uint8 crops and the target box in each crop's pixel coordinates (xywh)."""

    template: np.ndarray
    search: np.ndarray
    template_box: np.ndarray
    search_box: np.ndarray
    search_visible: bool
    dataset: str
    sequence: str
    template_frame: int
    search_frame: int


def jitter_box(box_xywh: np.ndarray, rng: np.random.Generator, center_jitter: float,
               scale_jitter: float) -> np.ndarray:
    """OSTrack's search-region jitter of an xywh box."""
    x, y, w, h = (float(v) for v in box_xywh)
    size = np.array([w, h]) * np.exp(rng.standard_normal(2) * scale_jitter)
    max_offset = np.sqrt(size.prod()) * center_jitter
    centre = np.array([x + 0.5 * w, y + 0.5 * h]) + max_offset * (rng.random(2) - 0.5)
    return np.array([centre[0] - 0.5 * size[0], centre[1] - 0.5 * size[1], size[0], size[1]])


def _visible_ids(valid: np.ndarray, start: int, stop: int) -> np.ndarray:
    start, stop = max(start, 0), min(stop, len(valid))
    if start >= stop:
        return np.empty(0, dtype=np.int64)
    return start + np.flatnonzero(valid[start:stop])


def sample_frame_ids(sequence: Sequence, rng: np.random.Generator,
                     config: PairSamplingConfig) -> tuple[int, int] | None:
    """(template frame, search frame), or None when the sequence has too few usable frames."""
    valid = sequence.valid
    if len(sequence) == 1:
        return (0, 0) if valid[0] else None
    if valid.sum() < config.min_visible_frames:
        return None
    candidates = np.flatnonzero(valid[:-1])
    if not len(candidates):
        return None
    gap_increase = 0
    for _ in range(config.max_tries):
        template = int(rng.choice(candidates))
        search_ids = _visible_ids(valid, template + 1, template + 1 + config.max_gap + gap_increase)
        if len(search_ids):
            return template, int(rng.choice(search_ids))
        gap_increase += config.gap_increase
    return None


def make_pair(sequence: Sequence, template_id: int, search_id: int, rng: np.random.Generator,
              config: PairSamplingConfig, frames: dict[int, np.ndarray] | None = None) -> PairRecord:
    """Crops the template (no jitter) and the search region (jittered box) and maps the GT boxes into them."""
    frames = frames if frames is not None else {}
    for index in {template_id, search_id}:
        if index not in frames:
            frames[index] = sequence.read_frame(index)
    template_box = sequence.boxes[template_id]
    t_window = crop_window(template_box, config.template_factor, config.template_size)
    search_box = sequence.boxes[search_id]
    jittered = jitter_box(search_box, rng, config.center_jitter, config.scale_jitter)
    s_window = crop_window(jittered, config.search_factor, config.search_size)
    return PairRecord(
        template=crop(frames[template_id], t_window),
        search=crop(frames[search_id], s_window),
        template_box=t_window.to_crop(template_box),
        search_box=s_window.to_crop(search_box),
        search_visible=bool(sequence.valid[search_id]),
        dataset=sequence.dataset,
        sequence=sequence.name,
        template_frame=int(template_id),
        search_frame=int(search_id),
    )


class PairSampler:
    """Draws pairs from several datasets by their ratios (a dataset first, then a sequence uniformly)."""

    def __init__(self, datasets: Seq[DatasetIndex], ratios: Seq[float] | None = None,
                 config: PairSamplingConfig = PairSamplingConfig()) -> None:
        usable = [d for d in datasets if len(d.sequences)]
        if not usable:
            raise ValueError("pair sampling: no dataset has a usable sequence")
        ratios = list(ratios) if ratios is not None else [1.0] * len(datasets)
        if len(ratios) != len(datasets) or any(r < 0 for r in ratios):
            raise ValueError(f"pair sampling: need one non-negative ratio per dataset, got {ratios}")
        kept = [(d, r) for d, r in zip(datasets, ratios) if len(d.sequences) and r > 0]
        if not kept:
            raise ValueError("pair sampling: every dataset with sequences has ratio 0")
        self.datasets = [d for d, _ in kept]
        weights = np.array([r for _, r in kept], dtype=np.float64)
        self.probabilities = weights / weights.sum()
        self.config = config

    def sample(self, rng: np.random.Generator, max_sequence_tries: int = 1000) -> PairRecord:
        for _ in range(max_sequence_tries):
            dataset = self.datasets[int(rng.choice(len(self.datasets), p=self.probabilities))]
            sequence = dataset.sequences[int(rng.integers(len(dataset.sequences)))]
            ids = sample_frame_ids(sequence, rng, self.config)
            if ids is None:
                continue
            pair = make_pair(sequence, ids[0], ids[1], rng, self.config)
            if pair_box_ok(pair.search_box, self.config.search_size):
                return pair
        raise RuntimeError(f"pair sampling: no valid pair after {max_sequence_tries} tries; the datasets have too "
                           "few visible frames")


def pair_box_ok(box_xywh: np.ndarray, crop_size: int) -> bool:
    """A crop-coordinate box that training can use: finite, positive size, overlapping the crop."""
    x, y, w, h = (float(v) for v in box_xywh)
    if not np.isfinite([x, y, w, h]).all() or w <= 0 or h <= 0:
        return False
    return x < crop_size and y < crop_size and x + w > 0 and y + h > 0
