"""``ct-ray quickstart`` / ``ct-ray ablations``: presets, derived arms, the summary table, and a whole tiny study."""
import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from ct_ray.config import ConfigError
from ct_ray.studies.design import (
    AblationSpec,
    Preset,
    ablation_arm,
    ablation_arms,
    baseline_arms,
    load_preset,
    quickstart_arms,
    rebase,
)
from ct_ray.studies.paired_stats import Difference, TrackerResult, paired_difference, summarise
from ct_ray.studies.tables import format_markdown, gap_note, train_gap_note
from ct_ray.training.experiment import RunKind, ScheduleKind

REPO = Path(__file__).resolve().parents[1]
ABLATIONS = sorted((REPO / "experiments" / "ablations").glob("*.yaml"))


def test_embedded_presets_load_and_baselines_share_the_budget():
    for name in Preset:
        preset = load_preset(name)
        assert preset.name == name.value and preset.teacher.model.depth == 12
        ct, (student_only, distillation) = preset.compresstracker, baseline_arms(preset)
        assert ct.student.stage_count == 4 and ct.schedule.kind is ScheduleKind.PROGRESSIVE
        for arm in (student_only, distillation):
            config = arm.config
            assert (config.run.epochs, config.data, config.optim, config.scaling, config.student) == \
                (ct.run.epochs, ct.data, ct.optim, ct.scaling, ct.student)
        assert student_only.config.kind is RunKind.STUDENT_ONLY
        assert (student_only.config.losses.guidance, student_only.config.losses.mimicking) == (0.0, 0.0)
        assert distillation.config.kind is RunKind.DISTILLATION and distillation.config.losses == ct.losses
        assert len({a.config.run.name for a in quickstart_arms(preset)}) == 3
    full, small = load_preset("full"), load_preset(Preset.SMALL)
    # full: the same teacher, students on twice the budget
    assert full.teacher == replace(small.teacher, mlflow=full.teacher.mlflow)
    assert (full.teacher.run.epochs, full.teacher.optim.lr_drop_epoch) == (40, 36)
    assert full.compresstracker.run.epochs == 2 * small.compresstracker.run.epochs == 6
    for preset in (full, small):  # trained on the stream; scored on 300 fixed 20-frame test sequences
        synth = preset.teacher.data.synth
        assert preset.teacher.data.source.value == "stream" and (synth.sequences, synth.frames) == (300, 20)
        assert preset.teacher.data.synth.test_fraction == 1.0


def test_ablation_files_change_only_what_they_name():
    preset = load_preset(Preset.SMALL)
    arms = {arm.label: arm.config for arm in ablation_arms(preset, ABLATIONS)}
    assert list(arms) == ["CompressTracker-4", "fixed p = 0.5", "no guidance", "no mimicking", "student only",
                          "distillation"]
    ct = arms["CompressTracker-4"]
    fixed = arms["fixed p = 0.5"]
    assert fixed.schedule.kind is ScheduleKind.FIXED and fixed.schedule.build()(1, 10) == 0.5
    assert fixed.losses == ct.losses and fixed.run.name == "ct4-fixed_p05"
    assert arms["no guidance"].losses.guidance == 0.0 and arms["no guidance"].losses.mimicking == ct.losses.mimicking
    assert arms["no mimicking"].losses.mimicking == 0.0 and arms["no mimicking"].losses.guidance == ct.losses.guidance
    for config in arms.values():
        assert config.run.epochs == ct.run.epochs and config.optim == ct.optim
    with pytest.raises(ConfigError, match=r"schedule\.pp"):
        ablation_arm(preset, AblationSpec("typo", ["schedule.pp=0.5"]), "typo")
    with pytest.raises(ConfigError, match="kind must stay compresstracker"):
        ablation_arm(preset, AblationSpec("other", ["kind=distillation"]), "other")
    with pytest.raises(ConfigError, match="overrides must name"):
        from ct_ray.config import from_dict

        from_dict(AblationSpec, {"label": "empty", "overrides": []})


