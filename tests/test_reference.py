"""A quickstart of an embedded preset against the preset's reference quickstarts (ct_ray/studies/reference.py)."""
import argparse
import math

import pytest

from ct_ray.cli.commands import _reference
from ct_ray.config import ConfigError, from_dict
from ct_ray.studies.reference import (
    PresetReference,
    ReferenceRun,
    check_against,
    format_checks,
    load_reference,
    prediction_interval,
)


def test_prediction_interval_is_students_t_for_one_new_draw():
    low, high = prediction_interval([1.0, 2.0, 3.0])  # mean 2, s 1, t(0.975, 2) = 4.303
    assert (low + high) / 2 == pytest.approx(2.0)
    assert high - 2.0 == pytest.approx(4.303 * math.sqrt(1 + 1 / 3), rel=1e-6)
    assert prediction_interval([5.0] * 4) == (5.0, 5.0)
    with pytest.raises(ValueError, match="at least two"):
        prediction_interval([1.0])


def test_small_preset_reference_holds_its_own_runs_and_rejects_the_memorising_teacher():
    reference = load_reference("small")
    assert reference is not None and len(reference.runs) >= 6
    # Out of sample: the SSE4-kernel run was measured after the first five had set the intervals (README), and lies
    # within all five of theirs.
    first_five = PresetReference("small", "the first five", reference.runs[:5])
    sse4 = reference.runs[5]
    assert "SSE4" in sse4.label
    checks = check_against(first_five, sse4.teacher, sse4.compresstracker, sse4.student_only, sse4.distillation)
    assert all(c.within for c in checks)
    teacher = checks[0]
    assert (round(teacher.low, 1), round(teacher.high, 1)) == (63.2, 68.7)
    # Likewise the AVX2-kernel teacher seeds 1 and 2, measured after the first six, lie within all five of theirs.
    first_six = PresetReference("small", "the first six", reference.runs[:6])
    later = reference.runs[6:8]
    assert [r.label for r in later] == ["teacher seed 1, AVX2 kernels", "teacher seed 2, AVX2 kernels"]
    for run in later:
        assert all(c.within for c in check_against(first_six, run.teacher, run.compresstracker, run.student_only,
                                                   run.distillation))
    # The table of the issue that started this check (a teacher that memorised 30 sequences on another machine).
    checks = {c.quantity: c for c in check_against(reference, 10.4, 11.4, 22.7, 12.3)}
    assert not checks["teacher AUC"].within and not checks["teacher - student only"].within
    assert checks["teacher - student only"].value == pytest.approx(10.4 - 22.7)
    assert checks["CompressTracker retention %"].value == pytest.approx(100 * 11.4 / 10.4)
    lines = format_checks(reference, list(checks.values()))
    assert lines[-1].startswith("reproduces the reference: no (") and "OUTSIDE" in lines[1]
    assert [c.quantity for c in checks.values() if c.within] == ["distillation - CompressTracker"]


def test_full_preset_reference_leave_one_out_misses_once_as_the_readme_says():
    reference = load_reference("full")
    assert reference is not None and len(reference.runs) == 8 and "SSE4" in reference.runs[5].label
    first_five, sse4 = PresetReference("full", "the first five", reference.runs[:5]), reference.runs[5]
    checks = check_against(first_five, sse4.teacher, sse4.compresstracker, sse4.student_only, sse4.distillation)
    assert [c.quantity for c in checks if not c.within] == ["distillation - CompressTracker"]
    first_six = PresetReference("full", "the first six", reference.runs[:6])
    with_it = {c.quantity: c for c in check_against(first_six, sse4.teacher, sse4.compresstracker,
                                                    sse4.student_only, sse4.distillation)}
    assert (round(with_it["distillation - CompressTracker"].low, 1),
            round(with_it["distillation - CompressTracker"].high, 1)) == (-1.0, 0.9)
    # The AVX2 teacher seeds 1 and 2, measured after the first six, lie within all five of their intervals.
    for run in reference.runs[6:]:
        assert "AVX2" in run.label
        assert all(c.within for c in check_against(first_six, run.teacher, run.compresstracker, run.student_only,
                                                   run.distillation))


def test_a_reference_needs_three_runs_and_auc_values():
    run = {"label": "a", "teacher": 60.0, "compresstracker": 55.0, "student_only": 50.0, "distillation": 55.0}
    with pytest.raises(ConfigError, match="at least 3 runs"):
        from_dict(PresetReference, {"preset": "x", "measured": "m", "runs": [run, run]})
    with pytest.raises(ConfigError, match="student_only must be an AUC"):
        from_dict(PresetReference, {"preset": "x", "measured": "m", "runs": [run, run, {**run, "student_only": 0}]})
    with pytest.raises(ConfigError, match="runs\\[0\\]"):
        from_dict(PresetReference, {"preset": "x", "measured": "m", "runs": [{**run, "speed": 1}, run, run]})


