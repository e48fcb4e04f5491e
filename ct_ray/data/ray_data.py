"""Ray side of the data: parallel shard builds (Ray tasks) and the Ray Data pipeline that feeds Ray Train.

The pipeline streams the shards with ``read_parquet`` (file order reshuffled every pass from the run's seed, so a
run sees the same sequence of passes every time), decodes and augments rows
in ``map_batches`` on CPU workers, and hands uint8 crops to the training workers, which normalise on their own
device. Rows that training cannot use are dropped in the decode stage and counted by a small actor
(``DropCounter``), so the count can be reported while nothing bad reaches the model.
"""
from __future__ import annotations

from collections import Counter
from functools import partial
from pathlib import Path
from typing import Iterator

import numpy as np
import ray
import torch
from tqdm.auto import tqdm

from ct_ray.crop import normalize_crops
from ct_ray.data.augment import AugmentConfig, decode_pairs
from ct_ray.data.sequences import load_dataset
from ct_ray.data.shards import (
    ShardPlan,
    build_shard,
    existing_shard_entry,
    prepare_output,
    read_manifest,
    shard_files,
    write_manifest,
)

READ_COLUMNS = ["pair_index", "template_jpeg", "search_jpeg", "search_box"]


@ray.remote(num_cpus=1)
def _build_shard_task(plan: ShardPlan, shard: int, out_dir: str) -> tuple[int, dict]:
    return shard, build_shard(plan, shard, out_dir)


def build_shards(plan: ShardPlan, out_dir: str | Path, progress: bool = True) -> dict:
    """Builds every missing shard in parallel Ray tasks, then writes ``_manifest.json``; complete shards already
    in ``out_dir`` are kept, so an interrupted build resumes where it stopped."""
    prepare_output(plan, out_dir)
    source_counts = []
    for source in plan.sources:
        index = load_dataset(source.spec, split=source.split)
        if not index.sequences:
            raise ValueError(f"source {source.spec}: no usable sequence ({len(index.skipped)} skipped)")
        source_counts.append({"spec": source.spec, "split": source.split, "sequences": len(index.sequences),
                              "skipped": len(index.skipped)})
    entries: dict[int, dict] = {}
    missing = []
    for shard in range(plan.num_shards):
        entry = existing_shard_entry(plan, shard, out_dir)
        if entry is None:
            missing.append(shard)
        else:
            entries[shard] = entry
    pending = [_build_shard_task.remote(plan, shard, str(out_dir)) for shard in missing]
    with tqdm(total=plan.num_shards, initial=len(entries), desc="shards", unit="shard", disable=not progress) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            shard, entry = ray.get(done[0])
            entries[shard] = entry
            bar.update(1)
    return write_manifest(plan, out_dir, list(entries.values()), source_counts)


@ray.remote(num_cpus=0)
class DropCounter:
    """Counts rows the decode stage dropped, by reason."""

    def __init__(self) -> None:
        self._counts: Counter = Counter()

    def add(self, counts: dict[str, int]) -> None:
        self._counts.update(counts)

    def counts(self) -> dict[str, int]:
        return dict(self._counts)


def _decode_batch(batch: dict[str, np.ndarray], template_size: int, search_size: int, seed: int,
                  augment: AugmentConfig, counter) -> dict[str, np.ndarray]:
    out, dropped = decode_pairs(batch, template_size, search_size, seed, augment)
    if dropped and counter is not None:
        counter.add.remote(dict(dropped))
    return out


def pair_dataset(shard_dir: str | Path, seed: int = 0, augment: AugmentConfig = AugmentConfig(),
                 shuffle_files: bool = True, counter=None, decode_batch_size: int = 32) -> "ray.data.Dataset":
    """The training dataset of a shard folder: rows of ``template``, ``search`` (uint8 HxWx3), ``search_box``
    (cxcywh normalised) and ``pair_index``. ``shuffle_files`` permutes the files on every pass (every execution of
    the dataset) with a permutation drawn from ``seed`` and the pass number. A shard with a wrong schema fails here,
    naming the file."""
    manifest = read_manifest(shard_dir)
    files = shard_files(shard_dir)
    sampling = manifest["sampling"]
    shuffle = ray.data.FileShuffleConfig(seed=seed) if shuffle_files else None
    dataset = ray.data.read_parquet(files, shuffle=shuffle).select_columns(READ_COLUMNS)
    decode = partial(_decode_batch, template_size=sampling["template_size"], search_size=sampling["search_size"],
                     seed=seed, augment=augment, counter=counter)
    return dataset.map_batches(decode, batch_format="numpy", batch_size=decode_batch_size)


def torch_batches(iterator, batch_size: int, device: torch.device, local_shuffle_buffer_size: int | None = None,
                  seed: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """One pass over a dataset shard (``ray.train.get_dataset_shard(...)`` or a Dataset) as training batches:
    normalised float crops on ``device`` and cxcywh boxes."""
    for batch in iterator.iter_torch_batches(batch_size=batch_size, drop_last=True,
                                             local_shuffle_buffer_size=local_shuffle_buffer_size,
                                             local_shuffle_seed=seed):
        yield {
            "template": normalize_crops(batch["template"].to(device, non_blocking=True)),
            "search": normalize_crops(batch["search"].to(device, non_blocking=True)),
            "search_box": batch["search_box"].to(device, torch.float32),
            "pair_index": batch["pair_index"],
        }
