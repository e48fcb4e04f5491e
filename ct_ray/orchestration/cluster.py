"""Connecting to Ray: a running cluster when one is named, else a local instance bound to 127.0.0.1."""
from __future__ import annotations

import logging
import os
import sys

LOCAL_RAY_ENV = {
    # Binds every socket of a local instance to 127.0.0.1 (without it Ray listens on the routable address).
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    # Torch's OpenMP threads yield instead of spinning: they share the cores with the data tasks, and spinning
    # threads halved the training rate on 2 cores.
    "OMP_WAIT_POLICY": "PASSIVE",
    "RAY_USAGE_STATS_ENABLED": "0",
    # Worker prints appear once, not twice.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
}


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Attach to ``address`` (or ``RAY_ADDRESS``, as ``ray job submit`` sets it); otherwise start a local instance
    on 127.0.0.1 with the dashboard on (Train and Tune clean up placement groups through it).

    A local instance declares twice the machine's cores as logical CPUs (at least 4) unless ``num_cpus`` is given:
    training workers that reserve CPUs must leave some to the sampling tasks and the validation tasks, or the
    job waits forever.
    """
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        for key, value in LOCAL_RAY_ENV.items():
            os.environ.setdefault(key, value)
        if "ray" in sys.modules:
            # Ray reads the loopback switch when it is first imported; apply it if Ray came in earlier.
            import ray._private.ray_constants as ray_constants

            ray_constants.ENABLE_RAY_CLUSTER = os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] != "0"
    import ray

    from ct_ray.orchestration import console

    console.route_loggers()  # importing Ray set its logger up
    if ray.is_initialized():
        return
    quiet = {} if console.verbose() else {"logging_level": logging.WARNING}
    if address:
        ray.init(address=address, log_to_driver=True, **quiet)
    else:
        if num_cpus is None:
            num_cpus = max(4, 2 * (os.cpu_count() or 1))
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                 log_to_driver=True, **quiet)
    console.attach_ray()
    if console.log_path() is not None:
        console.say(f"Ray's output: {console.log_path()}{' (and live: --verbose)' if console.verbose() else ''}")
