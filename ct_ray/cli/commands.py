"""The ``ct-ray`` commands other than evaluation: each imports what it needs when it runs, so parsing stays light."""
from __future__ import annotations

import argparse
import contextlib
import json
import math
from pathlib import Path
from typing import Iterator

from ct_ray.errors import InputError, UserError


@contextlib.contextmanager
def flag_errors(command: str) -> Iterator[None]:
    """Values built from a command's flags that the core rejects (``ValueError``) are the user's to fix."""
    try:
        yield
    except UserError:
        raise
    except ValueError as exc:
        raise InputError(str(exc)) from None


def parse_box(text: str, flag: str) -> list[float]:
    """``x,y,w,h`` pixels: four finite numbers, a positive width and height; errors name the flag."""
    parts = [part.strip() for part in text.split(",")]
    if len(parts) != 4:
        raise InputError(f"{flag} must be x,y,w,h (four numbers), got {text!r}")
    values = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise InputError(f"{flag}: {part!r} is not a number (expected x,y,w,h, got {text!r})") from None
        if not math.isfinite(value):
            raise InputError(f"{flag}: {part!r} is not a finite number")
        values.append(value)
    if values[2] <= 0 or values[3] <= 0:
        raise InputError(f"{flag}: the box needs a positive width and height, got {text!r}")
    return values


