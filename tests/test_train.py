"""Ray Train runs: config checks, a compression run tracked in MLflow, recovery after a killed worker, resume."""
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from ct_ray.config import ConfigError, load_config
from ct_ray.models import load_tracker
from ct_ray.training.experiment import ExperimentConfig
from helpers import write_training_workspace


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, ray_session):
    """A LaSOT-format tree, shards of 2 x 32 pairs from its training split, and a tiny random teacher."""
    return write_training_workspace(tmp_path_factory.mktemp("train"), pairs_per_epoch=32, epochs=2,
                                    teacher_meta={"mlflow_run_id": "teacher-run"})


def overrides(root: Path, name: str, *extra: str) -> list[str]:
    return [f"teacher.path={root / 'teacher.pt'}", "student.num_stages=2", f"data.shards={root / 'shards'}",
            f"data.val_dataset=lasot:{root / 'lasot'}", "data.val_split=test", "data.batch_size=8",
            "data.shuffle_buffer=0", f"run.storage_path={root / 'runs'}", f"run.name={name}",
            f"mlflow.tracking_uri=sqlite:///{root / 'mlflow.db'}", "mlflow.experiment=tests", *extra]


def test_config_errors_name_the_key(workspace):
    base = overrides(workspace, "bad")
    with pytest.raises(ConfigError, match=r"optim\.lrr"):
        load_config(ExperimentConfig, None, base + ["optim.lrr=1"])
    with pytest.raises(ConfigError, match=r"data\.batch_size must be > 0"):
        load_config(ExperimentConfig, None, base + ["data.batch_size=0"])
    with pytest.raises(ConfigError, match="teacher.path is required"):
        load_config(ExperimentConfig, None, ["kind=distillation"])
    with pytest.raises(ConfigError, match="must be 0 for the student-only baseline"):
        load_config(ExperimentConfig, None, base + ["kind=student-only"])
    from ct_ray.training.experiment import check_experiment

    config = load_config(ExperimentConfig, None, base + ["student.stages=[1,2]", "student.num_stages=2"])
    with pytest.raises(ConfigError, match="covers 3 blocks, but the teacher has 4"):
        check_experiment(config)
    repo = Path(__file__).resolve().parents[1]
    for path in sorted((repo / "experiments").glob("*.yaml")):
        if not path.name.startswith(("tune", "runtime_env")):
            load_config(ExperimentConfig, path)


def test_compression_run_is_tracked_in_mlflow(workspace):
    from ct_ray.orchestration.train_launcher import train

    config = load_config(ExperimentConfig, None, overrides(workspace, "ct", "run.epochs=2"))
    outcome = train(config)
    assert outcome.metrics["epoch"] == 2 and outcome.metrics["replacement_p"] == 1.0
    assert 0 <= outcome.metrics["val_auc"] <= 100 * 20 / 21
    student, meta = load_tracker(outcome.final_tracker)
    assert len(student.blocks) == 2 and meta["teacher_stages"] == [2, 2] and meta["epoch"] == 2
    client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    run = client.get_run(outcome.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "ct"
    assert run.data.params["student.num_stages"] == "2" and run.data.params["optim.lr"] == "0.0004"
    tags = run.data.tags
    assert tags["kind"] == "compresstracker" and tags["teacher_run_id"] == "teacher-run"
    assert tags["student_depth"] == "2" and tags["stage_division"] == "[2, 2]" and "version.torch" in tags
    history = client.get_metric_history(run.info.run_id, "loss_total")
    assert [m.step for m in history] == [1, 2]
    assert [m.value for m in client.get_metric_history(run.info.run_id, "replacement_p")] == [0.5, 1.0]
    for name in ("loss_giou", "loss_l1", "loss_focal", "loss_guidance", "loss_mimicking", "lr", "rows_per_s",
                 "data_wait_fraction", "val_auc", "val_precision", "val_norm_precision"):
        assert name in run.data.metrics, name
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"checkpoints", "config.yaml", "validation_success.png"} <= artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")} == {"checkpoints/best",
                                                                                        "checkpoints/final"}


def _kill_a_worker_after_first_checkpoint(run_dir: Path, stop: threading.Event) -> None:
    from ray.util.state import list_actors

    while not stop.is_set() and not list(run_dir.glob("checkpoint_*/train_state.pt")):
        time.sleep(0.2)
    if stop.is_set():
        return
    import ray

    # Only this test's own workers: its Ray instance (not whatever else listens on this machine) and its job.
    context = ray.get_runtime_context()
    actors = list_actors(address=context.gcs_address,
                         filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE"),
                                  ("job_id", "=", context.get_job_id())])
    for actor in actors:
        os.kill(int(actor["pid"]), signal.SIGKILL)


