"""CompressTracker: stage division, replacement training and the schedule of the replacement probability."""
from ct_ray.compress.division import StageDivision, build_student, freeze
from ct_ray.compress.replacement import (
    PlanSampler,
    ReplacementModel,
    ReplacementOutput,
    ReplacementPlan,
    StageChoice,
    stage_parameter_names,
)
from ct_ray.compress.objective import replacement_losses
from ct_ray.compress.schedule import FixedSchedule, ProgressiveSchedule, replacement_probability

__all__ = [
    "FixedSchedule", "PlanSampler", "ProgressiveSchedule", "ReplacementModel", "ReplacementOutput",
    "ReplacementPlan", "StageChoice", "StageDivision", "build_student", "freeze", "replacement_losses", "replacement_probability",
    "stage_parameter_names",
]
