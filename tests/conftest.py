"""Shared fixtures: one local Ray instance per test session, bound to 127.0.0.1."""
import os

import pytest

from ct_ray.cluster import LOCAL_RAY_ENV

for _key, _value in LOCAL_RAY_ENV.items():
    os.environ.setdefault(_key, _value)
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray instance shared by every test that needs Ray; started once, stopped at the end."""
    import ray

    os.environ.pop("RAY_ADDRESS", None)
    ray.init(address="local", num_cpus=4, include_dashboard=True, dashboard_host="127.0.0.1",
             log_to_driver=False)
    yield ray
    ray.shutdown()
