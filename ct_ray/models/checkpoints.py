"""Loading and saving tracker weights: OSTrack release checkpoints, timm / MAE ViT files, and ct-ray's own format.

Every file is read with ``torch.load(..., weights_only=True)``. OSTrack's release files also pickle training
objects (settings, stats) next to the weights; their classes are replaced by inert stand-ins so that the file still
loads with ``weights_only=True`` and no code from it runs.
"""
from __future__ import annotations

import inspect
import math
import os
import pickle
import zipfile
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ct_ray.errors import MissingFileError, UserError
from ct_ray.fileio import atomic_path
from ct_ray.models.one_stream import OneStreamTracker, TrackerConfig

OSTRACK_UNUSED_KEYS = ("backbone.cls_token", "backbone.pos_embed")
CHECKPOINT_FORMAT = "ct-ray-tracker/1"


class CheckpointError(UserError, ValueError):
    """A checkpoint whose keys or shapes do not fit the model it is loaded into."""


class _StandIn:
    """Inert replacement for a class pickled in a checkpoint beside the weights; it only stores its state."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _stand_in(qualified_name: str) -> type:
    module, _, name = qualified_name.rpartition(".")
    return type(name, (_StandIn,), {"__module__": module, "__qualname__": name})


# Modules whose classes may be pickled beside the weights of a real checkpoint (OSTrack's training settings and
# stats, easydict configs): they load as inert stand-ins. Any other global (a function such as os.system, a class of
# any other module) is refused: nothing from the file runs either way.
_STAND_IN_MODULES = ("lib.", "easydict", "argparse", "ltr.", "pytracking.")


def _stand_in_allowed(qualified_name: str) -> bool:
    module = qualified_name.rpartition(".")[0]
    return any(module == prefix.rstrip(".") or module.startswith(prefix) for prefix in _STAND_IN_MODULES)


def safe_load(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)``; classes of training objects that tracker checkpoints pickle beside
    their weights load as inert stand-ins. A missing, empty, truncated or non-torch file, and a file that pickles
    anything else (code to run), is a ``CheckpointError`` naming the file: nothing from it runs."""
    if not os.path.isfile(path):
        raise MissingFileError(f"checkpoint not found: {path}")
    unreadable = (EOFError, RuntimeError, KeyError, ValueError, OSError, zipfile.BadZipFile)

    def not_readable(exc: BaseException) -> CheckpointError:
        detail = str(exc).splitlines()[0][:120] if str(exc) else ""
        return CheckpointError(f"{path}: not a readable checkpoint ({os.path.getsize(path)} bytes; empty, truncated "
                               f"or not written by torch.save: {type(exc).__name__}: {detail})")

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass
    except unreadable as exc:
        raise not_readable(exc) from None
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except unreadable as exc:
        raise not_readable(exc) from None
    refused = [name for name in unsafe if not _stand_in_allowed(name)]
    if refused:
        raise CheckpointError(f"{path}: refused: the file pickles objects other than tensors and plain data "
                              f"({', '.join(refused)}); a tracker checkpoint holds weights only, so nothing from it "
                              "was run") from None
    with torch.serialization.safe_globals([_stand_in(name) for name in unsafe]):
        return torch.load(path, map_location="cpu", weights_only=True)


