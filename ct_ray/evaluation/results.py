"""Tracker result files: the pytracking layout used for scoring, and the GOT-10k / TrackingNet submission layouts.

pytracking layout (``write_results`` / ``read_results``): ``<dir>/<seq>.txt`` holds one frame per line,
``x<TAB>y<TAB>w<TAB>h`` as integers truncated toward zero (METHOD.md section 8: 10.9 -> 10, -3.7 -> -3), and
``<dir>/<seq>_time.txt`` one float (seconds) per frame. Every write is atomic (a temporary file in the same folder,
then ``os.replace``), so a reader never sees half a file.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from ct_ray.errors import MissingFileError, UserError
from ct_ray.fileio import atomic_write_text

__all__ = [
    "ResultsFormatError",
    "result_path",
    "time_path",
    "write_results",
    "read_results",
    "result_complete",
    "load_results_dir",
    "write_got10k_submission",
    "write_trackingnet_submission",
]

_SEPARATORS = re.compile(r"[,\s]+")


class ResultsFormatError(UserError, ValueError):
    """A result file that is malformed or too short; the message names the file (and the line)."""


def result_path(directory: str | os.PathLike, name: str) -> Path:
    return Path(directory) / f"{name}.txt"


def time_path(directory: str | os.PathLike, name: str) -> Path:
    return Path(directory) / f"{name}_time.txt"


def _boxes(boxes: Any, name: str) -> np.ndarray:
    array = np.asarray(boxes, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"boxes of sequence {name!r} must be (N, 4), got shape {array.shape}")
    if not np.isfinite(array).all():
        bad = int(np.flatnonzero(~np.isfinite(array).all(axis=1))[0])
        raise ValueError(f"boxes of sequence {name!r}: non-finite value in frame {bad}")
    return array


def _times(times: Any, frames: int, name: str) -> np.ndarray:
    array = np.asarray(times, dtype=np.float64).reshape(-1)
    if array.shape[0] != frames:
        raise ValueError(f"sequence {name!r}: {array.shape[0]} times for {frames} boxes")
    return array


def _lines(rows: Iterable[str]) -> str:
    return "".join(f"{row}\n" for row in rows)


def _times_text(times: np.ndarray) -> str:
    return _lines(f"{t:.6f}" for t in times)


def write_results(directory: str | os.PathLike, name: str, boxes: Any, times: Any = None) -> Path:
    """Writes ``<dir>/<name>.txt`` (integer boxes, truncated toward zero, tab separated) and, with ``times``,
    ``<dir>/<name>_time.txt`` (seconds per frame). The time file is written first, so a complete box file implies
    a complete time file (``result_complete`` only looks at the box file). Returns the box file's path."""
    array = _boxes(boxes, name)
    ints = np.trunc(array).astype(np.int64)
    if times is not None:
        atomic_write_text(time_path(directory, name), _times_text(_times(times, len(array), name)))
    path = result_path(directory, name)
    atomic_write_text(path, _lines("\t".join(str(int(v)) for v in row) for row in ints))
    return path


def read_results(path: str | os.PathLike, expected_frames: int | None = None) -> np.ndarray:
    """A result file as a float ``(N, 4)`` array.

    Values may be separated by tabs, commas or spaces; blank lines at the end are ignored. A line without exactly
    four values, or with a value that is not a number, raises ``ResultsFormatError`` naming the file and the line
    (1-based); ``nan`` / ``inf`` parse (scoring replaces non-finite boxes). With ``expected_frames``, fewer lines is a ``ResultsFormatError`` naming the file and both counts;
    more lines are accepted (scoring drops the extra rows). A missing file raises ``FileNotFoundError``.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"result file not found: {path}")
    text = path.read_text()
    lines = text.rstrip().splitlines() if text.strip() else []
    rows = np.empty((len(lines), 4), dtype=np.float64)
    for i, line in enumerate(lines):
        values = [v for v in _SEPARATORS.split(line.strip()) if v]
        if len(values) != 4:
            raise ResultsFormatError(f"{path}: line {i + 1}: expected 4 values, got {len(values)}: {line!r}")
        try:
            rows[i] = [float(v) for v in values]
        except ValueError:
            raise ResultsFormatError(f"{path}: line {i + 1}: not a number in {line!r}") from None
    if expected_frames is not None and len(rows) < expected_frames:
        raise ResultsFormatError(f"{path}: {len(rows)} lines, expected at least {expected_frames} frames")
    return rows


def result_complete(directory: str | os.PathLike, name: str, frames: int) -> bool:
    """True when ``<dir>/<name>.txt`` exists, parses and has at least ``frames`` lines (a finished sequence)."""
    try:
        read_results(result_path(directory, name), expected_frames=frames)
    except (OSError, ValueError):
        return False
    return True


def load_results_dir(directory: str | os.PathLike, names: Iterable[str],
                     expected_frames: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    """``{name: boxes}`` read from ``<dir>/<name>.txt`` for every name. Missing files raise one
    ``FileNotFoundError`` listing them all; ``expected_frames`` (name -> frames) checks the lengths."""
    names = list(names)
    missing = [n for n in names if not result_path(directory, n).is_file()]
    if missing:
        more = f" (and {len(missing) - 20} more)" if len(missing) > 20 else ""
        raise MissingFileError(f"{directory}: no result file for {len(missing)} of {len(names)} sequence(s): "
                                f"{missing[:20]}{more}")
    frames = expected_frames or {}
    return {n: read_results(result_path(directory, n), frames.get(n)) for n in names}


def _floats(row: np.ndarray) -> str:
    return ",".join(f"{v:.3f}" for v in row)


def write_got10k_submission(directory: str | os.PathLike, name: str, boxes: Any, times: Any) -> Path:
    """GOT-10k test-server layout: ``<dir>/<name>/<name>_001.txt`` (comma separated float boxes, 3 decimals) and
    ``<dir>/<name>/<name>_time.txt`` (seconds per frame). Returns the box file's path."""
    array = _boxes(boxes, name)
    seq_dir = Path(directory) / name
    atomic_write_text(seq_dir / f"{name}_time.txt", _times_text(_times(times, len(array), name)))
    path = seq_dir / f"{name}_001.txt"
    atomic_write_text(path, _lines(_floats(row) for row in array))
    return path


def write_trackingnet_submission(directory: str | os.PathLike, name: str, boxes: Any) -> Path:
    """TrackingNet server layout: ``<dir>/<name>.txt``, comma separated float boxes (3 decimals)."""
    array = _boxes(boxes, name)
    path = Path(directory) / f"{name}.txt"
    atomic_write_text(path, _lines(_floats(row) for row in array))
    return path
