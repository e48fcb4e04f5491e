"""The search space of ``ct-ray tune`` (plain Python; the Ray Tune runner is ``ct_ray.orchestration.tune_search``): a base experiment, a search space over its dotted keys, and the search settings.

A search space maps config keys to choices: a list (searched as a grid), ``{uniform: [a, b]}``,
``{loguniform: [a, b]}``, or a choice that depends on another key, e.g. explicit stage divisions per depth::

    student.num_stages: [2, 4]
    student.stages: {per: student.num_stages, choices: {2: [[6, 6]], 4: [[3, 3, 3, 3], [2, 4, 4, 2]]}}

Every grid point (distributions at both ends of their range) is built into a full ``ExperimentConfig`` and checked,
stage division against the teacher included, before the search starts.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from ct_ray.config import ConfigError, apply_overrides, from_dict, read_yaml
from ct_ray.training.experiment import ExperimentConfig, MlflowSection, check_experiment


@dataclass
class SearchSettings:
    """Ray Tune settings: trials, the ASHA scheduler on ``metric``, concurrency and resources per trial.

    ``storage_path`` (a folder or a store URI) holds the search: Tune's state, every trial's run folder and the
    report. ``max_concurrent_trials`` None runs as many trials at once as the cluster's resources hold (each trial
    needs its workers' CPUs and GPUs); a number caps that."""

    name: str = "ct-ray-search"
    storage_path: str = "runs/tune"
    num_samples: int = 1
    metric: str = "val_auc"
    mode: str = "max"
    max_concurrent_trials: int | None = None
    grace_period: int = 1
    reduction_factor: int = 2
    cpus_per_worker: float = 0.99
    profile_iterations: int = 20

    def __post_init__(self) -> None:
        if self.mode not in ("max", "min"):
            raise ValueError(f"tune.mode must be max or min, got {self.mode!r}")
        for name in ("num_samples", "max_concurrent_trials", "grace_period", "profile_iterations"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"tune.{name} must be >= 1, got {getattr(self, name)}")
        if self.reduction_factor < 2:
            raise ValueError(f"tune.reduction_factor must be >= 2, got {self.reduction_factor}")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"tune.cpus_per_worker must be > 0, got {self.cpus_per_worker}")


@dataclass
class SearchConfig:
    base: str
    overrides: list[str] = field(default_factory=list)
    search: dict[str, Any] = field(default_factory=dict)
    tune: SearchSettings = field(default_factory=SearchSettings)
    mlflow: MlflowSection = field(default_factory=MlflowSection)

    def __post_init__(self) -> None:
        if not self.search:
            raise ValueError("search: the search space is empty")


@dataclass(frozen=True)
class Dimension:
    """One searched key: grid ``values``, or a distribution, or a choice that depends on ``parent``."""

    key: str
    values: tuple | None = None
    distribution: str | None = None
    bounds: tuple[float, float] | None = None
    parent: str | None = None
    per_parent: dict | None = None


def parse_dimension(key: str, spec: Any) -> Dimension:
    where = f"search.{key}"
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"{where}: no choices")
        return Dimension(key, values=tuple(spec))
    if isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in ("uniform", "loguniform"):
        kind, bounds = next(iter(spec.items()))
        try:
            low, high = (float(b) for b in bounds)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {kind} needs [low, high], got {bounds!r}") from None
        if not low < high or (kind == "loguniform" and low <= 0):
            raise ConfigError(f"{where}: {kind} bounds {bounds} are impossible")
        return Dimension(key, distribution=kind, bounds=(low, high))
    if isinstance(spec, dict) and set(spec) == {"per", "choices"} and isinstance(spec["choices"], dict):
        choices = {json.dumps(k if not isinstance(k, str) or not k.lstrip("-").isdigit() else int(k)): list(v)
                   for k, v in spec["choices"].items()}
        if any(not v for v in choices.values()):
            raise ConfigError(f"{where}: every parent value needs at least one choice")
        return Dimension(key, parent=str(spec["per"]), per_parent=choices)
    raise ConfigError(f"{where}: expected a list of choices, {{uniform: [a, b]}}, {{loguniform: [a, b]}} or "
                      f"{{per: KEY, choices: {{...}}}}, got {spec!r}")


