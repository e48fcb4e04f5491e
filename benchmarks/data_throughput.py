"""The training data pipeline measured: samples per second per CPU, against what one training worker consumes, and
the storage of the paper's recipe with the old and the new shard layout.

1. **Pipeline rate.** The per-worker sample stream (``ct_ray.orchestration.data_pipeline.SampleStream``: one Ray task
   per work item) for the shard source (Parquet read + JPEG decode + window + crop + augment) and for the synthetic
   stream (render + crop + window + augment), with one task at a time: rows per second, and the CPU seconds all
   Ray processes spent per row; and the same stream items through a Ray Data ``map_batches`` pipeline, which
   ``SampleStream`` replaced because it cost more CPU per row.
2. **Worker rate.** Rows per second one training worker consumes: a training step of the small preset's teacher
   (12 blocks, width 64, 64 / 128 px crops, batch 32) on this machine's threads.
   Target: the pipeline supplies at least 2x what one worker consumes, per CPU it uses.
3. **Storage.** Bytes per pair of the old layout (a 256 px search crop frozen at build time) and of the new one (a
   context crop of factor 12 at the same resolution), measured on synthetic pairs at the paper's sizes (128 / 256
   px), and what the paper's recipe (500 epochs x 60,000 pairs) needs: with frozen crops every epoch must be stored,
   with sample-time crops a pool of pairs is reused every pass with new windows (``--pool-epochs`` of them).

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

import numpy as np
import psutil
import torch


def ray_cpu_seconds() -> float:
    total = 0.0
    for process in psutil.process_iter(["cmdline"]):
        try:
            line = " ".join((process.info["cmdline"] or [])[:3])
            if "ray" in line or process.pid == os.getpid():
                times = process.cpu_times()
                total += times.user + times.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def pipeline_rate(source, settings, rows: int, epochs: int) -> dict:
    from ct_ray.orchestration.data_pipeline import SampleStream

    start_cpu, start = ray_cpu_seconds(), time.perf_counter()
    count = sum(len(batch["pair_index"]) for batch in SampleStream(source, settings, 1, epochs, 0, 1, rows, tasks=1))
    seconds, cpu = time.perf_counter() - start, ray_cpu_seconds() - start_cpu
    return {"rows": count, "rows_per_s": count / seconds, "cpu_ms_per_row": 1000 * cpu / count,
            "rows_per_cpu_s": count / cpu}


def ray_data_rate(source, settings, rows: int, epochs: int) -> dict:
    """The same work items and sampling through a Ray Data pipeline (``map_batches``, one task at a time): what
    ``SampleStream``'s plain tasks are measured against."""
    import ray.data

    from ct_ray.data.samples import sample_pairs

    items = [item for epoch in range(1, epochs + 1) for item in source.items(epoch, 0, 1, rows)]

    def sample(batch: dict) -> dict:
        import cv2

        cv2.setNumThreads(1)
        item = items[int(batch["index"][0])]
        out, _ = sample_pairs(source.load(item), settings.seed, int(item["epoch"]), settings.template_size,
                              settings.search_size, settings.search_factor, settings.jitter, settings.augment)
        return out

    start_cpu, start = ray_cpu_seconds(), time.perf_counter()
    dataset = ray.data.from_items([{"index": k} for k in range(len(items))]).map_batches(
        sample, batch_size=1, num_cpus=1, concurrency=1)
    count = sum(len(batch["pair_index"]) for batch in dataset.iter_batches(batch_size=None))
    seconds, cpu = time.perf_counter() - start, ray_cpu_seconds() - start_cpu
    return {"rows": count, "rows_per_s": count / seconds, "cpu_ms_per_row": 1000 * cpu / count,
            "rows_per_cpu_s": count / cpu}


def worker_rate(threads: int, steps: int = 8) -> float:
    from ct_ray.compress.losses import LossWeights, TrackingLoss
    from ct_ray.models import OneStreamTracker, TrackerConfig
    from ct_ray.training.experiment import RunKind
    from ct_ray.training.step import TrainStep, parameter_groups

    torch.set_num_threads(threads)
    model = OneStreamTracker(TrackerConfig(embed_dim=64, depth=12, num_heads=4, head_channels=32, template_size=64,
                                           search_size=128))
    optimizer = torch.optim.AdamW(parameter_groups(model, 1e-3, 1.0, 1.0))
    step = TrainStep(model, RunKind.TEACHER, TrackingLoss(LossWeights(guidance=0, mimicking=0)), optimizer,
                     grad_clip=1.0)
    batch = {"template": torch.randn(32, 3, 64, 64), "search": torch.randn(32, 3, 128, 128),
             "search_box": torch.tensor([[0.5, 0.5, 0.2, 0.2]] * 32)}
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        step(batch, i, 1.0)
        times.append(time.perf_counter() - start)
    return 32 / statistics.median(times[2:])


