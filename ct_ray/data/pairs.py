"""Template/search pair sampling the OSTrack way (METHOD.md section 6), with the project's one crop function.

From one sequence: a template frame where the target is visible and a later search frame where it is visible, at
most ``max_gap`` frames away (the gap widens by ``gap_increase`` per failed try). Image datasets (one-frame
sequences, e.g. COCO) give two views of the same frame. A pair stores what sample-time sampling needs
(``ct_ray.data.samples``): the template crop (no jitter) and a *context* crop around the search frame's box, wide
enough for every search window the configured jitter can draw; the search window itself is drawn when the pair is
read. A frame whose box lies wholly outside the image is never used (it would give an all-black crop labelled
visible): the sampler draws another pair and counts the skip by sequence and frame.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from typing import Sequence as Seq

import numpy as np

from ct_ray.crop import crop, crop_window
from ct_ray.data.samples import JitterConfig
from ct_ray.data.sequences import DatasetIndex, Sequence


@dataclass(frozen=True)
class PairSamplingConfig:
    """How pairs are drawn and what a stored pair holds.

    ``template_factor`` / ``template_size``: the template crop. ``search_factor`` / ``search_size``: the search crop
    the pairs are meant for (it sets the context's resolution: ``context_size = search_size * context_factor /
    search_factor``). ``context_factor`` must hold every window of ``jitter``
    (``JitterConfig.required_context_factor``); a pair set built for one jitter serves any smaller one.
    """

    max_gap: int = 200
    gap_increase: int = 5
    max_tries: int = 100
    min_visible_frames: int = 2
    template_factor: float = 2.0
    template_size: int = 128
    search_factor: float = 4.0
    search_size: int = 256
    context_factor: float = 12.0
    jitter: JitterConfig = field(default_factory=JitterConfig)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "jitter":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"pair sampling: {f.name} must be a non-negative number, got {value!r}")
        for name in ("max_gap", "max_tries", "template_size", "search_size", "min_visible_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"pair sampling: {name} must be >= 1, got {getattr(self, name)}")
        if self.template_factor <= 0 or self.search_factor <= 0:
            raise ValueError("pair sampling: context factors must be > 0")
        if isinstance(self.jitter, dict):
            object.__setattr__(self, "jitter", JitterConfig(**self.jitter))
        needed = self.jitter.required_context_factor(self.search_factor)
        if self.context_factor < needed:
            raise ValueError(f"pair sampling: context_factor {self.context_factor:g} is too small for the jitter: "
                             f"(search_factor {self.search_factor:g} + center_jitter "
                             f"{self.jitter.center_jitter:g}) x max_scale_change {self.jitter.max_scale_change:g} "
                             f"= {needed:.2f}")

    @property
    def context_size(self) -> int:
        return int(round(self.search_size * self.context_factor / self.search_factor))

    def to_dict(self) -> dict:
        return {**asdict(self), "context_size": self.context_size}

    @classmethod
    def from_dict(cls, values: dict) -> "PairSamplingConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass
class PairRecord:
    """One stored pair: the template crop and the search frame's context crop (RGB uint8), the target box in each
    crop's pixel coordinates (xywh), and where they come from."""

    template: np.ndarray
    context: np.ndarray
    template_box: np.ndarray
    context_box: np.ndarray
    search_visible: bool
    dataset: str
    sequence: str
    template_frame: int
    search_frame: int


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


def box_in_frame(box_xywh: np.ndarray, shape: tuple[int, ...]) -> bool:
    """Whether an image box overlaps its ``(H, W, ...)`` frame (a box wholly outside it shows nothing)."""
    x, y, w, h = (float(v) for v in box_xywh)
    return x < shape[1] and y < shape[0] and x + w > 0 and y + h > 0


def crop_pair(template_frame: np.ndarray, template_box: np.ndarray, search_frame: np.ndarray,
              search_box: np.ndarray, config: PairSamplingConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                          np.ndarray]:
    """The template crop and the context crop of a pair of frames, with the boxes in their pixels."""
    t_window = crop_window(template_box, config.template_factor, config.template_size)
    c_window = crop_window(search_box, config.context_factor, config.context_size)
    return (crop(template_frame, t_window), crop(search_frame, c_window), t_window.to_crop(template_box),
            c_window.to_crop(search_box))


def make_pair(sequence: Sequence, template_id: int, search_id: int, config: PairSamplingConfig,
              frames: dict[int, np.ndarray] | None = None) -> PairRecord:
    """Crops the template and the search frame's context and maps the GT boxes into them."""
    frames = frames if frames is not None else {}
    for index in {template_id, search_id}:
        if index not in frames:
            frames[index] = sequence.read_frame(index)
    template, context, template_box, context_box = crop_pair(
        frames[template_id], sequence.boxes[template_id], frames[search_id], sequence.boxes[search_id], config)
    return PairRecord(template=template, context=context, template_box=template_box, context_box=context_box,
                      search_visible=bool(sequence.valid[search_id]), dataset=sequence.dataset,
                      sequence=sequence.name, template_frame=int(template_id), search_frame=int(search_id))


class PairSampler:
    """Draws pairs from several datasets by their ratios (a dataset first, then a sequence uniformly).

    ``skipped`` counts the frames passed over because their box lies outside the image, by ``(sequence, frame)``.
    """

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
        self.skipped: Counter = Counter()

    def sample(self, rng: np.random.Generator, max_sequence_tries: int = 1000) -> PairRecord:
        for _ in range(max_sequence_tries):
            dataset = self.datasets[int(rng.choice(len(self.datasets), p=self.probabilities))]
            sequence = dataset.sequences[int(rng.integers(len(dataset.sequences)))]
            ids = sample_frame_ids(sequence, rng, self.config)
            if ids is None:
                continue
            frames = {i: sequence.read_frame(i) for i in set(ids)}
            outside = [i for i in set(ids) if not box_in_frame(sequence.boxes[i], frames[i].shape)]
            if outside:
                for index in outside:
                    self.skipped[(f"{sequence.dataset}:{sequence.name}", int(index))] += 1
                continue
            return make_pair(sequence, ids[0], ids[1], self.config, frames)
        raise RuntimeError(f"pair sampling: no valid pair after {max_sequence_tries} tries; the datasets have too "
                           "few visible frames inside their images")
