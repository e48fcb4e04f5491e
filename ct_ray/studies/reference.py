"""What a quickstart of an embedded preset should print on any machine (plain Python).

An embedded preset ships its reference quickstarts (``ct_ray/presets/<name>_reference.yaml``): the AUCs of the
teacher and the three arms that the README's results report, one quickstart per teacher seed or floating-point
kernel set. Bits differ between kinds of CPU, so a new quickstart is judged by spread, not by digits: for each
quantity (the teacher's AUC, the gap the compression has to keep, CompressTracker's lead over the student alone,
distillation against CompressTracker, retention) the 95% prediction interval of one new run, ``mean +- t * s *
sqrt(1 + 1/n)`` over the n reference runs (normal errors, Student's t with n - 1 degrees of freedom), is where a run
of the same preset on another machine should land 19 times in 20.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from importlib import resources
from typing import Callable

from ct_ray.config import from_dict, read_yaml

# Two-sided 95% quantiles of Student's t by degrees of freedom (1..30, then 40, 60, 120).
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]
_T975_TAIL = [(40, 2.021), (60, 2.000), (120, 1.980)]


def t975(degrees_of_freedom: int) -> float:
    """Student's t quantile; between tabulated degrees of freedom, the one below (a slightly wider interval)."""
    if degrees_of_freedom < 1:
        raise ValueError("a prediction interval needs at least two reference values")
    if degrees_of_freedom <= len(_T975):
        return _T975[degrees_of_freedom - 1]
    below = [t for df, t in [(len(_T975), _T975[-1]), *_T975_TAIL] if df <= degrees_of_freedom]
    return below[-1]


def prediction_interval(values: list[float]) -> tuple[float, float]:
    """The 95% interval for one new draw from the population the values were drawn from."""
    n = len(values)
    mean, sd = statistics.fmean(values), (statistics.stdev(values) if n > 1 else 0.0)
    half = t975(n - 1) * sd * math.sqrt(1.0 + 1.0 / n)
    return mean - half, mean + half


def _check_sha256(name: str, value: object) -> None:
    if not (isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)):
        raise ValueError(f"{name} must be a SHA-256 hex digest (64 characters), got {value!r}")


@dataclass(frozen=True)
class ReferenceRun:
    """One reference quickstart: what it varied (teacher seed, kernels), the four AUCs of its table and the digest
    of the floating-point kernels it trained with (``ct_ray.models.kernels``)."""

    label: str
    teacher: float
    compresstracker: float
    student_only: float
    distillation: float
    kernels: str | None = None

    def __post_init__(self) -> None:
        for name in ("teacher", "compresstracker", "student_only", "distillation"):
            value = getattr(self, name)
            if not 0.0 < value <= 100.0:
                raise ValueError(f"{self.label}: {name} must be an AUC in (0, 100], got {value}")
        if self.kernels is not None:
            _check_sha256(f"{self.label}: kernels", self.kernels)


@dataclass(frozen=True)
class DataFingerprint:
    """SHA-256 digests of the data the reference runs saw (``ct_ray.data.fingerprint``): the test sequences, and the
    probe of the teacher's training samples (seed 0)."""

    test_sequences: str
    training_samples: str

    def __post_init__(self) -> None:
        for name in ("test_sequences", "training_samples"):
            _check_sha256(f"data.{name}", getattr(self, name))


@dataclass
class PresetReference:
    """The reference quickstarts of one preset, how they were measured (machine, dates, commands) and the
    fingerprints of the data they saw."""

    preset: str
    measured: str
    runs: list[ReferenceRun] = field(default_factory=list)
    data: DataFingerprint | None = None

    def __post_init__(self) -> None:
        if len(self.runs) < 3:
            raise ValueError(f"reference of {self.preset!r}: at least 3 runs give a spread, got {len(self.runs)}")


# Each quantity of the check: its name, how it is read off the four AUCs (teacher, CompressTracker, student alone,
# distillation), and whether it is a difference (printed with its sign).
QUANTITIES: dict[str, tuple[Callable[[float, float, float, float], float], bool]] = {
    "teacher AUC": (lambda t, ct, so, d: t, False),
    "teacher - student only": (lambda t, ct, so, d: t - so, True),
    "CompressTracker - student only": (lambda t, ct, so, d: ct - so, True),
    "distillation - CompressTracker": (lambda t, ct, so, d: d - ct, True),
    "CompressTracker retention %": (lambda t, ct, so, d: 100.0 * ct / t, False),
}