def test_preset_overrides_and_a_study_folder_holds_one_study(tmp_path, capsys):
    from ct_ray.cli import main
    from ct_ray.config import to_dict
    from ct_ray.orchestration.study import check_reusable
    from ct_ray.studies.design import with_scaling

    longer = load_preset("small", ["teacher.run.epochs=60", "teacher.optim.lr_drop_epoch=54"])
    assert (longer.teacher.run.epochs, longer.teacher.optim.lr_drop_epoch) == (60, 54)
    assert longer.compresstracker == load_preset("small").compresstracker
    with pytest.raises(ConfigError, match=r"teacher\.run\.epoch"):
        load_preset("small", ["teacher.run.epoch=60"])
    preset = load_preset("small")
    run_dir = tmp_path / "runs" / "ct4-s0"
    run_dir.mkdir(parents=True)
    (run_dir / "ct_ray_config.yaml").write_text(yaml.safe_dump(to_dict(preset.compresstracker), sort_keys=False))
    check_reusable(preset.compresstracker, run_dir)
    check_reusable(with_scaling(preset, workers=4, gpu=True).compresstracker, run_dir)  # hardware may change
    check_reusable(preset.teacher, tmp_path / "runs" / "teacher")  # no run there yet
    changed = load_preset("small", ["compresstracker.run.epochs=20"]).compresstracker
    with pytest.raises(ConfigError, match=r"was trained with another config: run\.epochs \(3 there, 20 now\)"):
        check_reusable(changed, run_dir)
    assert [a.label for a in ablation_arms(preset, [])] == ["CompressTracker-4", "student only", "distillation"]
    assert main(["ablations", "--no-ablations", "--ablation", str(ABLATIONS[0]), "--out", str(tmp_path)]) == 2
    assert "contradict" in capsys.readouterr().err


def test_rebase_places_relative_paths_in_the_study_folder(tmp_path):
    preset = load_preset(Preset.SMALL)
    config = rebase(preset.compresstracker, tmp_path)
    assert config.data.shards == str(tmp_path / "data/shards")
    assert config.data.val_dataset == f"synthetic:{tmp_path / 'data/benchmark'}"
    assert config.run.storage_path == str(tmp_path / "runs") and config.teacher.path == str(tmp_path / "teacher.pt")


def _result(label, seed, auc, ms, flops, depth=4, sequences=None):
    return TrackerResult(label=label, seed=seed, run_name=f"{label}-{seed}", checkpoint="x.pt", depth=depth, auc=auc,
                         precision=auc + 1, norm_precision=auc + 2, tracking_ms=ms, flops=flops, params=1,
                         mlflow_run_id=None, sequence_auc=sequences or {"a": auc, "b": auc})


def test_paired_difference_pairs_seeds_and_sequences():
    reference = [_result("CT", 0, 40.0, 1, 1, sequences={"a": 50.0, "b": 40.0, "c": 30.0}),
                 _result("CT", 1, 40.0, 1, 1, sequences={"a": 52.0, "b": 38.0, "c": 30.0})]
    other = [_result("x", 0, 0, 1, 1, sequences={"a": 55.0, "b": 40.0, "c": 36.0}),
             _result("x", 1, 0, 1, 1, sequences={"a": 53.0, "b": 42.0, "c": 30.0}),
             _result("x", 2, 0, 1, 1, sequences={"a": 0.0, "b": 0.0, "c": 0.0})]
    delta = paired_difference(reference, other)
    # per-sequence differences averaged over the shared seeds 0 and 1: a 3, b 2, c 3 (seed 2 has no partner)
    assert delta.mean == pytest.approx(8 / 3) and (delta.sequences, delta.seeds) == (3, 2)
    assert 2.0 <= delta.low <= delta.mean <= delta.high <= 3.0 and delta.low < delta.high
    assert paired_difference(reference, other) == delta  # seeded bootstrap
    same = paired_difference(reference, reference)
    assert (same.mean, same.low, same.high) == (0.0, 0.0, 0.0)
    assert paired_difference(reference, [_result("x", 5, 0, 1, 1)]) is None  # no shared seed
    assert paired_difference(reference[:1], [_result("x", 0, 0, 1, 1, sequences={"a": 1.0})]) is None  # 1 sequence


