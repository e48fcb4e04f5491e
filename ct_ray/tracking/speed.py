"""Speed and size of a tracker: parameters, FLOPs, network-only latency and whole-tracking-step latency (batch 1).

Published tracker speeds are network-only; the tracking step adds the crop, the host-to-device copy, the Hann
window and the decode. Three latencies are measured after a warm-up: ``forward_ms``, PyTorch eager's whole forward
(template and search crops, what papers report); ``network_ms``, the runtime's per-frame network call on cached
template tokens (what the tracker runs every frame); ``tracking_step_ms``, the whole tracking step through that
runtime. The device, threads, dtype, runtime and library versions stand beside them, so that a figure can be
compared with another.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from ct_ray.models.one_stream import OneStreamTracker, count_parameters
from ct_ray.tracking.online import OnlineTracker
from ct_ray.tracking.runtimes import PreparedRuntime, RuntimeSpec, prepare_runtime


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
    runtime: str = "torch"
    network_ms: float = 0.0
    libraries: str = ""

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


def library_versions(runtime: RuntimeSpec) -> str:
    """``torch x``; with ONNX Runtime also ``onnxruntime y``."""
    versions = [f"torch {torch.__version__}"]
    if runtime.name == "onnxruntime":
        import onnxruntime

        versions.append(f"onnxruntime {onnxruntime.__version__}")
    return ", ".join(versions)


def profile_tracker(model: OneStreamTracker, device: str | torch.device = "cpu", iterations: int = 30,
                    warmup: int = 5, autocast_dtype: torch.dtype | None = None,
                    runtime: PreparedRuntime | RuntimeSpec | str | None = None) -> SpeedProfile:
    """Parameters, FLOPs and median latencies at batch 1: PyTorch eager's forward, and the network call and whole
    tracking step of ``runtime`` (default PyTorch eager; see the module docstring)."""
    device = torch.device(device)
    prepared = runtime if isinstance(runtime, PreparedRuntime) else prepare_runtime(model, runtime or "torch")
    spec = prepared.spec
    model = model.to(device).eval()
    flops = count_flops(model)
    template, search = _dummy_inputs(model, device)
    autocast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
                and spec.name != "onnxruntime" else torch.autocast(device.type, enabled=False))

    def forward():
        with torch.inference_mode(), autocast:
            model(template, search)

    forward_ms = _median_ms(forward, device, iterations, warmup)
    network = prepared.open(model, device)
    with torch.inference_mode(), autocast:
        tokens = network.embed_template(template.to(network.device))
    search_input = search.to(network.device)

    def network_call():
        with torch.inference_mode(), autocast:
            network.track(tokens, search_input)

    network_ms = _median_ms(network_call, device, iterations, warmup)
    frames, boxes = _moving_target_frames(iterations + warmup + 1)
    tracker = OnlineTracker(model, device=device, runtime=network)
    tracker.initialize(frames[0], boxes[0])
    cursor = iter(frames[1:])

    def step():
        with autocast:
            tracker.track(next(cursor))

    step_ms = _median_ms(step, device, iterations, warmup)
    dtype = "float32" if spec.name == "onnxruntime" else str(autocast_dtype or next(model.parameters()).dtype)
    if spec.int8:
        dtype = "int8 weights (dynamic)"
    return SpeedProfile(params=count_parameters(model), flops=flops, forward_ms=forward_ms,
                        tracking_step_ms=step_ms, device=_device_name(device), threads=torch.get_num_threads(),
                        dtype=dtype.replace("torch.", ""), torch_version=torch.__version__, runtime=spec.label,
                        network_ms=network_ms, libraries=library_versions(spec))


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"
