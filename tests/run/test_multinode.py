"""`nst run --address` on a real two-node Ray cluster started with `ray start` on this machine:
a GPU node that joins after the run started gets the GPU tasks, and a node SIGKILLed mid-run
loses no job (its tasks are retried elsewhere, committed jobs are not recomputed)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import committed_records, nst_cmd, table, write_images
from raycluster import ENV, LocalCluster

pytestmark = pytest.mark.slow


def _committed(out: Path) -> dict[str, dict]:
    """job id -> the record of every committed job."""
    return committed_records(out)


def _wait_for(condition, what: str, proc: subprocess.Popen, limit: float = 240.0) -> None:
    """Poll an event (files on disk), never a fixed sleep; fail if the run exits first."""
    deadline = time.time() + limit
    while not condition():
        assert proc.poll() is None, f"run ended before {what}: {proc.communicate()}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def cluster():
    # a short root: Ray's socket paths under it must stay within AF_UNIX's 107 bytes
    root = Path(tempfile.mkdtemp(prefix="nst-ray-"))
    c = LocalCluster(root)
    try:
        c.add_node(num_cpus=2, num_gpus=0)  # the head: CPUs only, like cluster.yaml's
        yield c
    finally:
        c.shutdown()
        shutil.rmtree(root, ignore_errors=True)


def test_a_late_gpu_node_gets_the_gpu_tasks_and_a_killed_node_loses_no_job(tmp_path, cluster):
    contents = write_images(tmp_path / "c", 6, "c")
    styles = write_images(tmp_path / "s", 1, "s")
    rows = [{"content_uri": c, "style_uri": styles[0]} for c in contents]
    # each job takes seconds, so the kill below lands while jobs are still to do
    pq.write_table(table(rows, iterations=150, size=32), tmp_path / "m.parquet")
    out = tmp_path / "o"
    cmd = nst_cmd("run", tmp_path / "m.parquet", "--out", out, "--address", cluster.address,
                  "--gpus-per-job", "1", "--batch-size", "1")  # fmt: skip
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: (out / "jobs.parquet").exists(), "the run to start", proc)
        assert not _committed(out), "no GPU in the cluster yet: nothing can have run"

        gpu_node = cluster.add_node(num_cpus=1, num_gpus=1)  # joins mid-run, one fake GPU
        _wait_for(lambda: _committed(out), "a job on the new GPU node", proc)
        cluster.kill(gpu_node)  # SIGKILL its raylet and workers
        before_kill = _committed(out)
        assert len(before_kill) < len(rows), "the node must die with jobs still to do"

        cluster.add_node(num_cpus=1, num_gpus=1)  # a replacement, as an autoscaler would start
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr

    after = _committed(out)
    assert len(after) == len(rows)
    results = pq.read_table(out / "results.parquet").to_pylist()
    assert {r["status"] for r in results} == {"ok"}
    for job_id, rec in before_kill.items():
        assert after[job_id]["finished_at"] == rec["finished_at"], "committed job recomputed"
    assert {rec["ray_gpu_ids"] for rec in after.values()} == {"0"}, "every job ran on a GPU"
    nodes = {rec["ray_node_id"] for rec in after.values()}
    assert len(nodes) == 2, "jobs ran on the first GPU node and on its replacement"


def test_train_apply_and_refine_run_on_a_two_node_cluster(tmp_path, cluster):
    """The collection path with --address: two Ray Train workers on two nodes (gloo across
    nodes), Ray Data actors on the cluster, and a refinement job through `nst run`."""
    from helpers import png_bytes
    from test_stylenet import TINY_JOB, TINY_NET, smooth_photos

    cluster.add_node(num_cpus=1)
    smooth_photos(tmp_path / "photos", 4)
    style = tmp_path / "style.png"
    style.write_bytes(png_bytes(40, 40, seed=3))
    model = tmp_path / "model"
    at = ("--address", cluster.address)
    train = nst_cmd("train", style, "--content", tmp_path / "photos", "--out", model, "--steps",
                    "4", "--workers", "2", *TINY_NET, *TINY_JOB, *at)  # fmt: skip
    done = subprocess.run(train, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (model / "model.pt").exists()

    coll = tmp_path / "coll"
    write_images(coll, 20, "p")
    apply = nst_cmd("apply", model / "model.pt", "--input", coll, "--out", tmp_path / "a",
                    "--no-progress", "--score", "none", *at)  # fmt: skip
    done = subprocess.run(apply, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = pq.read_table(tmp_path / "a" / "results.parquet").to_pylist()
    assert len(rows) == 20 and {r["status"] for r in rows} == {"ok"}

    rows = [{"content_uri": str(coll / "p0.png"), "style_uri": str(style),
             "init": f"model:{model / 'model.pt'}", "optimizer": "adam"}]  # fmt: skip
    pq.write_table(table(rows, iterations=5, size=16), tmp_path / "m.parquet")
    run = nst_cmd("run", tmp_path / "m.parquet", "--out", tmp_path / "r", "--no-progress",
                  "--gpus-per-job", "0", *at)  # fmt: skip
    done = subprocess.run(run, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (rec,) = committed_records(tmp_path / "r").values()
    assert rec["status"] == "ok" and rec["init"].startswith("model:")