def test_deployed_runtime_columns_sit_beside_pytorchs():
    """evaluation.deploy_runtime: the first arm's AUC and FPS through that runtime, two more columns and row fields."""
    from ct_ray.studies.tables import table_cells

    teacher = _result("teacher", None, 60.0, 30.0, 1200, depth=12)
    ct = [_result("CT", seed, 57.0 + seed, 10.0, 400) for seed in (0, 1)]
    for result, auc in zip(ct, (57.0, 57.9)):
        result.deployed = {"runtime": "onnxruntime-cpu", "auc": auc, "tracking_ms": 5.0}
    rows = summarise(teacher, {"CT": ct, "alone": [_result("alone", 0, 48.0, 12.0, 400)]})
    assert rows[1].deployed_runtime == "onnxruntime-cpu" and rows[1].deployed_fps == pytest.approx(200.0)
    assert rows[1].deployed_auc[0] == pytest.approx(57.45) and rows[2].deployed_auc is None
    header, body = table_cells(rows)
    assert header[-2:] == ["AUC (onnxruntime-cpu)", "FPS (onnxruntime-cpu)"]
    assert body[1][-2:] == ["57.5 ± 0.6", "200"] and body[2][-2:] == ["-", "-"]
    assert rows[1].to_dict()["deployed_auc_mean"] == pytest.approx(57.45)


def test_combined_studies_pair_runs_within_their_study(tmp_path, capsys):
    """Two studies (two teacher seeds) as one table: each run is paired with the run of its own study and seed,
    and its retention is against its own teacher."""
    import dataclasses

    from ct_ray.cli import main

    def summary(teacher_seed, teacher_auc, ct, alone):
        trackers = [_result("teacher", None, teacher_auc, 8.0, 1200, depth=12,
                            sequences={"a": teacher_auc, "b": teacher_auc})]
        for seed, (c, a) in enumerate(zip(ct, alone)):
            trackers += [_result("CompressTracker-4", seed, c, 4.0, 400, sequences={"a": c + 1, "b": c - 1}),
                         _result("student only", seed, a, 4.0, 400, sequences={"a": a + 1, "b": a - 1})]
        return {"preset_config": {"teacher": {"run": {"seed": teacher_seed}}},
                "trackers": [dataclasses.asdict(t) for t in trackers]}

    paths = []
    for seed, study in enumerate([summary(0, 40.0, [38.0, 39.0], [34.0, 35.0]), summary(1, 30.0, [30.0], [27.0])]):
        paths.append(tmp_path / f"s{seed}.json")
        paths[-1].write_text(json.dumps(study))
    assert main(["combine", *map(str, paths), "--out", str(tmp_path / "both")]) == 0
    rows = {r["label"]: r for r in json.loads((tmp_path / "both.json").read_text())["rows"]}
    assert rows["teacher (12 blocks)"]["auc_mean"] == pytest.approx(35.0)
    assert rows["CompressTracker-4"]["auc_mean"] == pytest.approx((38 + 39 + 30) / 3)
    # retention against each run's own teacher: 95, 97.5, 100
    assert rows["CompressTracker-4"]["auc_retention_mean"] == pytest.approx((95 + 97.5 + 100) / 3)
    # student only - CT over the pairs (s0 seed 0, s0 seed 1, s1 seed 0): -4, -4, -3 on both sequences
    assert rows["student only"]["auc_delta"] == pytest.approx(-11 / 3)
    printed = capsys.readouterr().out
    assert "teacher - student only (same student budget, each against its own teacher): +4.7 AUC" in printed  # (6 + 5 + 3) / 3
    assert "s1.json (teacher seed 1): teacher 30.0; CompressTracker-4 30.0, student only 27.0" in printed
    assert main(["combine", str(paths[0])]) == 2  # one study: nothing to combine
    assert main(["combine", str(paths[0]), str(tmp_path / "missing.json")]) == 2
    assert "missing.json: no such study summary" in capsys.readouterr().err


def test_summary_rows_are_means_spreads_and_ratios_against_the_teacher():
    teacher = _result("teacher", None, 60.0, 30.0, 1200, depth=12)
    rows = summarise(teacher, {"CT": [_result("CT", 0, 57.0, 10.0, 400), _result("CT", 1, 59.0, 14.0, 400)],
                               "alone": [_result("alone", 0, 48.0, 12.0, 400)]})
    assert [r.label for r in rows] == ["teacher (12 blocks)", "CT", "alone"]
    assert rows[0].speed_up is None and rows[0].retention is None and rows[0].fps == pytest.approx(1000 / 30)
    ct = rows[1]
    assert ct.auc == pytest.approx((58.0, 2 ** 0.5)) and ct.precision[0] == pytest.approx(59.0)
    assert ct.speed_up == pytest.approx(30.0 / 12.0) and ct.flops_ratio == pytest.approx(3.0)
    assert ct.retention[0] == pytest.approx(100 * 58 / 60) and ct.seeds == [0, 1]
    assert rows[2].auc == (48.0, 0.0) and rows[2].retention[0] == pytest.approx(80.0)
    assert rows[0].delta is None and rows[1].delta is None and rows[2].delta.mean == pytest.approx(48.0 - 57.0)
    markdown = format_markdown(rows).splitlines()
    assert len(markdown) == 5 and "58.0 ± 1.4" in markdown[3] and "96.7 ± 2.4" in markdown[3]
    assert markdown[0].endswith("| AUC vs CT [95% CI] |") and markdown[3].endswith("| - |")
    assert "| alone | 4 | 1 | 48.0 |" in markdown[4] and markdown[4].endswith("| -9.0 [-9.0, -9.0] |")


