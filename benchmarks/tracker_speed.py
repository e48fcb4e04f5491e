"""Teacher vs CompressTracker student speed: OSTrack-256 ViT-B geometry (random weights), 12 -> 4 blocks.

Prints a table (network-only and whole-tracking-step latency at batch 1, FLOPs) and, last, one JSON line with
``teacher_ms``, ``student_ms``, ``speedup`` and ``flops_ratio`` for the per-frame tracking step.
Target: the measured speed-up within 10% of the FLOPs ratio.
"""
from __future__ import annotations

import argparse
import json

import torch

from ct_ray.compress import StageDivision, build_student
from ct_ray.models import OneStreamTracker, TrackerConfig
from ct_ray.tracking.speed import profile_tracker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--student-depth", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    teacher = OneStreamTracker(TrackerConfig())
    student = build_student(teacher, StageDivision.uniform(teacher.config.depth, args.student_depth))
    results = {}
    for name, model in (("teacher", teacher), ("student", student)):
        results[name] = profile_tracker(model, args.device, iterations=args.iterations, warmup=args.warmup)
    t, s = results["teacher"], results["student"]
    print(f"device {t.device}, {t.threads} threads, {t.dtype}, torch {t.torch_version}, batch 1, "
          f"{args.iterations} timed iterations after {args.warmup} warm-up")
    print(f"{'model':<10}{'blocks':>7}{'params (M)':>12}{'GFLOPs':>9}{'forward ms':>12}{'step ms':>10}{'step FPS':>10}")
    for name, model in (("teacher", teacher), ("student", student)):
        p = results[name]
        print(f"{name:<10}{len(model.blocks):>7}{p.params / 1e6:>12.2f}{p.flops / 1e9:>9.2f}"
              f"{p.forward_ms:>12.1f}{p.tracking_step_ms:>10.1f}{p.tracking_fps:>10.1f}")
    speedup = t.tracking_step_ms / s.tracking_step_ms
    flops_ratio = t.flops / s.flops
    print(f"tracking-step speed-up {speedup:.2f}x, network-only {t.forward_ms / s.forward_ms:.2f}x, "
          f"FLOPs ratio {flops_ratio:.2f}x, speed-up / FLOPs ratio {speedup / flops_ratio:.2f}")
    print(json.dumps({
        "teacher_ms": round(t.tracking_step_ms, 3), "student_ms": round(s.tracking_step_ms, 3),
        "speedup": round(speedup, 3), "flops_ratio": round(flops_ratio, 3),
        "teacher_forward_ms": round(t.forward_ms, 3), "student_forward_ms": round(s.forward_ms, 3),
        "teacher_gflops": round(t.flops / 1e9, 3), "student_gflops": round(s.flops / 1e9, 3),
        "device": t.device, "threads": t.threads, "torch": t.torch_version,
    }))


if __name__ == "__main__":
    main()
