"""Rows per second of the Ray Data pipeline (read Parquet, JPEG decode, augment) on one CPU, next to the rows per
second one training worker consumes (a CompressTracker-4 step of the synthetic configs' geometry). Target: the
pipeline on one CPU feeds at least 2x what a worker consumes, so a worker never waits on data.

Builds a small synthetic benchmark and its shards in a temporary folder unless --shards names existing ones.
Prints the figures and, last, one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ct_ray.orchestration.cluster import init_ray
from ct_ray.compress import PlanSampler, ReplacementModel, StageDivision, build_student
from ct_ray.data.pairs import PairSamplingConfig
from ct_ray.data.shards import ShardPlan, SourceSpec
from ct_ray.data.synth import generate_benchmark
from ct_ray.compress.losses import TrackingLoss
from ct_ray.models import OneStreamTracker, TrackerConfig
from ct_ray.training.experiment import RunKind
from ct_ray.training.step import TrainStep, parameter_groups

SYNTHETIC_TEACHER = TrackerConfig(embed_dim=128, depth=12, num_heads=4, head_channels=64, template_size=64,
                                  search_size=128)


def build_data(folder: Path, pairs: int) -> Path:
    from ct_ray.orchestration.data_pipeline import build_shards

    generate_benchmark(folder / "benchmark", sequences=12, frames=60, seed=0, preset="standard")
    plan = ShardPlan(sources=(SourceSpec(f"synthetic:{folder / 'benchmark'}", "train"),), pairs_per_epoch=pairs,
                     epochs=1, pairs_per_shard=max(1, pairs // 4), seed=0,
                     sampling=PairSamplingConfig(template_size=SYNTHETIC_TEACHER.template_size,
                                                 search_size=SYNTHETIC_TEACHER.search_size))
    build_shards(plan, folder / "shards", progress=False)
    return folder / "shards"


def pipeline_rows_per_s(shards: Path, passes: int) -> float:
    from ct_ray.orchestration.data_pipeline import pair_dataset

    rates = []
    for index in range(passes + 1):
        dataset = pair_dataset(shards, seed=index)
        start, rows = time.perf_counter(), 0
        for batch in dataset.iter_batches(batch_size=64, batch_format="numpy"):
            rows += len(batch["pair_index"])
        if index:  # the first pass warms Ray's workers up
            rates.append(rows / (time.perf_counter() - start))
    return statistics.median(rates)


def step_rows_per_s(batch: int, steps: int) -> float:
    torch.manual_seed(0)
    teacher = OneStreamTracker(SYNTHETIC_TEACHER)
    division = StageDivision.uniform(12, 4)
    model = ReplacementModel(teacher, build_student(teacher, division), division).train()
    optimizer = torch.optim.AdamW(parameter_groups(model, 4e-4, 1.0, 1.0), weight_decay=1e-4)
    step = TrainStep(model, RunKind.COMPRESSTRACKER, TrackingLoss(), optimizer, PlanSampler(4, 0), grad_clip=1.0)
    size_z, size_x = SYNTHETIC_TEACHER.template_size, SYNTHETIC_TEACHER.search_size
    data = {"template": torch.randn(batch, 3, size_z, size_z), "search": torch.randn(batch, 3, size_x, size_x),
            "search_box": torch.tensor([[0.5, 0.5, 0.2, 0.25]]).repeat(batch, 1)}
    step(data, 0, 0.5)
    times = []
    for index in range(1, steps + 1):
        start = time.perf_counter()
        step(data, index, 0.5)
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", default=None, help="existing shard folder (default: build a small one)")
    parser.add_argument("--pairs", type=int, default=1024)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    init_ray(num_cpus=1)
    with tempfile.TemporaryDirectory() as folder:
        shards = Path(args.shards) if args.shards else build_data(Path(folder), args.pairs)
        pipeline = pipeline_rows_per_s(shards, args.passes)
    import ray

    ray.shutdown()
    torch.set_num_threads(os.cpu_count() or 1)
    consumed = step_rows_per_s(args.batch, args.steps)
    ratio = pipeline / consumed
    print(f"Ray Data pipeline (read + decode + augment), 1 CPU: {pipeline:8.1f} rows/s")
    print(f"training step, CT-4 of the synthetic teacher, {torch.get_num_threads()} threads: {consumed:8.1f} rows/s")
    print(f"pipeline / consumption: {ratio:.1f}x (target >= 2x)")
    print(json.dumps({"pipeline_rows_per_s_per_cpu": round(pipeline, 1), "train_rows_per_s": round(consumed, 1),
                      "ratio": round(ratio, 2), "batch": args.batch, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