TINY_PRESET = {
    "name": "tiny",
    "teacher": {
        "kind": "teacher",
        "model": {"embed_dim": 32, "depth": 4, "num_heads": 2, "head_channels": 16, "template_size": 32,
                  "search_size": 64},
        "losses": {"guidance": 0.0, "mimicking": 0.0},
        "data": {"shards": "data/shards", "val_dataset": "synthetic:data/benchmark", "val_split": "test",
                 "batch_size": 8, "shuffle_buffer": 0,
                 "synth": {"sequences": 4, "frames": 12, "seed": 0, "preset": "easy", "height": 96, "width": 128,
                           "pairs_per_epoch": 16, "pairs_per_shard": 16}},
        "run": {"name": "teacher", "storage_path": "runs", "epochs": 1},
        "mlflow": {"experiment": "tiny-study"},
    },
    "compresstracker": {
        "kind": "compresstracker",
        "teacher": {"path": "teacher.pt"},
        "student": {"num_stages": 2},
        "data": {"shards": "data/shards", "val_dataset": "synthetic:data/benchmark", "val_split": "test",
                 "batch_size": 8, "shuffle_buffer": 0},
        "run": {"name": "ct2", "storage_path": "runs", "epochs": 1},
        "mlflow": {"experiment": "tiny-study"},
    },
}


