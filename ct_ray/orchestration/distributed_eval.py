"""Evaluation in parallel Ray tasks: a few sequences per task, the model's weights shared through the object store.

A task builds the model and opens its runtime once for all its sequences (an ONNX Runtime session or a
``torch.compile`` is not free, and on the synthetic benchmark's 20-frame sequences building the teacher took a
quarter as long as tracking one), and tracks them one after the other, each from a fresh online tracker, so the
boxes do not depend on how the sequences are grouped. ``MAX_SEQUENCES_PER_TASK`` bounds the groups; with few
sequences per parallel slot they get smaller, down to one, so that every slot still has about four tasks; and a group
holds at most ``MAX_FRAMES_PER_TASK`` frames (a longer sequence goes alone), since a task's results are written, and
kept for a re-run, only when it ends."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import ray
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
import torch
from tqdm.auto import tqdm

from ct_ray.data.sequences import Sequence
from ct_ray.evaluation.results import read_results, result_complete, write_results
from ct_ray.evaluation.sequence import track_sequence
from ct_ray.models.one_stream import OneStreamTracker, TrackerConfig
from ct_ray.tracking.runtimes import PreparedRuntime, RuntimeSpec


MAX_SEQUENCES_PER_TASK = 8
MAX_FRAMES_PER_TASK = 500


@ray.remote
def _track_task(config: dict, state: dict, sequences: list[Sequence], use_gpu: bool, threads: int,
                runtime: PreparedRuntime) -> list[tuple[str, np.ndarray, np.ndarray]]:
    torch.set_num_threads(threads)
    model = OneStreamTracker(TrackerConfig.from_dict(config))
    model.load_state_dict(state)
    device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
    network = runtime.open(model, device, threads)
    return [(sequence.name, *track_sequence(model, sequence, device, network)) for sequence in sequences]


def sequences_per_task(sequences: int, slots: int) -> int:
    """How many sequences one task tracks: up to ``MAX_SEQUENCES_PER_TASK``, and few enough that each of ``slots``
    parallel tasks gets about four (load balance and progress)."""
    return max(1, min(MAX_SEQUENCES_PER_TASK, sequences // (4 * max(1, slots))))


def task_groups(sequences: list[Sequence], size: int) -> list[list[Sequence]]:
    """The sequences in order, in groups of at most ``size`` sequences and ``MAX_FRAMES_PER_TASK`` frames."""
    groups: list[list[Sequence]] = []
    current: list[Sequence] = []
    frames = 0
    for sequence in sequences:
        if current and (len(current) == size or frames + len(sequence) > MAX_FRAMES_PER_TASK):
            groups.append(current)
            current, frames = [], 0
        current.append(sequence)
        frames += len(sequence)
    if current:
        groups.append(current)
    return groups


def evaluate_sequences(model: OneStreamTracker, sequences: Iterable[Sequence], results_dir: str | Path | None = None,
                       use_gpu: bool = False, cpus_per_task: float = 1.0, threads_per_task: int = 1,
                       progress: bool = True, description: str = "tracking",
                       runtime: PreparedRuntime | None = None) -> dict[str, np.ndarray]:
    """Tracks every sequence in parallel Ray tasks (``sequences_per_task`` to a task) and returns ``{name: boxes}``.
    With ``results_dir`` the results are written in the pytracking layout (``<seq>.txt``, ``<seq>_time.txt``) and
    sequences whose result file is already complete are read back instead of tracked again. ``runtime``
    (:func:`ct_ray.tracking.runtimes.prepare_runtime`) runs the network in every task; default PyTorch eager."""
    runtime = runtime or PreparedRuntime(RuntimeSpec())
    sequences = list(sequences)
    results: dict[str, np.ndarray] = {}
    todo = []
    for sequence in sequences:
        if results_dir is not None and result_complete(results_dir, sequence.name, len(sequence)):
            results[sequence.name] = read_results(Path(results_dir) / f"{sequence.name}.txt", len(sequence))
        else:
            todo.append(sequence)
    if todo:
        config = ray.put(model.config.to_dict())
        state = ray.put({k: v.detach().cpu() for k, v in model.state_dict().items()})
        # Outside any placement group: called from a training worker, the tasks must not be captured by its bundle.
        options = {"num_cpus": cpus_per_task, "num_gpus": 1 if use_gpu else 0,
                   "scheduling_strategy": PlacementGroupSchedulingStrategy(placement_group=None)}
        prepared = ray.put(runtime)
        resources = ray.cluster_resources()
        slots = int(resources.get("GPU", 0) if use_gpu else resources.get("CPU", 1) / max(cpus_per_task, 1e-3))
        pending = [_track_task.options(**options).remote(config, state, group, use_gpu, threads_per_task, prepared)
                   for group in task_groups(todo, sequences_per_task(len(todo), slots))]
        with tqdm(total=len(sequences), initial=len(results), desc=description, unit="seq",
                  disable=not progress) as bar:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for name, boxes, times in ray.get(done[0]):
                    if results_dir is not None:
                        write_results(results_dir, name, boxes, times)
                    results[name] = boxes
                    bar.update(1)
    return {s.name: results[s.name] for s in sequences}
