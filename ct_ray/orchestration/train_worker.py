"""The Ray Train function every worker runs: one per process, DDP across processes (gloo on CPU, nccl on GPU).

Per epoch: the replacement probability from the schedule, ``steps_per_epoch`` optimisation steps on the worker's
own stream of samples (``ct_ray.orchestration.data_pipeline``: Ray Data tasks draw them for this rank and epoch),
loss terms averaged across workers, validation by one-pass tracking every
``validate_every`` epochs and at the end, a checkpoint every ``checkpoint_every`` epochs, metrics into the run's
MLflow run (rank 0) and ``ray.train.report`` on every rank.
"""
from __future__ import annotations

import math
import random
import tempfile
import time
from dataclasses import dataclass
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
from ct_ray.models import OneStreamTracker, unwrap
from ct_ray.orchestration import mlflow_runs
from ct_ray.orchestration.data_pipeline import sample_dataset, to_device, worker_batches
from ct_ray.orchestration.distributed_eval import evaluate_sequences
from ct_ray.training.experiment import ExperimentConfig, LowPPlans
from ct_ray.training.state import (
    build_module,
    load_trainable_state,
    load_training_checkpoint,
    save_training_checkpoint,
    set_rng_state,
)
from ct_ray.training.step import TrainStep, lr_factor, parameter_groups, restore_zero_gradients, trained_tracker


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(base: int, epoch: int, rank: int) -> int:
    return (base * 1_000_003 + epoch * 1_009 + rank) % 2**31


def validate(tracker: OneStreamTracker, sequences, device: torch.device) -> tuple[dict[str, float], dict]:
    """One-pass tracking of the validation sequences: in parallel Ray tasks on CPU, or in this process on its GPU
    (the training worker holds the GPU). Returns AUC, precision, normalised precision and the success curve."""
    copy = OneStreamTracker(tracker.config)
    copy.load_state_dict({k: v.detach().cpu() for k, v in tracker.state_dict().items()})
    if device.type == "cuda":
        results = {s.name: np.trunc(track_sequence(copy, s, device)[0]) for s in sequences}
    else:
        results = evaluate_sequences(copy, sequences, progress=False, description="validation")
    score = score_benchmark(results, sequences)
    metrics = {"val_auc": score.auc, "val_precision": score.precision, "val_norm_precision": score.norm_precision,
               "val_op50": score.op50}
    return metrics, {"thresholds": SUCCESS_THRESHOLDS.tolist(), "success": score.success_curve.tolist(),
                     "auc": score.auc}


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
        with checkpoint.as_directory() as folder:
            state = load_training_checkpoint(folder)
        load_trainable_state(module, state["model"], f"{checkpoint.path}")
        optimizer.load_state_dict(state["optimizer"])
        restore_zero_gradients(optimizer)
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        start_epoch, best_score = state["epoch"] + 1, state["best_score"]
        mlflow_run_id = state.get("mlflow_run_id") or mlflow_run_id

    model = ray.train.torch.prepare_model(
        module, parallel_strategy_kwargs={"find_unused_parameters": not config.is_teacher_run})
    sampler = None
    if config.uses_replacement:
        single_below = 0.5 if config.schedule.low_p_plans is LowPPlans.ONE_STAGE else None
        sampler = PlanSampler(module.division.num_stages, seed=config.run.seed, single_stage_below=single_below)
    autocast = torch.bfloat16 if device.type == "cuda" and optim.bf16 else None
    step = TrainStep(model, config.kind, TrackingLoss(config.losses), optimizer, sampler, optim.grad_clip, autocast)
    return Worker(config, rank, world, device, model, optimizer, scheduler, step, start_epoch, best_score,
                  loop_config.get("mlflow_uri"), mlflow_run_id)


def _train_epoch(worker: Worker, batches: Iterator[dict[str, np.ndarray]], epoch: int, steps: int
                 ) -> dict[str, Any]:
    """``steps`` optimisation steps; the loss terms averaged over steps and workers, throughput and plan shares."""
    config = worker.config
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
    """Metrics into MLflow (rank 0), then ``ray.train.report`` on every rank, with a checkpoint when ``save``."""
    if worker.rank == 0 and worker.mlflow_uri and worker.mlflow_run_id:
        mlflow_runs.log_metrics(worker.mlflow_uri, worker.mlflow_run_id,
                                {k: v for k, v in metrics.items() if k != "epoch"}, step=epoch)
    if not save:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        report_checkpoint = None
        if worker.rank == 0:
            save_training_checkpoint(folder, worker.config, worker.model, worker.optimizer, worker.scheduler, epoch,
                                     worker.best_score, worker.mlflow_run_id, trained_tracker(worker.model),
                                     val_auc=metrics.get("val_auc"), validation_curve=curve)
            report_checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=report_checkpoint)


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any]:
    worker = _set_up(loop_config)
    config, steps = worker.config, loop_config["steps_per_epoch"]
    rows = steps * config.data.batch_size
    dataset = sample_dataset(loop_config["source"], loop_config["settings"], worker.start_epoch, config.run.epochs,
                             worker.rank, worker.world, rows, loop_config.get("drop_counter"))
    batches = worker_batches(dataset, config.data.batch_size, steps, config.data.shuffle_buffer, config.run.seed,
                             worker.rank)
    val_sequences = None
    if worker.rank == 0 and config.data.val_dataset:
        val_sequences = load_dataset(config.data.val_dataset, split=config.data.val_split).sequences
        if config.data.val_max_sequences:
            val_sequences = val_sequences[:config.data.val_max_sequences]

    metrics: dict[str, Any] = {}
    for epoch in range(worker.start_epoch, config.run.epochs + 1):
        torch.manual_seed(epoch_seed(config.run.seed, epoch, worker.rank))
        metrics = _train_epoch(worker, batches.epoch(epoch), epoch, steps)
        validation_epoch = bool(config.data.val_dataset) and (epoch % config.run.validate_every == 0
                                                              or epoch == config.run.epochs)
        curve = None
        if validation_epoch and worker.rank == 0:
            scores, curve = validate(trained_tracker(worker.model), val_sequences, worker.device)
            metrics.update(scores)
            worker.best_score = max(worker.best_score, metrics["val_auc"])
        metrics["checkpoint_score"] = metrics.get("val_auc", -1.0)
        save = epoch % config.run.checkpoint_every == 0 or epoch == config.run.epochs or validation_epoch
        _report(worker, epoch, metrics, curve, save)
    return {**metrics, "best_val_auc": worker.best_score if worker.best_score > -math.inf else None,
            "mlflow_run_id": worker.mlflow_run_id}
