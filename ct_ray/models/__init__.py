"""Tracker models (OSTrack-style one-stream ViT) and their checkpoints."""
from ct_ray.models.checkpoints import (
    TEACHERS,
    CheckpointError,
    ct_ray_to_ostrack,
    infer_config,
    init_from_vit,
    load_checkpoint,
    load_ostrack,
    load_teacher,
    load_tracker,
    ostrack_to_ct_ray,
    register_teacher,
    safe_load,
    save_tracker,
)
from ct_ray.models.one_stream import (
    CenterHead,
    OneStreamTracker,
    TrackerConfig,
    count_parameters,
    decode_boxes,
    set_drop_path,
    unwrap,
)

__all__ = [
    "TEACHERS", "CenterHead", "CheckpointError", "OneStreamTracker", "TrackerConfig", "count_parameters",
    "ct_ray_to_ostrack", "decode_boxes", "infer_config", "init_from_vit", "load_checkpoint", "load_ostrack",
    "load_teacher", "load_tracker", "ostrack_to_ct_ray", "register_teacher", "safe_load", "save_tracker", "set_drop_path", "unwrap",
]
