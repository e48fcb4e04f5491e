"""Speed and size of a tracker: parameters, FLOPs, network-only latency and whole-tracking-step latency (batch 1).

Published tracker speeds are network-only; the tracking step adds the crop, the host-to-device copy, the Hann
window and the decode. Both are measured after a warm-up, with the device, threads, dtype and torch version beside
them so that a figure can be compared with another.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from ct_ray.models.one_stream import OneStreamTracker, count_parameters
from ct_ray.tracking import OnlineTracker


@dataclass(frozen=True)
class SpeedProfile:
    params: int
    flops: int
    forward_ms: float
    tracking_step_ms: float
    device: str
    threads: int
    dtype: str
    torch_version: str

    @property
    def forward_fps(self) -> float:
        return 1000.0 / self.forward_ms

    @property
    def tracking_fps(self) -> float:
        return 1000.0 / self.tracking_step_ms

    def to_dict(self) -> dict:
        return {**asdict(self), "forward_fps": self.forward_fps, "tracking_fps": self.tracking_fps}


def _dummy_inputs(model: OneStreamTracker, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    config = model.config
    return (torch.randn(1, 3, config.template_size, config.template_size, device=device),
            torch.randn(1, 3, config.search_size, config.search_size, device=device))


def count_flops(model: OneStreamTracker) -> int:
    """FLOPs of one forward at batch 1 (torch's flop counter; a multiply-add counts 2). Counted on the exact-math
    attention path, because the counter does not see inside fused CPU attention kernels."""
    device = next(model.parameters()).device
    template, search = _dummy_inputs(model, device)
    fused = [getattr(block.attn, "fused_attn", None) for block in model.blocks]
    model.set_fused_attention(False)
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(template, search)
    finally:
        for block, flag in zip(model.blocks, fused):
            if flag is not None:
                block.attn.fused_attn = flag
    return int(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(fn, device: torch.device, iterations: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def _moving_target_frames(count: int, height: int = 360, width: int = 480, seed: int = 0):
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    frames, boxes = [], []
    for i in range(count):
        frame = background.copy()
        x, y = 100 + 3 * (i % 40), 120 + 2 * (i % 30)
        frame[y:y + 50, x:x + 60] = (220, 40, 40)
        frames.append(frame)
        boxes.append((x, y, 60, 50))
    return frames, boxes


def profile_tracker(model: OneStreamTracker, device: str | torch.device = "cpu", iterations: int = 30,
                    warmup: int = 5, autocast_dtype: torch.dtype | None = None) -> SpeedProfile:
    """Parameters, FLOPs and median latencies (network forward; whole tracking step) at batch 1."""
    device = torch.device(device)
    model = model.to(device).eval()
    flops = count_flops(model)
    template, search = _dummy_inputs(model, device)
    autocast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else torch.autocast(device.type, enabled=False))

    def forward():
        with torch.inference_mode(), autocast:
            model(template, search)

    forward_ms = _median_ms(forward, device, iterations, warmup)
    frames, boxes = _moving_target_frames(iterations + warmup + 1)
    tracker = OnlineTracker(model, device=device)
    tracker.initialize(frames[0], boxes[0])
    cursor = iter(frames[1:])

    def step():
        with autocast:
            tracker.track(next(cursor))

    step_ms = _median_ms(step, device, iterations, warmup)
    dtype = str(autocast_dtype or next(model.parameters()).dtype).replace("torch.", "")
    return SpeedProfile(params=count_parameters(model), flops=flops, forward_ms=forward_ms,
                        tracking_step_ms=step_ms, device=_device_name(device), threads=torch.get_num_threads(),
                        dtype=dtype, torch_version=torch.__version__)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"
