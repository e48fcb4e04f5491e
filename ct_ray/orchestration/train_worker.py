"""The Ray Train function every worker runs: one per process, DDP across processes (gloo on CPU, nccl on GPU).

Per epoch: the replacement probability from the schedule, ``steps_per_epoch`` optimisation steps on the worker's
own stream of samples (``ct_ray.orchestration.data_pipeline``: Ray tasks draw them for this rank and epoch), loss
terms averaged across workers, validation by one-pass tracking every ``validate_every`` epochs and at the end (the
sequences spread over the workers), a checkpoint every ``checkpoint_every`` epochs (uploaded in the background),
metrics into the run's MLflow run (rank 0, through a buffer that outlives a server outage) and
``ray.train.report`` on every rank.

Only the trainable part is data-parallel: the frozen teacher of a CompressTracker or distillation run is a plain
module on each worker, which DDP neither broadcasts nor reduces (``ignore_frozen_teacher``).
"""
from __future__ import annotations

import math
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from ct_ray.compress import PlanSampler
from ct_ray.compress.losses import TrackingLoss
from ct_ray.config import from_dict
from ct_ray.data.sequences import load_dataset
from ct_ray.evaluation.metrics import SUCCESS_THRESHOLDS, score_benchmark
from ct_ray.evaluation.sequence import track_sequence
from ct_ray.fileio import Location
from ct_ray.models import OneStreamTracker, unwrap
from ct_ray.models.checkpoints import CheckpointError
from ct_ray.orchestration import mlflow_runs
from ct_ray.orchestration.data_pipeline import SampleStream, to_device, worker_batches
from ct_ray.orchestration.distributed_eval import evaluate_sequences
from ct_ray.training.experiment import ExperimentConfig, LowPPlans
from ct_ray.training.state import (
    TRAIN_STATE_FILE,
    build_module,
    load_trainable_state,
    load_training_checkpoint,
    save_training_checkpoint,
    set_rng_state,
)
from ct_ray.training.step import TrainStep, lr_factor, parameter_groups, restore_zero_gradients, trained_tracker


def copy_checkpoint_file(checkpoint: ray.train.Checkpoint, name: str, target: Path) -> Path:
    """Copies one file of a Ray checkpoint (local or in a store) to ``target``, a path this process owns.

    Not ``Checkpoint.as_directory``: off local storage it downloads into one temporary folder per checkpoint shared by
    every process of a machine, and a rank that downloads again rewrites the files another rank is reading.
    """
    try:
        return Location(checkpoint.path, checkpoint.filesystem, checkpoint.path).child(name).download(target)
    except FileNotFoundError:
        raise CheckpointError(f"{checkpoint.path}: the checkpoint has no {name}") from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(base: int, epoch: int, rank: int) -> int:
    return (base * 1_000_003 + epoch * 1_009 + rank) % 2**31


def validate(tracker: OneStreamTracker, sequences, device: torch.device, rank: int = 0,
             world: int = 1) -> tuple[dict[str, float], dict] | None:
    """One-pass tracking of the validation sequences, called on every rank. On GPUs each worker tracks every
    ``world``-th sequence on its own device and rank 0 gathers the boxes; on CPUs rank 0 tracks them all in
    parallel Ray tasks (the CPUs beside the training workers) while the others wait at the gather. Rank 0 returns
    AUC, precision, normalised precision and the success curve; the other ranks None."""
    copy = OneStreamTracker(tracker.config)
    copy.load_state_dict({k: v.detach().cpu() for k, v in tracker.state_dict().items()})
    if device.type == "cuda":
        mine = {s.name: np.trunc(track_sequence(copy, s, device)[0]) for s in sequences[rank::world]}
    else:
        mine = evaluate_sequences(copy, sequences, progress=False, description="validation") if rank == 0 else {}
    parts = [mine]
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, mine)
    if rank != 0:
        return None
    results = {name: boxes for part in parts for name, boxes in part.items()}
    score = score_benchmark(results, sequences)
    metrics = {"val_auc": score.auc, "val_precision": score.precision, "val_norm_precision": score.norm_precision,
               "val_op50": score.op50}
    return metrics, {"thresholds": SUCCESS_THRESHOLDS.tolist(), "success": score.success_curve.tolist(),
                     "auc": score.auc}


def ignore_frozen_teacher(module: torch.nn.Module) -> list[str]:
    """Tells DDP to leave the frozen teacher (``module.teacher``) alone: no broadcast of its weights at start, none of
    its buffers every step, no gradient buckets for it; only the student and the projections are synchronised.
    Returns the names ignored."""
    from torch.nn.parallel import DistributedDataParallel

    teacher = getattr(module, "teacher", None)
    if teacher is None:
        return []
    names = [f"teacher.{name}" for name, _ in teacher.named_parameters()]
    names += [f"teacher.{name}" for name, _ in teacher.named_buffers()]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, names)
    return names


