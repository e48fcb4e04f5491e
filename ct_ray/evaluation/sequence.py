"""One-pass evaluation of a tracker on a sequence (plain PyTorch): the online tracker from the first GT box."""
from __future__ import annotations

import numpy as np
import torch

from ct_ray.boxes import is_valid_xywh
from ct_ray.data.sequences import Sequence
from ct_ray.models.one_stream import OneStreamTracker
from ct_ray.tracking import OnlineTracker, run_sequence
from ct_ray.tracking.runtimes import NetworkRuntime


def track_sequence(model: OneStreamTracker, sequence: Sequence, device: str | torch.device = "cpu",
                   runtime: NetworkRuntime | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (N, 4) xywh and seconds per frame of one pass over ``sequence``, initialised with its first box;
    ``runtime`` runs the network (default PyTorch eager on ``device``)."""
    if not len(sequence) or not is_valid_xywh(sequence.boxes[0]):
        raise ValueError(f"sequence {sequence.name}: the first frame has no valid box to initialise the tracker")
    tracker = OnlineTracker(model, device=device, runtime=runtime)
    frames = (sequence.read_frame(i) for i in range(len(sequence)))
    return run_sequence(tracker, frames, sequence.boxes[0])
