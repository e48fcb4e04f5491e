"""The Ray Train function every worker runs: one per process, DDP across processes (gloo on CPU, nccl on GPU).

Per epoch: the replacement probability from the schedule, ``steps_per_epoch`` optimisation steps on batches
streamed from the Ray Data shard, loss terms averaged across workers, validation by one-pass tracking (rank 0, in
parallel Ray tasks) every ``validate_every`` epochs and at the end, a checkpoint every ``checkpoint_every`` epochs,
metrics into the run's MLflow run (rank 0) and ``ray.train.report`` on every rank.
"""
from __future__ import annotations

import math
import random
import tempfile
import time
from typing import Any, Iterator

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from ct_ray import mlflow_utils
from ct_ray.compress import PlanSampler
from ct_ray.config import from_dict
from ct_ray.data.ray_data import torch_batches
from ct_ray.data.sequences import load_dataset
from ct_ray.evaluation.distributed import evaluate_sequences
from ct_ray.evaluation.metrics import SUCCESS_THRESHOLDS, score_benchmark
from ct_ray.evaluation.runner import track_sequence
from ct_ray.losses import TrackingLoss
from ct_ray.models.tracker import OneStreamTracker
from ct_ray.train.config import ExperimentConfig, RunKind
from ct_ray.train.state import (
    build_module,
    load_trainable_state,
    load_training_checkpoint,
    save_training_checkpoint,
    set_rng_state,
)
from ct_ray.train.step import TrainStep, parameter_groups, trained_tracker


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(base: int, epoch: int, rank: int) -> int:
    return (base * 1_000_003 + epoch * 1_009 + rank) % 2**31


def cycling_batches(shard, batch_size: int, device: torch.device, shuffle_buffer: int, seed: int
                    ) -> Iterator[dict[str, torch.Tensor]]:
    """Batches from successive passes over the worker's dataset shard, without end."""
    pass_index = 0
    while True:
        produced = False
        for batch in torch_batches(shard, batch_size, device, shuffle_buffer or None, seed + pass_index):
            produced = True
            yield batch
        if not produced:
            raise RuntimeError("the training dataset shard yielded no batch: too few valid rows for one batch per "
                               "worker")
        pass_index += 1


