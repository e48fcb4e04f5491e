"""Teacher vs CompressTracker student speed per runtime: OSTrack-256 ViT-B geometry (random weights), 12 -> 4 blocks.

For every ``--runtime`` (PyTorch eager, torch.compile, ONNX Runtime fp32 / int8; default: eager and, when installed,
ONNX Runtime fp32 and int8) it prints, at batch 1: PyTorch eager's whole forward (what papers report), the runtime's
per-frame network call and the whole tracking step (crop, copy, network, window, decode, map back), with the device,
threads, dtype and library versions; last, one JSON line.

Targets: the student's tracking-step speed-up over the teacher within 10% of the FLOPs ratio (eager); on a CPU, the
student's whole tracking step on the best runtime at least 1.25x faster than PyTorch eager's network forward alone.
"""
from __future__ import annotations

import argparse
import json

import torch

from ct_ray.compress import StageDivision, build_student
from ct_ray.models import OneStreamTracker, TrackerConfig
from ct_ray.tracking.runtimes import RuntimeSpec, prepare_runtime
from ct_ray.tracking.speed import profile_tracker


def default_runtimes() -> list[str]:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return ["torch"]
    return ["torch", "onnxruntime", "onnxruntime-cpu-int8"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--student-depth", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    parser.add_argument("--runtime", action="append", default=None,
                        help="torch, compile, onnxruntime, onnxruntime-cpu-int8, onnxruntime-cuda, "
                             "onnxruntime-tensorrt; repeat for several (default: %s)" % ", ".join(default_runtimes()))
    parser.add_argument("--student-only", action="store_true", help="profile the student alone (faster)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    runtimes = [RuntimeSpec.parse(name) for name in (args.runtime or default_runtimes())]
    torch.manual_seed(0)
    teacher = OneStreamTracker(TrackerConfig())
    student = build_student(teacher, StageDivision.uniform(teacher.config.depth, args.student_depth))
    models = [("student", student)] if args.student_only else [("teacher", teacher), ("student", student)]
    results = {}
    for name, model in models:
        for spec in runtimes:
            prepared = prepare_runtime(model, spec)
            results[name, spec.label] = profile_tracker(model, args.device, iterations=args.iterations,
                                                        warmup=args.warmup, runtime=prepared)
    first = next(iter(results.values()))
    print(f"device {first.device}, {first.threads} threads, batch 1, {args.iterations} timed iterations after "
          f"{args.warmup} warm-up; {max((r.libraries for r in results.values()), key=len)}")
    print(f"{'model':<9}{'blocks':>7}{'GFLOPs':>8}  {'runtime':<22}{'dtype':<24}{'eager fwd ms':>13}"
          f"{'network ms':>11}{'step ms':>9}{'step FPS':>9}")
    for (name, label), p in results.items():
        depth = len(dict(models)[name].blocks)
        print(f"{name:<9}{depth:>7}{p.flops / 1e9:>8.2f}  {label:<22}{p.dtype:<24}{p.forward_ms:>13.1f}"
              f"{p.network_ms:>11.1f}{p.tracking_step_ms:>9.1f}{p.tracking_fps:>9.1f}")
    summary: dict = {"device": first.device, "threads": first.threads, "torch": first.torch_version,
                     "libraries": max((r.libraries for r in results.values()), key=len),
                     "runtimes": {f"{name}/{label}": {"forward_ms": round(p.forward_ms, 3),
                                                      "network_ms": round(p.network_ms, 3),
                                                      "step_ms": round(p.tracking_step_ms, 3), "dtype": p.dtype}
                                  for (name, label), p in results.items()}}
    student_steps = {label: p.tracking_step_ms for (name, label), p in results.items() if name == "student"}
    eager_forward = results["student", runtimes[0].label].forward_ms
    best = min(student_steps, key=student_steps.get)
    summary.update({"student_eager_forward_ms": round(eager_forward, 3), "student_best_runtime": best,
                    "student_best_step_ms": round(student_steps[best], 3),
                    "best_step_vs_eager_forward": round(eager_forward / student_steps[best], 3)})
    print(f"student: best runtime {best}, whole tracking step {student_steps[best]:.1f} ms = "
          f"{eager_forward / student_steps[best]:.2f}x faster than PyTorch eager's forward alone "
          f"({eager_forward:.1f} ms; target >= 1.25x on a CPU)")
    if not args.student_only:
        t, s = results["teacher", runtimes[0].label], results["student", runtimes[0].label]
        speedup, flops_ratio = t.tracking_step_ms / s.tracking_step_ms, t.flops / s.flops
        print(f"{runtimes[0].label}: tracking-step speed-up {speedup:.2f}x, FLOPs ratio {flops_ratio:.2f}x, "
              f"speed-up / FLOPs ratio {speedup / flops_ratio:.2f} (target within 10%)")
        summary.update({"teacher_ms": round(t.tracking_step_ms, 3), "student_ms": round(s.tracking_step_ms, 3),
                        "speedup": round(speedup, 3), "flops_ratio": round(flops_ratio, 3),
                        "teacher_gflops": round(t.flops / 1e9, 3), "student_gflops": round(s.flops / 1e9, 3)})
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
