"""The ``ct-ray`` command line."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

import torch

import ct_ray
from ct_ray.models import TEACHERS, count_parameters, load_teacher
from ct_ray.profile import count_flops, profile_tracker


def _load(args: argparse.Namespace):
    options = {"num_heads": args.num_heads} if args.num_heads and args.kind in ("ostrack", "vit") else {}
    return load_teacher(args.kind, args.checkpoint, **options)


def cmd_inspect(args: argparse.Namespace) -> int:
    """Architecture and size of a checkpoint, read from its weights."""
    model = _load(args)
    summary = {**model.config.to_dict(), "params": count_parameters(model), "flops": count_flops(model)}
    if args.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key:>16}: {value}")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    """Network-only and whole-tracking-step latency and FPS at batch 1."""
    if args.threads:
        torch.set_num_threads(args.threads)
    model = _load(args)
    dtype = torch.bfloat16 if args.bf16 else None
    result = profile_tracker(model, args.device, iterations=args.iterations, warmup=args.warmup,
                             autocast_dtype=dtype)
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    print(f"device {result.device}, {result.threads} threads, {result.dtype}, torch {result.torch_version}, batch 1")
    print(f"parameters        {result.params / 1e6:.2f} M")
    print(f"FLOPs / forward   {result.flops / 1e9:.2f} G")
    print(f"network only      {result.forward_ms:.2f} ms  ({result.forward_fps:.1f} FPS)  <- what papers report")
    print(f"tracking step     {result.tracking_step_ms:.2f} ms  ({result.tracking_fps:.1f} FPS)  "
          "(crop + copy + forward + window + decode)")
    return 0


def _add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint file")
    parser.add_argument("--kind", default="ct-ray", choices=sorted(TEACHERS),
                        help="checkpoint format (default: ct-ray's own)")
    parser.add_argument("--num-heads", type=int, default=None,
                        help="attention heads (OSTrack / ViT files do not record it; default dim // 64)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ct-ray", description="CompressTracker on Ray and MLflow")
    parser.add_argument("--version", action="version", version=f"ct-ray {ct_ray.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    inspect = commands.add_parser("inspect", help=cmd_inspect.__doc__, description=cmd_inspect.__doc__)
    _add_checkpoint_arguments(inspect)
    inspect.set_defaults(func=cmd_inspect)

    profile = commands.add_parser("profile", help=cmd_profile.__doc__, description=cmd_profile.__doc__)
    _add_checkpoint_arguments(profile)
    profile.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    profile.add_argument("--iterations", type=int, default=30)
    profile.add_argument("--warmup", type=int, default=5)
    profile.add_argument("--threads", type=int, default=None)
    profile.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    profile.set_defaults(func=cmd_profile)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"ct-ray {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