def lr_lambda(drop_epoch: int | None, factor: float):
    def scale(completed_epochs: int) -> float:
        return factor if drop_epoch is not None and completed_epochs + 1 >= drop_epoch else 1.0

    return scale


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


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any]:
    config: ExperimentConfig = from_dict(ExperimentConfig, loop_config["experiment"])
    steps_per_epoch: int = loop_config["steps_per_epoch"]
    mlflow_uri: str | None = loop_config.get("mlflow_uri")
    mlflow_run_id: str | None = loop_config.get("mlflow_run_id")
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    seed_everything(epoch_seed(config.run.seed, 0, rank))
    if config.run.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)

    module = build_module(config).to(device)
    optimizer = torch.optim.AdamW(parameter_groups(module, config.optim.lr, config.optim.backbone_lr_multiplier,
                                                   config.optim.head_lr_multiplier),
                                  weight_decay=config.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config.optim.lr_drop_epoch,
                                                                       config.optim.lr_drop_factor))
    start_epoch, best_score = 1, -math.inf
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = load_training_checkpoint(folder)
        load_trainable_state(module, state["model"], f"{checkpoint.path}")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        start_epoch, best_score = state["epoch"] + 1, state["best_score"]
        mlflow_run_id = state.get("mlflow_run_id") or mlflow_run_id

    use_gpu = device.type == "cuda"
    ddp_kwargs = {"find_unused_parameters": config.kind is not RunKind.TEACHER}
    model = ray.train.torch.prepare_model(module, parallel_strategy_kwargs=ddp_kwargs)
    loss = TrackingLoss(config.losses)
    sampler = PlanSampler(getattr(module, "division").num_stages, seed=config.run.seed) \
        if config.kind is RunKind.COMPRESSTRACKER else None
    autocast = torch.bfloat16 if use_gpu and config.optim.bf16 else None
    step = TrainStep(model, config.kind, loss, optimizer, sampler, config.optim.grad_clip, autocast)
    schedule = config.schedule.build()

    shard = ray.train.get_dataset_shard("train")
    batches = cycling_batches(shard, config.data.batch_size, device, config.data.shuffle_buffer,
                              seed=config.run.seed * 7919 + rank)
    cycle = loop_config.get("epochs_per_pass")
    if cycle and start_epoch > 1:
        for _ in range(((start_epoch - 1) % cycle) * steps_per_epoch):
            next(batches)

    val_sequences = None
    if rank == 0 and config.data.val_dataset:
        val_sequences = load_dataset(config.data.val_dataset, split=config.data.val_split).sequences
        if config.data.val_max_sequences:
            val_sequences = val_sequences[:config.data.val_max_sequences]

    summary: dict[str, Any] = {}
    for epoch in range(start_epoch, config.run.epochs + 1):
        torch.manual_seed(epoch_seed(config.run.seed, epoch, rank))
        p = schedule(epoch, config.run.epochs) if config.kind is RunKind.COMPRESSTRACKER else 1.0
        model.train()
        sums: dict[str, torch.Tensor] = {}
        plans: dict[str, int] = {}
        data_wait, started = 0.0, time.perf_counter()
        for i in range(steps_per_epoch):
            waited = time.perf_counter()
            batch = next(batches)
            data_wait += time.perf_counter() - waited
            terms, plan = step(batch, (epoch - 1) * steps_per_epoch + i, p)
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value.float()
            if plan is not None:
                plans[str(plan)] = plans.get(str(plan), 0) + 1
        scheduler.step()
        elapsed = time.perf_counter() - started
        names = sorted(sums)
        averaged = torch.stack([sums[n] for n in names]) / steps_per_epoch
        if world > 1:
            dist.all_reduce(averaged)
            averaged /= world
        metrics: dict[str, Any] = {f"loss_{n}" if n not in ("iou", "grad_norm") else f"train_{n}": float(v)
                                   for n, v in zip(names, averaged.tolist())}
        metrics.update(epoch=epoch, replacement_p=p, lr=optimizer.param_groups[0]["lr"],
                       rows_per_s=steps_per_epoch * config.data.batch_size * world / elapsed,
                       data_wait_fraction=data_wait / elapsed, epoch_seconds=elapsed)
        if plans:
            metrics["student_stage_fraction"] = sum(k.count("S") * v for k, v in plans.items()) / (
                sum(plans.values()) * len(next(iter(plans))))

        validation_epoch = bool(config.data.val_dataset) and (epoch % config.run.validate_every == 0
                                                              or epoch == config.run.epochs)
        curve = None
        if validation_epoch and rank == 0:
            scores, curve = validate(trained_tracker(model), val_sequences, device)
            metrics.update(scores)
            best_score = max(best_score, metrics["val_auc"])
        metrics["checkpoint_score"] = metrics.get("val_auc", -1.0)

        save = epoch % config.run.checkpoint_every == 0 or epoch == config.run.epochs or validation_epoch
        if rank == 0 and mlflow_uri and mlflow_run_id:
            mlflow_utils.log_metrics(mlflow_uri, mlflow_run_id,
                                     {k: v for k, v in metrics.items() if k != "epoch"}, step=epoch)
        if save:
            with tempfile.TemporaryDirectory() as folder:
                report_checkpoint = None
                if rank == 0:
                    save_training_checkpoint(folder, config, model, optimizer, scheduler, epoch, best_score,
                                             mlflow_run_id, trained_tracker(model),
                                             val_auc=metrics.get("val_auc"), validation_curve=curve)
                    report_checkpoint = ray.train.Checkpoint.from_directory(folder)
                ray.train.report(metrics, checkpoint=report_checkpoint)
        else:
            ray.train.report(metrics)
        summary = metrics
    return {**summary, "best_val_auc": best_score if best_score > -math.inf else None,
            "mlflow_run_id": mlflow_run_id}
