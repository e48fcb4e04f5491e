"""``ct-ray train``: a thin launcher around a Ray ``TorchTrainer``.

It checks the config, prepares missing synthetic data and a missing bootstrap teacher, opens the run's MLflow run
(failing before training when the store cannot be reached), builds the trainer from the config (workers, GPUs,
placement, failure retries, checkpoint retention, the Ray Data pipeline), runs it, and files the final and best
trackers, the config and the validation success plot into MLflow. A run lives in ``<storage_path>/<name>``; running
the same config again, or ``ct-ray train --resume RUN_DIR``, continues it from its latest checkpoint.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import yaml

from ct_ray import mlflow_utils
from ct_ray.config import ConfigError, flatten, load_config, to_dict
from ct_ray.data.sequences import parse_dataset_spec
from ct_ray.data.shards import MANIFEST, read_manifest
from ct_ray.compress import StageDivision
from ct_ray.models import load_teacher, load_tracker
from ct_ray.train.config import ExperimentConfig, RunKind

log = logging.getLogger("ct_ray.train")
CONFIG_FILE = "ct_ray_config.yaml"
RUN_RECORD = "ct_ray_run.json"


@dataclass
class TrainOutcome:
    run_dir: str
    mlflow_run_id: str | None
    final_tracker: str
    best_tracker: str | None
    metrics: dict[str, Any]


def _filesystem(storage_path: str) -> tuple[pafs.FileSystem, str]:
    if "://" in storage_path:
        return pafs.FileSystem.from_uri(storage_path)
    path = Path(storage_path).resolve()
    return pafs.LocalFileSystem(), str(path)


def _write_text(fs: pafs.FileSystem, path: str, text: str) -> None:
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path + ".tmp") as handle:
        handle.write(text.encode())
    fs.move(path + ".tmp", path)


def _read_text(fs: pafs.FileSystem, path: str) -> str | None:
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as handle:
        return handle.read().decode()


def steps_per_epoch(config: ExperimentConfig, manifest: dict) -> tuple[int, int]:
    """Optimisation steps per epoch on each worker, and how many epochs one pass over the shards holds."""
    pairs = config.data.pairs_per_epoch or manifest["pairs_per_epoch"]
    per_step = config.data.batch_size * config.scaling.num_workers
    steps = pairs // per_step
    if steps < 1:
        raise ConfigError(f"data.pairs_per_epoch ({pairs}) is smaller than one step of every worker "
                          f"(data.batch_size {config.data.batch_size} x scaling.num_workers "
                          f"{config.scaling.num_workers})")
    return steps, max(1, manifest["total_rows"] // pairs)


def prepare_data(config: ExperimentConfig) -> None:
    """Generates the synthetic benchmark and builds shards when ``data.synth`` says so and they are missing."""
    synth = config.data.synth
    shards_ready = (Path(config.data.shards) / MANIFEST).is_file()
    if synth is None:
        if not shards_ready:
            raise ConfigError(f"data.shards: no shards at {config.data.shards} (build them with `ct-ray data "
                              "shards`, or add a data.synth section to generate synthetic ones)")
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
                           preset=synth.preset, frame_size=(synth.height, synth.width), progress=True)
    if not shards_ready:
        from ct_ray.data.pairs import PairSamplingConfig
        from ct_ray.data.ray_data import build_shards
        from ct_ray.data.shards import ShardPlan, SourceSpec

        model = config.model if config.kind is RunKind.TEACHER else None
        sampling = PairSamplingConfig(template_size=model.template_size if model else 128,
                                      search_size=model.search_size if model else 256)
        if config.kind is not RunKind.TEACHER and config.teacher.path and Path(config.teacher.path).is_file():
            teacher_config = load_tracker(config.teacher.path)[0].config
            sampling = PairSamplingConfig(template_size=teacher_config.template_size,
                                          search_size=teacher_config.search_size)
        plan = ShardPlan(sources=(SourceSpec(f"synthetic:{root}", "train"),), pairs_per_epoch=synth.pairs_per_epoch,
                         epochs=synth.shard_epochs, pairs_per_shard=synth.pairs_per_shard, seed=synth.seed,
                         sampling=sampling)
        build_shards(plan, config.data.shards, progress=True)


def bootstrap_teacher(config: ExperimentConfig) -> str | None:
    """Trains the teacher named by ``teacher.bootstrap`` when ``teacher.path`` does not exist yet; returns the
    teacher's MLflow run id."""
    if config.kind is RunKind.TEACHER or config.teacher.path is None or Path(config.teacher.path).exists():
        return None
    if not config.teacher.bootstrap:
        raise ConfigError(f"teacher.path: {config.teacher.path} does not exist (train a teacher first, or name its "
                          "config in teacher.bootstrap)")
    teacher_config = load_config(ExperimentConfig, config.teacher.bootstrap)
    if teacher_config.kind is not RunKind.TEACHER:
        raise ConfigError(f"teacher.bootstrap: {config.teacher.bootstrap} is not a teacher config (kind "
                          f"{teacher_config.kind.value})")
    log.info("teacher %s missing: training it with %s", config.teacher.path, config.teacher.bootstrap)
    outcome = train(teacher_config, config_path=config.teacher.bootstrap)
    Path(config.teacher.path).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(outcome.final_tracker, config.teacher.path)
    return outcome.mlflow_run_id


