"""An endless synthetic training stream (plain numpy / OpenCV): pairs drawn from new sequences, no files written.

A chunk ``(epoch, rank, chunk)`` simulates one new sequence of the synthetic benchmark's generator
(``ct_ray.data.synth``) from a generator seeded by ``(run seed, epoch, rank, chunk)``, renders
``frames_per_sequence`` frames of it spread over the sequence (each passed through JPEG like the benchmark's files),
and makes ``pairs_per_sequence`` template/search pairs among the frames where the target is visible (template
before search, as OSTrack's causal sampling). A pair is stored like a shard row (``ct_ray.data.pairs``): the template
crop and the search frame's context crop, so the sample-time geometry and augmentation are the same for both
sources. The benchmark's test and held-out sequences are other seeds of the generator: the stream never draws them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from ct_ray.data.pairs import PairSamplingConfig, box_in_frame, crop_pair
from ct_ray.data.synth import PRESETS, simulate_scene

STREAM_KEY = 7  # separates the stream's generators from the benchmark's ([seed, 0, index])


@dataclass(frozen=True)
class StreamConfig:
    """The sequences the stream draws: generator preset and frame size (those of the benchmark it trains for),
    simulated length, and how many frames and pairs each sequence gives."""

    preset: str = "standard"
    height: int = 240
    width: int = 320
    frames: int = 100
    frames_per_sequence: int = 8
    pairs_per_sequence: int = 16
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"stream.preset {self.preset!r} is not one of {sorted(PRESETS)}")
        if self.frames < 2 or self.frames_per_sequence < 2 or self.pairs_per_sequence < 1:
            raise ValueError("stream: frames and frames_per_sequence must be >= 2, pairs_per_sequence >= 1")
        if self.frames_per_sequence > self.frames:
            raise ValueError(f"stream.frames_per_sequence ({self.frames_per_sequence}) exceeds stream.frames "
                             f"({self.frames})")
        if not 0 <= self.jpeg_quality <= 100:
            raise ValueError(f"stream.jpeg_quality must be in 0..100 (0: no JPEG), got {self.jpeg_quality}")

    def to_dict(self) -> dict:
        return asdict(self)


def _jpeg(frame: np.ndarray, quality: int) -> np.ndarray:
    if not quality:
        return frame
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def stream_pairs(config: StreamConfig, sampling: PairSamplingConfig, seed: int, epoch: int, rank: int, chunk: int,
                 first_index: int) -> dict[str, np.ndarray]:
    """The rows of one chunk: ``pair_index`` (from ``first_index``), ``template`` and ``context`` (RGB uint8
    arrays), ``context_box``. Fewer than ``pairs_per_sequence`` rows when the target is visible in fewer than two
    of the rendered frames (rare; the next chunk is another sequence)."""
    rng = np.random.default_rng([seed, STREAM_KEY, epoch, rank, chunk])
    scene = simulate_scene(rng, config.preset, config.frames, (config.height, config.width))
    picks = np.sort(rng.choice(config.frames, size=config.frames_per_sequence, replace=False))
    frames = {int(t): _jpeg(scene.render(int(t)), config.jpeg_quality) for t in picks}
    boxes, full, out, _ = scene.truth(picks)
    usable = [(int(t), box.astype(np.float64)) for t, box, f, o in zip(picks, boxes, full, out)
              if not f and not o and box_in_frame(box, frames[int(t)].shape)]
    pairs = [(a, b) for i, a in enumerate(usable) for b in usable[i + 1:]]
    rows: dict[str, list] = {"pair_index": [], "template": [], "context": [], "context_box": []}
    if pairs:
        chosen = rng.choice(len(pairs), size=config.pairs_per_sequence, replace=len(pairs) < config.pairs_per_sequence)
        for k, pick in enumerate(chosen):
            (t, t_box), (s, s_box) = pairs[int(pick)]
            template, context, _, context_box = crop_pair(frames[t], t_box, frames[s], s_box, sampling)
            rows["pair_index"].append(first_index + k)
            rows["template"].append(template)
            rows["context"].append(context)
            rows["context_box"].append(context_box)
    return {"pair_index": np.asarray(rows["pair_index"], dtype=np.int64),
            "template": _stack(rows["template"], sampling.template_size),
            "context": _stack(rows["context"], sampling.context_size),
            "context_box": np.asarray(rows["context_box"], dtype=np.float64).reshape(-1, 4)}


def _stack(images: list[np.ndarray], size: int) -> np.ndarray:
    return np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)


def write_stream_sequences(out, config: StreamConfig, seed: int, count: int, epoch: int = 1, rank: int = 0,
                           frames: int | None = None) -> Path:
    """The first ``count`` sequences the stream drew in ``epoch`` for ``rank`` (chunks 0, 1, ...), written as a
    LaSOT-format folder (``testing_set.txt`` lists them all): the scenes a run trained on, to measure how well it
    tracks what it saw against the test sequences it never saw. ``frames`` cuts each to its first frames (the test
    sequences' length, so that both AUCs are over sequences of one length); None writes them whole. Complete
    sequences already there are kept."""
    from ct_ray.data.synth import _iter_sequence, write_rendered
    from ct_ray.fileio import atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for chunk in range(count):
        rng = np.random.default_rng([seed, STREAM_KEY, epoch, rank, chunk])
        rendered = _iter_sequence(rng, config.preset, config.frames, (config.height, config.width), None, True)
        cls = rendered[1].scene.target.cls
        name = f"{cls}-e{epoch}r{rank}c{chunk:04d}"  # LaSOT layout: <class>/<class>-<id>
        names.append(name)
        if not (out / cls / name / "nlp.txt").is_file():
            write_rendered(out, name, rendered, keep=frames)
    atomic_write_text(out / "testing_set.txt", "".join(f"{n}\n" for n in names))
    atomic_write_text(out / "training_set.txt", "")
    return out
