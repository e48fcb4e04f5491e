"""The cluster path the way a cluster fails, on this machine: two Ray nodes (ray.cluster_utils.Cluster), every
durable thing in an S3-compatible store on 127.0.0.1, MLflow on a server the calling test runs.

1. Shards built by Ray tasks straight into s3://; the teacher uploaded with its .sha256 (fetched once per node).
2. A reference run: 2 workers spread over the nodes, checkpoints and trackers in s3://.
3. The same run again, with one retry allowed: once its first checkpoint is registered, one training worker is
   killed in the middle of an epoch, and the test is told to stop the MLflow server for 15 s (file ``outage``).
   The run resumes from the S3 checkpoint and must end with the reference's weights.
4. A one-trial Tune search whose state, trial run and report live in s3://.

Run by tests/test_cluster.py in its own process; prints one JSON line.
"""
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from ct_ray.orchestration.cluster import LOCAL_RAY_ENV

for key, value in LOCAL_RAY_ENV.items():
    os.environ.setdefault(key, value)

import ray  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from helpers import SAMPLING, TINY_TRACKER, write_lasot_tree  # noqa: E402


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def s3(path: str) -> str:
    endpoint = os.environ["CT_RAY_TEST_S3"]
    return f"s3://{path}?endpoint_override={endpoint}&scheme=http&region=us-east-1&allow_bucket_creation=true"


def kill_mid_epoch(run: "Location", outage: Path, stop: threading.Event, address: str) -> dict:  # noqa: F821
    """Waits until the run's first checkpoint is registered (epoch 1 of 5), then asks for the MLflow outage and
    kills one training worker (SIGKILL) while the next epochs train."""
    from ray.util.state import list_actors

    events = {}
    while not stop.is_set():
        snapshot = run.child("checkpoint_manager_snapshot.json")
        if snapshot.is_file() and "checkpoint_" in snapshot.read_text():
            break
        time.sleep(0.3)
    if stop.is_set():
        return events
    outage.write_text("now")
    workers = list_actors(address=address, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
                          detail=True)
    if workers:
        os.kill(int(workers[-1]["pid"]), signal.SIGKILL)
        events["killed_pid"] = int(workers[-1]["pid"])
    return events


def main(workdir: str) -> None:
    root = Path(workdir)
    started, seconds = time.time(), {}

    def lap(name: str) -> None:  # where the script's time goes (printed with the result)
        seconds[name] = round(time.time() - started - sum(seconds.values()), 1)

    os.environ["CT_RAY_CACHE"] = str(root / "cache")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3, "include_dashboard": True,
                                                            "dashboard_host": "127.0.0.1",
                                                            "dashboard_port": free_port()})
    cluster.add_node(num_cpus=3)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    lap("cluster")
    try:
        from ct_ray.config import load_config
        from ct_ray.data.shards import ShardPlan, SourceSpec
        from ct_ray.fileio import Location, file_sha256
        from ct_ray.models import OneStreamTracker, load_tracker, save_tracker
        from ct_ray.orchestration.data_pipeline import build_shards
        from ct_ray.orchestration.train_launcher import train
        from ct_ray.orchestration.tune_search import run_search
        from ct_ray.training.experiment import ExperimentConfig
        from ct_ray.training.search_space import SearchConfig
        from ct_ray.config import from_dict
        from ray.util.state import list_actors

        lasot = write_lasot_tree(root / "lasot", sequences=3, frames=10)
        shards = s3("ctray/cluster/shards")
        plan = ShardPlan(sources=(SourceSpec(f"lasot:{lasot}", "train"),), pairs_per_epoch=32, epochs=1,
                         pairs_per_shard=16, seed=0, sampling=SAMPLING)
        build_shards(plan, shards, progress=False)
        torch.manual_seed(0)
        save_tracker(root / "teacher.pt", OneStreamTracker(TINY_TRACKER))
        teacher = Location.of(s3("ctray/cluster/teacher.pt"))
        teacher.upload(root / "teacher.pt")
        Location.of(s3("ctray/cluster/teacher.pt.sha256")).write_text(file_sha256(root / "teacher.pt"))
        lap("shards")
        uri = os.environ["MLFLOW_TRACKING_URI"]
        common = [f"teacher.path={teacher.uri}", "student.num_stages=2", f"data.shards={shards}",
                  f"data.val_dataset=lasot:{lasot}", "data.val_split=test", "data.batch_size=8",
                  "data.shuffle_buffer=0", "run.epochs=5", "run.validate_every=5", "run.deterministic=true",
                  f"run.storage_path={s3('ctray/cluster/runs')}", "scaling.num_workers=2",
                  "scaling.placement_strategy=SPREAD", f"mlflow.tracking_uri={uri}", "mlflow.experiment=cluster"]
        reference = train(load_config(ExperimentConfig, None, [*common, "run.name=reference"]), progress=False)
        lap("reference")
        nodes = sorted({w["node_id"] for w in list_actors(address=cluster.address, detail=True,
                                                           filters=[("class_name", "=", "RayTrainWorker")])})

        stop, events = threading.Event(), {}
        run = Location.of(s3("ctray/cluster/runs")).child("killed")
        killer = threading.Thread(target=lambda: events.update(
            kill_mid_epoch(run, root / "outage", stop, cluster.address)))
        killer.start()
        try:
            killed = train(load_config(ExperimentConfig, None, [*common, "run.name=killed", "run.max_failures=1"]),
                           progress=False)
        finally:
            stop.set()
            killer.join()
        lap("killed")
        weights = {}
        for name, outcome in (("reference", reference), ("killed", killed)):
            local = Location.of(outcome.final_tracker).download(root / f"{name}.pt")
            weights[name] = load_tracker(local)[0].state_dict()
        difference = max(float((weights["reference"][k].float() - v.float()).abs().max())
                         for k, v in weights["killed"].items())

        base = root / "base.yaml"
        base.write_text(yaml.safe_dump({"kind": "compresstracker", "teacher": {"path": teacher.uri},
                                        "data": {"shards": shards, "val_dataset": f"lasot:{lasot}",
                                                 "val_split": "test", "batch_size": 8},
                                        "run": {"epochs": 1, "validate_every": 1}}))
        search = from_dict(SearchConfig, {"base": str(base), "search": {"student.num_stages": [2]},
                                          "tune": {"name": "search", "storage_path": s3("ctray/cluster/tune")},
                                          "mlflow": {"tracking_uri": uri, "experiment": "cluster-search"}})
        summaries, files = run_search(search, progress=False)
        lap("search")
        tune_files = sorted(entry.name for entry in Location.of(s3("ctray/cluster/tune")).child("search").list())
        print(json.dumps({"nodes": nodes, "cluster_nodes": len(ray.nodes()), "difference": difference,
                          "killed": events, "reference_run": reference.mlflow_run_id,
                          "killed_run": killed.mlflow_run_id, "final": killed.final_tracker,
                          "trials": len(summaries), "tune_files": tune_files,
                          "report": files, "fetched": sorted(p.name for p in (root / "cache" / "fetched").iterdir()),
                          "seconds": seconds}))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
