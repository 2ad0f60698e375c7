"""Resuming a run: what was done is never redone, what is lost or stale is, and a finished
run starts nothing."""

import json
import os
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import s3fs
from helpers import committed_records, nst, one_job, png_bytes, run_manifest, table, write_images

from pipeline.store import storage


def test_a_lost_output_is_shown_redone_and_reported_as_missing(ray_cpu, tmp_path):
    res, out, rows = one_job(tmp_path)
    assert res.exit_code == 0, res.output
    (image,) = out.glob("jobs/*/image.png")
    image.unlink()
    status = nst("status", str(out))
    assert status.exit_code == 0 and "outputs missing: 1" in status.output
    report = nst("report", str(out))
    assert report.exit_code == 0, report.output
    assert "output missing" in (out / "report.html").read_text()
    plan = nst("plan", str(tmp_path / "m.parquet"), "--out", str(out))
    assert "1 to run (output missing 1)" in plan.output
    again, _ = run_manifest(tmp_path, rows)
    assert "output missing 1" in again.output and image.exists()


def test_a_moved_or_copied_run_reads_its_own_files(ray_cpu, tmp_path):
    res, out, _ = one_job(tmp_path)
    assert res.exit_code == 0, res.output
    (row,) = pq.read_table(out / "results.parquet").to_pylist()
    assert not row["image_uri"].startswith(("/", "file:"))
    moved = tmp_path / "moved"
    out.rename(moved)
    assert nst("report", str(moved)).exit_code == 0
    copy = tmp_path / "copy"
    shutil.copytree(moved, copy)
    shutil.rmtree(moved)  # the copy must not lean on the original
    assert nst("report", str(copy)).exit_code == 0
    assert "output missing" not in (copy / "report.html").read_text()
    assert "ok: 1" in nst("status", str(copy)).output


def test_a_changed_input_is_redone_and_counted(ray_cpu, tmp_path):
    c, s = write_images(tmp_path, 2, "f")
    res, out = run_manifest(tmp_path, [{"content_uri": c, "style_uri": s}])
    assert res.exit_code == 0, res.output
    (record,) = committed_records(out).values()
    assert {i["uri"] for i in record["inputs"]} == {c, s}
    first = next(out.glob("jobs/*/image.png")).read_bytes()
    Path(c).write_bytes(png_bytes(seed=99))  # same URI, new bytes
    os.utime(c, (time.time() + 5, time.time() + 5))
    plan = nst("plan", str(tmp_path / "m.parquet"), "--out", str(out))
    assert "1 to run (input changed 1)" in plan.output
    again, _ = run_manifest(tmp_path, [{"content_uri": c, "style_uri": s}])
    assert "input changed 1" in again.output
    assert next(out.glob("jobs/*/image.png")).read_bytes() != first
    third, _ = run_manifest(tmp_path, [{"content_uri": c, "style_uri": s}])
    assert "1 already done" in third.output


def test_changed_inputs_on_s3_are_found_from_one_listing_of_their_folder(
    ray_cpu, s3_endpoint, tmp_path
):
    opts = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    fs = s3fs.S3FileSystem(**opts)
    fs.mkdir("nst-fp")
    for name, seed in (("c.png", 1), ("s.png", 2), ("other.png", 3)):
        fs.pipe(f"nst-fp/in/{name}", png_bytes(seed=seed))
    rows = [{"content_uri": "s3://nst-fp/in/c.png", "style_uri": "s3://nst-fp/in/s.png"}]
    so = ["--storage-options", json.dumps(opts)]
    pq.write_table(table(rows), tmp_path / "m.parquet")
    out = "s3://nst-fp/out"
    assert (
        nst("run", str(tmp_path / "m.parquet"), "--out", out, "--no-progress", *so).exit_code == 0
    )
    calls = []
    assert storage.filesystem("s3://nst-fp/in", opts)[0] is fs  # fsspec's instance cache
    real_ls, real_info = fs.ls, fs.info

    def counting_ls(path, *a, **k):
        calls.append(("ls", path))
        return real_ls(path, *a, **k)

    def counting_info(path, *a, **k):
        calls.append(("info", path))
        return real_info(path, *a, **k)

    fs.pipe("nst-fp/in/s.png", png_bytes(seed=7))
    fs.ls, fs.info = counting_ls, counting_info
    try:
        plan = nst("plan", str(tmp_path / "m.parquet"), "--out", out, *so)
    finally:
        fs.ls, fs.info = real_ls, real_info
    assert "1 to run (input changed 1)" in plan.output, plan.output
    on_inputs = [c for c in calls if c[1].startswith("nst-fp/in")]
    assert on_inputs == [("ls", "nst-fp/in")]  # both fingerprints from one listing, no HEADs


def test_a_rerun_with_failed_jobs_points_at_retry_failed(ray_cpu, tmp_path):
    (s,) = write_images(tmp_path, 1, "r")
    rows = [{"content_uri": str(tmp_path / "missing.png"), "style_uri": s}]
    first, _ = run_manifest(tmp_path, rows)
    assert "failed 1" in first.output
    again, _ = run_manifest(tmp_path, rows)
    assert "add --retry-failed" in again.output


@pytest.mark.usefixtures("ray_cpu")
def test_a_finished_run_never_starts_ray_and_a_resume_does(tmp_path, monkeypatch):
    from pipeline.run import scheduler

    c = write_images(tmp_path / "c", 2, "c")
    s = write_images(tmp_path / "s", 1, "s")[0]
    rows = [{"content_uri": c[0], "style_uri": s}]
    result, out = run_manifest(tmp_path, rows)
    assert result.exit_code == 0, result.output
    started: list[bool] = []
    real = scheduler.init_ray
    fake = lambda *a, **k: (started.append(True), real(*a, **k))  # noqa: E731
    monkeypatch.setattr(scheduler, "init_ray", fake)
    again = nst("run", tmp_path / "m.parquet", "--out", out, "--no-progress")
    assert again.exit_code == 0 and "0 to run" in again.output and started == []
    result, _ = run_manifest(tmp_path, [*rows, {"content_uri": c[1], "style_uri": s}])
    assert result.exit_code == 0 and "1 to run (new 1)" in result.output and started == [True]
