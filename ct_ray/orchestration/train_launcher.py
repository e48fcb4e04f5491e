"""``ct-ray train``: a thin launcher around a Ray ``TorchTrainer``.

It checks the config, prepares missing synthetic data and a missing bootstrap teacher, opens the run's MLflow run
(failing before training when the store cannot be reached), builds the trainer from the config (workers, GPUs,
placement, failure retries, checkpoint retention, the sample stream), runs it, and files the final and best
trackers, the config and the validation success plot into MLflow. A run lives in ``<storage_path>/<name>``; running
the same config again, or ``ct-ray train --resume RUN_DIR``, continues it from its latest checkpoint.
"""
from __future__ import annotations

import contextlib

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ct_ray.config import ConfigError, flatten, from_dict, load_config, to_dict
from ct_ray.compress import StageDivision
from ct_ray.data.sequences import MissingDataError, parse_dataset_spec
from ct_ray.data.shards import MANIFEST, read_manifest
from ct_ray.fileio import Location, is_uri
from ct_ray.models import load_tracker
from ct_ray.orchestration import console, mlflow_runs
from ct_ray.training.experiment import DataSource, ExperimentConfig, check_experiment
from ct_ray.training.inputs import epoch_size, model_crops, steps_per_epoch, stream_sampling, training_source

log = logging.getLogger("ct_ray.train")
CONFIG_FILE = "ct_ray_config.yaml"
RUN_RECORD = "ct_ray_run.json"
FINAL_TRACKER = "final_tracker.pt"
BEST_TRACKER = "best_tracker.pt"


@dataclass
class TrainOutcome:
    run_dir: str
    mlflow_run_id: str | None
    final_tracker: str
    best_tracker: str | None
    metrics: dict[str, Any]


def prepare_data(config: ExperimentConfig) -> None:
    """Generates what ``data.synth`` names and is missing: the synthetic benchmark and, with ``data.source:
    shards``, its training split's shards (cut for the model's crops and ``data.jitter``)."""
    synth = config.data.synth
    shards_ready = config.data.source is DataSource.STREAM or Location.of(config.data.shards).child(MANIFEST).is_file()
    if synth is None:
        if not shards_ready:
            raise ConfigError(f"data.shards: no shards at {config.data.shards} (build them with `ct-ray data "
                              "shards`, use data.source: stream, or add a data.synth section to generate them)")
        return
    from ct_ray.data.synth import generate_benchmark

    if not config.data.val_dataset:
        raise ConfigError("data.synth needs data.val_dataset (synthetic:PATH) to know where the benchmark goes")
    kind, root = parse_dataset_spec(config.data.val_dataset)
    if kind != "synthetic":
        raise ConfigError(f"data.synth generates a synthetic benchmark, but data.val_dataset is {kind}")
    if not (root / "benchmark.json").is_file():
        log.info("generating the synthetic benchmark at %s", root)
        generate_benchmark(root, sequences=synth.sequences, frames=synth.frames, seed=synth.seed,
                           preset=synth.preset, frame_size=(synth.height, synth.width),
                           test_fraction=synth.test_fraction, progress=True)
    if not shards_ready:
        from ct_ray.data.shards import ShardPlan, SourceSpec
        from ct_ray.orchestration.data_pipeline import build_shards

        sampling = stream_sampling(config, model_crops(config))
        plan = ShardPlan(sources=(SourceSpec(f"synthetic:{root}", "train"),), pairs_per_epoch=synth.pairs_per_epoch,
                         epochs=synth.shard_epochs, pairs_per_shard=synth.pairs_per_shard, seed=synth.seed,
                         sampling=sampling)
        build_shards(plan, config.data.shards, progress=True)


