"""What a training run reads, as plain Python: its training source (built shards or the synthetic stream), the
crops of its model, and the checks that data and model fit, made before any cluster work starts.

A run's crops are its model's (``TrackerConfig``: sizes and context factors): a teacher run's ``model`` section,
a student run's teacher checkpoint. Shards must have been built with the same template factor, a template crop the
model can use (resized when the size differs) and a context crop wide enough for ``data.jitter``.
"""
from __future__ import annotations

from dataclasses import replace

from ct_ray.config import ConfigError
from ct_ray.data.fingerprint import training_samples_digest
from ct_ray.data.pairs import PairSamplingConfig
from ct_ray.data.shards import read_manifest, shard_files, shard_sampling
from ct_ray.data.sources import ShardSource, StreamSource, TrainingSource
from ct_ray.models import TrackerConfig
from ct_ray.training.experiment import DataSource, ExperimentConfig


def model_crops(config: ExperimentConfig) -> TrackerConfig:
    """The architecture (and so the crops) of the tracker a run trains: ``model`` for a teacher run without an
    initial file, else the teacher file's own."""
    if config.is_teacher_run and not config.teacher.path:
        return config.model
    return config.teacher.load()[0].config


def stream_sampling(config: ExperimentConfig, model: TrackerConfig) -> PairSamplingConfig:
    """The stored-pair geometry of the synthetic stream: the model's crops, a context just wide enough."""
    jitter = config.data.jitter
    return PairSamplingConfig(template_factor=model.template_factor, template_size=model.template_size,
                              search_factor=model.search_factor, search_size=model.search_size,
                              context_factor=jitter.required_context_factor(model.search_factor), jitter=jitter)


def check_shards(config: ExperimentConfig, model: TrackerConfig, manifest: dict) -> PairSamplingConfig:
    """The shards' sampling, refused (naming the keys) when it does not fit the model or the configured jitter."""
    try:
        sampling = shard_sampling(manifest)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"data.shards: {config.data.shards}: its manifest's sampling is unreadable: {exc}") from None
    where = f"data.shards ({config.data.shards})"
    if abs(sampling.template_factor - model.template_factor) > 1e-9:
        raise ConfigError(f"{where}: built with template_factor {sampling.template_factor:g}, the model uses "
                          f"{model.template_factor:g} (rebuild with --template-factor {model.template_factor:g})")
    needed = config.data.jitter.required_context_factor(model.search_factor)
    if sampling.context_factor + 1e-9 < needed:
        raise ConfigError(f"{where}: its context crops (context_factor {sampling.context_factor:g}) are too small "
                          f"for data.jitter with the model's search_factor {model.search_factor:g}: (search_factor + "
                          f"data.jitter.center_jitter) x data.jitter.max_scale_change = {needed:.2f}; rebuild the "
                          "shards with a larger --context-factor or lower the jitter")
    return sampling


def training_source(config: ExperimentConfig, model: TrackerConfig) -> TrainingSource:
    """The run's source of training rows, checked (shards: manifest, every file's size, rows and schema)."""
    if config.data.source is DataSource.STREAM:
        return StreamSource(config.data.stream, stream_sampling(config, model), config.run.seed)
    manifest = read_manifest(config.data.shards)
    sampling = check_shards(config, model, manifest)
    files = tuple((location.uri, rows) for location, rows in shard_files(config.data.shards))
    return ShardSource(files, sampling, config.run.seed,
                       shuffle_files=config.data.shuffle_files and not config.run.deterministic)


def epoch_size(config: ExperimentConfig) -> int:
    """Pairs per epoch: the config's, else (shards) the manifest's."""
    if config.data.pairs_per_epoch:
        return config.data.pairs_per_epoch
    if config.data.source is DataSource.STREAM:
        raise ConfigError("data.pairs_per_epoch is required when data.source is stream")
    return int(read_manifest(config.data.shards)["pairs_per_epoch"])


def steps_per_epoch(config: ExperimentConfig, pairs: int) -> int:
    """Optimisation steps per epoch on each worker."""
    per_step = config.data.batch_size * config.scaling.num_workers
    steps = pairs // per_step
    if steps < 1:
        raise ConfigError(f"data.pairs_per_epoch ({pairs}) is smaller than one step of every worker "
                          f"(data.batch_size {config.data.batch_size} x scaling.num_workers "
                          f"{config.scaling.num_workers})")
    return steps


def training_samples_probe(config: ExperimentConfig) -> str:
    """The fingerprint of the samples ``config`` trains on (``ct_ray.data.fingerprint``), drawn with seed 0 whatever
    the run's seed, so that the runs of every seed (and a preset's reference runs) share one probe."""
    probe = replace(config, run=replace(config.run, seed=0))
    model = model_crops(probe)
    return training_samples_digest(training_source(probe, model), epoch_size(probe), 0, model.template_size,
                                   model.search_size, model.search_factor, probe.data.jitter, probe.data.augment)
