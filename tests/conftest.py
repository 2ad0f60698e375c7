"""Shared fixtures: tiny random images and a tiny seeded network, nothing from outside."""

import os

# CI shares a busy machine: OpenMP threads that spin while waiting fight other processes for
# the 2 cores. Measured under load (two busy processes beside pytest): tests/engine/test_batching.py
# 16.0 s with spinning threads, 9.4 s with PASSIVE. Set before torch loads; Ray's local workers
# inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Ray starts its workers at niceness 15 (so its control plane stays responsive). Beside any
# other busy process that starves them: with two busy loops at niceness 0 the workers got ~4%
# of a core and one suite took over 30 minutes. Tests run them at the default priority.
os.environ.setdefault("RAY_worker_niceness", "0")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture
def content() -> torch.Tensor:
    return torch.rand(3, 24, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def style() -> torch.Tensor:
    return torch.rand(3, 30, 30, generator=torch.Generator().manual_seed(2))


import socket  # noqa: E402
import sys  # noqa: E402

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "BOTO_CONFIG": "/dev/null",
    # any S3 call that would go to AWS goes to a dead loopback port instead
    "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 API on localhost (moto in server mode), reachable from Ray worker processes."""
    from moto.server import ThreadedMotoServer

    os.environ.update(S3_ENV)  # before Ray starts, so workers inherit the dummy credentials
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def start_ray(num_gpus: int = 0) -> None:
    """(Re)start a real local Ray with 2 CPUs and, to test GPU scheduling on CPU, fake GPUs.
    Ray is imported here, not at the top: a GPU machine without Ray still runs the tests that
    need none (bench/gpu_check.sh)."""
    import ray

    if ray.is_initialized():
        if int(ray.cluster_resources().get("GPU", 0)) == num_gpus:
            return
        ray.shutdown()
    os.environ.update(S3_ENV)
    ray.init(num_cpus=2, num_gpus=num_gpus, include_dashboard=False, log_to_driver=False)


@pytest.fixture
def ray_cpu():
    start_ray(0)
    yield


def pytest_sessionfinish(session, exitstatus):
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