def check_data_before_ray(config: ExperimentConfig) -> None:
    """What can be checked of the data before a Ray instance starts: shards that no data.synth section will
    generate must be there, readable and of the right format (crop sizes and factors are checked against the model
    once its teacher exists); a local validation dataset that no data.synth section will generate must exist."""
    if config.data.synth is not None:
        return
    if config.data.source is not DataSource.STREAM:
        read_manifest(config.data.shards)
        if config.is_teacher_run or (config.teacher.path and config.teacher.exists()):
            training_source(config, model_crops(config))
    spec = config.data.val_dataset
    if spec and not is_uri(spec.partition(":")[2]):  # a store URI is fetched by the workers
        kind, root = parse_dataset_spec(spec)
        if not root.exists():
            raise MissingDataError(f"data.val_dataset: no {kind} dataset at {root}")


def bootstrap_teacher(config: ExperimentConfig) -> str | None:
    """Trains the teacher named by ``teacher.bootstrap`` when ``teacher.path`` does not exist yet; returns the
    teacher's MLflow run id."""
    if config.is_teacher_run or config.teacher.path is None or config.teacher.exists():
        return None
    if not config.teacher.bootstrap:
        raise ConfigError(f"teacher.path: {config.teacher.path} does not exist (train a teacher first, or name its "
                          "config in teacher.bootstrap)")
    teacher_config = load_config(ExperimentConfig, config.teacher.bootstrap)
    if not teacher_config.is_teacher_run:
        raise ConfigError(f"teacher.bootstrap: {config.teacher.bootstrap} is not a teacher config (kind "
                          f"{teacher_config.kind.value})")
    log.info("teacher %s missing: training it with %s", config.teacher.path, config.teacher.bootstrap)
    outcome = train(teacher_config, config_path=config.teacher.bootstrap)
    copy_file(outcome.final_tracker, config.teacher.path)
    return outcome.mlflow_run_id


def copy_file(source: str, target: str) -> None:
    """A file from one location (local path or store URI) to another, atomically."""
    source_location, target_location = Location.of(source), Location.of(target)
    with tempfile.TemporaryDirectory(prefix="ct-ray-copy-") as folder:
        local = Path(source_location.path) if source_location.is_local else \
            source_location.download(Path(folder) / source_location.name)
        target_location.upload(local)


def _teacher_run_id(config: ExperimentConfig, bootstrapped: str | None) -> str:
    if bootstrapped:
        return bootstrapped
    if config.teacher.mlflow_run_id:
        return config.teacher.mlflow_run_id
    if config.teacher.path and config.teacher.exists():
        return str(config.teacher.load()[1].get("mlflow_run_id") or "none")
    return "none"


def run_tags(config: ExperimentConfig, teacher_run_id: str, division: StageDivision | None) -> dict[str, str]:
    tags = {"kind": config.kind.value, "teacher_run_id": teacher_run_id, **mlflow_runs.environment_tags()}
    if division is None:
        tags["depth"] = str(config.model.depth)
    else:
        tags.update(student_depth=str(division.student_depth), stage_division=json.dumps(list(division.teacher_stages)),
                    blocks_per_stage=json.dumps(list(division.student_stages)), schedule=config.schedule.kind.value)
    return tags


def _trainer(config: ExperimentConfig, loop_config: dict, run_root: Location, callbacks: list | None = None):
    import ray.train
    from ray.train.torch import TorchTrainer

    from ct_ray.orchestration.train_worker import train_loop_per_worker

    scaling = config.scaling
    resources = {"CPU": scaling.cpus_per_worker}
    if scaling.use_gpu:
        resources["GPU"] = scaling.gpus_per_worker
    run_config = ray.train.RunConfig(
        name=config.run.name,
        storage_path=run_root.path,
        storage_filesystem=None if run_root.is_local else run_root.fs,
        failure_config=ray.train.FailureConfig(max_failures=config.run.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.run.keep_checkpoints,
                                                     checkpoint_score_attribute="checkpoint_score",
                                                     checkpoint_score_order="max"),
        callbacks=callbacks or None,
    )
    return TorchTrainer(
        train_loop_per_worker=train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
                                               resources_per_worker=resources,
                                               placement_strategy=scaling.placement_strategy.value),
        run_config=run_config,
    )


