"""Training batches from an ordered stream of samples (plain numpy): exactly ``steps`` batches per epoch.

The samples of one worker arrive in work-item order, every row tagged with its epoch
(``ct_ray.orchestration.data_pipeline``, or ``ct_ray.data.preview`` without Ray). ``EpochBatches`` draws each epoch's
batches through a shuffle buffer seeded by (seed, epoch, rank), passes over the epoch's leftover (spare) rows, and so
gives every run of one config the same batches, and a resumed run the batches of the epoch it resumes at.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np


class EpochBatches:
    """Exactly ``steps`` batches of ``batch_size`` rows per epoch from a worker's ordered sample stream, drawn
    through a shuffle buffer of ``shuffle_buffer`` rows seeded by (seed, epoch, rank). The rows of an epoch that
    are left over (its spare rows) are passed over; an epoch whose rows run short is an error."""

    def __init__(self, batches: Iterator[dict[str, np.ndarray]], batch_size: int, steps: int, shuffle_buffer: int,
                 seed: int, rank: int) -> None:
        self._source = batches
        self.batch_size, self.steps, self.seed, self.rank = batch_size, steps, seed, rank
        self.shuffle_buffer = max(shuffle_buffer, batch_size)
        self._held: dict[str, np.ndarray] | None = None

    def _next_chunk(self) -> dict[str, np.ndarray] | None:
        if self._held is not None:
            chunk, self._held = self._held, None
            return chunk
        return next(self._source, None)

    def epoch(self, epoch: int) -> Iterator[dict[str, np.ndarray]]:
        rng = np.random.default_rng([self.seed, 3, epoch, self.rank])
        buffer: list[dict[str, np.ndarray]] = []
        buffered = 0
        exhausted = False
        emitted = 0
        while emitted < self.steps:
            while not exhausted and buffered < self.shuffle_buffer:
                chunk = self._next_chunk()
                if chunk is None:
                    exhausted = True
                    break
                mine = chunk["epoch"] == epoch
                if not mine.all():
                    later = chunk["epoch"] > epoch
                    if later.any():
                        self._held = {k: v[later] for k, v in chunk.items()}
                        exhausted = True
                    chunk = {k: v[mine] for k, v in chunk.items()}
                if len(chunk["epoch"]):
                    buffer.append(chunk)
                    buffered += len(chunk["epoch"])
            if buffered < self.batch_size:
                raise RuntimeError(f"epoch {epoch}: the samples ran short after {emitted} of {self.steps} steps "
                                   f"(rank {self.rank}): too many rows were dropped; see data_dropped_rows")
            pool = {k: np.concatenate([c[k] for c in buffer]) for k in buffer[0]}
            pick = rng.choice(buffered, size=self.batch_size, replace=False)
            keep = np.ones(buffered, dtype=bool)
            keep[pick] = False
            yield {k: v[pick] for k, v in pool.items()}
            buffer, buffered = [{k: v[keep] for k, v in pool.items()}], int(keep.sum())
            emitted += 1
        while self._held is None:  # pass over the rest of this epoch (its spare rows)
            chunk = next(self._source, None)
            if chunk is None:
                break
            later = chunk["epoch"] > epoch
            if later.any():
                self._held = {k: v[later] for k, v in chunk.items()}
