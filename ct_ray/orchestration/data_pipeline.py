"""Ray side of the data: parallel shard builds (Ray tasks) and the Ray Data pipeline that feeds each training worker.

Every training worker streams its own samples: one Ray Data dataset of work items (``ct_ray.data.sources``: shard
row groups or new synthetic sequences), ``map_batches`` tasks that read (or render) an item's rows and draw its
samples (``ct_ray.data.samples.sample_pairs``: search window, crop, augmentation, seeded by run seed, epoch and pair
index) on the cluster's CPUs, rows in item order. The worker cuts them into exactly ``steps_per_epoch`` batches per
epoch with a seeded shuffle buffer (``EpochBatches``) and normalises on its own device. Everything is a function of
the seed and the epoch, so two runs of one config see the same batches and a run resumed at epoch ``e`` starts
reading at epoch ``e`` without decoding what it skips. Rows that training cannot use are dropped in the sampling
tasks and counted by a small actor (``DropCounter``).
"""
from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import ray
import torch
from tqdm.auto import tqdm

from ct_ray.crop import normalize_crops
from ct_ray.data.augment import AugmentConfig
from ct_ray.data.samples import JitterConfig, sample_pairs
from ct_ray.data.sequences import load_dataset
from ct_ray.data.shards import (
    BUILD_RECORD,
    ShardPlan,
    build_shard,
    existing_shard_entry,
    merge_skipped,
    prepare_output,
    write_manifest,
)
from ct_ray.data.batching import EpochBatches
from ct_ray.data.sources import TrainingSource
from ct_ray.fileio import Location


# -------------------------------------------------------------------------------------------------------- shards
@ray.remote(num_cpus=1)
def _build_shard_task(plan: ShardPlan, shard: int, out: Location, indices) -> tuple[int, dict, dict]:
    entry, skipped = build_shard(plan, shard, out, indices)
    return shard, entry, skipped


def build_shards(plan: ShardPlan, out: str | Location, progress: bool = True) -> dict:
    """Builds every missing shard in parallel Ray tasks, each writing its own file into ``out`` (a folder or a store
    URI), then writes ``_manifest.json``. The dataset indices are read once here and shared with the tasks. Shards
    already complete in ``out`` (right rows and schema, and the recorded checksum on a resume) are kept, so an
    interrupted build resumes where it stopped."""
    indices, source_counts = [], []
    for source in plan.sources:
        index = load_dataset(source.spec, split=source.split)
        if not index.sequences:
            raise ValueError(f"source {source.spec}: no usable sequence ({len(index.skipped)} skipped)")
        indices.append(index)
        source_counts.append({"spec": source.spec, "split": source.split, "sequences": len(index.sequences),
                              "skipped": len(index.skipped)})
    out = Location.of(out)
    previous = _recorded_entries(out)
    out = prepare_output(plan, out)
    entries: dict[int, dict] = {}
    missing = []
    for shard in range(plan.num_shards):
        entry = existing_shard_entry(plan, shard, out, previous.get(plan.shard_name(shard)))
        if entry is None:
            missing.append(shard)
        else:
            entries[shard] = entry
    skipped: list[dict] = [previous.get("_skipped", {})] if previous else []
    indices_ref = ray.put(indices)
    pending = [_build_shard_task.remote(plan, shard, out, indices_ref) for shard in missing]
    with tqdm(total=plan.num_shards, initial=len(entries), desc="shards", unit="shard", disable=not progress) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            shard, entry, skip = ray.get(done[0])
            entries[shard] = entry
            skipped.append(skip)
            _record_progress(out, plan, entries, merge_skipped(skipped))
            bar.update(1)
    return write_manifest(plan, out, list(entries.values()), source_counts, merge_skipped(skipped))


def _recorded_entries(out: Location) -> dict:
    """Shard entries (checksums) a previous, interrupted build of ``out`` recorded."""
    import json

    record = out.child(BUILD_RECORD)
    if not record.is_file():
        return {}
    try:
        data = json.loads(record.read_text())
    except json.JSONDecodeError:
        return {}
    entries = {e["file"]: e for e in data.get("built", [])}
    if data.get("skipped_frames"):
        entries["_skipped"] = data["skipped_frames"]
    return entries


