"""The replacement probability p per epoch (METHOD.md section 3): progressive (0.5 -> 1) or fixed."""
from __future__ import annotations

import math
from dataclasses import dataclass


def _check_epoch(epoch: int, total_epochs: int) -> None:
    if total_epochs < 1:
        raise ValueError(f"total_epochs must be >= 1, got {total_epochs}")
    if not 1 <= epoch <= total_epochs:
        raise ValueError(f"epoch {epoch} outside 1..{total_epochs} (epochs are counted from 1)")


def _epochs_of(total_epochs: int, fraction: float) -> int:
    """floor(E * fraction) whole epochs (the warm-up or final share of a schedule)."""
    return math.floor(total_epochs * fraction + 1e-9)


def replacement_probability(epoch: int, total_epochs: int, warmup_fraction: float = 0.1,
                            final_fraction: float = 0.1, initial_p: float = 0.5) -> float:
    """Progressive schedule: ``initial_p`` for the W = floor(E * warmup_fraction) warm-up epochs, a linear rise to
    1, and 1 (the student alone) for the F = floor(E * final_fraction) final epochs. Epochs count from 1.

    - ``initial_p`` while ``epoch - 1 <= W``
    - ``initial_p + (1 - initial_p) * (epoch - W) / (E - W - F)`` while ``W < epoch - 1 < E - F``
    - 1 once ``epoch - 1 >= E - F``
    """
    _check_epoch(epoch, total_epochs)
    warmup = _epochs_of(total_epochs, warmup_fraction)
    final = _epochs_of(total_epochs, final_fraction)
    done = epoch - 1
    if done <= warmup:
        return float(initial_p)
    if done >= total_epochs - final:
        return 1.0
    return float(initial_p + (1.0 - initial_p) * (epoch - warmup) / (total_epochs - warmup - final))


@dataclass(frozen=True)
class ProgressiveSchedule:
    """The paper's schedule as a value; ``schedule(epoch, total_epochs) -> p``."""

    initial_p: float = 0.5
    warmup_fraction: float = 0.1
    final_fraction: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 < self.initial_p <= 1.0:
            raise ValueError(f"initial_p must be in (0, 1], got {self.initial_p}")
        if self.warmup_fraction < 0 or self.final_fraction < 0 or self.warmup_fraction + self.final_fraction >= 1:
            raise ValueError("warmup_fraction and final_fraction must be >= 0 and sum to less than 1, got "
                             f"{self.warmup_fraction} and {self.final_fraction}")

    def __call__(self, epoch: int, total_epochs: int) -> float:
        return replacement_probability(epoch, total_epochs, self.warmup_fraction, self.final_fraction,
                                       self.initial_p)


@dataclass(frozen=True)
class FixedSchedule:
    """A constant p (the paper's fixed-p ablation), then p = 1 (the student alone) for the epochs the progressive
    schedule with the same ``final_fraction`` spends at p = 1: its F = floor(E * final_fraction) final epochs and
    the epoch where its rise reaches 1, so that the tested network has trained alone on the same share of the
    budget under both (the paper: 300 epochs, then 30 of the student alone). At E = 3 that is the last epoch;
    ``final_fraction`` 0: none."""

    p: float
    final_fraction: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 < self.p <= 1.0:
            raise ValueError(f"a fixed replacement probability must be in (0, 1], got {self.p}")
        if not 0.0 <= self.final_fraction < 1.0:
            raise ValueError(f"final_fraction must be in [0, 1), got {self.final_fraction}")

    def alone_epochs(self, total_epochs: int) -> int:
        """How many final epochs train the student alone."""
        if self.final_fraction == 0.0:
            return 0
        return min(_epochs_of(total_epochs, self.final_fraction) + 1, total_epochs - 1)

    def __call__(self, epoch: int, total_epochs: int) -> float:
        _check_epoch(epoch, total_epochs)
        return 1.0 if epoch - 1 >= total_epochs - self.alone_epochs(total_epochs) else float(self.p)