def _args(**changes):
    args = dict(preset="small", set=None, workers=None, gpu=False, heldout_sequences=None)
    return argparse.Namespace(**{**args, **changes})


def test_the_reference_applies_to_the_preset_as_measured_with_any_teacher_seed(capsys, monkeypatch):
    assert _reference(_args()).preset == "small"
    assert _reference(_args(set=["teacher.run.seed=3"])) is not None
    assert capsys.readouterr().out == ""
    assert _reference(_args(set=["teacher.run.seed=3", "teacher.run.epochs=60"])) is None
    assert "no reference check: teacher.run.epochs=60 change(s)" in capsys.readouterr().out
    assert _reference(_args(heldout_sequences=300)) is None
    assert "--heldout-sequences" in capsys.readouterr().out
    assert _reference(_args(preset="full")).preset == "full"
    import ct_ray.studies.reference

    monkeypatch.setattr(ct_ray.studies.reference, "load_reference", lambda name: None)
    assert _reference(_args(preset="full")) is None
    assert "no reference check: the full preset ships no reference quickstarts" in capsys.readouterr().out
    assert _reference(_args(preset="my-preset.yaml")) is None
    assert "no reference check: my-preset.yaml is a preset file" in capsys.readouterr().out


def test_every_run_records_the_cpu_and_the_kernels_that_set_its_floating_point_results(monkeypatch):
    from ct_ray.orchestration.mlflow_runs import environment_tags

    monkeypatch.delenv("MKL_ENABLE_INSTRUCTIONS", raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    tags = environment_tags()
    assert tags["cpu_model"].strip() and tags["cpu_capability"].strip()  # e.g. "AMD EPYC (family 25 model 17)", AVX512
    assert tags["env.ONEDNN_MAX_CPU_ISA"] == "AVX2" and "env.MKL_ENABLE_INSTRUCTIONS" not in tags


def test_the_data_line_says_whether_the_data_are_the_references_bytes():
    from ct_ray.studies.reference import DataFingerprint, data_line

    reference = load_reference("small")
    assert reference.data is not None and load_reference("full").data == reference.data
    same = {"test_sequences": reference.data.test_sequences, "training_samples": reference.data.training_samples}
    line = data_line(reference, same)
    assert line.startswith(f"data: the references' bytes (test sequences {same['test_sequences'][:12]}, "
                           f"training-sample probe {same['training_samples'][:12]}): a difference")
    other = data_line(reference, {**same, "test_sequences": "ab" * 32})
    assert other.startswith("data: NOT the references' bytes (test sequences abababababab, references "
                            f"{same['test_sequences'][:12]}; training-sample probe {same['training_samples'][:12]}, "
                            "the same): ")
    heldout = data_line(reference, {"heldout_300_sequences": "cd" * 32, "training_samples": same["training_samples"]})
    assert heldout.startswith("data: the references' bytes (training-sample probe ")  # held-out: not compared
    assert data_line(PresetReference("x", "m", reference.runs), same) is None
    with pytest.raises(ConfigError, match="data.test_sequences must be a SHA-256"):
        from_dict(PresetReference, {"preset": "x", "measured": "m", "runs": [], "data": {
            "test_sequences": "abc", "training_samples": "0" * 64}})
    assert DataFingerprint("0" * 64, "f" * 64).test_sequences == "0" * 64


def test_the_kernels_line_says_whether_the_run_is_out_of_sample():
    from ct_ray.studies.reference import kernels_line

    reference = load_reference("small")
    digests = {run.kernels for run in reference.runs}
    assert len(digests) == 3 and None not in digests  # AVX-512, AVX2 and SSE4 kernels
    avx2 = next(run.kernels for run in reference.runs if "AVX2" in run.label)
    line = kernels_line(reference, avx2)
    assert line.startswith(f"kernels: those of 3 of the 8 reference runs ({avx2[:12]}: teacher seed 0, AVX2 kernels; ")
    assert kernels_line(reference, "e" * 64) == ("kernels: other floating-point kernels than every reference run "
                                                 "(eeeeeeeeeeee), so this run tests the intervals out of sample")
    assert kernels_line(reference, None) is None
    runs = [ReferenceRun(r.label, r.teacher, r.compresstracker, r.student_only, r.distillation) for r in reference.runs]
    assert kernels_line(PresetReference("small", "m", runs), avx2) is None  # references without digests
    with pytest.raises(ValueError, match="kernels must be a SHA-256"):
        ReferenceRun("x", 60.0, 58.0, 57.0, 58.0, kernels="abc")