def parse_space(search: dict[str, Any]) -> list[Dimension]:
    dimensions = [parse_dimension(key, spec) for key, spec in search.items()]
    by_key = {d.key: d for d in dimensions}
    for dimension in dimensions:
        if dimension.parent is None:
            continue
        parent = by_key.get(dimension.parent)
        if parent is None or parent.values is None:
            raise ConfigError(f"search.{dimension.key}: depends on {dimension.parent}, which must be a searched "
                              "list of choices")
        missing = [v for v in parent.values if json.dumps(v) not in dimension.per_parent]
        if missing:
            raise ConfigError(f"search.{dimension.key}: no choices for {dimension.parent} = {missing}")
    return dimensions


def grid_points(dimensions: list[Dimension]) -> list[dict[str, Any]]:
    """The grid: one dict per combination of list choices (dependent choices expanded under their parent)."""
    children = {d.parent: d for d in dimensions if d.parent}
    axes = []
    for dimension in dimensions:
        if dimension.values is None:
            continue
        child = children.get(dimension.key)
        if child is None:
            axes.append([{dimension.key: v} for v in dimension.values])
        else:
            axes.append([{dimension.key: v, child.key: c} for v in dimension.values
                         for c in child.per_parent[json.dumps(v)]])
    return [dict(itertools.chain.from_iterable(p.items() for p in combination))
            for combination in itertools.product(*axes)] or [{}]


def distribution_corners(dimensions: list[Dimension]) -> list[dict[str, float]]:
    sampled = [d for d in dimensions if d.distribution]
    return [dict(zip((d.key for d in sampled), corner))
            for corner in itertools.product(*(d.bounds for d in sampled))] or [{}]


def as_overrides(values: dict[str, Any]) -> list[str]:
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]


def trial_config(search: SearchConfig, values: dict[str, Any]) -> ExperimentConfig:
    """The experiment a trial runs: the base, its overrides, the trial's values."""
    data = apply_overrides(read_yaml(search.base), [*search.overrides, *as_overrides(values)])
    return from_dict(ExperimentConfig, data)


def load_search(path: str) -> SearchConfig:
    search = from_dict(SearchConfig, read_yaml(path))
    check_search(search)
    return search


def check_search(search: SearchConfig) -> int:
    """Builds and checks every grid point at every distribution corner; returns the number of grid points."""
    dimensions = parse_space(search.search)
    points = grid_points(dimensions)
    for point in points:
        for corner in distribution_corners(dimensions):
            values = {**point, **corner}
            try:
                check_experiment(trial_config(search, values))
            except ConfigError as exc:
                raise ConfigError(f"search point {values}: {exc}") from exc
    return len(points)


def total_trials(search: SearchConfig) -> int:
    return len(grid_points(parse_space(search.search))) * search.tune.num_samples



def trial_resources(config: ExperimentConfig, cpus_per_worker: float) -> dict[str, float]:
    """What one trial holds while it trains: its workers' CPUs (``tune.cpus_per_worker`` each) and GPUs."""
    scaling = config.scaling
    needs = {"CPU": scaling.num_workers * cpus_per_worker}
    if scaling.use_gpu:
        needs["GPU"] = scaling.num_workers * scaling.gpus_per_worker
    return needs


def trial_concurrency(config: ExperimentConfig, settings: SearchSettings, cluster: dict[str, float]) -> int:
    """How many trials run at once on a cluster of (at most) ``cluster`` resources: as many as fit, capped by
    ``tune.max_concurrent_trials``; a trial that does not fit at all is a ``ConfigError`` naming the keys."""
    needs = trial_resources(config, settings.cpus_per_worker)
    fits = []
    for resource, amount in needs.items():
        have = float(cluster.get(resource, 0))
        if amount > have:
            keys = ("scaling.num_workers x scaling.gpus_per_worker" if resource == "GPU"
                    else "scaling.num_workers x tune.cpus_per_worker")
            raise ConfigError(f"a trial needs {amount:g} {resource} ({keys}) but the cluster has at most {have:g}: "
                              "lower scaling.num_workers, or give the cluster more nodes")
        fits.append(int(have // amount) if amount else 10**6)
    count = max(1, min(fits))
    return min(count, settings.max_concurrent_trials) if settings.max_concurrent_trials else count