def _train_with_kill(config, run_dir: Path):
    from ct_ray.orchestration.train_launcher import train

    stop = threading.Event()
    killer = threading.Thread(target=_kill_a_worker_after_first_checkpoint, args=(run_dir, stop))
    killer.start()
    try:
        return train(config)
    finally:
        stop.set()
        killer.join()


def test_a_stopped_run_resumes_to_the_uninterrupted_weights_and_another_seed_differs(workspace):
    """A deterministic 4-epoch run (files shuffled from run.seed every pass, a seeded shuffle buffer) twice: once
    uninterrupted, once with every worker killed after its first checkpoint and no retry allowed, then `--resume`.
    Both end at epoch 4 with the same weights: a run of one config repeats, and a resume loses and repeats no epoch.
    A run with another seed sees other batches. (A worker killed with a retry allowed, on S3 across two nodes:
    tests/test_cluster.py.)"""
    from ct_ray.orchestration.train_launcher import resume_config, train

    common = ["run.epochs=4", "run.deterministic=true", "data.val_dataset=null", "run.keep_checkpoints=4",
              "data.shuffle_buffer=16"]
    reference = train(load_config(ExperimentConfig, None, overrides(workspace, "ref", *common)))
    expected = load_tracker(reference.final_tracker)[0].state_dict()

    stopped_config = load_config(ExperimentConfig, None, overrides(workspace, "stopped", *common))
    with pytest.raises(Exception):
        _train_with_kill(stopped_config, workspace / "runs" / "stopped")
    client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    stopped_runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id],
                                      "attributes.run_name = 'stopped'")
    assert [r.info.status for r in stopped_runs] == ["FAILED"]
    config, _ = resume_config(str(workspace / "runs" / "stopped"))
    resumed = train(config, resume=True)
    assert resumed.metrics["epoch"] == 4 and resumed.mlflow_run_id == stopped_runs[0].info.run_id
    assert client.get_run(resumed.mlflow_run_id).info.status == "FINISHED"
    history = client.get_metric_history(resumed.mlflow_run_id, "loss_total")
    assert sorted({m.step for m in history}) == [1, 2, 3, 4]
    weights = load_tracker(resumed.final_tracker)[0].state_dict()
    for key, value in expected.items():
        assert torch.equal(weights[key], value), key
    reference_losses = {m.step: m.value for m in client.get_metric_history(reference.mlflow_run_id, "loss_total")}
    assert {m.step: m.value for m in history if m.step == 4} == {4: reference_losses[4]}

    other = train(load_config(ExperimentConfig, None, overrides(workspace, "other-seed", *common, "run.epochs=1",
                                                                "run.seed=1", "mlflow.enabled=false")))
    assert other.metrics["loss_total"] != reference_losses[1]


def test_ddp_leaves_the_frozen_teacher_alone(tmp_path):
    """Only the student and the projections are data-parallel: DDP registers no teacher parameter or buffer, so it
    neither broadcasts nor reduces the teacher (one gloo process here; the same wrapping runs on N workers)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from ct_ray.compress import ReplacementModel, StageDivision, build_student
    from ct_ray.models import OneStreamTracker
    from ct_ray.orchestration.train_worker import ignore_frozen_teacher
    from helpers import TINY_TRACKER

    torch.manual_seed(0)
    teacher = OneStreamTracker(TINY_TRACKER)
    division = StageDivision.uniform(4, 2)
    module = ReplacementModel(teacher, build_student(teacher, division), division)
    ignored = ignore_frozen_teacher(module)
    assert ignored and all(name.startswith("teacher.") for name in ignored)
    assert len(ignored) == len(list(teacher.parameters())) + len(list(teacher.buffers()))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(module, find_unused_parameters=True)
        synced = {id(p) for p in ddp.parameters() if p.requires_grad}
        assert set(ddp.parameters_to_ignore) == set(ignored)
        # What DDP synchronises: exactly the trainable parameters, none of the teacher's.
        registered = [p for name, p in module.named_parameters() if name not in ddp.parameters_to_ignore]
        assert {id(p) for p in registered} == {id(p) for p in module.trainable_parameters()} == synced
    finally:
        dist.destroy_process_group()
