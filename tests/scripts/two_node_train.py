"""Two Ray nodes on this machine (ray.cluster_utils.Cluster), a 2-worker SPREAD CompressTracker run across them.

Run by tests/test_cluster.py in its own process (a process holds one Ray connection), with tests/ on PYTHONPATH for
helpers.py. Prints one JSON line: the node of every training worker and the run's last epoch.
"""
import json
import os
import socket
import sys
from pathlib import Path

from ct_ray.orchestration.cluster import LOCAL_RAY_ENV

for key, value in LOCAL_RAY_ENV.items():
    os.environ.setdefault(key, value)

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from helpers import write_training_workspace  # noqa: E402


def free_port() -> int:
    """A free local port for the dashboard, so that a Ray instance already on 8265 does not stop the test."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main(workdir: str) -> None:
    root = Path(workdir)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3, "include_dashboard": True,
                                                            "dashboard_host": "127.0.0.1",
                                                            "dashboard_port": free_port()})
    cluster.add_node(num_cpus=3)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    try:
        from ct_ray.config import load_config
        from ct_ray.training.experiment import ExperimentConfig
        from ct_ray.orchestration.train_launcher import train
        from ray.util.state import list_actors

        write_training_workspace(root, pairs_per_epoch=32, epochs=1)
        config = load_config(ExperimentConfig, None, [
            f"teacher.path={root / 'teacher.pt'}", "student.num_stages=2", f"data.shards={root / 'shards'}",
            "data.val_dataset=null", "data.batch_size=8", "run.epochs=2", f"run.storage_path={root / 'runs'}",
            "run.name=spread", "scaling.num_workers=2", "scaling.placement_strategy=SPREAD",
            f"mlflow.tracking_uri=sqlite:///{root / 'mlflow.db'}"])
        outcome = train(config)
        workers = list_actors(address=cluster.address, filters=[("class_name", "=", "RayTrainWorker")], detail=True)
        print(json.dumps({"nodes": sorted({w["node_id"] for w in workers}), "workers": len(workers),
                          "cluster_nodes": len(ray.nodes()), "epoch": outcome.metrics["epoch"]}))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
