"""Online tracking (METHOD section 7): the tracker loop around a one-stream tracker model."""
from ct_ray.tracking.online import OnlineTracker, clip_box, hann1d, hann2d, run_sequence

__all__ = ["OnlineTracker", "clip_box", "hann1d", "hann2d", "run_sequence"]