def _check_local_gpus(config: ExperimentConfig, ray_address: str | None) -> None:
    """A GPU run on a local Ray instance without enough GPUs would wait forever for its workers: refuse it. (A
    cluster may add GPU nodes on demand, so there the autoscaler decides.)"""
    if not config.scaling.use_gpu or ray_address or os.environ.get("RAY_ADDRESS"):
        return
    import ray

    needed = config.scaling.num_workers * config.scaling.gpus_per_worker
    available = ray.cluster_resources().get("GPU", 0)
    if available < needed:
        raise ConfigError(f"scaling.use_gpu: the run needs {needed:g} GPU(s) (scaling.num_workers x "
                          f"scaling.gpus_per_worker) but the local Ray instance has {available:g}")


def log_file(config: ExperimentConfig) -> Path:
    """Where Ray's output of a run goes: ``ray.log`` in its run folder, or (runs in a store) a local folder."""
    root = Location.of(config.run.storage_path)
    if root.is_local:
        return Path(root.path) / config.run.name / "ray.log"
    return Path.home() / ".cache" / "ct-ray" / "logs" / f"{config.run.name}.log"


def train(config: ExperimentConfig, config_path: str | None = None, resume: bool = False,
          ray_address: str | None = None, callbacks: list | None = None,
          parent_run_id: str | None = None, progress: bool = True) -> TrainOutcome:
    """Runs (or continues) the training run ``config.run.name`` in ``config.run.storage_path``.

    ``callbacks`` are ``ray.train.UserCallback`` objects (Tune passes its report callback); ``parent_run_id`` nests
    the run's MLflow run under a parent (a Tune search); ``progress`` shows the run's progress bar."""
    from ct_ray.orchestration.cluster import init_ray

    config = config.absolute()
    uri = mlflow_runs.resolve_tracking_uri(config.mlflow.tracking_uri) if config.mlflow.enabled else None
    if uri:
        mlflow_runs.check_reachable(uri)
    run_root = Location.of(config.run.storage_path)
    run_dir = run_root.child(config.run.name)
    record = run_dir.child(RUN_RECORD)
    if resume and not record.is_file():
        raise ConfigError(f"--resume: {run_dir} holds no ct-ray run ({RUN_RECORD} missing)")
    division = check_experiment(config)
    check_data_before_ray(config)
    console.log_to(log_file(config))
    init_ray(ray_address)
    _check_local_gpus(config, ray_address)
    teacher_run = bootstrap_teacher(config)
    prepare_data(config)
    model = model_crops(config)
    source = training_source(config, model)
    pairs = epoch_size(config)
    steps = steps_per_epoch(config, pairs)

    from ct_ray.orchestration.data_pipeline import DropCounter, SampleSettings

    run = None
    if uri:
        params = {**flatten(to_dict(config)), "steps_per_epoch": steps, "pairs_per_epoch": pairs}
        run = mlflow_runs.TrackedRun.open(uri, record, config.mlflow.experiment, config.run.name, params,
                                          run_tags(config, _teacher_run_id(config, teacher_run), division),
                                          parent_run_id=parent_run_id, extra={"config_path": config_path})
    else:
        record.write_text(json.dumps({"mlflow_run_id": None, "mlflow_uri": None, "config_path": config_path}))
    with run if run is not None else contextlib.nullcontext():  # FINISHED, or FAILED on any error
        run_dir.child(CONFIG_FILE).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
        counter = DropCounter.remote()
        settings = SampleSettings(seed=config.run.seed, template_size=model.template_size,
                                  search_size=model.search_size, search_factor=model.search_factor,
                                  jitter=config.data.jitter, augment=config.data.augment)
        with console.TrainingProgress(config.run.name, config.run.epochs, steps, enabled=progress) as bar:
            loop_config = {"experiment": to_dict(config), "steps_per_epoch": steps, "source": source,
                           "settings": settings, "drop_counter": counter, "mlflow_uri": uri,
                           "mlflow_run_id": run.run_id if run else None, "progress": bar.board}
            result = _trainer(config, loop_config, run_root, callbacks).fit()
        import ray

        outcome = _finish(config, result, run, run_dir, config_path, ray.get(counter.counts.remote()))
    return outcome


