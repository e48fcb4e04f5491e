"""The evaluation commands of ``ct-ray``: ``eval``, ``score``, ``plot``, ``compare`` and ``export``.

``add_commands(subparsers, ...)`` adds them to the ``ct-ray`` parser; each sets ``func`` to a function that takes the
parsed ``argparse.Namespace`` and returns the exit code (0 success, 1 a failed check); errors are raised and turned
into one line and exit code 2 by ``ct_ray.cli.run``.
"""
from __future__ import annotations

import argparse
import json

from ct_ray.errors import InputError


def warn_about_boxes(sequences, command: str) -> None:
    """Ground-truth boxes outside their frames, one warning line per kind (they count as misses)."""
    import sys

    from ct_ray.data.checks import box_report

    for line in box_report(sequences).lines():
        print(f"ct-ray {command}: warning: {line}", file=sys.stderr)


RUNTIME_CHOICES = ("torch", "compile", "onnxruntime")


def add_runtime_arguments(parser: argparse.ArgumentParser, repeat: bool = False) -> None:
    """``--runtime`` (repeatable with ``repeat``), ``--provider``, ``--int8``, ``--graphs``: where the network runs."""
    if repeat:
        parser.add_argument("--runtime", action="append", choices=RUNTIME_CHOICES, default=None,
                            help="network runtime; repeat to profile several side by side (default: torch)")
    else:
        parser.add_argument("--runtime", choices=RUNTIME_CHOICES, default="torch",
                            help="network runtime: PyTorch eager, torch.compile, or ONNX Runtime (export extra)")
    parser.add_argument("--provider", choices=("cpu", "cuda", "tensorrt"), default="cpu",
                        help="ONNX Runtime execution provider (cuda / tensorrt need onnxruntime-gpu)")
    parser.add_argument("--int8", action="store_true",
                        help="ONNX Runtime: dynamic int8 quantisation of the search graph's weights")
    parser.add_argument("--graphs", default=None,
                        help="ONNX Runtime: tracking graphs written by 'ct-ray export --tracking-graphs DIR' "
                             "(default: exported from the checkpoint and cached)")


def runtime_spec(args: argparse.Namespace, name: str | None = None):
    from ct_ray.tracking.runtimes import RuntimeSpec

    name = name or args.runtime
    onnx = name == "onnxruntime"
    return RuntimeSpec(name, args.provider if onnx else "cpu", bool(args.int8) and onnx)