def ostrack_to_ct_ray(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OSTrack keys (``backbone.*``, ``box_head.*``) -> ct-ray keys; the unused ``cls_token`` / ``pos_embed``
    are dropped, any other key outside the two prefixes is an error."""
    mapped, unexpected = {}, []
    for key, value in state_dict.items():
        if key in OSTRACK_UNUSED_KEYS:
            continue
        if key.startswith("backbone."):
            mapped[key[len("backbone."):]] = value
        elif key.startswith("box_head."):
            mapped[key] = value
        else:
            unexpected.append(key)
    if unexpected:
        raise CheckpointError(f"keys outside OSTrack's backbone.* / box_head.*: {sorted(unexpected)}")
    return mapped


def ct_ray_to_ostrack(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ct-ray keys -> OSTrack keys, so a compressed student loads into OSTrack's own code."""
    return {key if key.startswith("box_head.") else f"backbone.{key}": value for key, value in state_dict.items()}


def _square_side(count: int, key: str) -> int:
    side = math.isqrt(count)
    if side * side != count:
        raise CheckpointError(f"{key} holds {count} positions, not a square grid")
    return side


def infer_config(state_dict: Mapping[str, torch.Tensor], num_heads: int | None = None) -> TrackerConfig:
    """Architecture from a ct-ray-keyed state dict's shapes. Heads cannot be read from shapes: ``num_heads``
    defaults to ``embed_dim // 64`` (ViT-S/B/L convention: 6 / 12 / 16)."""
    required = ("patch_embed.proj.weight", "pos_embed_z", "pos_embed_x", "box_head.conv1_ctr.0.weight",
                "blocks.0.mlp.fc1.weight")
    missing = [key for key in required if key not in state_dict]
    if missing:
        raise CheckpointError(f"cannot infer the architecture, missing keys: {missing}")
    proj = state_dict["patch_embed.proj.weight"]
    dim, patch = int(proj.shape[0]), int(proj.shape[-1])
    block_ids = {int(key.split(".")[1]) for key in state_dict if key.startswith("blocks.")}
    depth = max(block_ids) + 1
    if block_ids != set(range(depth)):
        raise CheckpointError(f"block indices are not contiguous: {sorted(block_ids)}")
    hidden = int(state_dict["blocks.0.mlp.fc1.weight"].shape[0])
    return TrackerConfig(
        embed_dim=dim,
        depth=depth,
        num_heads=num_heads or max(1, dim // 64),
        mlp_ratio=hidden / dim,
        patch_size=patch,
        template_size=_square_side(int(state_dict["pos_embed_z"].shape[1]), "pos_embed_z") * patch,
        search_size=_square_side(int(state_dict["pos_embed_x"].shape[1]), "pos_embed_x") * patch,
        head_channels=int(state_dict["box_head.conv1_ctr.0.weight"].shape[0]),
    )


def load_state_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Loads every key; a missing or unexpected key or a shape mismatch is an error naming the keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = sorted(f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(own[key].shape)}"
                        for key in set(own) & set(state_dict) if own[key].shape != state_dict[key].shape)
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if mismatched:
        problems.append(f"shape mismatches {mismatched}")
    if problems:
        raise CheckpointError(f"{source}: " + "; ".join(problems))
    model.load_state_dict(state_dict, strict=True)


def load_ostrack(path: str | os.PathLike, num_heads: int | None = None) -> OneStreamTracker:
    """An OSTrack release checkpoint (``{"net": state_dict}``, or the bare state dict) as a tracker whose
    architecture is read from the weights' shapes."""
    checkpoint = safe_load(path)
    state = checkpoint.get("net", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not any(str(key).startswith("backbone.") for key in state):
        raise CheckpointError(f"{path}: not an OSTrack checkpoint (expected a dict with key 'net' holding "
                              "backbone.* and box_head.* weights)")
    mapped = ostrack_to_ct_ray(state)
    model = OneStreamTracker(infer_config(mapped, num_heads))
    load_state_strict(model, mapped, str(path))
    return model


def _vit_state(checkpoint: Any, path: str) -> dict[str, torch.Tensor]:
    if isinstance(checkpoint, dict):
        for key in ("model", "state_dict", "net"):
            if isinstance(checkpoint.get(key), dict):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, dict) or "patch_embed.proj.weight" not in checkpoint:
        raise CheckpointError(f"{path}: not a ViT state dict (no patch_embed.proj.weight)")
    return checkpoint


def resize_pos_embed(pos_embed: torch.Tensor, side: int) -> torch.Tensor:
    """(1, S*S, D) grid position embeddings -> (1, side*side, D), bicubic as OSTrack does."""
    grid = _square_side(pos_embed.shape[1], "pos_embed")
    dim = pos_embed.shape[2]
    image = pos_embed.reshape(1, grid, grid, dim).permute(0, 3, 1, 2).float()
    image = F.interpolate(image, size=(side, side), mode="bicubic", align_corners=False)
    return image.permute(0, 2, 3, 1).reshape(1, side * side, dim).to(pos_embed.dtype)


VIT_IGNORED_PREFIXES = ("cls_token", "dist_token", "reg_token", "mask_token", "head.", "fc_norm.", "decoder",
                        "head_dist.")


def init_from_vit(path: str | os.PathLike, template_size: int = 128, search_size: int = 256,
                  head_channels: int = 256, num_heads: int | None = None,
                  drop_path_rate: float = 0.0) -> OneStreamTracker:
    """A tracker initialised from a local timm or MAE ViT checkpoint: patch embedding, blocks and final norm copied,
    the 224 px position embeddings bicubic-interpolated to the template and search grids, a fresh head."""
    vit = _vit_state(safe_load(path), str(path))
    vit = {k: v for k, v in vit.items() if not k.startswith(VIT_IGNORED_PREFIXES)}
    pos = vit.pop("pos_embed", None)
    if pos is None:
        raise CheckpointError(f"{path}: no pos_embed")
    if math.isqrt(pos.shape[1]) ** 2 != pos.shape[1]:
        pos = pos[:, 1:]
    proj = vit["patch_embed.proj.weight"]
    dim, patch = int(proj.shape[0]), int(proj.shape[-1])
    depth = len({key.split(".")[1] for key in vit if key.startswith("blocks.")})
    config = TrackerConfig(embed_dim=dim, depth=depth, num_heads=num_heads or max(1, dim // 64),
                           mlp_ratio=int(vit["blocks.0.mlp.fc1.weight"].shape[0]) / dim, patch_size=patch,
                           template_size=template_size, search_size=search_size, head_channels=head_channels,
                           drop_path_rate=drop_path_rate)
    model = OneStreamTracker(config)
    vit["pos_embed_z"] = resize_pos_embed(pos, template_size // patch)
    vit["pos_embed_x"] = resize_pos_embed(pos, search_size // patch)
    head = {key: value for key, value in model.state_dict().items() if key.startswith("box_head.")}
    load_state_strict(model, {**vit, **head}, str(path))
    return model


def save_tracker(path: str | os.PathLike, model: OneStreamTracker, meta: Mapping[str, Any] | None = None) -> None:
    """ct-ray's one checkpoint format for a tracker: architecture, weights and JSON-like metadata; atomic."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": dict(meta or {}),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_tracker(path: str | os.PathLike) -> tuple[OneStreamTracker, dict[str, Any]]:
    """A tracker saved by ``save_tracker``, and its metadata."""
    payload = safe_load(path)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a ct-ray tracker checkpoint (format {CHECKPOINT_FORMAT})")
    try:
        config = TrackerConfig.from_dict(payload["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: bad architecture record: {exc}") from exc
    model = OneStreamTracker(config)
    load_state_strict(model, payload["state_dict"], str(path))
    return model, dict(payload.get("meta", {}))


TeacherLoader = Callable[..., OneStreamTracker]
TEACHERS: dict[str, TeacherLoader] = {}


def register_teacher(name: str) -> Callable[[TeacherLoader], TeacherLoader]:
    """Registers a function ``(path, **options) -> OneStreamTracker`` under ``name`` for configs to refer to."""

    def decorate(loader: TeacherLoader) -> TeacherLoader:
        if name in TEACHERS:
            raise ValueError(f"teacher kind {name!r} is already registered")
        TEACHERS[name] = loader
        return loader

    return decorate


def load_teacher(kind: str, path: str | os.PathLike, **options: Any) -> OneStreamTracker:
    """The tracker in ``path`` read by the loader registered as ``kind``. Options the loader does not take (e.g.
    ``num_heads`` for a ct-ray file, which records its heads) are a ``CheckpointError`` naming them."""
    if kind not in TEACHERS:
        raise CheckpointError(f"unknown teacher kind {kind!r}; registered: {sorted(TEACHERS)}")
    loader = TEACHERS[kind]
    accepted = inspect.signature(loader).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    unknown = sorted(name for name, value in options.items() if value is not None and name not in accepted)
    if unknown and not takes_any:
        raise CheckpointError(f"a {kind} checkpoint takes no option {unknown} (it records that itself)")
    return loader(path, **{name: value for name, value in options.items() if value is not None})


def load_checkpoint(path: str | os.PathLike, kind: str = "ct-ray", num_heads: int | None = None
                    ) -> tuple[OneStreamTracker, dict[str, Any]]:
    """The one way to open a tracker file: ``(model, meta)``. ct-ray checkpoints keep their metadata (kind, epoch,
    crop settings, MLflow run, ...); OSTrack / ViT files have none. ``num_heads`` is for the formats that do not
    record it (OSTrack, ViT)."""
    if kind == "ct-ray":
        if num_heads is not None:
            raise CheckpointError("a ct-ray checkpoint records its attention heads: give no num_heads")
        return load_tracker(path)
    return load_teacher(kind, path, num_heads=num_heads), {}


register_teacher("ostrack")(load_ostrack)
register_teacher("vit")(init_from_vit)


@register_teacher("ct-ray")
def _load_ct_ray_teacher(path: str | os.PathLike) -> OneStreamTracker:
    return load_tracker(path)[0]
