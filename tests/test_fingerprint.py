"""Fingerprints of a study's data (ct_ray/data/fingerprint.py): what changes them, and the embedded presets' values."""
import shutil
from pathlib import Path

import numpy as np
import pytest

from ct_ray.data import load_dataset
from ct_ray.data.augment import AugmentConfig
from ct_ray.data.fingerprint import sequences_digest, training_samples_digest
from ct_ray.data.pairs import PairSamplingConfig
from ct_ray.data.samples import JitterConfig
from ct_ray.data.sources import StreamSource
from ct_ray.data.stream import StreamConfig
from ct_ray.data.synth import generate_benchmark


def test_the_sequences_digest_follows_every_frame_byte_and_box(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    generate_benchmark(a, sequences=3, frames=4, seed=0, frame_size=(64, 96), test_fraction=1.0)
    shutil.copytree(a, b)
    digest = sequences_digest(load_dataset(f"synthetic:{a}", "test"))
    assert len(digest) == 64 and digest == sequences_digest(load_dataset(f"synthetic:{b}", "test"))
    frame = sorted(b.rglob("*.jpg"))[5]
    data = bytearray(frame.read_bytes())
    data[-3] ^= 1  # one bit of one frame's entropy-coded data
    frame.write_bytes(bytes(data))
    changed = sequences_digest(load_dataset(f"synthetic:{b}", "test"))
    assert changed != digest
    frame.write_bytes(bytes(data[:-3]) + bytes([data[-3] ^ 1]) + bytes(data[-2:]))
    assert sequences_digest(load_dataset(f"synthetic:{b}", "test")) == digest
    truth = sorted(b.rglob("groundtruth.txt"))[0]
    lines = truth.read_text().splitlines()
    x, rest = lines[1].split(",", 1)
    truth.write_text("\n".join([lines[0], f"{int(x) + 1},{rest}", *lines[2:]]) + "\n")
    assert sequences_digest(load_dataset(f"synthetic:{b}", "test")) not in (digest, changed)


def _stream_digest(seed: int, items: int = 2, quality: int = 90) -> str:
    stream = StreamConfig(height=96, width=128, frames=20, frames_per_sequence=4, pairs_per_sequence=6,
                          jpeg_quality=quality)
    sampling = PairSamplingConfig(template_size=32, search_size=64, context_factor=JitterConfig()
                                  .required_context_factor(4.0))
    return training_samples_digest(StreamSource(stream, sampling, seed), 64, seed, 32, 64, 4.0, JitterConfig(),
                                   AugmentConfig(), items=items)


def test_the_training_sample_probe_is_a_function_of_seed_items_and_rendering():
    digest = _stream_digest(0)
    assert digest == _stream_digest(0)
    assert len({digest, _stream_digest(1), _stream_digest(0, items=1), _stream_digest(0, quality=0)}) == 4


def test_the_small_presets_data_are_the_bytes_its_reference_runs_saw():
    """The probe of the `small` preset's training samples against the value its reference quickstarts recorded: a
    change to the rendering, the sampling or the crops (or a numpy / OpenCV build that renders otherwise) fails
    here, before anyone compares a new quickstart with the README's."""
    from ct_ray.studies.design import load_preset
    from ct_ray.studies.reference import load_reference
    from ct_ray.training.inputs import training_samples_probe

    for name in ("small", "full"):
        assert training_samples_probe(load_preset(name).teacher) == load_reference(name).data.training_samples