def test_quickstart_then_ablations_reuse_runs_and_track_everything(tmp_path, ray_session, monkeypatch, capsys):
    from ct_ray.cli import main
    from ct_ray.orchestration.study import TIMED_PHASES

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    preset_file = tmp_path / "tiny.yaml"
    preset_file.write_text(yaml.safe_dump(TINY_PRESET))
    out = tmp_path / "study"
    assert main(["quickstart", "--preset", str(preset_file), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "INFO mlflow" not in captured.err  # MLflow's own log lines (a new store's tables) go to the log file
    assert "teacher (4 blocks)" in printed and "CompressTracker-2" in printed
    assert "preset, teacher seed 0, student seed 0): " in printed  # the title names both seeds
    assert f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1" in printed

    summary = json.loads((out / "quickstart.json").read_text())
    rows = {row["label"]: row for row in summary["rows"]}
    assert list(rows) == ["teacher (4 blocks)", "CompressTracker-2", "student only", "distillation"]
    trackers = {t["run_name"]: t for t in summary["trackers"]}
    assert set(trackers) == {"teacher", "ct2-s0", "ct2-student-only-s0", "ct2-distillation-s0"}
    teacher = trackers["teacher"]
    for run_name, label in (("ct2-s0", "CompressTracker-2"), ("ct2-student-only-s0", "student only")):
        tracker, row = trackers[run_name], rows[label]
        assert tracker["depth"] == 2 and row["depth"] == 2 and 0 <= tracker["auc"] <= 100
        assert row["auc_mean"] == tracker["auc"] and row["auc_std"] == 0.0
        assert row["speed_up"] == pytest.approx(teacher["tracking_ms"] / tracker["tracking_ms"])
        assert row["flops_ratio"] == pytest.approx(teacher["flops"] / tracker["flops"]) and row["flops_ratio"] > 1.3
        if teacher["auc"] > 0:
            assert row["auc_retention_mean"] == pytest.approx(100 * tracker["auc"] / teacher["auc"])
    assert (out / "quickstart.md").read_text().startswith("| tracker | blocks | seeds | AUC |")
    # The study's own wall clock, by phase: printed, in the JSON, the Markdown and the study's MLflow run.
    wall = summary["wall_seconds"]
    assert list(wall) == [*TIMED_PHASES, "total"] and summary["reused_runs"] == []
    assert all(v >= 0 for v in wall.values()) and wall["teacher"] > 0 and wall["students"] > 0
    assert sum(wall[p] for p in TIMED_PHASES) <= wall["total"] + 0.3  # each rounded to 0.1 s
    line = next(l for l in printed.splitlines() if l.startswith("wall clock: "))
    assert line.startswith("wall clock: ") and " min here without the set-up (start " in line
    assert float(line.split()[2]) == pytest.approx(wall["total"] / 60, abs=0.051)  # JSON seconds rounded to 0.1
    assert "teacher" in line and "with its data" in line and "3 student runs" in line and "reused" not in line
    assert line in (out / "quickstart.md").read_text()

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tiny-study")
    assert experiment.artifact_location == (tmp_path / "mlartifacts" / "tiny-study").as_uri()  # beside mlflow.db
    runs = client.search_runs([experiment.experiment_id])
    parent = [r for r in runs if r.info.run_name == "quickstart"]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    parent_id = parent[0].info.run_id
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id}
    assert set(children) == set(trackers)
    for name, run in children.items():
        assert run.data.metrics["test_auc"] == pytest.approx(trackers[name]["auc"])
        assert run.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(parent_id)}
    assert {"quickstart.json", "quickstart.md"} <= artifacts
    assert parent[0].data.metrics["compresstracker_2_auc"] == pytest.approx(rows["CompressTracker-2"]["auc_mean"])
    assert parent[0].data.metrics["wall_minutes_total"] == pytest.approx(wall["total"] / 60, abs=0.01)
    # The data's fingerprints: the test sequences as read, the teacher's training-sample probe (seed 0).
    from ct_ray.data import load_dataset
    from ct_ray.data.fingerprint import sequences_digest

    fingerprint = summary["data_fingerprint"]
    assert fingerprint["test_sequences"] == sequences_digest(load_dataset(f"synthetic:{out / 'data' / 'benchmark'}",
                                                                          "test"))
    assert len(fingerprint["training_samples"]) == 64
    assert parent[0].data.tags["data.test_sequences_sha256"] == fingerprint["test_sequences"]
    assert parent[0].data.tags["data.training_samples_sha256"] == fingerprint["training_samples"]
    # The floating-point kernels the training workers ran, on their threads: in the study's JSON and run, and in
    # every training run (one machine: one digest).
    kernels = summary["environment"]["kernels_sha256"]
    assert len(kernels) == 64 and parent[0].data.tags["kernels_sha256"] == kernels
    assert {run.data.tags.get("kernels_sha256") for run in children.values()} == {kernels}

    ablation = tmp_path / "fixed.yaml"
    ablation.write_text(yaml.safe_dump({"label": "fixed p = 0.5", "overrides": ["schedule.kind=fixed"]}))
    assert main(["ablations", "--preset", str(preset_file), "--out", str(out), "--seeds", "0",
                 "--ablation", str(ablation), "--no-baselines"]) == 0
    printed = capsys.readouterr().out
    assert "ct2-s0: finished earlier" in printed and "reusing" in printed
    assert printed.count("  training ") == 1 and "training ct2-fixed-s0" in printed
    ablation_rows = json.loads((out / "ablations.json").read_text())["rows"]
    assert [r["label"] for r in ablation_rows] == ["teacher (4 blocks)", "CompressTracker-2", "fixed p = 0.5"]
    assert ablation_rows[1]["auc_mean"] == rows["CompressTracker-2"]["auc_mean"]
    runs_after = client.search_runs([experiment.experiment_id])
    assert len(runs_after) == len(runs) + 2  # the ablation study's parent run and its one new training run

    assert main(["quickstart", "--preset", str(preset_file), "--out", str(out), "--heldout-sequences", "2"]) == 0
    printed = capsys.readouterr().out
    assert "2 held-out sequences" in printed and printed.count("  training ") == 0
    heldout = json.loads((out / "quickstart_heldout-2.json").read_text())
    assert heldout["reused_runs"] == ["teacher", "ct2-s0", "ct2-student-only-s0", "ct2-distillation-s0"]
    assert re.search(r"teacher \d+\.\d reused, 3 student runs \(3 reused\) \d+\.\d, evaluation", printed)
    assert heldout["preset_config"]["evaluation"]["heldout_sequences"] == 2
    assert set(heldout["data_fingerprint"]) == {"heldout_2_sequences", "training_samples"}
    assert heldout["data_fingerprint"]["training_samples"] == fingerprint["training_samples"]
    benchmark = json.loads((out / "data" / "heldout-2" / "benchmark.json").read_text())
    assert benchmark["seed"] == 1 and benchmark["sequences"] == 2 and benchmark["frames"] == 12
    held = {t["run_name"]: t for t in heldout["trackers"]}
    assert set(held) == set(trackers)
    for name, tracker in held.items():
        assert tracker["checkpoint"] == trackers[name]["checkpoint"] and len(tracker["sequence_auc"]) == 2
        assert tracker["auc"] == pytest.approx(sum(tracker["sequence_auc"].values()) / 2)
        assert (out / "results-heldout-2" / name).is_dir()
    student_only = {r["label"]: r for r in heldout["rows"]}["student only"]
    assert student_only["auc_delta"] == pytest.approx(held["ct2-student-only-s0"]["auc"] - held["ct2-s0"]["auc"])
    assert student_only["auc_delta_low"] <= student_only["auc_delta"] <= student_only["auc_delta_high"]
    ct_run = client.get_run(children["ct2-s0"].info.run_id)
    assert ct_run.data.metrics["heldout_2_auc"] == pytest.approx(held["ct2-s0"]["auc"])
    assert ct_run.data.metrics["tracking_step_ms"] == pytest.approx(held["ct2-s0"]["tracking_ms"])
    assert ct_run.data.metrics["test_auc"] == pytest.approx(trackers["ct2-s0"]["auc"])

    # A teacher copied into a new study folder: its benchmark and shards are generated again (the same bytes), so
    # the students train as in the first folder.
    copied = tmp_path / "copied"
    copied.mkdir()
    shutil.copyfile(out / "teacher.pt", copied / "teacher.pt")
    assert main(["ablations", "--preset", str(preset_file), "--out", str(copied), "--seeds", "0",
                 "--no-ablations", "--no-baselines"]) == 0
    printed = capsys.readouterr().out
    assert f"reusing {copied / 'teacher.pt'}" in printed and "training ct2-s0" in printed
    again = {t["run_name"]: t for t in json.loads((copied / "ablations.json").read_text())["trackers"]}
    assert again["ct2-s0"]["auc"] == trackers["ct2-s0"]["auc"]
    assert json.loads((copied / "ablations.json").read_text())["data_fingerprint"] == fingerprint

    assert main(["quickstart", "--preset", str(preset_file), "--out", str(out), "--set", "teacher.run.epochs=2"]) == 2
    assert "runs/teacher was trained with another config: run.epochs (1 there, 2 now)" in capsys.readouterr().err

    # Against a preset's reference quickstarts (an embedded preset's, here three made-up ones around this study):
    # the runs and evaluations are reused, the check lands in the summary, the Markdown and the study's MLflow run.
    from ct_ray.orchestration.study import run_study
    from ct_ray.studies.reference import DataFingerprint, PresetReference, ReferenceRun

    t, ct, so, d = (trackers[n]["auc"] for n in ("teacher", "ct2-s0", "ct2-student-only-s0", "ct2-distillation-s0"))
    reference = PresetReference("tiny", "three made-up runs", [
        ReferenceRun(f"run {i}", min(100.0, t + 10 + i), ct + i, so + 2 * i, d + 1) for i in (1.0, 2.0, 3.0)],
        DataFingerprint(fingerprint["test_sequences"], "0" * 64))
    preset = load_preset(preset_file)
    outcome = run_study(preset, out, quickstart_arms(preset), [0], name="quickstart", reference=reference)
    checks = {c["quantity"]: c for c in json.loads((out / "quickstart.json").read_text())["reference_check"]}
    assert checks["teacher AUC"]["value"] == pytest.approx(t)
    assert checks["teacher AUC"]["within"] is False  # t against t+11, t+12, t+13: interval t+12 +- 4.97
    assert checks["teacher - student only"]["value"] == pytest.approx(t - so)
    if t + 13 <= 100:  # mean t + 12, s = 1, t(0.975, 2) = 4.303: half width 4.303 * sqrt(4 / 3)
        assert checks["teacher AUC"]["low"] == pytest.approx(t + 12 - 4.969, abs=1e-3)
    assert checks["distillation - CompressTracker"]["value"] == pytest.approx(d - ct)
    assert outcome.reference[-2].startswith("reproduces the reference: no (")
    assert "reproduces the reference: no" in (out / "quickstart.md").read_text()
    test_digest = fingerprint["test_sequences"][:12]
    assert outcome.reference[-1].startswith(f"data: NOT the references' bytes (test sequences {test_digest}, the "
                                            "same; training-sample probe ")
    assert "references 000000000000)" in outcome.reference[-1]
    assert outcome.reference[-1] in (out / "quickstart.md").read_text()
    study_run = client.get_run(outcome.mlflow_run_id)
    assert study_run.data.metrics["reference_within"] == sum(c["within"] for c in checks.values())
    assert study_run.data.metrics["reference_quantities"] == 5


