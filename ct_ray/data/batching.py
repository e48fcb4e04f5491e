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
        buffer: list[dict[str, np.ndarray]] = []  # one entry per row: views into the chunks that brought them
        exhausted = False
        for emitted in range(self.steps):
            while not exhausted and len(buffer) < self.shuffle_buffer:
                chunk = self._next_chunk()
                if chunk is None:
                    exhausted = True
                    break
                mine = chunk["epoch"] == epoch
                later = chunk["epoch"] > epoch
                if later.any():
                    self._held = {k: v[later] for k, v in chunk.items()}
                    exhausted = True
                rows = np.flatnonzero(mine)
                buffer.extend({k: v[i] for k, v in chunk.items()} for i in rows)
            if len(buffer) < self.batch_size:
                raise RuntimeError(f"epoch {epoch}: the samples ran short after {emitted} of {self.steps} steps "
                                   f"(rank {self.rank}): too many rows were dropped; see data_dropped_rows")
            pick = rng.choice(len(buffer), size=self.batch_size, replace=False)
            yield {k: np.stack([buffer[i][k] for i in pick]) for k in buffer[0]}
            for i in sorted(pick.tolist(), reverse=True):  # remove the picked rows: the last row fills each gap
                buffer[i] = buffer[-1]
                buffer.pop()
        while self._held is None:  # pass over the rest of this epoch (its spare rows)
            chunk = next(self._source, None)
            if chunk is None:
                break
            later = chunk["epoch"] > epoch
            if later.any():
                self._held = {k: v[later] for k, v in chunk.items()}