def storage(folder: Path, pairs: int = 32) -> dict:
    """Bytes per stored pair, old (template 128 + frozen search 256) and new (template 128 + context factor 12)."""
    from ct_ray.data.pairs import PairSamplingConfig, crop_pair
    from ct_ray.data.samples import JitterConfig, encode_jpeg
    from ct_ray.data.synth import simulate_scene

    new = PairSamplingConfig()  # 128 / 256 px, context factor 12 -> 768 px
    # The old layout's search crop: factor 4 at 256 px (the jitter applied before cropping, so no margin)
    old = PairSamplingConfig(context_factor=4.0, jitter=JitterConfig(center_jitter=0.0, max_scale_change=1.0))
    sizes = {"old": [], "new": []}
    rng = np.random.default_rng(0)
    for i in range(pairs):
        scene = simulate_scene(np.random.default_rng([0, 99, i]), "standard", 40, (480, 640))
        t, s = sorted(rng.choice(40, 2, replace=False))
        frames = {k: scene.render(int(k)) for k in (t, s)}
        boxes, full, out, _ = scene.truth([t, s])
        if full.any() or out.any():
            continue
        for name, sampling in (("old", old), ("new", new)):
            template, context, _, _ = crop_pair(frames[t], boxes[0], frames[s], boxes[1], sampling)
            sizes[name].append(len(encode_jpeg(template, 95)) + len(encode_jpeg(context, 95)))
    return {name: float(np.mean(values)) for name, values in sizes.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1024, help="rows per epoch of the measured stream")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the measured stream")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the worker-rate measurement")
    parser.add_argument("--pool-epochs", type=int, default=50, help="epochs of distinct pairs in the new layout's pool")
    args = parser.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from ct_ray.data.augment import AugmentConfig
    from ct_ray.data.pairs import PairSamplingConfig
    from ct_ray.data.samples import JitterConfig
    from ct_ray.data.shards import ShardPlan, SourceSpec, shard_files
    from ct_ray.data.sources import ShardSource, StreamSource
    from ct_ray.data.stream import StreamConfig
    from ct_ray.data.synth import generate_benchmark
    from ct_ray.orchestration.cluster import init_ray
    from ct_ray.orchestration.data_pipeline import SampleSettings, build_shards

    init_ray(None)
    jitter = JitterConfig()
    sampling = PairSamplingConfig(template_size=64, search_size=128,
                                  context_factor=jitter.required_context_factor(4.0))
    settings = SampleSettings(seed=0, template_size=64, search_size=128, search_factor=4.0, jitter=jitter,
                              augment=AugmentConfig())
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        generate_benchmark(root / "bench", sequences=12, frames=60, seed=0, preset="standard", test_fraction=0.25)
        plan = ShardPlan(sources=(SourceSpec(f"synthetic:{root / 'bench'}", "train"),), pairs_per_epoch=1024,
                         epochs=1, pairs_per_shard=256, seed=0, sampling=sampling)
        build_start = time.perf_counter()
        build_shards(plan, root / "shards", progress=False)
        build_s = time.perf_counter() - build_start
        files = tuple((location.uri, rows) for location, rows in shard_files(root / "shards"))
        shards = pipeline_rate(ShardSource(files, sampling, 0), settings, args.rows, args.epochs)
        stream_source = StreamSource(StreamConfig(frames_per_sequence=10, pairs_per_sequence=40), sampling, 0)
        stream = pipeline_rate(stream_source, settings, args.rows, args.epochs)
        ray_data = ray_data_rate(stream_source, settings, args.rows, args.epochs)
        sizes = storage(root)
    consumes = worker_rate(args.threads)
    recipe = 500 * 60_000
    old_tb = recipe * sizes["old"] / 1e12
    new_tb = args.pool_epochs * 60_000 * sizes["new"] / 1e12
    print(f"one training worker (small teacher, batch 32, {args.threads} threads): {consumes:.0f} rows/s")
    for name, rate in (("shards", shards), ("stream", stream), ("stream, Ray Data map_batches", ray_data)):
        print(f"{name:>7}: {rate['rows_per_s']:.0f} rows/s with one task, {rate['cpu_ms_per_row']:.2f} ms of CPU per "
              f"row (all Ray processes), {rate['rows_per_cpu_s']:.0f} rows per CPU second = "
              f"{rate['rows_per_cpu_s'] / consumes:.1f}x what one worker consumes")
    print(f"shard build: {1024 / build_s:.0f} pairs/s ({build_s:.1f} s for 1024 pairs at 64 / 128 px)")
    print(f"bytes per pair at 128 / 256 px: old layout {sizes['old'] / 1e3:.0f} kB (frozen search crop), new "
          f"{sizes['new'] / 1e3:.0f} kB (context factor 12)")
    print(f"paper's recipe (500 epochs x 60,000 pairs): old layout {old_tb:.2f} TB for 500 stored epochs; new layout "
          f"{new_tb:.2f} TB for a pool of {args.pool_epochs} epochs reused with new windows every pass, or nothing "
          f"stored with the synthetic stream")
    print(json.dumps({"worker_rows_per_s": consumes, "shards": shards, "stream": stream, "stream_ray_data": ray_data,
                      "shard_build_pairs_per_s": 1024 / build_s, "bytes_per_pair": sizes,
                      "paper_recipe_tb": {"old_500_epochs": old_tb, f"new_pool_{args.pool_epochs}": new_tb}}))


if __name__ == "__main__":
    main()
