"""End to end through the CLI on a real local Ray: local paths and a real S3 API (moto server)."""

import json
import os

import pyarrow.parquet as pq
import pytest
import s3fs
from conftest import start_ray
from helpers import nst, png_bytes, table, write_images

from nst_ops.presets import LATEST_DEFAULTS


@pytest.fixture
def local_manifest(tmp_path):
    contents = write_images(tmp_path / "content", 2, "c")
    styles = write_images(tmp_path / "style", 1, "s")
    broken = tmp_path / "content" / "broken.png"
    broken.write_bytes(png_bytes(64, 64)[:300])
    rows = [
        {"content_uri": c, "style_uri": styles[0], "optimizer": ["adam", "sgd"]} for c in contents
    ]
    rows.append(
        {
            "content_uri": str(broken),
            "style_uri": styles[0],
            "optimizer": ["adam"],
            "job_name": "broken",
        }
    )
    path = tmp_path / "m.parquet"
    pq.write_table(table(rows, tag_project="demo"), path)
    return path, broken


def test_run_writes_results_resumes_and_a_broken_row_fails_alone(ray_cpu, tmp_path, local_manifest):
    manifest, broken = local_manifest
    out = tmp_path / "out"
    first = nst("run", str(manifest), "--out", str(out), "--no-progress")
    assert first.exit_code == 0, first.output
    assert "5 jobs (0 already done)" in first.output

    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert len(rows) == 5
    by_status = {}
    for r in rows:
        by_status.setdefault(r["status"], []).append(r)
    assert len(by_status["ok"]) == 4 and len(by_status["failed"]) == 1
    bad = by_status["failed"][0]
    assert bad["job_name"] == "broken" and bad["row"] == 2
    assert f"{broken}: corrupt or truncated image" in bad["error"]
    assert all(r["tag_project"] == "demo" for r in rows)
    for r in by_status["ok"]:
        assert r["image_uri"] == f"jobs/{r['job_id']}/image.png"  # relative to the run root
        assert os.path.exists(out / r["image_uri"])
        trace = pq.read_table(out / r["trace_uri"]).to_pylist()
        assert trace[-1]["iteration"] == 2 and r["final_total"] > 0
    assert pq.read_table(out / "jobs.parquet").num_rows == 5

    markers = {p: p.stat().st_mtime_ns for p in out.glob("jobs/*/result.parquet")}
    again = nst("run", str(manifest), "--out", str(out), "--no-progress")
    assert again.exit_code == 0 and "5 jobs (5 already done)" in again.output
    assert {p: p.stat().st_mtime_ns for p in out.glob("jobs/*/result.parquet")} == markers

    status = nst("status", str(out))
    assert "failed: 1" in status.output and "ok: 4" in status.output
    assert "corrupt or truncated" in status.output

    forced = nst("run", str(manifest), "--out", str(out), "--no-progress", "--retry-failed")
    assert "5 jobs (4 already done)" in forced.output


def test_plan_and_validate_need_no_compute(tmp_path, local_manifest):
    manifest, broken = local_manifest
    plan = nst("plan", str(manifest))
    assert plan.exit_code == 0 and "5 jobs" in plan.output and "optimizer" in plan.output
    bad = nst("validate", str(manifest))
    assert bad.exit_code == 1
    assert "rows [2]" in bad.output and "broken.png" in bad.output
    assert "validation failed: 1 problem(s) in 5 jobs (4 inputs)" in bad.output


def test_cli_errors_are_one_line_without_traceback(tmp_path):
    pq.write_table(
        table([{"content_uri": "/c", "style_uri": "/s", "optimiser": "adam"}]),
        tmp_path / "m.parquet",
    )
    result = nst("plan", str(tmp_path / "m.parquet"))
    assert result.exit_code == 1
    assert "unknown column 'optimiser'; did you mean 'optimizer'?" in result.output
    assert "Traceback" not in result.output


def test_make_manifest_builds_the_product_of_folders_and_grid_options(tmp_path):
    write_images(tmp_path / "c", 3, "c")
    write_images(tmp_path / "s", 2, "s")
    grid = tmp_path / "grid.yaml"
    grid.write_text("style_weight: [1e3, 1.0e4]\nweights: random:0\n")
    res = nst(
        "make-manifest",
        str(tmp_path / "m.parquet"),
        "--content",
        str(tmp_path / "c"),
        "--style",
        str(tmp_path / "s" / "*.png"),
        "--grid",
        str(grid),
        "--set",
        "optimizer=adam,lbfgs",
        "--set",
        "style_layers=relu1_1,relu2_1|relu1_1",
    )
    assert res.exit_code == 0, res.output
    assert "6 rows, 48 jobs" in res.output


