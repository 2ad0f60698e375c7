"""One image over several workers (workers_per_job): the tiles of a tiled job split between
its task and helper actors, gang-scheduled; the result is the one-worker result."""

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import job_spec, nst, run_manifest, write_images
from PIL import Image

from nst_ops.spec import SpecError


def _image(out, row) -> np.ndarray:
    return np.asarray(Image.open(out / row["image_uri"].split(str(out))[-1].lstrip("/")))


def test_a_tiled_job_over_two_workers_reaches_the_one_worker_image_and_a_third_is_refused(
    tmp_path, ray_cpu
):
    """One run, three jobs on 2 CPUs: 1 worker, 2 workers (the same image and loss), and 3
    workers, which this machine can never hold at once (a failed row in our words)."""
    c, s = write_images(tmp_path, 2, "w")
    grid = {"size": 64, "tile": 32, "iterations": 4, "workers_per_job": [1, 2, 3]}
    r, out = run_manifest(tmp_path, [{"content_uri": c, "style_uri": s, **grid}])
    rows = sorted(pq.read_table(out / "results.parquet").to_pylist(),
                  key=lambda row: row["workers_per_job"])  # fmt: skip
    one, two, three = rows
    assert one["status"] == two["status"] == "ok", r.output
    assert two["final_total"] == pytest.approx(one["final_total"], rel=1e-4)
    a, b = _image(out, one).astype(int), _image(out, two).astype(int)
    assert np.abs(a - b).max() <= 2 and a.std() > 5  # 8-bit rounding of float-order differences
    assert three["status"] == "failed"
    assert "workers_per_job=3 needs 3 CPU at once; this machine's Ray has 2 CPU" in three["error"]


def test_workers_per_job_needs_tiles_and_a_ray_run():
    with pytest.raises(SpecError, match="give tile= too"):
        job_spec(workers_per_job=2)
    r = nst("transfer", "a.png", "b.png", "o.png", "--set", "tile=32", "--set", "workers_per_job=2")
    assert r.exit_code != 0 and "nst run does that" in r.output


def test_a_gang_larger_than_the_machine_names_each_resource_it_lacks(monkeypatch):
    from pipeline.jobs.job import Job
    from pipeline.run import placement

    have = {"CPU": 16.0, "memory": 8.0 * 2**30}
    monkeypatch.setattr(placement.ray, "cluster_resources", lambda: have)
    group = [Job(job_spec(size=64, tile=32, workers_per_job=2), "c", ("s",), 0)]
    why = placement.too_large(group, {"num_cpus": 1}, {"memory": 6 * 2**30})
    assert why is not None and why.startswith(
        "workers_per_job=2 needs 12.0 GiB of memory at once; this machine's Ray has 8.0 GiB"
    )
    assert placement.too_large(group, {"num_cpus": 8}, {"memory": 2**30}) is None
    assert placement.bundle({"num_cpus": 2, "num_gpus": 0.5}, {}) == {"CPU": 2.0, "GPU": 0.5}
    one = [Job(job_spec(size=64), "c", ("s",), 0)]
    assert placement.too_large(one, {"num_cpus": 64, "num_gpus": 1}, {}) is None  # waits, as ever


def test_a_gpu_gangs_host_memory_is_asked_by_its_task_alone_a_cpu_gangs_by_every_worker(
    monkeypatch,
):
    """On GPUs the host memory a task asks for is its L-BFGS history (history_device=host),
    which its helpers do not hold; on CPUs every worker holds a tile's activations."""
    from pipeline.jobs.job import Job
    from pipeline.run import placement

    gpu, cpu, held = {"num_cpus": 1, "num_gpus": 1}, {"num_cpus": 1}, {"memory": 6 * 2**30}
    assert placement.bundles(3, gpu, held) == [
        {"CPU": 1.0, "GPU": 1.0, "memory": 6.0 * 2**30},
        *[{"CPU": 1.0, "GPU": 1.0}] * 2,
    ]
    assert placement.bundles(3, cpu, held) == [{"CPU": 1.0, "memory": 6.0 * 2**30}] * 3
    have = {"CPU": 16.0, "GPU": 4.0, "memory": 8.0 * 2**30}
    monkeypatch.setattr(placement.ray, "cluster_resources", lambda: have)
    group = [Job(job_spec(size=64, tile=32, workers_per_job=3), "c", ("s",), 0)]
    assert placement.too_large(group, gpu, held) is None
    assert "18.0 GiB of memory" in placement.too_large(group, cpu, held)