def _record_progress(out: Location, plan: ShardPlan, entries: dict[int, dict], skipped: dict) -> None:
    import json

    out.child(BUILD_RECORD).write_text(json.dumps({**plan.to_dict(), "built": sorted(entries.values(),
                                                                                     key=lambda e: e["file"]),
                                                   "skipped_frames": skipped}, indent=2, sort_keys=True))


# ------------------------------------------------------------------------------------------------------- samples
@ray.remote(num_cpus=0)
class DropCounter:
    """Counts rows the sampling tasks dropped, by reason."""

    def __init__(self) -> None:
        self._counts: Counter = Counter()

    def add(self, counts: dict[str, int]) -> None:
        self._counts.update(counts)

    def counts(self) -> dict[str, int]:
        return dict(self._counts)


@dataclass(frozen=True)
class SampleSettings:
    """What every sample of a run is drawn with: the model's crop sizes and search factor, jitter, augmentation."""

    seed: int
    template_size: int
    search_size: int
    search_factor: float
    jitter: JitterConfig
    augment: AugmentConfig


def _epoch_offsets(source: TrainingSource, first_epoch: int, last_epoch: int, rank: int, world: int,
                   rows: int) -> list[int]:
    offsets = [0]
    for epoch in range(first_epoch, last_epoch + 1):
        offsets.append(offsets[-1] + len(source.items(epoch, rank, world, rows)))
    return offsets


def sample_dataset(source: TrainingSource, settings: SampleSettings, first_epoch: int, last_epoch: int, rank: int,
                   world: int, rows: int, counter=None) -> "ray.data.Dataset":
    """The samples of one worker for epochs ``first_epoch .. last_epoch``, in order: ``template``, ``search``
    (uint8 HxWx3), ``search_box`` (cxcywh normalised), ``pair_index`` and ``epoch``. One Ray Data task per work
    item; an item's description is recomputed in its task from (epoch, position), so nothing large travels."""
    offsets = _epoch_offsets(source, first_epoch, last_epoch, rank, world, rows)

    def load_and_sample(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        position = int(batch["id"][0])
        span = bisect.bisect_right(offsets, position) - 1
        epoch = first_epoch + span
        item = source.items(epoch, rank, world, rows)[position - offsets[span]]
        out, dropped = sample_pairs(source.load(item), settings.seed, epoch, settings.template_size,
                                    settings.search_size, settings.search_factor, settings.jitter, settings.augment)
        if dropped and counter is not None:
            counter.add.remote(dict(dropped))
        out["epoch"] = np.full(len(out["pair_index"]), epoch, dtype=np.int64)
        return out

    total = offsets[-1]
    ray.data.DataContext.get_current().enable_progress_bars = False  # ct-ray reports its own progress
    return ray.data.range(total, override_num_blocks=max(1, total)).map_batches(
        load_and_sample, batch_size=1, batch_format="numpy")


def to_device(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    """A numpy batch as the training step's input: normalised float crops on ``device`` and cxcywh boxes."""
    return {
        "template": normalize_crops(torch.from_numpy(np.ascontiguousarray(batch["template"])).to(device)),
        "search": normalize_crops(torch.from_numpy(np.ascontiguousarray(batch["search"])).to(device)),
        "search_box": torch.from_numpy(batch["search_box"]).to(device, torch.float32),
        "pair_index": torch.from_numpy(batch["pair_index"]),
    }


def worker_batches(dataset: "ray.data.Dataset", batch_size: int, steps: int, shuffle_buffer: int, seed: int,
                   rank: int) -> EpochBatches:
    """The epoch batcher over a worker's sample dataset, read in order with a few batches prefetched."""
    dataset.context.execution_options.preserve_order = True
    stream = dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=4)
    return EpochBatches(iter(stream), batch_size, steps, shuffle_buffer, seed, rank)