def test_transfer_writes_what_a_runs_worker_writes_for_the_same_job(tmp_path):
    """`nst transfer` goes through the worker's own reading and writing (Inputs, commit_job):
    the same job gives the same image bytes, snapshots, trace and record as run_job in the same
    process, only beside the named file instead of in a run's job folder."""
    import pyarrow.parquet as pq

    from nst_ops.spec import JobSpec
    from pipeline.jobs.job import Job
    from pipeline.run.options import RunOptions
    from pipeline.run.task import run_job
    from pipeline.store import record

    c, s = write_images(tmp_path, 2, "x")
    sets = {"weights": "random:0", "size": 16, "iterations": 4, "save_every": 2,
            "content_layers": "relu2_1", "style_layers": "relu1_1"}  # fmt: skip
    res = nst("transfer", c, s, tmp_path / "t" / "o.png",
              *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")])  # fmt: skip
    assert res.exit_code == 0, res.output
    spec = JobSpec.from_dict({**sets, "style_layers": ["relu1_1"],
                              "content_layers": ["relu2_1"]}, None, LATEST_DEFAULTS)  # fmt: skip
    row = run_job(Job(spec, c, (s,), 0), RunOptions(out=str(tmp_path / "run")))
    run, t = tmp_path / "run", tmp_path / "t"
    assert (t / "o.png").read_bytes() == (run / row["image_uri"]).read_bytes()
    assert sorted(p.name for p in t.iterdir()) == ["o.000002.png", "o.000004.png", "o.png",
                                                   "o.trace.parquet"]  # fmt: skip
    assert (t / "o.000002.png").read_bytes() == (run / row["snapshots"][0]).read_bytes()
    mine = record.read_record((t / "o.trace.parquet").read_bytes())
    theirs = record.read_record((run / row["trace_uri"]).read_bytes())
    assert mine["job_id"] == theirs["job_id"] == row["job_id"]
    assert mine["inputs"] == theirs["inputs"] and len(mine["inputs"]) == 2
    assert mine["final_total"] == theirs["final_total"] and mine["status"] == "ok"
    drop = ["seconds"]
    same = pq.read_table(t / "o.trace.parquet").drop(drop)
    assert same.equals(pq.read_table(run / row["trace_uri"]).drop(drop))


def test_run_reads_and_writes_through_a_real_s3_endpoint(ray_cpu, s3_endpoint, tmp_path):
    opts = {"endpoint_url": s3_endpoint}
    fs = s3fs.S3FileSystem(**opts)
    fs.mkdir("nst-test")
    fs.pipe_file("nst-test/in/c.png", png_bytes(seed=1))
    fs.pipe_file("nst-test/in/s.png", png_bytes(seed=2))
    rows = [
        {
            "content_uri": "s3://nst-test/in/c.png",
            "style_uri": "s3://nst-test/in/s.png",
            "seed": [0, 1],
        },
        {"content_uri": "s3://nst-test/in/missing.png", "style_uri": "s3://nst-test/in/s.png"},
    ]
    local = tmp_path / "m.parquet"
    pq.write_table(table(rows, optimizer="adam"), local)
    fs.put_file(str(local), "nst-test/m.parquet")
    res = nst(
        "run",
        "s3://nst-test/m.parquet",
        "--out",
        "s3://nst-test/out",
        "--no-progress",
        "--storage-options",
        json.dumps(opts),
    )
    assert res.exit_code == 0, res.output
    with fs.open("nst-test/out/results.parquet", "rb") as f:
        results = pq.read_table(f).to_pylist()
    assert sorted(r["status"] for r in results) == ["failed", "ok", "ok"]
    missing = next(r for r in results if r["status"] == "failed")
    assert missing["error"] == "s3://nst-test/in/missing.png: input not found"
    assert len(fs.glob("nst-test/out/jobs/*/result.parquet")) == 3
    for r in (r for r in results if r["status"] == "ok"):
        assert fs.exists(f"nst-test/out/{r['image_uri']}")
    records = fs.cat(fs.glob("nst-test/out/jobs/*/*"))  # every result.parquet and image
    assert len(records) == 3 + 2  # 3 committed jobs: result.parquet; 2 ok: + image
    blob = json.dumps(results) + "".join(v.decode(errors="replace") for v in records.values())
    assert "testing" not in blob and s3_endpoint not in blob  # no credentials or options leak


def test_gpu_scheduling_pins_tasks_to_gpus_with_fractions(tmp_path):
    start_ray(num_gpus=2)  # fake GPUs: Ray schedules by them; torch still runs on the CPU
    try:
        contents = write_images(tmp_path / "c", 2, "c")
        styles = write_images(tmp_path / "s", 1, "s")
        pq.write_table(
            table([{"content_uri": c, "style_uri": styles[0]} for c in contents], optimizer="adam"),
            tmp_path / "m.parquet",
        )
        res = nst(
            "run",
            str(tmp_path / "m.parquet"),
            "--out",
            str(tmp_path / "out"),
            "--gpus-per-job",
            "0.5",
            "--no-progress",
        )
        assert res.exit_code == 0, res.output
        rows = pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()
        assert all(r["status"] == "ok" for r in rows)
        assert all(r["ray_gpu_ids"] for r in rows)
        assert all(r["device"] == "cpu" for r in rows)  # no CUDA here: falls back honestly
        assert all(r["ray_node_id"] for r in rows)  # which node ran it
    finally:
        start_ray(0)


def test_gpu_demand_is_what_the_user_asks_not_what_is_up_at_start(ray_cpu):
    """On a cluster, tasks ask for GPUs even while none is up (an autoscaler only starts GPU
    nodes for demand it sees); embedded without a GPU they are CPU tasks."""
    from pipeline.run.scheduler import Resources, task_options

    assert task_options(Resources(on_cluster=True))["num_gpus"] == 1.0
    assert task_options(Resources(on_cluster=True, gpus_per_job=0.25))["num_gpus"] == 0.25
    assert "num_gpus" not in task_options(Resources(on_cluster=True, gpus_per_job=0))
    assert "num_gpus" not in task_options(Resources())  # embedded, this machine has none


def test_gpus_that_never_come_end_the_run_with_a_clear_error_keeping_what_is_done(
    ray_cpu, tmp_path
):
    (c,), (s,) = write_images(tmp_path / "c", 1, "g"), write_images(tmp_path / "s", 1, "g")
    pq.write_table(table([{"content_uri": c, "style_uri": s}]), tmp_path / "m.parquet")
    out = tmp_path / "out"
    done = nst("run", tmp_path / "m.parquet", "--out", out, "--no-progress", "--gpus-per-job", "0")
    assert done.exit_code == 0
    pq.write_table(  # the job already done (default beta 1e7) and a new one
        table([{"content_uri": c, "style_uri": s, "style_weight": [1e7, 1e3]}]),
        tmp_path / "m.parquet",
    )
    args = ["--gpus-per-job", "1", "--gpu-wait", "2", "--no-progress"]
    res = nst("run", tmp_path / "m.parquet", "--out", out, *args)
    assert res.exit_code == 5 and "no GPU joined the cluster within 2s" in res.output
    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert sorted(r["status"] for r in rows) == ["ok", "pending"]  # the first run's job is kept


def test_make_manifest_keeps_relative_paths_portable(tmp_path, monkeypatch):
    write_images(tmp_path / "imgs" / "c", 1, "c")
    write_images(tmp_path / "imgs" / "s", 1, "s")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    args = ["--content", "imgs/c", "--style", "imgs/s", "--set", "weights=random:0"]
    res = nst("make-manifest", "sub/m.parquet", *args)
    assert res.exit_code == 0, res.output
    stored = pq.read_table(tmp_path / "sub" / "m.parquet").to_pylist()[0]
    assert stored["content_uri"] == "../imgs/c/c0.png"  # relative to the manifest's folder
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    monkeypatch.chdir(moved)
    assert nst("validate", str(tmp_path / "sub" / "m.parquet")).exit_code == 0


def test_jobs_per_task_default_to_one_on_cpu_eight_on_gpu_unless_given():
    from pipeline.run.scheduler import Resources, task_batch_size

    assert task_batch_size(Resources(), gpus=0) == 1
    assert task_batch_size(Resources(), gpus=0.5) == 8
    assert task_batch_size(Resources(batch_size=3), gpus=0) == 3
    assert task_batch_size(Resources(batch_size=1), gpus=1) == 1
    refused = nst("run", "m.parquet", "--out", "o", "--batch-size", "0")
    assert refused.exit_code == 2 and "--batch-size" in refused.output


def test_lbfgs_jobs_run_alone_on_cpu_by_default_and_as_one_batch_when_asked(ray_cpu, tmp_path):
    """Two L-BFGS jobs on one content: alone by default on CPU; with --batch-size 2 one
    batch (one history each), with results close to the one-by-one ones."""
    from helpers import committed_records

    (c,), (s,) = write_images(tmp_path / "c", 1, "b"), write_images(tmp_path / "s", 1, "b")
    rows = [{"content_uri": c, "style_uri": s, "optimizer": "lbfgs", "style_weight": [1e5, 1e6]}]
    pq.write_table(table(rows), tmp_path / "m.parquet")
    runs = {}
    for name, extra in (("alone", []), ("batched", ["--batch-size", "2"])):
        out = tmp_path / name
        res = nst("run", tmp_path / "m.parquet", "--out", out, "--no-progress", *extra)
        assert res.exit_code == 0, res.output
        runs[name] = committed_records(out)
    assert {r["batch_size"] for r in runs["alone"].values()} == {1}
    assert {r["batch_size"] for r in runs["batched"].values()} == {2}
    for job_id, alone in runs["alone"].items():
        batched = runs["batched"][job_id]
        assert batched["status"] == alone["status"] == "ok"
        assert batched["final_total"] == pytest.approx(alone["final_total"], rel=1e-3)
