"""Several studies as one table (plain Python): the same arms trained on different teachers (teacher seeds, or
the same study on two machines), pooled so that a conclusion can be checked against the spread it has to survive.

Each study contributes its teacher and its arms' trackers. A tracker is keyed by (study, student seed), so paired
differences pair a run with the run of the same study and student seed, sequence by sequence, and the AUC retention
of a run is taken against its own study's teacher. The teacher row is the mean and spread over the studies'
teachers. The studies must have scored the same test sequences (the same benchmark), or nothing can be paired.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, fields, replace
from typing import Any, Sequence

from ct_ray.errors import InputError
from ct_ray.studies.paired_stats import Difference, Row, TrackerResult, paired_difference, summarise

_SEED_STRIDE = 1_000_000  # (study index, student seed) -> one integer key that paired_difference pairs on


@dataclass(frozen=True)
class StudyPart:
    """One study's trackers as :func:`combine_studies` uses them."""

    name: str
    teacher_seed: int | None
    teacher: TrackerResult
    arms: dict[str, list[TrackerResult]]


def study_part(summary: dict[str, Any], name: str) -> StudyPart:
    """A study's JSON summary (``<out>/<study>.json``) as a :class:`StudyPart`; ``name`` names it in errors."""
    known = {f.name for f in fields(TrackerResult)}
    try:
        trackers = [TrackerResult(**{k: v for k, v in t.items() if k in known}) for t in summary["trackers"]]
        teacher_seed = summary.get("preset_config", {}).get("teacher", {}).get("run", {}).get("seed")
    except (KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"{name}: not a ct-ray study summary ({exc})") from None
    teachers = [t for t in trackers if t.seed is None]
    if len(teachers) != 1:
        raise InputError(f"{name}: a study summary has one teacher, this one has {len(teachers)}")
    arms: dict[str, list[TrackerResult]] = {}
    for tracker in trackers:
        if tracker.seed is not None:
            arms.setdefault(tracker.label, []).append(tracker)
    return StudyPart(name, teacher_seed, teachers[0], arms)


def _pooled(parts: Sequence[StudyPart], label: str) -> list[TrackerResult]:
    return [replace(r, seed=index * _SEED_STRIDE + r.seed) for index, part in enumerate(parts)
            for r in part.arms[label]]


def combine_studies(parts: Sequence[StudyPart]) -> tuple[list[Row], list[str]]:
    """Rows over all the studies (the arms every study has, in the first study's order) and the notes under the
    table: the pooled gap between the teacher and the student alone, and each study's teacher and arms."""
    if len(parts) < 2:
        raise InputError("combining needs at least two studies")
    labels = [label for label in parts[0].arms if all(label in p.arms for p in parts)]
    if not labels:
        raise InputError("the studies share no arm")
    names = [set(p.teacher.sequence_auc) for p in parts]
    if not set.intersection(*names):
        raise InputError(f"{parts[0].name} and the others scored no common test sequence: combine studies of one "
                         "benchmark")
    teachers = [replace(p.teacher, seed=index) for index, p in enumerate(parts)]
    by_study = {index: p.teacher for index, p in enumerate(parts)}
    rows = summarise(teachers, {label: _pooled(parts, label) for label in labels},
                     teacher_of=lambda result: by_study[result.seed // _SEED_STRIDE])
    notes = []
    if "student only" in labels:
        alone = _pooled(parts, "student only")
        as_arm = [replace(by_study[r.seed // _SEED_STRIDE], seed=r.seed) for r in alone]
        notes.append(gap_line(paired_difference(alone, as_arm), len(parts)))
    for index, part in enumerate(parts):
        arms = ", ".join(f"{label} {statistics.fmean(r.auc for r in part.arms[label]):.1f}" for label in labels)
        seed = "" if part.teacher_seed is None else f" (teacher seed {part.teacher_seed})"
        notes.append(f"{part.name}{seed}: teacher {part.teacher.auc:.1f}; {arms}")
    return rows, notes


def gap_line(gap: Difference | None, studies: int) -> str:
    if gap is None:
        return "teacher - student only: no common sequences"
    return (f"teacher - student only (same student budget, each against its own teacher): {gap.mean:+.1f} AUC "
            f"[{gap.low:+.1f}, {gap.high:+.1f}] over {gap.sequences} test sequences x {gap.seeds} runs of "
            f"{studies} studies")
