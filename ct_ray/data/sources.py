"""Where a training run's samples come from, as plain Python: built shards or the synthetic stream.

Both give the same thing: for (epoch, rank, world size) a list of *work items*, and for an item its rows
(``ct_ray.data.samples``' input); ``ct_ray.orchestration.data_pipeline`` runs the items as Ray tasks. The items
of an epoch are a pure function of the run's seed and the epoch, so a run resumed at epoch ``e`` reads exactly what
an uninterrupted run reads there, without decoding anything it skips.

- ``ShardSource``: the shard files form a ring; pass ``p`` goes through them in a permutation drawn from
  ``(seed, p)`` (or in file order), and epoch ``e`` takes the next ``pairs_per_epoch`` rows of that endless
  sequence, each rank its own contiguous part. The rows of one shard are reused on every pass, each time with a new
  search window and augmentation.
- ``StreamSource``: every item is a new synthetic sequence (``ct_ray.data.stream``).

Each rank's part of an epoch has ``spare`` extra rows, used only when some rows are dropped (a corrupt JPEG, a box
the window misses), so that an epoch is always ``steps_per_epoch`` full batches.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ct_ray.data.pairs import PairSamplingConfig
from ct_ray.data.shards import read_rows
from ct_ray.data.stream import StreamConfig, stream_pairs
from ct_ray.fileio import Location

ITEM_ROWS = 64
"""Rows per work item at most (one sampling task's output stays a few tens of MB)."""


def spare_rows(rows: int) -> int:
    """Extra rows per rank and epoch, against dropped rows: 1/16 of them, at least 8."""
    return max(8, rows // 16)


@dataclass(frozen=True)
class ShardSource:
    """Shard files (URI and rows, in manifest order), read from a folder or a store."""

    files: tuple[tuple[str, int], ...]
    sampling: PairSamplingConfig
    seed: int = 0
    shuffle_files: bool = True

    def __post_init__(self) -> None:
        if not self.files or sum(rows for _, rows in self.files) < 1:
            raise ValueError("the shard set holds no rows")

    @property
    def total_rows(self) -> int:
        return sum(rows for _, rows in self.files)

    def _order(self, pass_index: int) -> np.ndarray:
        if not self.shuffle_files:
            return np.arange(len(self.files))
        return np.random.default_rng([self.seed, 1, pass_index]).permutation(len(self.files))

    def _pieces(self, start: int, stop: int) -> Iterator[tuple[int, int, int, int]]:
        """(pass, file, first row, end row) pieces covering positions ``start:stop`` of the endless sequence."""
        total = self.total_rows
        position = start
        while position < stop:
            pass_index, offset = divmod(position, total)
            order = self._order(pass_index)
            seen = 0
            for file_index in order:
                rows = self.files[file_index][1]
                if offset < seen + rows:
                    first = offset - seen
                    last = min(rows, first + (stop - position))
                    yield pass_index, int(file_index), first, last
                    position += last - first
                    break
                seen += rows

    def items(self, epoch: int, rank: int, world: int, rows: int) -> list[dict]:
        """Work items of ``rank`` for ``epoch`` (from 1): its ``rows`` rows of the epoch and the spare ones."""
        epoch_start = (epoch - 1) * rows * world
        ranges = [(epoch_start + rank * rows, epoch_start + (rank + 1) * rows)]
        spare = spare_rows(rows)
        next_start = epoch * rows * world
        ranges.append((next_start + rank * spare, next_start + (rank + 1) * spare))
        items = []
        for start, stop in ranges:
            for _, file_index, first, last in self._pieces(start, stop):
                lo = first
                while lo < last:  # split at row-group boundaries: an item reads one row group
                    hi = min(last, (lo // ITEM_ROWS + 1) * ITEM_ROWS)
                    items.append({"epoch": epoch, "file": self.files[file_index][0], "start": lo, "stop": hi})
                    lo = hi
        return items

    def load(self, item: dict) -> dict[str, np.ndarray]:
        return read_rows(Location.of(item["file"]), int(item["start"]), int(item["stop"]))


@dataclass(frozen=True)
class StreamSource:
    """New synthetic sequences for every item."""

    stream: StreamConfig
    sampling: PairSamplingConfig
    seed: int = 0

    def items(self, epoch: int, rank: int, world: int, rows: int) -> list[dict]:
        per = self.stream.pairs_per_sequence
        chunks = math.ceil((rows + spare_rows(rows)) / per)
        return [{"epoch": epoch, "rank": rank, "chunk": chunk, "first_index": chunk * per}
                for chunk in range(chunks)]

    def load(self, item: dict) -> dict[str, np.ndarray]:
        return stream_pairs(self.stream, self.sampling, self.seed, int(item["epoch"]), int(item["rank"]), int(item["chunk"]),
                            int(item["first_index"]))


TrainingSource = ShardSource | StreamSource