def _fmt(value, digits: int = 2, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


# ------------------------------------------------------------------------------------------------------------- eval
def cmd_eval(args: argparse.Namespace) -> int:
    """Track every sequence of a dataset in parallel Ray tasks, write pytracking results, score, log to MLflow."""
    from ct_ray.config import from_dict
    from ct_ray.evaluation.reports import format_score_table
    from ct_ray.orchestration.evaluate import EvalRequest, evaluate_checkpoint

    request = from_dict(EvalRequest, {
        "checkpoint": args.checkpoint, "dataset": args.dataset, "kind": args.kind, "num_heads": args.num_heads,
        "split": args.split, "name": args.name, "out": args.out, "max_sequences": args.max_sequences,
        "use_gpu": args.gpu, "got10k_submission": args.got10k_submission,
        "trackingnet_submission": args.trackingnet_submission, "profile": args.profile, "mlflow": not args.no_mlflow,
        "mlflow_uri": args.mlflow_uri, "experiment": args.experiment, "exclude_invalid": args.exclude_invalid,
        "cpus_per_task": args.cpus_per_task, "threads_per_task": args.threads_per_task,
        "progress": not args.no_progress, "runtime": args.runtime, "provider": args.provider, "int8": args.int8,
        "graphs": args.graphs, "address": args.address})
    outcome = evaluate_checkpoint(request)
    if outcome.report is not None:
        print(format_score_table(outcome.report))
    timing, size = outcome.timing, outcome.size
    print(f"tracking loop     {_fmt(timing['tracking_ms'], 2, ' ms')} median per frame "
          f"({_fmt(timing['tracking_fps'], 1)} FPS; {timing['frames']} frames, frame 0 excluded; "
          f"runtime {outcome.runtime})")
    if "forward_ms" in size:
        print(f"network only      {size['forward_ms']:.2f} ms ({size['forward_fps']:.1f} FPS, PyTorch eager; "
              f"{size['network_ms']:.2f} ms per frame on {outcome.runtime}, {size['profile_device']})")
    print(f"parameters        {size['params'] / 1e6:.2f} M;  FLOPs / forward {size['flops'] / 1e9:.3f} G")
    print(f"results           {outcome.results_dir} ({outcome.tracked} tracked, "
          f"{outcome.sequences - outcome.tracked} kept)")
    if outcome.mlflow_run_id:
        how = "new run" if outcome.mlflow_run_created else "the checkpoint's run"
        print(f"MLflow            {how} {outcome.mlflow_run_id} (metrics {outcome.prefix}_*)")
    return 0


# ------------------------------------------------------------------------------------------------------------ score
def cmd_score(args: argparse.Namespace) -> int:
    """Score a results folder: AUC, OP50, OP75, precision@20px, normalised precision@0.2 (METHOD.md section 8)."""
    from ct_ray.evaluation.reports import format_score_table, load_sequences, score_results

    kind, split, sequences = load_sequences(args.dataset, args.split, args.max_sequences)
    warn_about_boxes(sequences, "score")
    report = score_results(args.results, sequences, kind, split, exclude_invalid=args.exclude_invalid)
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        print(format_score_table(report))
    return 0


# ------------------------------------------------------------------------------------------------------------- plot
def cmd_plot(args: argparse.Namespace) -> int:
    """Success and precision plots (PNG) comparing result folders on one dataset."""
    from ct_ray.evaluation.reports import plot_results

    paths = plot_results(args.results, args.label, args.dataset, args.out, split=args.split,
                         max_sequences=args.max_sequences, exclude_invalid=args.exclude_invalid)
    for path in paths:
        print(path)
    return 0


# ---------------------------------------------------------------------------------------------------------- compare
def cmd_compare(args: argparse.Namespace) -> int:
    """Table of the runs of an MLflow experiment: AUC, precision, FPS, speed-up and AUC retention vs the teacher."""
    from ct_ray.orchestration import mlflow_runs
    from ct_ray.orchestration.compare import (
        compare_runs,
        format_compare_table,
        speed_accuracy_points,
        write_compare_csv,
    )

    uri = mlflow_runs.resolve_tracking_uri(args.mlflow_uri)
    mlflow_runs.check_reachable(uri)
    rows = compare_runs(uri, args.experiment, prefix=args.metric_prefix)
    print(format_compare_table(rows))
    print(f"AUC / Prec: {args.metric_prefix}_auc / {args.metric_prefix}_precision (ct-ray eval) when logged, else "
          "the latest val_auc / val_precision (training validation; column 'from'). FPS: tracking_fps. "
          "speed-up and AUC kept: against the run named by the tag teacher_run_id.")
    if args.csv:
        print(f"wrote {write_compare_csv(rows, args.csv)}")
    if args.plot:
        from ct_ray.evaluation.plots import speed_accuracy_plot

        points = speed_accuracy_points(rows)
        if not points:
            raise InputError(f"no run of {args.experiment!r} has both tracking_fps and an AUC to plot")
        print(f"wrote {speed_accuracy_plot(points, args.plot, title=f'{args.experiment}: speed against accuracy')}")
    return 0


# ----------------------------------------------------------------------------------------------------------- export
def cmd_export(args: argparse.Namespace) -> int:
    """The tracker's network forward as an ONNX graph, and / or the two tracking graphs that ``--runtime
    onnxruntime`` runs (needs the export extra), checked with onnxruntime."""
    from ct_ray.models import load_checkpoint
    from ct_ray.tracking.export import check_onnx, export_onnx, export_tracking_graphs, onnxruntime_available

    if not args.onnx and not args.tracking_graphs:
        raise InputError("nothing to export: pass --onnx FILE and / or --tracking-graphs DIR")
    model, _ = load_checkpoint(args.checkpoint, args.kind, args.num_heads)
    if args.tracking_graphs:
        paths = export_tracking_graphs(model, args.tracking_graphs, int8=args.int8, opset=args.opset)
        print(f"wrote {', '.join(str(p) for p in paths)} (template crop -> template_tokens; template_tokens, search "
              f"crop -> score_map, size_map, offset_map{'; int8 weights' if args.int8 else ''})")
        print(f"track with them: ct-ray eval --runtime onnxruntime --graphs {args.tracking_graphs}"
              f"{' --int8' if args.int8 else ''} ...")
        if not args.onnx:
            return 0
    path = export_onnx(model, args.onnx, opset=args.opset)
    print(f"wrote {path} (opset {args.opset}; inputs template, search; outputs pred_boxes, score_map, size_map, "
          "offset_map)")
    if args.no_check:
        return 0
    if not onnxruntime_available():
        print("onnxruntime is not installed: numerical check skipped")
        return 0
    check = check_onnx(model, path, tolerance=args.tolerance)
    verdict = "PASS" if check.passed else "FAIL"
    details = ", ".join(f"{name} {value:.2e}" for name, value in check.per_output.items())
    print(f"onnxruntime vs PyTorch: max abs difference {check.max_abs_diff:.3e} (tolerance {check.tolerance:g}): "
          f"{verdict}  [{details}]")
    return 0 if check.passed else 1


# ---------------------------------------------------------------------------------------------------------- parsers
_DATASET_HELP = ("KIND:PATH with KIND one of synthetic, lasot, got10k, trackingnet, coco, uav123, plain "
                 "(e.g. lasot:/data/LaSOT)")
_SPLIT_HELP = ("dataset split (default: test for lasot / synthetic / got10k / trackingnet, every sequence for "
               "uav123 / plain; 'all' = every sequence)")


def _add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help=_DATASET_HELP)
    parser.add_argument("--split", default=None, help=_SPLIT_HELP)
    parser.add_argument("--max-sequences", type=int, default=None, help="only the first N sequences (by name)")
    parser.add_argument("--exclude-invalid", action="store_true",
                        help="drop frames without a valid visible GT box from the denominators (default: misses)")


