"""The GPU paths of the core (skipped without CUDA): a bf16-autocast replacement-training step and the online
tracker on the GPU agree with float32 on the CPU."""
import numpy as np
import pytest
import torch

from ct_ray.compress import PlanSampler, ReplacementModel, StageDivision, build_student
from ct_ray.compress.losses import TrackingLoss
from ct_ray.models import OneStreamTracker, TrackerConfig
from ct_ray.tracking import OnlineTracker, run_sequence
from ct_ray.training.experiment import RunKind
from ct_ray.training.step import TrainStep

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CONFIG = TrackerConfig(embed_dim=64, depth=4, num_heads=4, head_channels=32, template_size=64, search_size=128)


def _batch(device, size=8):
    generator = torch.Generator().manual_seed(0)
    return {"template": torch.randn(size, 3, 64, 64, generator=generator).to(device),
            "search": torch.randn(size, 3, 128, 128, generator=generator).to(device),
            "search_box": torch.tensor([[0.45, 0.5, 0.25, 0.3]]).repeat(size, 1).to(device)}


def _step(device, dtype):
    torch.manual_seed(0)
    teacher = OneStreamTracker(CONFIG)
    division = StageDivision.uniform(4, 2)
    model = ReplacementModel(teacher, build_student(teacher, division), division).to(device).train()
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4)
    step = TrainStep(model, RunKind.COMPRESSTRACKER, TrackingLoss(), optimizer, PlanSampler(2, seed=0), grad_clip=1.0,
                     autocast_dtype=dtype)
    terms = [step(_batch(device), i, 0.5)[0] for i in range(3)]
    return {name: [float(t[name]) for t in terms] for name in ("total", "giou", "l1", "focal", "guidance", "mimicking")}


def test_bf16_replacement_step_on_gpu_matches_float32_on_cpu():
    gpu = _step(torch.device("cuda"), torch.bfloat16)
    cpu = _step(torch.device("cpu"), None)
    for name, values in gpu.items():
        assert all(np.isfinite(values)), name
        # guidance compares the student's decoded boxes with the teacher's: an argmax near-tie of these random
        # networks may pick another cell under bf16, so only its size is compared
        rel = 0.3 if name == "guidance" else 0.05
        assert values[0] == pytest.approx(cpu[name][0], rel=rel, abs=0.02), name


def test_online_tracker_on_gpu_matches_cpu():
    torch.manual_seed(0)
    model = OneStreamTracker(CONFIG).eval()
    batch = _batch("cpu", 2)
    with torch.no_grad():
        cpu_out = model(batch["template"], batch["search"])
        gpu_out = model.cuda()(batch["template"].cuda(), batch["search"].cuda())
    for key in ("score_map", "size_map", "offset_map"):
        assert torch.allclose(gpu_out[key].cpu(), cpu_out[key], atol=2e-3), key
    model.cpu()
    rng = np.random.default_rng(0)
    frames = []
    for i in range(6):
        frame = rng.integers(0, 60, (120, 160, 3), dtype=np.uint8)
        frame[40 + i:70 + i, 50 + 2 * i:90 + 2 * i] = (220, 40, 40)
        frames.append(frame)
    init = np.array([50.0, 40.0, 40.0, 30.0])
    cpu_boxes, _ = run_sequence(OnlineTracker(model, device="cpu"), frames, init)
    gpu_boxes, _ = run_sequence(OnlineTracker(model, device="cuda"), frames, init)
    assert gpu_boxes.shape == (6, 4) and np.isfinite(gpu_boxes).all() and (gpu_boxes[0] == init).all()
    # the same argmax cell on both devices gives the same box; a near-tie may pick a neighbouring cell
    assert np.median(np.abs(gpu_boxes - cpu_boxes)) < 0.5
