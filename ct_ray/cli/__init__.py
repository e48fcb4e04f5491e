"""The ``ct-ray`` command line.

Parsing imports nothing heavy: every command imports torch, Ray or MLflow inside its own function
(``ct_ray.cli.commands``, ``ct_ray.cli.eval_commands``), so ``ct-ray --help`` and a rejected flag answer at once.
``run`` is the one error boundary: a user-facing error (a bad file, format, key, flag or store) becomes one line
``ct-ray <command>: error: ...`` and exit code 2; Ctrl-C says what was kept; an internal bug keeps its traceback.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ct_ray import __version__
from ct_ray.cli import commands, eval_commands
from ct_ray.errors import UserError

CHECKPOINT_KINDS = ("ct-ray", "ostrack", "vit")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default in its help, unless the help says it already, or there is none to show (a
    required option, a flag that is off, an option whose default is decided elsewhere)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.required or any(action.default is v for v in (None, False, argparse.SUPPRESS)):
            return text
        return super()._get_help_string(action)


def _parser(subparsers, name: str, func, **kwargs) -> argparse.ArgumentParser:
    doc = (func.__doc__ or "").strip()
    parser = subparsers.add_parser(name, help=doc.splitlines()[0] if doc else None, description=doc,
                                   formatter_class=HelpFormatter, **kwargs)
    parser.set_defaults(func=func)
    return parser


def add_checkpoint_arguments(parser: argparse.ArgumentParser, json_flag: bool = True) -> None:
    parser.add_argument("--checkpoint", required=True, help="tracker checkpoint file")
    parser.add_argument("--kind", default="ct-ray", help=f"checkpoint format: one of {', '.join(CHECKPOINT_KINDS)}")
    parser.add_argument("--num-heads", type=int, default=None,
                        help="attention heads, for OSTrack / ViT files that do not record it (default dim // 64)")
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print one JSON object")


def _address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default=None,
                        help="Ray cluster address (default: RAY_ADDRESS, else a local instance on 127.0.0.1)")
    add_verbose(parser)


def add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true",
                        help="show Ray's own output (workers, Ray Train, warnings) live, not only in the "
                             "log file whose path the command prints")


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
    _address(parser)


def _model_commands(subparsers) -> None:
    inspect = _parser(subparsers, "inspect", commands.cmd_inspect)
    add_checkpoint_arguments(inspect)

    profile = _parser(subparsers, "profile", commands.cmd_profile)
    add_checkpoint_arguments(profile)
    profile.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    profile.add_argument("--iterations", type=int, default=30, help="timed iterations")
    profile.add_argument("--warmup", type=int, default=5, help="untimed iterations first")
    profile.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    profile.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    eval_commands.add_runtime_arguments(profile, repeat=True)

    demo = _parser(subparsers, "demo", commands.cmd_demo)
    add_checkpoint_arguments(demo, json_flag=False)
    source = demo.add_mutually_exclusive_group(required=True)
    source.add_argument("--video", help="video file (needs --init-box)")
    source.add_argument("--sequence", help="sequence folder: img/ frames, groundtruth.txt (first box initialises)")
    demo.add_argument("--init-box", help="x,y,w,h of the target on the first frame (pixels)")
    demo.add_argument("--out", required=True, help="output video (.mp4)")
    demo.add_argument("--fps", type=float, default=25.0, help="frame rate of the output video")
    demo.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def _training_commands(subparsers) -> None:
    train = _parser(subparsers, "train", commands.cmd_train)
    train.add_argument("--config", help="experiment YAML (experiments/*.yaml)")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=1e-4")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run (<storage_path>/<name>)")
    _address(train)

    tune = _parser(subparsers, "tune", commands.cmd_tune)
    tune.add_argument("--config", required=True, help="search YAML (experiments/tune_*.yaml)")
    tune.add_argument("--resume", action="store_true", help="continue an interrupted search")
    _address(tune)

    quickstart = _parser(subparsers, "quickstart", commands.cmd_quickstart)
    quickstart.add_argument("--preset", default="small", help="small, full or a preset YAML file")
    quickstart.add_argument("--out", default=None, help="study folder (default outputs/quickstart-PRESET); "
                                                        "running again there reuses finished work")
    quickstart.add_argument("--seed", type=int, default=0, help="seed of the student runs")
    _add_study_options(quickstart)

    ablations = _parser(subparsers, "ablations", commands.cmd_ablations)
    ablations.add_argument("--preset", default="small", help="small, full or a preset YAML file")
    ablations.add_argument("--out", default=None, help="study folder (default outputs/quickstart-PRESET: the "
                                                       "quickstart's data, teacher and seed-0 runs are reused)")
    ablations.add_argument("--seeds", default="0,1,2", help="comma-separated seeds of the student runs")
    ablations.add_argument("--ablations-dir", default="experiments/ablations", help="folder of ablation YAMLs")
    ablations.add_argument("--ablation", action="append", help="one ablation YAML (repeat; replaces --ablations-dir)")
    ablations.add_argument("--no-baselines", action="store_true", help="leave out student-only and distillation")
    ablations.add_argument("--no-ablations", action="store_true",
                           help="no ablation files: CompressTracker and the baselines over the seeds")
    _add_study_options(ablations)
    combine = _parser(subparsers, "combine", commands.cmd_combine)
    combine.add_argument("studies", nargs="+", metavar="STUDY_JSON",
                         help="two or more study summaries (<out>/quickstart.json, <out>/ablations.json) of one "
                              "benchmark, e.g. one per teacher seed")
    combine.add_argument("--out", default=None, help="also write the table to OUT.md and OUT.json")


def _data_commands(subparsers) -> None:
    data = subparsers.add_parser("data", help="datasets: synthetic benchmark, crop-pair shards",
                                 description="Datasets: the synthetic benchmark and crop-pair shards.")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    synth = _parser(data_commands, "synth", commands.cmd_data_synth)
    synth.add_argument("--out", required=True, help="folder of the benchmark (LaSOT layout)")
    synth.add_argument("--sequences", type=int, default=40, help="number of sequences")
    synth.add_argument("--frames", type=int, default=120, help="frames per sequence")
    synth.add_argument("--seed", type=int, default=0, help="seed: the same arguments give the same files")
    synth.add_argument("--preset", default="standard", choices=["easy", "standard", "hard"], help="difficulty")
    synth.add_argument("--height", type=int, default=240, help="frame height in pixels")
    synth.add_argument("--width", type=int, default=320, help="frame width in pixels")
    synth.add_argument("--test-fraction", type=float, default=0.25, help="share of sequences in testing_set.txt")

    shards = _parser(data_commands, "shards", commands.cmd_data_shards)
    shards.add_argument("--source", action="append", required=True,
                        help="KIND:PATH[@SPLIT][*RATIO], e.g. got10k:/data/GOT-10k@train or synthetic:data/synth@train; "
                             "repeat for several datasets")
    shards.add_argument("--pairs-per-epoch", type=int, required=True, help="pairs in one training epoch")
    shards.add_argument("--epochs", type=int, default=1, help="epochs' worth of distinct pairs to sample")
    shards.add_argument("--out", required=True, help="shard folder (a local path or a URI such as s3://bucket/x)")
    shards.add_argument("--pairs-per-shard", type=int, default=1000, help="pairs per Parquet file")
    shards.add_argument("--seed", type=int, default=0, help="seed of the pair sampling")
    shards.add_argument("--max-gap", type=int, default=200, help="largest frame gap between template and search")
    shards.add_argument("--template-factor", type=float, default=2.0, help="template context factor")
    shards.add_argument("--template-size", type=int, default=128, help="template crop side in pixels")
    shards.add_argument("--search-factor", type=float, default=4.0, help="search context factor")
    shards.add_argument("--search-size", type=int, default=256, help="search crop side in pixels")
    shards.add_argument("--context-factor", type=float, default=12.0,
                        help="context crop factor around the search box: it must hold every jittered search window, "
                             "(search factor + centre jitter) x max scale change")
    shards.add_argument("--center-jitter", type=float, default=3.0,
                        help="search centre jitter the context is cut for (OSTrack's factor)")
    shards.add_argument("--scale-jitter", type=float, default=0.25,
                        help="search scale jitter the context is cut for (log-normal std)")
    shards.add_argument("--max-scale-change", type=float, default=1.65,
                        help="largest factor the scale jitter may scale a box by (draws beyond are clipped)")
    shards.add_argument("--jpeg-quality", type=int, default=95, help="JPEG quality of the stored crops")
    _address(shards)

    preview = _parser(data_commands, "preview", commands.cmd_data_preview)
    where = preview.add_mutually_exclusive_group(required=True)
    where.add_argument("--shards", help="shard folder or URI (samples for the model crops the shards were built for)")
    where.add_argument("--config", help="experiment YAML: preview its training source (shards or stream) and crops")
    preview.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (with --config)")
    preview.add_argument("--epoch", type=int, default=1, help="epoch to draw (from 1)")
    preview.add_argument("--count", type=int, default=16, help="samples to show")
    preview.add_argument("--seed", type=int, default=None, help="run seed (default: the config's run.seed, else 0)")
    preview.add_argument("--out", required=True, help="output prefix: PREFIX.png and PREFIX.npz")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ct-ray", description="CompressTracker on Ray and MLflow",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"ct-ray {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _model_commands(subparsers)
    _training_commands(subparsers)
    _data_commands(subparsers)
    eval_commands.add_commands(subparsers, _parser, add_checkpoint_arguments)
    return parser


USER_ERRORS: tuple[type[BaseException], ...] = (UserError, FileNotFoundError, PermissionError, IsADirectoryError,
                                                NotADirectoryError)
"""What the boundary reports as one line: ct-ray's own user-facing errors and the OS errors that name a path."""


def _ray_log_hint(command: str) -> None:
    """On a failure after Ray started: where Ray's output is, and its last lines."""
    from ct_ray.orchestration import console

    path = console.log_path()
    if path is None or not console.ray_attached():
        return
    lines = console.tail(12)
    print(f"ct-ray {command}: Ray's output is in {path}" + ("; its last lines:" if lines else ""), file=sys.stderr)
    for line in lines:
        print(f"  {line}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """Runs the parsed command inside the one error boundary (see the module docstring)."""
    from ct_ray.orchestration import console

    command = args.command if getattr(args, "command", None) != "data" else f"data {args.data_command}"
    console.configure(verbose=bool(getattr(args, "verbose", False)))
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"\nct-ray {command}: interrupted. Finished work is kept (complete shards, sequences, checkpoints and "
              "results); run the same command again to continue.", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        # An error raised in a Ray task arrives as a RayTaskError that is also the cause's class; print the cause.
        cause = getattr(exc, "cause", None)
        print(f"ct-ray {command}: error: {cause if isinstance(cause, USER_ERRORS) else exc}", file=sys.stderr)
        _ray_log_hint(command)
        return 2
    except BaseException:
        _ray_log_hint(command)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