def _add_mlflow_uri(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mlflow-uri", default=None,
                        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)")


def add_commands(subparsers, make_parser, add_checkpoint_arguments) -> None:
    """Adds ``eval``, ``score``, ``plot``, ``compare`` and ``export`` to the ``ct-ray`` subparsers
    (``make_parser(subparsers, name, func)`` and ``add_checkpoint_arguments(parser, json_flag)`` are the CLI's)."""
    evaluate = make_parser(subparsers, "eval", cmd_eval)
    add_checkpoint_arguments(evaluate, json_flag=False)
    _add_dataset_arguments(evaluate)
    evaluate.add_argument("--name", default=None,
                          help="name of this evaluation: results folder results/<name> and MLflow metric prefix "
                               "<name>_auc ... (default prefix: the split; another runtime than torch appends "
                               "its name to both)")
    evaluate.add_argument("--out", default=None,
                          help="results folder (default results/<name>, or results/<checkpoint>_<kind>_<split>; with "
                               "another runtime than torch, _<runtime> appended); "
                               "complete sequences already there are kept")
    evaluate.add_argument("--gpu", action="store_true", help="one GPU per Ray task")
    evaluate.add_argument("--cpus-per-task", type=float, default=1.0, help="Ray CPUs reserved per tracking task")
    evaluate.add_argument("--threads-per-task", type=int, default=1,
                          help="torch threads per tracking task (the speed measured is per task)")
    evaluate.add_argument("--got10k-submission", action="store_true",
                          help="also write the GOT-10k server layout to <out>/got10k_submission")
    evaluate.add_argument("--trackingnet-submission", action="store_true",
                          help="also write the TrackingNet server layout to <out>/trackingnet_submission")
    evaluate.add_argument("--profile", action="store_true",
                          help="also measure network-only latency (forward_ms / forward_fps)")
    add_runtime_arguments(evaluate)
    evaluate.add_argument("--no-mlflow", action="store_true", help="log nothing to MLflow")
    _add_mlflow_uri(evaluate)
    evaluate.add_argument("--experiment", default="ct-ray",
                          help="MLflow experiment of a new run (a checkpoint's own run keeps its own)")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bar")
    evaluate.add_argument("--address", default=None,
                          help="Ray cluster address (default: RAY_ADDRESS, else a local instance on 127.0.0.1)")
    evaluate.add_argument("--verbose", action="store_true",
                          help="show Ray's own output live, not only in the log file in the results folder")

    score = make_parser(subparsers, "score", cmd_score)
    score.add_argument("--results", required=True, help="results folder (<seq>.txt per sequence)")
    _add_dataset_arguments(score)
    score.add_argument("--json", action="store_true", help="print one JSON object (overall + per_sequence)")

    plot = make_parser(subparsers, "plot", cmd_plot)
    plot.add_argument("--results", required=True, action="append", help="results folder; repeat to compare")
    plot.add_argument("--label", action="append", default=None,
                      help="legend label of each --results, in order (default: the folder names)")
    _add_dataset_arguments(plot)
    plot.add_argument("--out", required=True, help="folder for success.png and precision.png")

    compare = make_parser(subparsers, "compare", cmd_compare)
    compare.add_argument("--experiment", required=True, help="MLflow experiment name")
    _add_mlflow_uri(compare)
    compare.add_argument("--csv", default=None, help="also write the table as CSV")
    compare.add_argument("--plot", default=None, help="also write a speed-accuracy chart (PNG): AUC against FPS")
    compare.add_argument("--metric-prefix", default="test", help="evaluation metric prefix (<prefix>_auc)")

    export = make_parser(subparsers, "export", cmd_export)
    add_checkpoint_arguments(export, json_flag=False)
    export.add_argument("--onnx", default=None, help="output .onnx file of the whole forward (template, search)")
    export.add_argument("--tracking-graphs", default=None,
                        help="folder for template.onnx and search.onnx, the graphs --runtime onnxruntime tracks with")
    export.add_argument("--int8", action="store_true",
                        help="with --tracking-graphs: also search_int8.onnx (dynamic int8 weights)")
    export.add_argument("--opset", type=int, default=17, help="ONNX opset")
    export.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest absolute difference allowed between onnxruntime and PyTorch")
    export.add_argument("--no-check", action="store_true", help="skip the onnxruntime check")