@dataclass(frozen=True)
class ReferenceCheck:
    """One quantity of a new quickstart against the reference runs: its value, the 95% prediction interval and the
    range the reference runs spanned."""

    quantity: str
    value: float
    low: float
    high: float
    reference_min: float
    reference_max: float
    signed: bool = False

    @property
    def within(self) -> bool:
        return self.low <= self.value <= self.high

    def to_dict(self) -> dict:
        return {"quantity": self.quantity, "value": self.value, "low": self.low, "high": self.high,
                "reference_min": self.reference_min, "reference_max": self.reference_max, "within": self.within}


def check_against(reference: PresetReference, teacher: float, compresstracker: float, student_only: float,
                  distillation: float) -> list[ReferenceCheck]:
    """Every quantity of a new quickstart (its AUCs) against the reference runs' prediction intervals. A study of
    several student seeds passes its seed means, which vary less than one run: for them the interval is wide."""
    checks = []
    for name, (quantity, signed) in QUANTITIES.items():
        values = [quantity(r.teacher, r.compresstracker, r.student_only, r.distillation) for r in reference.runs]
        low, high = prediction_interval(values)
        checks.append(ReferenceCheck(name, quantity(teacher, compresstracker, student_only, distillation), low, high,
                                     min(values), max(values), signed))
    return checks


def format_checks(reference: PresetReference, checks: list[ReferenceCheck]) -> list[str]:
    """The lines a study prints and writes under its table."""
    width = max(len(c.quantity) for c in checks)
    within = sum(c.within for c in checks)
    lines = [f"against the {reference.preset} preset's {len(reference.runs)} reference quickstarts "
             f"({reference.measured}); 95% prediction interval of one new run, [range of the reference runs]:"]
    for c in checks:
        fmt = "{:+.1f}" if c.signed else "{:.1f}"
        lines.append(f"  {c.quantity.ljust(width)}  {fmt.format(c.value):>6}  expected {fmt.format(c.low)} .. "
                     f"{fmt.format(c.high)}  [{fmt.format(c.reference_min)} .. {fmt.format(c.reference_max)}]  "
                     f"{'within' if c.within else 'OUTSIDE'}")
    verdict = "yes" if within == len(checks) else "no"
    lines.append(f"reproduces the reference: {verdict} ({within} of {len(checks)} quantities within their intervals)")
    return lines


def data_line(reference: PresetReference, fingerprint: dict[str, str]) -> str | None:
    """Whether this study's data are the reference runs' bytes: with equal fingerprints a difference from the
    references comes from training (torch's floating-point kernels); with unequal ones the data moved as well."""
    if reference.data is None:
        return None
    labels = {"test_sequences": "test sequences", "training_samples": "training-sample probe"}
    shown = {key: (fingerprint[key], getattr(reference.data, key)) for key in labels if key in fingerprint}
    if not shown:
        return None
    if all(here == there for here, there in shown.values()):
        digests = ", ".join(f"{labels[key]} {here[:12]}" for key, (here, _) in shown.items())
        return (f"data: the references' bytes ({digests}): a difference from them comes from training (torch's "
                "floating-point kernels)")
    digests = "; ".join(f"{labels[key]} {here[:12]}" + (", the same" if here == there else f", references {there[:12]}")
                        for key, (here, there) in shown.items())
    return (f"data: NOT the references' bytes ({digests}): another numpy or OpenCV build, or OpenCV without AVX2, "
            "renders other pixels here, so the data differ as well as the kernels")


def kernels_line(reference: PresetReference, digest: str | None) -> str | None:
    """Whether this study trained with the floating-point kernels of some reference runs (the same digest: the same
    bits for the same seed) or with other ones, the case the intervals are for: a test out of sample."""
    known = [run for run in reference.runs if run.kernels]
    if digest is None or not known:
        return None
    same = [run.label for run in known if run.kernels == digest]
    if same:
        return (f"kernels: those of {len(same)} of the {len(reference.runs)} reference runs ({digest[:12]}: "
                f"{'; '.join(same)}): with the same seeds, the same bits")
    return (f"kernels: other floating-point kernels than every reference run ({digest[:12]}), so this run tests the "
            "intervals out of sample")


def load_reference(preset_name: str) -> PresetReference | None:
    """The reference of an embedded preset, or None when it ships none."""
    source = resources.files("ct_ray.presets") / f"{preset_name}_reference.yaml"
    if not source.is_file():
        return None
    with resources.as_file(source) as path:
        return from_dict(PresetReference, read_yaml(path), prefix=f"{preset_name}_reference")
