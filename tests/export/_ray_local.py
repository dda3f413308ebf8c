"""One local Ray cluster for the whole test session (tests/export/test_serve.py,
tests/export/test_cluster.py): ``ray.init(num_cpus=2)``, no dashboard, no usage reporting;
started by the first test that needs it and shut down when the session ends.

Traffic stays on this machine: the tests' HTTP goes to 127.0.0.1 only, and Ray's own
processes talk to each other on the node's address (Ray replaces 127.0.0.1 by it, so it
cannot be confined to the loopback interface)."""

from __future__ import annotations

import os
import socket

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    ray = pytest.importorskip(
        "ray", reason="needs ray (pip install 'refdiff[serve]'; make test installs it)"
    )
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started = False
    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
        started = True
    yield ray
    if started and ray.is_initialized():
        ray.shutdown()


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
