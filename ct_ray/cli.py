"""The ``ct-ray`` command line."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

import torch

import ct_ray
from ct_ray.cli_eval import add_commands as add_eval_commands
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


def cmd_data_synth(args: argparse.Namespace) -> int:
    """Generate the synthetic tracking benchmark (LaSOT format)."""
    from ct_ray.data.synth import generate_benchmark

    info = generate_benchmark(args.out, sequences=args.sequences, frames=args.frames, seed=args.seed,
                              preset=args.preset, frame_size=(args.height, args.width),
                              test_fraction=args.test_fraction, progress=True)
    print(f"wrote {info['sequences']} sequences x {info['frames']} frames ({args.preset}) to {args.out}")
    return 0


def cmd_data_shards(args: argparse.Namespace) -> int:
    """Sample template/search crop pairs from datasets into Parquet shards (parallel Ray tasks, resumable)."""
    from ct_ray.cluster import init_ray
    from ct_ray.data.pairs import PairSamplingConfig
    from ct_ray.data.ray_data import build_shards
    from ct_ray.data.shards import ShardPlan, SourceSpec

    sampling = PairSamplingConfig(max_gap=args.max_gap, template_factor=args.template_factor,
                                  template_size=args.template_size, search_factor=args.search_factor,
                                  search_size=args.search_size, center_jitter=args.center_jitter,
                                  scale_jitter=args.scale_jitter)
    plan = ShardPlan(sources=tuple(SourceSpec.parse(s) for s in args.source), pairs_per_epoch=args.pairs_per_epoch,
                     epochs=args.epochs, pairs_per_shard=args.pairs_per_shard, seed=args.seed, sampling=sampling,
                     jpeg_quality=args.jpeg_quality)
    init_ray(args.address)
    manifest = build_shards(plan, args.out, progress=True)
    print(f"{manifest['total_rows']} pairs in {len(manifest['shards'])} shards at {args.out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train a teacher or compress one (CompressTracker or a baseline) with Ray Train; every run tracked in MLflow."""
    from ct_ray.config import load_config
    from ct_ray.train.config import ExperimentConfig
    from ct_ray.train.launcher import resume_config, train

    if args.resume:
        if args.config or args.overrides:
            raise ValueError("--resume continues a run with its own config: give no --config or overrides")
        config, config_path = resume_config(args.resume)
    elif args.config:
        config, config_path = load_config(ExperimentConfig, args.config, args.overrides), args.config
    else:
        raise ValueError("give --config FILE (see experiments/) or --resume RUN_DIR")
    outcome = train(config, config_path=config_path, resume=bool(args.resume), ray_address=args.address)
    metrics = outcome.metrics
    print(f"run           {outcome.run_dir}")
    print(f"final tracker {outcome.final_tracker}")
    if outcome.best_tracker:
        print(f"best tracker  {outcome.best_tracker}  (best validation AUC {metrics.get('best_val_auc')})")
    shown = {k: v for k, v in metrics.items() if k.startswith(("loss_total", "val_", "rows_per_s", "replacement_p"))}
    print("last epoch    " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                      for k, v in sorted(shown.items())))
    if outcome.mlflow_run_id:
        from ct_ray import mlflow_utils

        uri = mlflow_utils.resolve_tracking_uri(config.mlflow.tracking_uri)
        print(f"MLflow run    {outcome.mlflow_run_id} in {uri}")
        print(f"look at it    mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    """Ray Tune search over stage divisions, replacement schedules, loss weights and student depths (ASHA)."""
    from ct_ray.search.config import load_search, total_trials
    from ct_ray.search.runner import format_table, run_search

    search = load_search(args.config)
    print(f"search {search.tune.name}: {total_trials(search)} trials, every grid point checked")
    summaries, files = run_search(search, resume=args.resume, ray_address=args.address)
    print(format_table(summaries))
    for name, path in files.items():
        print(f"{name:>12}: {path}")
    return 0


def _print_study(outcome, title: str) -> None:
    print()
    print(title)
    print(outcome.table)
    for name, path in outcome.files.items():
        print(f"{name:>9}: {path}")
    if outcome.mlflow_uri:
        print(f"MLflow    : study run {outcome.mlflow_run_id}, every training run nested under it")
        print(f"look at it: mlflow ui --backend-store-uri {outcome.mlflow_uri} --host 127.0.0.1 --port 5000")


def _scored_on(preset) -> str:
    count = preset.evaluation.heldout_sequences
    if count:
        return f"{count} held-out sequences generated from another seed (data/heldout-{count})"
    return f"the {preset.evaluation.split} sequences of the study's benchmark (data/benchmark)"


def cmd_quickstart(args: argparse.Namespace) -> int:
    """Data, a 12-block teacher, CompressTracker-4 and both baselines on its budget, all evaluated: one table."""
    from ct_ray.quickstart import load_preset, quickstart_arms, run_study, with_heldout, with_scaling

    preset = with_heldout(with_scaling(load_preset(args.preset, args.set or ()), args.workers, args.gpu),
                          args.heldout_sequences)
    out = args.out or f"outputs/quickstart-{preset.name}"
    outcome = run_study(preset, out, quickstart_arms(preset), [args.seed], name="quickstart",
                        ray_address=args.address)
    _print_study(outcome, f"quickstart ({preset.name} preset, seed {args.seed}): {_scored_on(preset)}")
    return 0


def cmd_ablations(args: argparse.Namespace) -> int:
    """CompressTracker, its ablations (experiments/ablations/*.yaml) and the baselines over several seeds."""
    from pathlib import Path

    from ct_ray.quickstart import ablation_arms, load_preset, run_study, with_heldout, with_scaling

    preset = with_heldout(with_scaling(load_preset(args.preset, args.set or ()), args.workers, args.gpu),
                          args.heldout_sequences)
    if args.no_ablations and args.ablation:
        raise ValueError("--no-ablations and --ablation contradict each other")
    files = [] if args.no_ablations else args.ablation or sorted(Path(args.ablations_dir).glob("*.yaml"))
    if not files and not args.no_ablations:
        raise ValueError(f"no ablation configs: {args.ablations_dir} holds no *.yaml (or pass --ablation FILE)")
    seeds = [int(s) for s in args.seeds.split(",")]
    out = args.out or f"outputs/quickstart-{preset.name}"
    arms = ablation_arms(preset, files, baselines=not args.no_baselines)
    outcome = run_study(preset, out, arms, seeds, name="ablations", ray_address=args.address)
    _print_study(outcome, f"ablations ({preset.name} preset, seeds {args.seeds}; mean ± standard deviation over "
                          f"seeds): {_scored_on(preset)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Draw the tracked box on every frame of a video or a sequence folder and write an mp4."""
    from ct_ray.demo import render_demo, render_sequence_demo, video_frames

    model = _load(args)
    box = [float(v) for v in args.init_box.split(",")] if args.init_box else None
    if box is not None and len(box) != 4:
        raise ValueError(f"--init-box must be x,y,w,h, got {args.init_box!r}")
    if args.video:
        if box is None:
            raise ValueError("--video needs --init-box x,y,w,h (the target on the first frame)")
        info = render_demo(model, video_frames(args.video), box, args.out, args.fps, device=args.device)
    else:
        info = render_sequence_demo(model, args.sequence, args.out, box, args.fps, device=args.device)
    print(f"wrote {info['frames']} frames to {info['out']}")
    return 0


def _add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint file")
    parser.add_argument("--kind", default="ct-ray", choices=sorted(TEACHERS),
                        help="checkpoint format (default: ct-ray's own)")
    parser.add_argument("--num-heads", type=int, default=None,
                        help="attention heads (OSTrack / ViT files do not record it; default dim // 64)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _add_study_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=None, help="Ray Train workers per run (default: the preset's)")
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker (nccl, bf16 autocast), GPU evaluation")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a preset key (repeat), e.g. teacher.run.epochs=60; a study folder holds one "
                             "study, so a changed run needs another --out")
    parser.add_argument("--heldout-sequences", type=int, default=None, metavar="N",
                        help="score the trackers on N further sequences generated like the benchmark from another "
                             "seed, instead of its test split (trained runs are reused; results in "
                             "results-heldout-N/, files <study>_heldout-N.*)")


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

    train = commands.add_parser("train", help=cmd_train.__doc__, description=cmd_train.__doc__)
    train.add_argument("--config", help="experiment YAML (experiments/*.yaml)")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=1e-4")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run (<storage_path>/<name>)")
    train.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local one)")
    train.set_defaults(func=cmd_train)

    tune = commands.add_parser("tune", help=cmd_tune.__doc__, description=cmd_tune.__doc__)
    tune.add_argument("--config", required=True, help="search YAML (experiments/tune_*.yaml)")
    tune.add_argument("--resume", action="store_true", help="continue an interrupted search")
    tune.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local one)")
    tune.set_defaults(func=cmd_tune)

    quickstart = commands.add_parser("quickstart", help=cmd_quickstart.__doc__, description=cmd_quickstart.__doc__)
    quickstart.add_argument("--preset", default="small",
                            help="small (about 17 min on 2 CPU cores), full (about 80 min there) or a preset YAML file")
    quickstart.add_argument("--out", default=None, help="study folder (default outputs/quickstart-PRESET); "
                                                        "running again there reuses finished work")
    quickstart.add_argument("--seed", type=int, default=0, help="seed of the student runs")
    quickstart.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local one)")
    _add_study_options(quickstart)
    quickstart.set_defaults(func=cmd_quickstart)

    ablations = commands.add_parser("ablations", help=cmd_ablations.__doc__, description=cmd_ablations.__doc__)
    ablations.add_argument("--preset", default="small", help="small, full or a preset YAML file")
    ablations.add_argument("--out", default=None, help="study folder (default outputs/quickstart-PRESET: the "
                                                       "quickstart's data, teacher and seed-0 runs are reused)")
    ablations.add_argument("--seeds", default="0,1,2", help="comma-separated seeds of the student runs")
    ablations.add_argument("--ablations-dir", default="experiments/ablations", help="folder of ablation YAMLs")
    ablations.add_argument("--ablation", action="append", help="one ablation YAML (repeat; replaces --ablations-dir)")
    ablations.add_argument("--no-baselines", action="store_true", help="leave out student-only and distillation")
    ablations.add_argument("--no-ablations", action="store_true",
                           help="no ablation files: CompressTracker and the baselines over the seeds")
    ablations.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local one)")
    _add_study_options(ablations)
    ablations.set_defaults(func=cmd_ablations)

    data = commands.add_parser("data", help="datasets: synthetic benchmark, crop-pair shards")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    synth = data_commands.add_parser("synth", help=cmd_data_synth.__doc__, description=cmd_data_synth.__doc__)
    synth.add_argument("--out", required=True)
    synth.add_argument("--sequences", type=int, default=40)
    synth.add_argument("--frames", type=int, default=120)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--preset", default="standard", choices=["easy", "standard", "hard"])
    synth.add_argument("--height", type=int, default=240)
    synth.add_argument("--width", type=int, default=320)
    synth.add_argument("--test-fraction", type=float, default=0.25)
    synth.set_defaults(func=cmd_data_synth)

    shards = data_commands.add_parser("shards", help=cmd_data_shards.__doc__, description=cmd_data_shards.__doc__)
    shards.add_argument("--source", action="append", required=True,
                        help="KIND:PATH[@SPLIT][*RATIO], e.g. got10k:/data/GOT-10k@train or synthetic:data/synth@train; "
                             "repeat for several datasets")
    shards.add_argument("--pairs-per-epoch", type=int, required=True)
    shards.add_argument("--epochs", type=int, default=1, help="epochs' worth of distinct pairs to sample")
    shards.add_argument("--out", required=True)
    shards.add_argument("--pairs-per-shard", type=int, default=1000)
    shards.add_argument("--seed", type=int, default=0)
    shards.add_argument("--max-gap", type=int, default=200)
    shards.add_argument("--template-factor", type=float, default=2.0)
    shards.add_argument("--template-size", type=int, default=128)
    shards.add_argument("--search-factor", type=float, default=4.0)
    shards.add_argument("--search-size", type=int, default=256)
    shards.add_argument("--center-jitter", type=float, default=3.0)
    shards.add_argument("--scale-jitter", type=float, default=0.25)
    shards.add_argument("--jpeg-quality", type=int, default=95)
    shards.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local one)")
    shards.set_defaults(func=cmd_data_shards)
    demo = commands.add_parser("demo", help=cmd_demo.__doc__, description=cmd_demo.__doc__)
    _add_checkpoint_arguments(demo)
    source = demo.add_mutually_exclusive_group(required=True)
    source.add_argument("--video", help="video file (needs --init-box)")
    source.add_argument("--sequence", help="sequence folder: img/ frames, groundtruth.txt (first box initialises)")
    demo.add_argument("--init-box", help="x,y,w,h of the target on the first frame")
    demo.add_argument("--out", required=True, help="output video (.mp4)")
    demo.add_argument("--fps", type=float, default=25.0)
    demo.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    demo.set_defaults(func=cmd_demo)

    add_eval_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (OSError, ValueError) as exc:
        print(f"ct-ray {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
