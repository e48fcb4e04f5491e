"""What a run trains, and its training checkpoint (plain PyTorch).

A training checkpoint is a folder with ``train_state.pt`` (trainable weights, optimizer, scheduler, epoch, RNG
states, best validation score, MLflow run id, config) and ``tracker.pt`` (the trained tracker in ct-ray's tracker
format, ready for ``ct-ray eval``). The teacher's weights are never copied into it.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ct_ray.compress import ReplacementModel, build_student
from ct_ray.config import to_dict
from ct_ray.fileio import atomic_path
from ct_ray.models import OneStreamTracker, save_tracker, set_drop_path, unwrap
from ct_ray.models.checkpoints import load_state_strict, safe_load
from ct_ray.training.experiment import ExperimentConfig

TRAIN_STATE_FILE = "train_state.pt"
TRACKER_FILE = "tracker.pt"


def build_module(config: ExperimentConfig) -> nn.Module:
    """The module a run optimises: a tracker (teacher runs) or teacher + student (every other kind)."""
    if config.is_teacher_run:
        return config.teacher.load()[0] if config.teacher.path else OneStreamTracker(config.model)
    teacher = config.teacher.load()[0]
    if config.teacher.train_mode:
        set_drop_path(teacher, config.teacher.drop_path_rate)
    division = config.student.division(len(teacher.blocks))
    student = build_student(teacher, division, embed_dim=config.student.embed_dim,
                            num_heads=config.student.num_heads, drop_path_rate=config.student.drop_path_rate)
    return ReplacementModel(teacher, student, division, teacher_train_mode=config.teacher.train_mode)


def trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of the module but the (frozen) teacher's."""
    core = unwrap(module)
    return {k: v.detach().cpu() for k, v in core.state_dict().items() if not k.startswith("teacher.")}


def load_trainable_state(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    core = unwrap(module)
    full = core.state_dict()
    merged = {**{k: v for k, v in full.items() if k.startswith("teacher.")}, **state}
    load_state_strict(core, merged, source)


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
            "numpy_pos": int(np_state[2]), "python": list(random.getstate()[1])}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))


def tracker_meta(config: ExperimentConfig, module: nn.Module, epoch: int, **extra: Any) -> dict[str, Any]:
    core = unwrap(module)
    meta: dict[str, Any] = {"kind": config.kind.value, "epoch": epoch, **extra}
    if isinstance(core, ReplacementModel):
        meta.update(teacher_stages=list(core.division.teacher_stages),
                    student_stages=list(core.division.student_stages),
                    teacher_path=str(config.teacher.path), teacher_depth=len(core.teacher.blocks))
    return meta


def save_training_checkpoint(directory: str | Path, config: ExperimentConfig, module: nn.Module,
                             optimizer: torch.optim.Optimizer, scheduler, epoch: int, best_score: float,
                             mlflow_run_id: str | None, tracker: OneStreamTracker, **meta: Any) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = {
        "epoch": epoch,
        "model": trainable_state(module),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
        "best_score": best_score,
        "mlflow_run_id": mlflow_run_id,
        "config": to_dict(config),
    }
    with atomic_path(directory / TRAIN_STATE_FILE) as tmp:
        torch.save(payload, tmp)
    save_tracker(directory / TRACKER_FILE, tracker, tracker_meta(config, module, epoch, mlflow_run_id=mlflow_run_id,
                                                                 **meta))
    return directory


def load_training_checkpoint(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / TRAIN_STATE_FILE
    return safe_load(path)