def _teacher_run_id(config: ExperimentConfig, bootstrapped: str | None) -> str:
    if bootstrapped:
        return bootstrapped
    if config.teacher.mlflow_run_id:
        return config.teacher.mlflow_run_id
    if config.teacher.kind == "ct-ray" and config.teacher.path and Path(config.teacher.path).is_file():
        return str(load_tracker(config.teacher.path)[1].get("mlflow_run_id") or "none")
    return "none"


def _absolute(path: str | None) -> str | None:
    if path is None or "://" in path:
        return path
    return str(Path(path).expanduser().resolve())


def resolve_paths(config: ExperimentConfig) -> ExperimentConfig:
    """The config with every local path made absolute: Ray workers run in other working directories."""
    val = config.data.val_dataset
    if val:
        kind, root = parse_dataset_spec(val)
        val = f"{kind}:{_absolute(str(root))}"
    return replace(
        config,
        teacher=replace(config.teacher, path=_absolute(config.teacher.path),
                        bootstrap=_absolute(config.teacher.bootstrap)),
        data=replace(config.data, shards=_absolute(config.data.shards), val_dataset=val),
        run=replace(config.run, storage_path=_absolute(config.run.storage_path)),
    )


def teacher_depth(config: ExperimentConfig) -> int:
    """The teacher's block count, read without building the training module (from its file, or from the
    bootstrap config when the file is still to be trained)."""
    path = config.teacher.path
    if path and Path(path).is_file():
        options = {"num_heads": config.teacher.num_heads} if config.teacher.num_heads else {}
        return len(load_teacher(config.teacher.kind, path, **options).blocks)
    if config.teacher.bootstrap:
        return load_config(ExperimentConfig, config.teacher.bootstrap).model.depth
    raise ConfigError(f"teacher.path: {path} does not exist (train a teacher first, or name its config in "
                      "teacher.bootstrap)")


def check_experiment(config: ExperimentConfig) -> StageDivision | None:
    """Checks what the config alone cannot: the stage division against the teacher's depth."""
    if config.kind is RunKind.TEACHER:
        return None
    try:
        return config.student.division(teacher_depth(config))
    except ValueError as exc:
        raise ConfigError(f"student: {exc}") from exc


def run_tags(config: ExperimentConfig, teacher_run_id: str, division: StageDivision | None) -> dict[str, str]:
    tags = {"kind": config.kind.value, "teacher_run_id": teacher_run_id, **mlflow_utils.environment_tags()}
    if division is None:
        tags["depth"] = str(config.model.depth)
    else:
        tags.update(student_depth=str(division.student_depth), stage_division=json.dumps(list(division.teacher_stages)),
                    blocks_per_stage=json.dumps(list(division.student_stages)), schedule=config.schedule.kind.value)
    return tags


