"""A job that cannot fit the memory it would get is refused before it runs, in our words and
with what would fit: by `nst validate`, by the worker, and never left for the kernel to kill;
the scheduler asks Ray for each CPU task's memory."""

import pyarrow.parquet as pq
import pytest
import torch
from helpers import job_spec, nst, table, write_images

from nst_ops import memory
from nst_ops.spec import JobSpec
from pipeline.jobs.job import Job
from pipeline.run import memory_check
from pipeline.run.options import RunOptions
from pipeline.run.task import run_job


def test_validate_refuses_a_job_over_the_workers_memory_naming_the_row_and_what_fits(tmp_path):
    c, s = write_images(tmp_path, 2, "i")
    rows = [{"content_uri": c, "style_uri": s, "size": 64},
            {"content_uri": c, "style_uri": s, "size": 4096}]  # fmt: skip
    pq.write_table(table(rows), tmp_path / "m.parquet")
    r = nst("validate", tmp_path / "m.parquet", "--memory", "16")
    assert r.exit_code == 1
    line = next(ln for ln in r.output.splitlines() if "rows [1]" in ln)
    assert "memory: needs ~" in line and "more than the 16.0 GiB a worker has" in line
    assert "fits with size=" in line and "or tile=" in line
    ok = nst("validate", tmp_path / "m.parquet", "--memory", "100")
    assert ok.exit_code == 0 and "peak memory up to" in ok.output and "of 100.0 GiB" in ok.output
    plan = nst("plan", tmp_path / "m.parquet")
    assert "peak memory per job: up to ~" in plan.output and "(row 1, size 4096)" in plan.output


def test_a_worker_refuses_a_job_its_memory_cannot_hold_and_commits_the_reason(
    tmp_path, monkeypatch
):
    c, s = write_images(tmp_path, 2, "i")
    spec = job_spec(size=48, iterations=2)
    monkeypatch.setattr(memory_check, "host_memory", lambda: memory.PROCESS + 2**20)
    row = run_job(Job(spec, c, (s,), 0), RunOptions(out=str(tmp_path / "o")), torch.device("cpu"))
    assert row["status"] == "failed" and not row.get("image_uri")
    assert (
        "needs ~" in row["error"]
        and "a worker has" in row["error"]
        and "Traceback" not in row["error"]
    )


def test_an_output_above_max_pixels_is_refused_as_inputs_are(tmp_path):
    c, s = write_images(tmp_path, 2, "i")
    opts = RunOptions(out=str(tmp_path / "o"), max_pixels=1000)
    row = run_job(Job(job_spec(size=48), c, (s,), 0), opts, torch.device("cpu"))
    assert row["status"] == "failed" and "above --max-pixels 1,000" in row["error"]


def test_a_cpu_tasks_memory_request_counts_the_process_once_and_stops_at_the_largest_node():
    a, b = Job(job_spec(size=256), "c", ("s",), 0), Job(job_spec(size=512), "c", ("s",), 1)
    ea, eb = memory.estimate(a.spec), memory.estimate(b.spec)
    both = memory_check.task_memory([a, b], None)["memory"]
    assert both == ea.total + eb.total - ea.process
    assert memory_check.task_memory([a, b], 1e9)["memory"] == 1e9


def test_a_gpu_task_asks_ray_for_the_host_memory_its_history_takes_there():
    host = Job(job_spec(size=512, history_device="host"), "c", ("s",), 0)
    same = Job(job_spec(size=512), "c", ("s",), 1)
    held = memory.estimate(host.spec).host_state
    assert held > 0 and memory_check.gpu_task_memory([host, same]) == {"memory": held}
    assert memory_check.gpu_task_memory([same]) == {}  # its GPU share bounds it


def test_a_gpu_worker_refuses_a_host_history_its_host_cannot_hold(monkeypatch):
    from types import SimpleNamespace

    spec = job_spec(size=1024, history_device="host")
    est = memory.estimate(spec)
    monkeypatch.setattr(memory_check, "device_memory", lambda device: 80 * 2**30)
    monkeypatch.setattr(memory_check, "host_memory", lambda: est.host_state - 1)
    with pytest.raises(memory_check.TooLarge, match="history_device=host needs ~.* GiB of host"):
        memory_check.check_on_device(spec, SimpleNamespace(type="cuda"))
    monkeypatch.setattr(memory_check, "host_memory", lambda: est.host_state)
    memory_check.check_on_device(spec, SimpleNamespace(type="cuda"))  # fits: no error


def test_validate_for_gpus_counts_only_what_a_gpu_holds_and_offers_a_host_history(tmp_path):
    from pipeline.testing import TINY

    c, s = write_images(tmp_path, 2, "i")
    big = {"size": 4096, "tile": 1024, "iterations": 300}  # 100 L-BFGS pairs: 75 GiB
    rows = [{"content_uri": c, "style_uri": s, **big}] * 2
    rows[1] = rows[1] | {"history_device": "host"}
    pq.write_table(table(rows), tmp_path / "m.parquet")
    host = memory.estimate(JobSpec.from_dict(TINY | big | {"history_device": "host"}))
    gib = f"{(host.on_gpu + 2**28) / 2**30:.2f}"  # a GPU that holds the host-history job only
    r = nst("validate", tmp_path / "m.parquet", "--memory", gib, "--gpu")
    assert r.exit_code == 1, r.output
    (line,) = [ln for ln in r.output.splitlines() if "memory: needs" in ln]
    assert line.startswith("✗ rows [0]:") and "GiB a GPU has" in line
    assert line.endswith("or history_device=host")
    on_host = nst("validate", tmp_path / "m.parquet", "--memory", gib)  # a CPU worker's RAM
    refused = [ln for ln in on_host.output.splitlines() if "memory: needs" in ln]
    assert len(refused) == 2 and all("optimizer 75." in ln for ln in refused)  # both hold it