def test_bad_preset_and_seeds_are_rejected_before_work(tmp_path):
    from ct_ray.cli import main

    bad = dict(TINY_PRESET, compresstracker=dict(TINY_PRESET["compresstracker"], student={"num_stages": 5}))
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    assert main(["quickstart", "--preset", str(path), "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o" / "runs").exists()
    typo = dict(TINY_PRESET, evaluation={"splt": "test"})
    path.write_text(yaml.safe_dump(typo))
    with pytest.raises(ConfigError, match=r"evaluation\.splt"):
        load_preset(path)
    path.write_text(yaml.safe_dump(dict(TINY_PRESET, evaluation={"heldout_sequences": -1})))
    with pytest.raises(ConfigError, match=r"heldout_sequences must be an integer >= 0"):
        load_preset(path)


def test_scaling_changes_hardware_not_budget():
    from ct_ray.studies.design import with_scaling

    preset = load_preset(Preset.FULL)
    scaled = with_scaling(preset, workers=4, gpu=True)
    for before, after in ((preset.teacher, scaled.teacher), (preset.compresstracker, scaled.compresstracker)):
        assert after.scaling.num_workers == 4 and after.scaling.use_gpu
        assert (after.run, after.data, after.optim, after.model) == (before.run, before.data, before.optim, before.model)
    assert scaled.evaluation.use_gpu and not preset.evaluation.use_gpu
    assert with_scaling(preset) == preset
    with pytest.raises(ValueError, match=r"scaling\.num_workers must be > 0"):
        with_scaling(preset, workers=-1)


def test_gpu_study_on_a_machine_without_gpus_is_refused_before_work(tmp_path, ray_session, monkeypatch, capsys):
    import torch

    from ct_ray.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    preset_file = tmp_path / "tiny.yaml"
    preset_file.write_text(yaml.safe_dump(TINY_PRESET))
    assert main(["quickstart", "--preset", str(preset_file), "--out", str(tmp_path / "o"), "--gpu"]) == 2
    assert "the local Ray instance has 0" in capsys.readouterr().err
    assert not (tmp_path / "o" / "data").exists() and not (tmp_path / "o" / "runs").exists()


def test_notes_name_the_sequences_they_were_scored_on():
    gap = Difference(mean=3.26, low=2.0, high=4.6, sequences=300, seeds=1)
    assert gap_note(gap) == ("teacher - student only (same student budget): +3.3 AUC [+2.0, +4.6] over 300 test "
                             "sequences: the accuracy that compression has to keep")
    assert "over 300 held-out sequences" in gap_note(gap, scored_on="held-out")
    assert train_gap_note(58.7, 56.8, 20, "held-out") == \
        "teacher on 20 of its training sequences: AUC 58.7, on the held-out sequences 56.8 (train - held-out +1.9)"
    assert gap_note(None) is None and train_gap_note(None, 50.0, 20) is None


def test_a_study_whose_data_cannot_be_read_any_more_goes_on_without_a_fingerprint(tmp_path):
    from ct_ray.orchestration.study import ScoringSet, study_fingerprint

    preset_file = tmp_path / "tiny.yaml"
    preset_file.write_text(yaml.safe_dump(TINY_PRESET))
    teacher = rebase(load_preset(preset_file).teacher, tmp_path)  # its shards, data/shards, are not there
    tests = ScoringSet(f"synthetic:{tmp_path / 'data' / 'benchmark'}", "test", tmp_path / "results", "test")
    said: list[str] = []
    assert study_fingerprint(teacher, tests, said.append) == {}
    assert len(said) == 1 and said[0].startswith("  no data fingerprint: ") and "shards" in said[0]