def _trainer(config: ExperimentConfig, loop_config: dict, fs_path: str, callbacks: list | None = None):
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

    from ct_ray.data.ray_data import DropCounter, pair_dataset

    scaling = config.scaling
    resources = {"CPU": scaling.cpus_per_worker}
    if scaling.use_gpu:
        resources["GPU"] = scaling.gpus_per_worker
    ray.data.DataContext.get_current().enable_progress_bars = False
    counter = DropCounter.remote()
    dataset = pair_dataset(config.data.shards, seed=config.run.seed, augment=config.data.augment,
                           shuffle_files=config.data.shuffle_files and not config.run.deterministic,
                           counter=counter)
    options = ray.train.DataConfig.default_ingest_options()
    options.preserve_order = config.data.preserve_order or config.run.deterministic
    data_config = ray.train.DataConfig(execution_options=options)
    run_config = ray.train.RunConfig(
        name=config.run.name,
        storage_path=config.run.storage_path if "://" in config.run.storage_path else fs_path,
        failure_config=ray.train.FailureConfig(max_failures=config.run.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.run.keep_checkpoints,
                                                     checkpoint_score_attribute="checkpoint_score",
                                                     checkpoint_score_order="max"),
        callbacks=callbacks or None,
    )
    trainer = TorchTrainer(
        train_loop_per_worker=_loop(),
        train_loop_config={**loop_config, "drop_counter": counter},
        scaling_config=ray.train.ScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
                                               resources_per_worker=resources,
                                               placement_strategy=scaling.placement_strategy.value),
        run_config=run_config,
        datasets={"train": dataset},
        dataset_config=data_config,
    )
    return trainer, counter


def _loop():
    from ct_ray.train.worker import train_loop_per_worker

    return train_loop_per_worker


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


def train(config: ExperimentConfig, config_path: str | None = None, resume: bool = False,
          ray_address: str | None = None, callbacks: list | None = None,
          parent_run_id: str | None = None) -> TrainOutcome:
    """Runs (or continues) the training run ``config.run.name`` in ``config.run.storage_path``.

    ``callbacks`` are ``ray.train.UserCallback`` objects (Tune passes its report callback); ``parent_run_id`` nests
    the run's MLflow run under a parent (a Tune search)."""
    from ct_ray.cluster import init_ray

    config = resolve_paths(config)
    uri = mlflow_utils.resolve_tracking_uri(config.mlflow.tracking_uri) if config.mlflow.enabled else None
    if uri:
        mlflow_utils.check_reachable(uri)
    fs, storage = _filesystem(config.run.storage_path)
    run_dir = f"{storage}/{config.run.name}"
    record_text = _read_text(fs, f"{run_dir}/{RUN_RECORD}")
    if resume and record_text is None:
        raise ConfigError(f"--resume: {run_dir} holds no ct-ray run ({RUN_RECORD} missing)")
    division = check_experiment(config)
    init_ray(ray_address)
    _check_local_gpus(config, ray_address)
    teacher_run = bootstrap_teacher(config)
    prepare_data(config)
    manifest = read_manifest(config.data.shards)
    steps, epochs_per_pass = steps_per_epoch(config, manifest)

    record = json.loads(record_text) if record_text else {}
    run_id = record.get("mlflow_run_id")
    if uri and run_id:
        mlflow_utils.reopen_run(uri, run_id)
    elif uri:
        params = flatten(to_dict(config))
        params.update({"steps_per_epoch": steps, "shards.total_rows": manifest["total_rows"]})
        run_id = mlflow_utils.start_run(uri, config.mlflow.experiment, config.run.name, params,
                                        run_tags(config, _teacher_run_id(config, teacher_run), division),
                                        parent_run_id=parent_run_id)
    _write_text(fs, f"{run_dir}/{CONFIG_FILE}", yaml.safe_dump(to_dict(config), sort_keys=False))
    _write_text(fs, f"{run_dir}/{RUN_RECORD}", json.dumps({"mlflow_run_id": run_id, "mlflow_uri": uri,
                                                           "config_path": config_path}, indent=2))
    loop_config = {"experiment": to_dict(config), "steps_per_epoch": steps, "epochs_per_pass": epochs_per_pass,
                   "mlflow_uri": uri, "mlflow_run_id": run_id}
    trainer, counter = _trainer(config, loop_config, storage, callbacks)
    try:
        result = trainer.fit()
    except BaseException:
        if uri and run_id:
            mlflow_utils.end_run(uri, run_id, failed=True)
        raise
    import ray

    dropped = ray.get(counter.counts.remote())
    return _finish(config, result, uri, run_id, run_dir, config_path, dropped)


