"""Shared fixtures: one local Ray instance per test session, bound to 127.0.0.1, and one S3-compatible server on
127.0.0.1 for the tests that need a store. The store's credentials are exported before Ray starts, so the Ray
workers reach it too."""
import os
import shutil
import tempfile

import pytest

from ct_ray.orchestration.cluster import LOCAL_RAY_ENV
from s3server import credentials_env, start_s3_server

for _key, _value in {**LOCAL_RAY_ENV, **credentials_env()}.items():
    os.environ.setdefault(_key, _value)
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")


def pytest_terminal_summary(terminalreporter):
    """Free space where Ray, the S3 server and the tests write, printed at the end of every run (``-q`` too): a
    nearly full disk fails Ray's object store and the S3 uploads with errors that do not name the disk."""
    free_gb = shutil.disk_usage(tempfile.gettempdir()).free / 2**30
    low = " (LOW: Ray's object store and the S3 uploads fail near a full disk)" if free_gb < 2 else ""
    terminalreporter.write_line(f"free disk in {tempfile.gettempdir()}: {free_gb:.1f} GiB{low}")


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray instance shared by every test that needs Ray; started once, stopped at the end."""
    import ray

    os.environ.pop("RAY_ADDRESS", None)
    ray.init(address="local", num_cpus=4, include_dashboard=True, dashboard_host="127.0.0.1",
             log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server():
    """SeaweedFS's S3 gateway on a free loopback port (``tests/s3server.py``); stopped by its pid at the end."""
    server = start_s3_server()
    yield server
    server.stop()