def parse_seeds(text: str, flag: str = "--seeds") -> list[int]:
    """Comma-separated non-negative integers; errors name the flag."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError(f"{flag} must be comma-separated integers such as 0,1,2, got {text!r}") from None
    if not seeds or any(seed < 0 for seed in seeds) or len(set(seeds)) != len(seeds):
        raise InputError(f"{flag} must name distinct non-negative integers, got {text!r}")
    return seeds


def load_model(args: argparse.Namespace):
    """The tracker of ``--checkpoint`` / ``--kind`` / ``--num-heads``."""
    from ct_ray.models import load_checkpoint

    return load_checkpoint(args.checkpoint, args.kind, args.num_heads)[0]


def device(name: str | None) -> str:
    """``--device``: as given, else cuda when a GPU is there."""
    if name:
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cmd_inspect(args: argparse.Namespace) -> int:
    """Architecture and size of a checkpoint, read from its weights."""
    from ct_ray.models import count_parameters
    from ct_ray.tracking.speed import count_flops

    model = load_model(args)
    summary = {**model.config.to_dict(), "params": count_parameters(model), "flops": count_flops(model)}
    if args.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key:>16}: {value}")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    """Network-only and whole-tracking-step latency and FPS at batch 1, per runtime."""
    import torch

    from ct_ray.cli.eval_commands import runtime_spec
    from ct_ray.tracking.runtimes import prepare_runtime
    from ct_ray.tracking.speed import profile_tracker

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args)
    dtype = torch.bfloat16 if args.bf16 else None
    # Every runtime is prepared (installed? graphs fit?) before the first is timed.
    prepared = [prepare_runtime(model, runtime_spec(args, name), graphs=args.graphs if name == "onnxruntime" else None)
                for name in dict.fromkeys(args.runtime or ["torch"])]
    results = [profile_tracker(model, device(args.device), iterations=args.iterations, warmup=args.warmup,
                               autocast_dtype=dtype, runtime=runtime) for runtime in prepared]
    first = results[0]
    if args.json:
        print(json.dumps(first.to_dict() if len(results) == 1 else {"runtimes": [r.to_dict() for r in results]}))
        return 0
    print(f"device {first.device}, {first.threads} threads, batch 1, {args.iterations} timed iterations after "
          f"{args.warmup} warm-up; {first.libraries if len(results) == 1 else results[-1].libraries}")
    print(f"parameters {first.params / 1e6:.2f} M, FLOPs / forward {first.flops / 1e9:.2f} G; PyTorch eager "
          f"forward (template + search, what papers report) {first.forward_ms:.2f} ms ({first.forward_fps:.1f} FPS)")
    print(f"{'runtime':<24}{'dtype':<24}{'network ms':>11}{'step ms':>10}{'step FPS':>10}{'vs eager fwd':>13}")
    for result in results:
        print(f"{result.runtime:<24}{result.dtype:<24}{result.network_ms:>11.2f}{result.tracking_step_ms:>10.2f}"
              f"{result.tracking_fps:>10.1f}{first.forward_ms / result.tracking_step_ms:>12.2f}x")
    print("network: the per-frame call on cached template tokens; step: crop + copy + network + window + decode")
    return 0


def cmd_data_synth(args: argparse.Namespace) -> int:
    """Generate the synthetic tracking benchmark (LaSOT format)."""
    from ct_ray.data.synth import generate_benchmark

    with flag_errors("data synth"):
        info = generate_benchmark(args.out, sequences=args.sequences, frames=args.frames, seed=args.seed,
                                  preset=args.preset, frame_size=(args.height, args.width),
                                  test_fraction=args.test_fraction, progress=True)
    print(f"wrote {info['sequences']} sequences x {info['frames']} frames ({args.preset}) to {args.out}")
    return 0


def cmd_data_shards(args: argparse.Namespace) -> int:
    """Sample template/search pairs from datasets into Parquet shards: the template crop and a context crop wide
    enough for the search-window jitter, which is drawn when a row is read (parallel Ray tasks, resumable; the
    output is a folder or a store URI such as s3://bucket/shards)."""
    from ct_ray.data.pairs import PairSamplingConfig
    from ct_ray.data.samples import JitterConfig
    from ct_ray.data.shards import ShardPlan, SourceSpec, index_sources
    from ct_ray.fileio import Location
    from ct_ray.orchestration import console
    from ct_ray.orchestration.cluster import init_ray
    from ct_ray.orchestration.data_pipeline import build_shards

    with flag_errors("data shards"):
        jitter = JitterConfig(center_jitter=args.center_jitter, scale_jitter=args.scale_jitter,
                              max_scale_change=args.max_scale_change)
        sampling = PairSamplingConfig(max_gap=args.max_gap, template_factor=args.template_factor,
                                      template_size=args.template_size, search_factor=args.search_factor,
                                      search_size=args.search_size, context_factor=args.context_factor,
                                      jitter=jitter)
        plan = ShardPlan(sources=tuple(SourceSpec.parse(s) for s in args.source),
                         pairs_per_epoch=args.pairs_per_epoch, epochs=args.epochs, pairs_per_shard=args.pairs_per_shard,
                         seed=args.seed, sampling=sampling, jpeg_quality=args.jpeg_quality)
    indexed = index_sources(plan)  # bad sources and splits are found before Ray starts
    out = Location.of(args.out)
    console.log_to(Path(out.path) / "_ray.log" if out.is_local else Path.home() / ".cache" / "ct-ray" / "logs"
                   / "shards.log")
    init_ray(args.address)
    manifest = build_shards(plan, args.out, progress=True, indexed=indexed)
    skipped = manifest.get("skipped_frames", {})
    print(f"{manifest['total_rows']} pairs in {len(manifest['shards'])} shards at {args.out}"
          + (f"; skipped {sum(skipped.values())} frame draws whose box lies outside its image "
             f"({', '.join(list(skipped)[:3])}{', ...' if len(skipped) > 3 else ''})" if skipped else ""))
    return 0


def cmd_data_preview(args: argparse.Namespace) -> int:
    """Write what the network sees: PREFIX.png, a grid of decoded, augmented template/search pairs with their boxes,
    and PREFIX.npz with the arrays exactly as a training worker (rank 0) receives them for that epoch."""
    from ct_ray.data.preview import preview_samples

    info = preview_samples(args.out, epoch=args.epoch, count=args.count, shards=args.shards, config=args.config,
                           seed=args.seed, overrides=args.overrides or ())
    print(f"wrote {info['png']} and {info['npz']} ({info['count']} samples of epoch {args.epoch}, {info['source']})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train a teacher or compress one (CompressTracker or a baseline) with Ray Train; every run tracked in MLflow."""
    from ct_ray.config import load_config
    from ct_ray.training.experiment import ExperimentConfig
    from ct_ray.orchestration.train_launcher import resume_config, train

    if args.resume:
        if args.config or args.overrides:
            raise InputError("--resume continues a run with its own config: give no --config or overrides")
        config, config_path = resume_config(args.resume)
    elif args.config:
        config, config_path = load_config(ExperimentConfig, args.config, args.overrides), args.config
    else:
        raise InputError("give --config FILE (see experiments/) or --resume RUN_DIR")
    outcome = train(config, config_path=config_path, resume=bool(args.resume), ray_address=args.address)
    metrics = outcome.metrics
    print(f"run           {outcome.run_dir}")
    print(f"final tracker {outcome.final_tracker}")
    if outcome.best_tracker:
        print(f"best tracker  {outcome.best_tracker}  (best validation AUC {metrics.get('best_val_auc')})")
    shown = {k: v for k, v in metrics.items() if k.startswith(("loss_total", "val_", "rows_per_s", "replacement_p"))}
    if shown:
        print("last epoch    " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in sorted(shown.items())))
    else:  # resumed from a checkpoint of its last epoch: nothing left to train
        print(f"last epoch    none now: {outcome.run_dir} had already trained its {config.run.epochs} epochs "
              "(another run.name, or removing that folder, trains again)")
    if outcome.mlflow_run_id:
        from ct_ray.orchestration.mlflow_runs import resolve_tracking_uri

        uri = resolve_tracking_uri(config.mlflow.tracking_uri)
        print(f"MLflow run    {outcome.mlflow_run_id} in {uri}")
        print(f"look at it    mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    """Ray Tune search over stage divisions, replacement schedules, loss weights and student depths (ASHA)."""
    from ct_ray.training.search_space import load_search, total_trials
    from ct_ray.orchestration.tune_search import format_table, run_search

    search = load_search(args.config)
    print(f"search {search.tune.name}: {total_trials(search)} trials, every grid point checked")
    summaries, files = run_search(search, resume=args.resume, ray_address=args.address)
    print(format_table(summaries))
    for name, path in files.items():
        print(f"{name:>12}: {path}")
    # Some trials failed (every one failing is an error of run_search): the report holds the rest, the exit code says so.
    return 1 if any(s.error for s in summaries) else 0


def _print_study(outcome, title: str) -> None:
    print()
    print(title)
    print(outcome.table)
    for line in outcome.reference:
        print(line)
    if outcome.duration_line:
        print(outcome.duration_line)
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


def _reference(args: argparse.Namespace):
    """The embedded preset's reference quickstarts when this study runs that preset as measured (any teacher or
    student seed; ct_ray/studies/reference.py), else None with a line saying why not."""
    from ct_ray.studies.design import Preset
    from ct_ray.studies.reference import load_reference

    if args.preset not in {p.value for p in Preset}:
        print(f"no reference check: {args.preset} is a preset file; reference quickstarts ship with the embedded "
              f"presets ({', '.join(p.value for p in Preset)})")
        return None
    reference = load_reference(args.preset)
    changed = [o for o in args.set or () if not o.replace(" ", "").startswith("teacher.run.seed=")]
    changed += [flag for flag, value in (("--workers", args.workers), ("--gpu", args.gpu),
                                         ("--heldout-sequences", args.heldout_sequences)) if value]
    if reference is None:
        print(f"no reference check: the {args.preset} preset ships no reference quickstarts")
    elif changed:
        print(f"no reference check: {', '.join(changed)} change(s) what the {args.preset} preset's reference measured")
        reference = None
    return reference


def cmd_quickstart(args: argparse.Namespace) -> int:
    """Data, a 12-block teacher, CompressTracker-4 and both baselines on its budget, all evaluated: one table."""
    from ct_ray.orchestration.study import run_study
    from ct_ray.studies.design import load_preset, quickstart_arms, with_heldout, with_scaling

    preset = with_heldout(with_scaling(load_preset(args.preset, args.set or ()), args.workers, args.gpu),
                          args.heldout_sequences)
    out = args.out or f"outputs/quickstart-{preset.name}"
    outcome = run_study(preset, out, quickstart_arms(preset), [args.seed], name="quickstart",
                        ray_address=args.address, reference=_reference(args))
    _print_study(outcome, f"quickstart ({preset.name} preset, teacher seed {preset.teacher.run.seed}, student seed "
                          f"{args.seed}): {_scored_on(preset)}")
    return 0


def cmd_ablations(args: argparse.Namespace) -> int:
    """CompressTracker, its ablations (experiments/ablations/*.yaml) and the baselines over several seeds."""
    from pathlib import Path

    from ct_ray.orchestration.study import run_study
    from ct_ray.studies.design import ablation_arms, load_preset, with_heldout, with_scaling

    preset = with_heldout(with_scaling(load_preset(args.preset, args.set or ()), args.workers, args.gpu),
                          args.heldout_sequences)
    if args.no_ablations and args.ablation:
        raise InputError("--no-ablations and --ablation contradict each other")
    files = [] if args.no_ablations else args.ablation or sorted(Path(args.ablations_dir).glob("*.yaml"))
    if not files and not args.no_ablations:
        raise InputError(f"no ablation configs: {args.ablations_dir} holds no *.yaml (or pass --ablation FILE)")
    seeds = parse_seeds(args.seeds)
    out = args.out or f"outputs/quickstart-{preset.name}"
    arms = ablation_arms(preset, files, baselines=not args.no_baselines)
    outcome = run_study(preset, out, arms, seeds, name="ablations", ray_address=args.address,
                        reference=_reference(args))
    _print_study(outcome, f"ablations ({preset.name} preset, teacher seed {preset.teacher.run.seed}, student seeds "
                          f"{args.seeds}; mean ± standard deviation over student seeds): {_scored_on(preset)}")
    return 0


def cmd_combine(args: argparse.Namespace) -> int:
    """Several studies of one benchmark (e.g. one per teacher seed) as one table, runs paired within each study."""
    import json
    from pathlib import Path

    from ct_ray.errors import MissingFileError
    from ct_ray.fileio import atomic_write_text
    from ct_ray.studies.combine import combine_studies, study_part
    from ct_ray.studies.tables import format_markdown, format_table

    parts = []
    for name in args.studies:
        path = Path(name)
        if not path.is_file():
            raise MissingFileError(f"{path}: no such study summary (a study writes <out>/<study>.json)")
        try:
            summary = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: not JSON ({exc})") from None
        parts.append(study_part(summary, str(path)))
    rows, notes = combine_studies(parts)
    print(f"{len(parts)} studies combined (mean ± standard deviation over all their runs; intervals paired by "
          "study, seed and sequence)")
    print(format_table(rows))
    for note in notes:
        print(note)
    if args.out:
        out = Path(args.out)
        atomic_write_text(out.with_suffix(".md"), format_markdown(rows, notes) + "\n")
        atomic_write_text(out.with_suffix(".json"), json.dumps(
            {"studies": [str(s) for s in args.studies], "rows": [r.to_dict() for r in rows], "notes": notes},
            indent=2) + "\n")
        print(f"written: {out.with_suffix('.md')}, {out.with_suffix('.json')}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Draw the tracked box on every frame of a video or a sequence folder and write an mp4."""
    from ct_ray.tracking.demo import render_demo, render_sequence_demo, video_frames

    box = parse_box(args.init_box, "--init-box") if args.init_box else None
    if args.video and box is None:
        raise InputError("--video needs --init-box x,y,w,h (the target on the first frame)")
    model = load_model(args)
    if args.video:
        info = render_demo(model, video_frames(args.video), box, args.out, args.fps, device=device(args.device))
    else:
        info = render_sequence_demo(model, args.sequence, args.out, box, args.fps, device=device(args.device))
    print(f"wrote {info['frames']} frames to {info['out']}")
    return 0