def _finish(config: ExperimentConfig, result, uri: str | None, run_id: str | None, run_dir: str,
            config_path: str | None, dropped: dict[str, int]) -> TrainOutcome:
    """Copies the final and best trackers next to the run, files them, the config and the plot into MLflow."""
    from ct_ray.evaluation.plots import success_plot

    outputs = Path(tempfile.mkdtemp(prefix="ct-ray-outputs-")) if "://" in run_dir else Path(run_dir)
    final_ckpt = result.checkpoint
    if final_ckpt is None:
        raise RuntimeError(f"training run {config.run.name} finished without a checkpoint")
    best_ckpt = result.get_best_checkpoint("checkpoint_score", "max") if result.best_checkpoints else None
    trackers: dict[str, Path] = {}
    curves = {}
    for label, checkpoint in (("final", final_ckpt), ("best", best_ckpt)):
        if checkpoint is None:
            continue
        with checkpoint.as_directory() as folder:
            target = outputs / f"{label}_tracker.pt"
            shutil.copyfile(Path(folder) / "tracker.pt", target)
        trackers[label] = target
        meta = load_tracker(target)[1]
        if meta.get("validation_curve"):
            curve = meta["validation_curve"]
            curves[f"{label} (epoch {meta['epoch']})"] = (curve["thresholds"], curve["success"], curve["auc"])
    summary = dict(result.return_value or {}) if isinstance(result.return_value, dict) else {}
    summary["dropped_rows"] = sum(dropped.values())
    if uri and run_id:
        mlflow_utils.log_metrics(uri, run_id, {"data_dropped_rows": summary["dropped_rows"]}, step=config.run.epochs)
        for label, path in trackers.items():
            mlflow_utils.log_artifact(uri, run_id, path, f"checkpoints/{label}")
        with tempfile.TemporaryDirectory() as folder:
            config_file = Path(folder) / "config.yaml"
            config_file.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
            mlflow_utils.log_artifact(uri, run_id, config_file)
            if config_path:
                mlflow_utils.log_artifact(uri, run_id, config_path, "source_config")
            if curves:
                mlflow_utils.log_artifact(uri, run_id, success_plot(curves, Path(folder) / "validation_success.png",
                                                                     title=f"Validation: {config.run.name}"))
        mlflow_utils.end_run(uri, run_id)
    return TrainOutcome(run_dir=run_dir, mlflow_run_id=run_id, final_tracker=str(trackers["final"]),
                        best_tracker=str(trackers["best"]) if "best" in trackers else None, metrics=summary)


def resume_config(run_dir: str) -> tuple[ExperimentConfig, str | None]:
    """The config a run was started with, pointed at the run's own folder."""
    fs, path = _filesystem(run_dir)
    text = _read_text(fs, f"{path}/{CONFIG_FILE}")
    if text is None:
        raise ConfigError(f"--resume: {run_dir} holds no ct-ray run ({CONFIG_FILE} missing)")
    from ct_ray.config import from_dict

    config = from_dict(ExperimentConfig, yaml.safe_load(text))
    record = json.loads(_read_text(fs, f"{path}/{RUN_RECORD}") or "{}")
    return config, record.get("config_path")
