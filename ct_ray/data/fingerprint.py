"""Fingerprints of the data a study sees (plain numpy / OpenCV): SHA-256 digests that tell whether another machine
scores on the same test sequences and trains on the same samples, byte for byte, as the machine that wrote a
result.

Both the synthetic benchmark and the training stream are rendered on the machine that runs the study (numpy, OpenCV,
libjpeg). With the same numpy and OpenCV builds, an x86 CPU with AVX2 renders the same bytes as this project's
AVX-512 machine (checked there with OpenCV's AVX-512 kernels and numpy's x86-64-v4 ones switched off), but another
numpy or OpenCV build, or OpenCV without AVX2, may render other pixels. With equal fingerprints, a study that
differs from a reference differs through training (torch's floating-point kernels); with unequal ones, the data
moved too.
"""
from __future__ import annotations

import hashlib

import numpy as np

from ct_ray.data.augment import AugmentConfig
from ct_ray.data.samples import JitterConfig, sample_pairs
from ct_ray.data.sequences import DatasetIndex
from ct_ray.data.sources import TrainingSource

PROBE_ITEMS = 4
"""Work items (stream: sequences) the training-sample probe draws."""


def _update_array(digest, array: np.ndarray) -> None:
    array = np.ascontiguousarray(array)
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())


def sequences_digest(index: DatasetIndex) -> str:
    """SHA-256 over every sequence of ``index`` in name order: its name, the bytes of each frame file, its boxes and
    visibility flags (what an evaluation reads)."""
    digest = hashlib.sha256()
    for sequence in sorted(index.sequences, key=lambda s: s.name):
        digest.update(sequence.name.encode() + b"\0")
        for frame in sequence.frames:
            with open(frame, "rb") as handle:
                digest.update(handle.read())
        _update_array(digest, sequence.boxes)
        _update_array(digest, sequence.visible)
    return digest.hexdigest()


def training_samples_digest(source: TrainingSource, rows: int, seed: int, template_size: int, search_size: int,
                            search_factor: float, jitter: JitterConfig, augment: AugmentConfig,
                            items: int = PROBE_ITEMS, epoch: int = 1) -> str:
    """SHA-256 of the samples (template, search crop, box) of the first ``items`` work items of ``epoch`` (one
    worker, ``rows`` pairs per epoch), drawn as a training worker draws them (``sample_pairs``), before the shuffle
    buffer."""
    digest = hashlib.sha256()
    for item in source.items(epoch, 0, 1, rows)[:items]:
        samples, _ = sample_pairs(source.load(item), seed, epoch, template_size, search_size, search_factor,
                                  jitter, augment)
        for key in ("pair_index", "template", "search", "search_box"):
            _update_array(digest, samples[key])
    return digest.hexdigest()
