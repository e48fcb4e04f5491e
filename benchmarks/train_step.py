"""Time one replacement-training step: teacher forward (no_grad), mixed-network forward, every loss term, backward
and the AdamW step with grad-norm clipping, for a 12-block teacher on 256 / 128 px crops at p = 0.5.

Prints one JSON line with ``step_ms`` and ``samples_per_s``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from ct_ray.compress import PlanSampler, ReplacementModel, StageDivision, build_student, replacement_losses
from ct_ray.compress.losses import TrackingLoss
from ct_ray.models import OneStreamTracker, TrackerConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--embed-dim", type=int, default=192)
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--student-depth", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    teacher = OneStreamTracker(TrackerConfig(embed_dim=args.embed_dim, num_heads=args.heads, depth=12,
                                             head_channels=min(256, args.embed_dim)))
    division = StageDivision.uniform(12, args.student_depth)
    model = ReplacementModel(teacher, build_student(teacher, division), division).to(device).train()
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=4e-5, weight_decay=1e-4)
    loss = TrackingLoss()
    sampler = PlanSampler(division.num_stages, seed=0)
    template = torch.randn(args.batch, 3, 128, 128, device=device)
    search = torch.randn(args.batch, 3, 256, 256, device=device)
    boxes = torch.tensor([[0.5, 0.5, 0.25, 0.3]], device=device).repeat(args.batch, 1)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step(index: int) -> None:
        with autocast:
            terms, _ = replacement_losses(model, loss, template, search, boxes, sampler.sample(index, 0.5), index)
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), 0.1)
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for i in range(args.warmup):
        step(i)
    times = []
    for i in range(args.warmup, args.warmup + args.steps):
        start = time.perf_counter()
        step(i)
        times.append((time.perf_counter() - start) * 1000.0)
    step_ms = statistics.median(times)
    print(json.dumps({"step_ms": round(step_ms, 2), "samples_per_s": round(args.batch * 1000.0 / step_ms, 2),
                      "batch": args.batch, "embed_dim": args.embed_dim, "student_depth": args.student_depth,
                      "device": str(device), "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