def _finish(config: ExperimentConfig, result, run: mlflow_runs.TrackedRun | None, run_dir: Location,
            config_path: str | None, dropped: dict[str, int]) -> TrainOutcome:
    """Copies the final and best trackers into the run folder, files them, the config and the plot into MLflow."""
    from ct_ray.evaluation.plots import success_plot
    from ct_ray.orchestration.train_worker import copy_checkpoint_file
    from ct_ray.training.state import TRACKER_FILE

    final_ckpt = result.checkpoint
    if final_ckpt is None:
        raise RuntimeError(f"training run {config.run.name} finished without a checkpoint")
    best_ckpt = result.get_best_checkpoint("checkpoint_score", "max") if result.best_checkpoints else None
    summary = dict(result.return_value or {}) if isinstance(result.return_value, dict) else {}
    summary["dropped_rows"] = sum(dropped.values())
    trackers: dict[str, Location] = {}
    with tempfile.TemporaryDirectory() as folder:
        local = Path(folder)
        curves = {}
        for label, checkpoint, name in (("final", final_ckpt, FINAL_TRACKER), ("best", best_ckpt, BEST_TRACKER)):
            if checkpoint is None:
                continue
            copy = copy_checkpoint_file(checkpoint, TRACKER_FILE, local / name)
            trackers[label] = run_dir.child(name)
            trackers[label].upload(copy)
            meta = load_tracker(copy)[1]
            if meta.get("validation_curve"):
                curve = meta["validation_curve"]
                curves[f"{label} (epoch {meta['epoch']})"] = (curve["thresholds"], curve["success"], curve["auc"])
        if run is not None:
            uri, run_id = run.uri, run.run_id
            mlflow_runs.log_metrics(uri, run_id, {"data_dropped_rows": summary["dropped_rows"]},
                                    step=config.run.epochs)
            for label, name in (("final", FINAL_TRACKER), ("best", BEST_TRACKER)):
                if (local / name).is_file():
                    mlflow_runs.log_artifact(uri, run_id, local / name, f"checkpoints/{label}")
            config_file = local / "config.yaml"
            config_file.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
            mlflow_runs.log_artifact(uri, run_id, config_file)
            if config_path:
                mlflow_runs.log_artifact(uri, run_id, config_path, "source_config")
            if curves:
                mlflow_runs.log_artifact(uri, run_id, success_plot(curves, local / "validation_success.png",
                                                                    title=f"Validation: {config.run.name}"))
            _log_model(config, run, local / FINAL_TRACKER, summary)
    return TrainOutcome(run_dir=run_dir.uri, mlflow_run_id=run.run_id if run else None,
                        final_tracker=trackers["final"].uri,
                        best_tracker=trackers["best"].uri if "best" in trackers else None, metrics=summary)


def _log_model(config: ExperimentConfig, run: mlflow_runs.TrackedRun, tracker: Path, summary: dict) -> None:
    """The final tracker as the run's MLflow model, registered under the experiment's name."""
    from ct_ray.models import load_tracker
    from ct_ray.orchestration.mlflow_model import log_tracker_model, registered_name
    from ct_ray.tracking.speed import count_flops

    model, meta = load_tracker(tracker)
    tags = {"kind": config.kind.value, "depth": len(model.blocks), "flops": count_flops(model),
            "teacher_run_id": _teacher_run_id(config, None) if not config.is_teacher_run else "none",
            "val_auc": summary.get("val_auc")}
    log_tracker_model(run.uri, run.run_id, tracker, registered_name(config.mlflow.experiment), tags)


def resume_config(run_dir: str) -> tuple[ExperimentConfig, str | None]:
    """The config a run was started with, pointed at the run's own folder."""
    folder = Location.of(run_dir)
    config_file = folder.child(CONFIG_FILE)
    if not config_file.is_file():
        raise ConfigError(f"--resume: {run_dir} holds no ct-ray run ({CONFIG_FILE} missing)")
    config = from_dict(ExperimentConfig, yaml.safe_load(config_file.read_text()))
    return config, mlflow_runs.read_record(folder.child(RUN_RECORD)).get("config_path")
