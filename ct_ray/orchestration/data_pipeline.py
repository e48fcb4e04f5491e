"""Ray side of the data: parallel shard builds (Ray tasks) and the sample stream that feeds each training worker.

Every training worker streams its own samples: its work items (``ct_ray.data.sources``: shard row groups or new
synthetic sequences) go to a small window of Ray tasks (``SampleStream``) that read (or render) an item's rows and
draw its samples (``ct_ray.data.samples.sample_pairs``: search window, crop, augmentation, seeded by run seed, epoch
and pair index) on the cluster's CPUs, rows in item order, collected up to a shuffle buffer ahead by a thread of the
worker so that an epoch's first batch does not wait for its rows. The worker cuts them into exactly
``steps_per_epoch`` batches per epoch with a seeded shuffle buffer (``EpochBatches``) and normalises on its own
device. Everything is a function of the seed and the epoch, so two runs of one config see the same batches and a run
resumed at epoch ``e`` starts reading at epoch ``e`` without decoding what it skips. Rows that training cannot use
are dropped in the sampling tasks and counted by a small actor (``DropCounter``).
"""
from __future__ import annotations

import collections
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Iterator

import cv2
import numpy as np
import ray
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
import torch
from tqdm.auto import tqdm

from ct_ray.crop import normalize_crops
from ct_ray.data.augment import AugmentConfig
from ct_ray.data.samples import JitterConfig, sample_pairs
from ct_ray.data.shards import (
    BUILD_RECORD,
    ShardPlan,
    build_shard,
    existing_shard_entry,
    index_sources,
    merge_skipped,
    prepare_output,
    write_manifest,
)
from ct_ray.data.batching import EpochBatches
from ct_ray.data.sources import TrainingSource
from ct_ray.errors import InputError
from ct_ray.fileio import Location


# -------------------------------------------------------------------------------------------------------- shards
@ray.remote(num_cpus=1)
def _build_shard_task(plan: ShardPlan, shard: int, out: Location, indices) -> tuple[int, dict, dict]:
    entry, skipped = build_shard(plan, shard, out, indices)
    return shard, entry, skipped


def build_shards(plan: ShardPlan, out: str | Location, progress: bool = True, indexed=None) -> dict:
    """Builds every missing shard in parallel Ray tasks, each writing its own file into ``out`` (a folder or a store
    URI), then writes ``_manifest.json``. The dataset indices are read once (``index_sources``, or ``indexed`` when
    the caller read them before starting Ray) and shared with the tasks. Shards already complete in ``out`` (right
    rows and schema, and the recorded checksum on a resume) are kept, so an interrupted build resumes where it
    stopped."""
    indices, source_counts = indexed if indexed is not None else index_sources(plan)
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


@ray.remote(num_cpus=1)
def _sample_task(source: TrainingSource, settings: SampleSettings, item: dict, rank: int,
                 counter=None) -> dict[str, np.ndarray]:
    """One work item's samples: its rows read (or rendered) and drawn (window, crop, augmentation)."""
    cv2.setNumThreads(1)  # one core per task (Ray's share); OpenCV's own thread pool would fight training
    epoch = int(item["epoch"])
    out, dropped = sample_pairs(source.load(item), settings.seed, epoch, settings.template_size,
                                settings.search_size, settings.search_factor, settings.jitter, settings.augment)
    if dropped and counter is not None:
        counter.add.remote(dict(dropped))
    out["epoch"] = np.full(len(out["pair_index"]), epoch, dtype=np.int64)
    return out


class SampleStream:
    """The samples of one training worker for epochs ``first_epoch .. last_epoch``, in work-item order.

    Every item (``ct_ray.data.sources``) is one Ray task on the cluster's CPUs, at most ``tasks`` at a time, so the
    data keeps pace with training without competing with it for every core. A background thread collects the items
    in order and keeps up to ``ahead_rows`` rows ready beyond what the worker has taken (at least one item): while
    the worker drains its shuffle buffer at the end of an epoch, the next epoch's rows are drawn, so the first batch
    of an epoch does not wait for a whole buffer of new rows. Which rows arrive, and in which order, does not depend
    on ``tasks``, ``ahead_rows`` or timing. Plain tasks rather than a Ray Data pipeline: here they cost 3.7 ms of CPU
    per sample against 5.1-5.5 ms for ``map_batches`` (1.9 ms of it is the sampling itself), and no streaming
    executor runs inside the training process (``benchmarks/data_throughput.py``)."""

    def __init__(self, source: TrainingSource, settings: SampleSettings, first_epoch: int, last_epoch: int,
                 rank: int, world: int, rows: int, counter=None, tasks: int = 2, ahead_rows: int = 0) -> None:
        items = ((epoch, item) for epoch in range(first_epoch, last_epoch + 1)
                 for item in source.items(epoch, rank, world, rows))
        # Outside any placement group: inside a Tune trial the worker's bundle holds only the worker itself.
        task = _sample_task.options(scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None))
        self._submit = lambda item: task.remote(source, settings, item, rank, counter)
        self._items, self._tasks, self._ahead_rows = items, max(1, tasks), max(0, ahead_rows)
        self._ready: collections.deque = collections.deque()
        self._ready_rows = 0
        self._done = False
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._produce, name="ct-ray-samples", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        pending: collections.deque = collections.deque()
        try:
            while not self._stop.is_set():
                while len(pending) < self._tasks:
                    entry = next(self._items, None)
                    if entry is None:
                        break
                    pending.append(self._submit(entry[1]))
                if not pending:
                    break
                block = ray.get(pending.popleft())
                size = len(block["pair_index"])
                with self._changed:
                    while (self._ready and self._ready_rows + size > self._ahead_rows
                           and not self._stop.is_set()):
                        self._changed.wait(0.5)
                    self._ready.append(block)
                    self._ready_rows += size
                    self._changed.notify_all()
        except BaseException as exc:  # raised to the worker at its next read
            self._error = exc
        finally:
            with self._changed:
                self._done = True
                self._changed.notify_all()

    def ready_rows(self) -> int:
        """Rows drawn and waiting for the worker."""
        with self._changed:
            return self._ready_rows

    def close(self) -> None:
        """Stops drawing items (the tasks in flight finish on their own)."""
        self._stop.set()
        with self._changed:
            self._changed.notify_all()

    def __iter__(self) -> "SampleStream":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        with self._changed:
            while not self._ready and not self._done:
                self._changed.wait()
            if self._ready:
                block = self._ready.popleft()
                self._ready_rows -= len(block["pair_index"])
                self._changed.notify_all()
                return block
        if self._error is not None:
            raise self._error
        raise StopIteration


def to_device(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    """A numpy batch as the training step's input: normalised float crops on ``device`` and cxcywh boxes."""
    return {
        "template": normalize_crops(torch.from_numpy(np.ascontiguousarray(batch["template"])).to(device)),
        "search": normalize_crops(torch.from_numpy(np.ascontiguousarray(batch["search"])).to(device)),
        "search_box": torch.from_numpy(batch["search_box"]).to(device, torch.float32),
        "pair_index": torch.from_numpy(batch["pair_index"]),
    }


def worker_batches(stream: SampleStream, batch_size: int, steps: int, shuffle_buffer: int, seed: int,
                   rank: int) -> EpochBatches:
    """The epoch batcher over a worker's sample stream."""
    return EpochBatches(stream, batch_size, steps, shuffle_buffer, seed, rank)