@dataclass
class Worker:
    """What one training process holds: its config, rank, device, the trained module and its optimiser state."""

    config: ExperimentConfig
    rank: int
    world: int
    device: torch.device
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    step: TrainStep
    start_epoch: int
    best_score: float
    mlflow_uri: str | None
    mlflow_run_id: str | None
    metrics_out: mlflow_runs.MetricBuffer | None = None


def _set_up(loop_config: dict[str, Any]) -> Worker:
    """Builds the module, optimiser and schedule, restores them from the run's latest checkpoint if there is one,
    and wraps the module for data parallelism."""
    config: ExperimentConfig = from_dict(ExperimentConfig, loop_config["experiment"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    seed_everything(epoch_seed(config.run.seed, 0, rank))
    if config.run.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)

    module = build_module(config).to(device)
    optim = config.optim
    optimizer = torch.optim.AdamW(parameter_groups(module, optim.lr, optim.backbone_lr_multiplier,
                                                   optim.head_lr_multiplier), weight_decay=optim.weight_decay)
    factor = lr_factor(optim.lr_schedule.value, config.run.epochs, loop_config["steps_per_epoch"], optim.warmup_epochs,
                       optim.lr_drop_epoch, optim.lr_drop_factor)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    start_epoch, best_score = 1, -math.inf
    mlflow_run_id = loop_config.get("mlflow_run_id")
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with tempfile.TemporaryDirectory(prefix="ct-ray-restore-") as folder:
            copy_checkpoint_file(checkpoint, TRAIN_STATE_FILE, Path(folder) / TRAIN_STATE_FILE)
            state = load_training_checkpoint(folder)
        load_trainable_state(module, state["model"], f"{checkpoint.path}")
        optimizer.load_state_dict(state["optimizer"])
        restore_zero_gradients(optimizer)
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        start_epoch, best_score = state["epoch"] + 1, state["best_score"]
        mlflow_run_id = state.get("mlflow_run_id") or mlflow_run_id

    if world > 1:
        ignore_frozen_teacher(module)
    model = ray.train.torch.prepare_model(
        module, parallel_strategy_kwargs={"find_unused_parameters": not config.is_teacher_run})
    sampler = None
    if config.uses_replacement:
        single_below = 0.5 if config.schedule.low_p_plans is LowPPlans.ONE_STAGE else None
        sampler = PlanSampler(module.division.num_stages, seed=config.run.seed, single_stage_below=single_below)
    autocast = torch.bfloat16 if device.type == "cuda" and optim.bf16 else None
    step = TrainStep(model, config.kind, TrackingLoss(config.losses), optimizer, sampler, optim.grad_clip, autocast)
    uri = loop_config.get("mlflow_uri")
    buffer = mlflow_runs.MetricBuffer(uri, mlflow_run_id) if rank == 0 and uri and mlflow_run_id else None
    if buffer is not None and device.type == "cpu":  # the kernels this worker trains with, on its threads
        try:
            mlflow_runs.set_tags(uri, mlflow_run_id, mlflow_runs.kernels_tags())
        except mlflow_runs.MlflowUnavailableError as exc:  # a missing tag must not stop the training
            print(f"{exc}; the run has no kernels_sha256 tag")
    return Worker(config, rank, world, device, model, optimizer, scheduler, step, start_epoch, best_score,
                  uri, mlflow_run_id, buffer)


def _train_epoch(worker: Worker, batches: Iterator[dict[str, np.ndarray]], epoch: int, steps: int,
                 progress=None) -> dict[str, Any]:
    """``steps`` optimisation steps; the loss terms averaged over steps and workers, throughput and plan shares.
    Rank 0 tells the driver's progress bar how far it is (``progress``, at most once a second)."""
    config = worker.config
    told = 0.0
    p = config.schedule.build()(epoch, config.run.epochs) if config.uses_replacement else 1.0
    worker.model.train()
    sums: dict[str, torch.Tensor] = {}
    plans: dict[str, int] = {}
    data_wait, started = 0.0, time.perf_counter()
    for i in range(steps):
        waited = time.perf_counter()
        batch = to_device(next(batches), worker.device)
        data_wait += time.perf_counter() - waited
        terms, plan = worker.step(batch, (epoch - 1) * steps + i, p)
        worker.scheduler.step()
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + value.float()
        if plan is not None:
            plans[str(plan)] = plans.get(str(plan), 0) + 1
        if progress is not None and worker.rank == 0 and (time.perf_counter() - told > 1.0 or i == steps - 1):
            told = time.perf_counter()
            progress.update.remote({"step": (epoch - 1) * steps + i + 1, "epoch": epoch, "p": p,
                                    "loss": float(terms["total"])})
    elapsed = time.perf_counter() - started
    names = sorted(sums)
    averaged = torch.stack([sums[n] for n in names]) / steps
    if worker.world > 1:
        dist.all_reduce(averaged)
        averaged /= worker.world
    metrics: dict[str, Any] = {f"loss_{n}" if n not in ("iou", "grad_norm") else f"train_{n}": float(v)
                               for n, v in zip(names, averaged.tolist())}
    metrics.update(epoch=epoch, replacement_p=p, lr=worker.optimizer.param_groups[0]["lr"],
                   rows_per_s=steps * config.data.batch_size * worker.world / elapsed,
                   data_wait_fraction=data_wait / elapsed, epoch_seconds=elapsed)
    if plans:
        metrics["student_stage_fraction"] = sum(k.count("S") * v for k, v in plans.items()) / (
            sum(plans.values()) * len(next(iter(plans))))
    return metrics


def _report(worker: Worker, epoch: int, metrics: dict[str, Any], curve: dict | None, save: bool) -> None:
    """Metrics into MLflow (rank 0, buffered), then ``ray.train.report`` on every rank, with a checkpoint when
    ``save``: written to a local folder and uploaded by Ray in the background (``CheckpointUploadMode.ASYNC``, which
    removes the folder once uploaded), so that the workers go on with the next epoch meanwhile."""
    if worker.metrics_out is not None:
        worker.metrics_out.log({k: v for k, v in metrics.items() if k != "epoch"}, step=epoch)
    if not save:
        ray.train.report(metrics)
        return
    if worker.metrics_out is not None:
        # A checkpoint never runs ahead of its epochs' metrics, unless the server is down (then they stay queued).
        worker.metrics_out.flush(timeout=10.0)
    report_checkpoint = None
    if worker.rank == 0:
        folder = tempfile.mkdtemp(prefix=f"ct-ray-checkpoint-{epoch:04d}-")
        save_training_checkpoint(folder, worker.config, worker.model, worker.optimizer, worker.scheduler, epoch,
                                 worker.best_score, worker.mlflow_run_id, trained_tracker(worker.model),
                                 val_auc=metrics.get("val_auc"), validation_curve=curve)
        report_checkpoint = ray.train.Checkpoint.from_directory(folder)
    ray.train.report(metrics, checkpoint=report_checkpoint,
                     checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC)


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any]:
    worker = _set_up(loop_config)
    config, steps = worker.config, loop_config["steps_per_epoch"]
    rows = steps * config.data.batch_size
    stream = SampleStream(loop_config["source"], loop_config["settings"], worker.start_epoch, config.run.epochs,
                          worker.rank, worker.world, rows, loop_config.get("drop_counter"),
                          tasks=config.data.sample_tasks,
                          ahead_rows=max(config.data.shuffle_buffer, config.data.batch_size))
    batches = worker_batches(stream, config.data.batch_size, steps, config.data.shuffle_buffer, config.run.seed,
                             worker.rank)
    val_sequences = None
    if config.data.val_dataset:
        val_sequences = load_dataset(config.data.val_dataset, split=config.data.val_split).sequences
        if config.data.val_max_sequences:
            val_sequences = val_sequences[:config.data.val_max_sequences]

    metrics: dict[str, Any] = {}
    try:
        for epoch in range(worker.start_epoch, config.run.epochs + 1):
            torch.manual_seed(epoch_seed(config.run.seed, epoch, worker.rank))
            metrics = _train_epoch(worker, batches.epoch(epoch), epoch, steps, loop_config.get("progress"))
            validation_epoch = bool(config.data.val_dataset) and (epoch % config.run.validate_every == 0
                                                                  or epoch == config.run.epochs)
            curve = None
            if validation_epoch:
                validated = validate(trained_tracker(worker.model), val_sequences, worker.device, worker.rank,
                                     worker.world)
                if validated is not None:
                    scores, curve = validated
                    metrics.update(scores)
                    worker.best_score = max(worker.best_score, metrics["val_auc"])
                    if loop_config.get("progress") is not None:
                        loop_config["progress"].update.remote({"val_auc": metrics["val_auc"]})
            metrics["checkpoint_score"] = metrics.get("val_auc", -1.0)
            save = epoch % config.run.checkpoint_every == 0 or epoch == config.run.epochs or validation_epoch
            _report(worker, epoch, metrics, curve, save)
    finally:
        stream.close()
    if worker.metrics_out is not None:
        unsent = worker.metrics_out.close()
        if unsent:
            print(f"MLflow: {unsent} epochs of metrics could not be sent to {worker.mlflow_uri}; they are in Ray's "
                  "results of the run")
    return {**metrics, "best_val_auc": worker.best_score if worker.best_score > -math.inf else None,
            "mlflow_run_id": worker.mlflow_run_id}
