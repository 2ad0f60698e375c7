"""Faults and hostile input during real runs: nothing lost, nothing broken passed off as done."""

import io
import json
import os
import signal
import subprocess
import threading
import time

import psutil
import pyarrow.parquet as pq
import pytest
import torch
from helpers import nst, nst_cmd, png_bytes, run_manifest, table, write_images
from PIL import Image

from nst_ops.vgg import VGGFeatures
from pipeline.jobs.grid import expand
from pipeline.run.options import RunOptions
from pipeline.run.scheduler import Resources, run_jobs


def kill_first_running_task(killed: list, stop: threading.Event) -> None:
    """SIGKILL the first Ray worker seen executing a job (its process title is ray::_task),
    among this test process's own descendants only (never another Ray on the machine)."""
    me = psutil.Process()
    while not stop.is_set() and not killed:
        for p in me.children(recursive=True):
            try:
                cmd = p.cmdline()
            except psutil.Error:
                continue
            if cmd and cmd[0].startswith("ray::_task"):
                time.sleep(0.5)  # let it get into the optimisation loop
                p.send_signal(signal.SIGKILL)
                killed.append(p.pid)
                return
        time.sleep(0.05)


def run_killing_one_worker(jobs, out, max_retries: int, cpus_per_job: float = 1.0):
    """run_jobs while the first running task's worker is SIGKILLed; returns (summary, killed)."""
    killed, stop = [], threading.Event()
    killer = threading.Thread(target=kill_first_running_task, args=(killed, stop))
    killer.start()
    res = Resources(max_retries=max_retries, cpus_per_job=cpus_per_job)
    try:
        summary = run_jobs(jobs, RunOptions(out=str(out)), res, progress=False)
    finally:
        stop.set()
        killer.join()
    assert killed, "no running task was found to kill"
    return summary, killed


def test_a_worker_killed_mid_job_is_retried_and_the_job_completes(ray_cpu, tmp_path):
    c, s = write_images(tmp_path, 2, "k")
    jobs = expand(
        table(
            [{"content_uri": c, "style_uri": s}],
            optimizer="adam",
            size=48,
            iterations=400,
            log_every=100,
        )
    )
    summary, killed = run_killing_one_worker(jobs, tmp_path / "out", max_retries=2)
    (row,) = summary.rows
    assert row["status"] == "ok" and row["committed"] and row["iterations_run"] == 400
    print(f"\nworker pid {killed[0]} SIGKILLed mid-job; job retried and completed")


def six_job_run(tmp_path, optimizer: str) -> tuple[list[str], object]:
    """A 6-job manifest (one task each) and the `nst run` command line for it, one CPU."""
    contents = write_images(tmp_path / "c", 6, "c")
    (style,) = write_images(tmp_path / "s", 1, "s")
    # two quick jobs, then four that take seconds each: a kill after two commits always lands
    # mid-run, however busy the machine (one CPU runs them in order)
    rows = [
        {"content_uri": c, "style_uri": style, "iterations": 150 if i < 2 else 1500}
        for i, c in enumerate(contents)
    ]
    pq.write_table(table(rows, optimizer=optimizer, size=32), tmp_path / "m.parquet")
    out = tmp_path / "out"
    cmd = nst_cmd("run", tmp_path / "m.parquet", "--out", out, "--num-cpus", "1", "--no-progress")
    return cmd, out


def wait_for_commits(out, n: int, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while len(list(out.glob("jobs/*/result.parquet"))) < n and time.time() < deadline:
        time.sleep(0.2)


def test_a_killed_driver_resumes_with_only_the_missing_jobs(tmp_path):
    cmd, out = six_job_run(tmp_path, "adam")
    proc = subprocess.Popen(
        cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for_commits(out, 2)
    family = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its embedded Ray, mid-run
    for child in family:  # Ray's own daemons and workers too: a crash of the whole node
        try:
            child.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait()
    psutil.wait_procs(family, timeout=10)
    before = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("jobs/*/result.parquet")}
    assert len(before) == 2, f"{len(before)} jobs committed before the kill"

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"6 jobs ({len(before)} already done)" in again.stdout
    after = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("jobs/*/result.parquet")}
    assert len(after) == 6
    assert all(after[j] == t for j, t in before.items())  # none redone
    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows)  # none missing
    print(f"\ndriver killed after {len(before)}/6 jobs; rerun ran {6 - len(before)}, redid 0")


def _save(img: Image.Image, path, fmt="PNG") -> str:
    img.save(path, format=fmt)
    return str(path)


def test_bad_input_catalogue_fails_each_job_alone_with_a_clear_message(ray_cpu, tmp_path):
    d = tmp_path
    good = write_images(d, 1, "good")[0]
    rgb = Image.open(io.BytesIO(png_bytes(24, 24)))
    a16 = Image.frombytes(
        "I;16", (24, 24), (torch.arange(576, dtype=torch.int16) * 100).numpy().tobytes()
    )
    ok_inputs = {
        "gray": _save(rgb.convert("L"), d / "gray.png"),
        "cmyk": _save(rgb.convert("CMYK"), d / "cmyk.jpg", "JPEG"),
        "alpha": _save(rgb.convert("RGBA"), d / "alpha.png"),
        "deep16": _save(a16, d / "deep16.png"),
    }
    (d / "truncated.png").write_bytes(png_bytes(64, 64)[:250])
    (d / "text.png").write_text("not an image")
    (d / "empty.png").write_bytes(b"")
    _save(Image.new("L", (400, 400)), d / "bomb.png")
    sd = {
        f"features.{k}": v
        for k, v in VGGFeatures("vgg19", ["relu2_1"], seed=0).features.state_dict().items()
    }
    sd["features.5.weight"] = torch.zeros(1, 1, 1, 1)
    torch.save(sd, d / "wrongshape.pth")
    (d / "evil.pth").write_bytes(b"\x80\x04cos\nsystem\n(S'touch /tmp/nst_evil'\ntR.")
    bad_inputs = {
        "truncated": (str(d / "truncated.png"), "corrupt or truncated image"),
        "text": (str(d / "text.png"), "not an image file"),
        "empty": (str(d / "empty.png"), "empty file (0 bytes)"),
        "bomb": (str(d / "bomb.png"), "above the limit of 100,000"),
        "missing": (str(d / "nowhere.png"), "input not found"),
    }
    rows = [
        {"content_uri": u, "style_uri": good, "job_name": n, "weights": "random:0"}
        for n, u in ok_inputs.items()
    ]
    rows += [
        {"content_uri": u, "style_uri": good, "job_name": n, "weights": "random:0"}
        for n, (u, _) in bad_inputs.items()
    ]
    rows += [
        {
            "content_uri": good,
            "style_uri": good,
            "job_name": "wrongshape",
            "weights": str(d / "wrongshape.pth"),
        },
        {
            "content_uri": good,
            "style_uri": good,
            "job_name": "evil",
            "weights": str(d / "evil.pth"),
        },
    ]
    pq.write_table(table(rows, optimizer="adam"), d / "m.parquet")
    res = nst("run", d / "m.parquet", "--out", d / "out", "--no-progress", "--max-pixels", "100000")
    assert res.exit_code == 0, res.output
    by_name = {r["job_name"]: r for r in pq.read_table(d / "out" / "results.parquet").to_pylist()}
    for n in ok_inputs:
        assert by_name[n]["status"] == "ok", (n, by_name[n]["error"])
    for n, (uri, msg) in bad_inputs.items():
        assert (
            by_name[n]["status"] == "failed"
            and uri in by_name[n]["error"]
            and msg in by_name[n]["error"]
        )
    assert "features.5.weight (conv2_1) has shape (1, 1, 1, 1)" in by_name["wrongshape"]["error"]
    assert "holds Python objects, not only tensors" in by_name["evil"]["error"]
    assert not os.path.exists("/tmp/nst_evil")
    assert all(by_name[n]["committed"] for n in by_name)
    print(
        f"\nbad-input catalogue: {len(ok_inputs)} converted ok, "
        f"{len(bad_inputs) + 2} refused with their messages, run not interrupted"
    )


def test_an_unreadable_bucket_fails_the_job_not_the_run(ray_cpu, s3_endpoint, tmp_path):
    good = write_images(tmp_path, 1, "g")[0]
    rows = [
        {"content_uri": "s3://no-such-bucket/x.png", "style_uri": good},
        {"content_uri": good, "style_uri": good},
    ]
    opts = json.dumps({"endpoint_url": s3_endpoint})
    res, out = run_manifest(tmp_path, rows, "--storage-options", opts, optimizer="adam")
    assert res.exit_code == 0, res.output
    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert sorted(r["status"] for r in rows) == ["failed", "ok"]
    bad = next(r for r in rows if r["status"] == "failed")
    assert bad["error"].startswith("s3://no-such-bucket/x.png:")


def test_secrets_in_storage_options_never_reach_outputs(ray_cpu, s3_endpoint, tmp_path):
    good = write_images(tmp_path, 1, "g")[0]
    secret = "SECRET-KEY-123"
    opts = json.dumps({"key": "testing", "secret": secret, "endpoint_url": s3_endpoint})
    rows = [{"content_uri": good, "style_uri": good}]
    res, out = run_manifest(tmp_path, rows, "--storage-options", opts, optimizer="adam")
    assert res.exit_code == 0 and secret not in res.output
    for path in out.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [1, 8])
def test_500_tiny_jobs_all_accounted_for_with_flat_driver_memory(ray_cpu, tmp_path, batch_size):
    c, s = write_images(tmp_path, 2, "l")
    t = table(
        [{"content_uri": c, "style_uri": s, "seed": list(range(500))}],
        optimizer="adam",
        size=16,
        iterations=2,
        log_every=1,
    )
    jobs = expand(t)
    me = psutil.Process()
    rss = []
    started = time.time()
    summary = run_jobs(
        jobs,
        RunOptions(out=str(tmp_path / "out")),
        Resources(batch_size=batch_size),
        progress=False,
        on_result=lambda r: rss.append(me.memory_info().rss),
    )
    seconds = time.time() - started
    assert len(jobs) == 500 and len(summary.rows) == 500
    assert {r["job_id"] for r in summary.rows} == {j.id for j in jobs}
    assert all(r["status"] == "ok" and r["committed"] for r in summary.rows)
    growth = (max(rss[250:]) - rss[100]) / 2**20
    print(
        f"\nload: 500 jobs ({500 // batch_size} tasks) in {seconds:.1f}s = {500 / seconds:.1f} "
        f"jobs/s; driver peak RSS "
        f"{max(rss) / 2**20:.0f} MiB, growth jobs 100->500 {growth:.1f} MiB"
    )
    assert growth < 64


def test_a_diverging_job_is_recorded_as_diverged_with_its_best_image(ray_cpu, tmp_path):
    c, s = write_images(tmp_path, 2, "d")
    res, out = run_manifest(
        tmp_path,
        [{"content_uri": c, "style_uri": s}],
        "--strict",
        optimizer="sgd",
        lr=1e4,
        init="content",
        iterations=20,
        style_weight=1e3,
    )
    assert res.exit_code == 3  # --strict: a diverged job makes the run exit non-zero
    (row,) = pq.read_table(out / "results.parquet").to_pylist()
    assert row["status"] == "diverged" and row["diverged_at"] >= 2 and "exceeds" in row["error"]
    assert os.path.exists(out / row["image_uri"])
    assert row["final_total"] < 1.0  # the kept image is the best one, before the blow-up


def test_ctrl_c_stops_cleanly_keeping_completed_jobs(tmp_path):
    """No race with the machine's speed: the first job is short, the other five cannot finish
    by themselves (10^6 Adam steps: L-BFGS without line search could blow up and end one as
    diverged, a committed job), and one CPU runs them in order, so Ctrl-C always lands
    mid-run."""
    contents = write_images(tmp_path / "c", 6, "c")
    (style,) = write_images(tmp_path / "s", 1, "s")
    rows = [
        {"content_uri": c, "style_uri": style, "iterations": 20 if i == 0 else 10**6}
        for i, c in enumerate(contents)
    ]
    pq.write_table(table(rows, optimizer="adam", size=32), tmp_path / "m.parquet")
    out = tmp_path / "out"
    cmd = nst_cmd("run", tmp_path / "m.parquet")
    cmd += ["--out", str(out), "--num-cpus", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_commits(out, 1)
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "run again to resume" in err
    committed = {p.parent.name for p in out.glob("jobs/*/result.parquet")}
    rows = pq.read_table(out / "results.parquet").to_pylist()
    statuses = [(r["job_id"], r["status"], r.get("error")) for r in rows]
    assert len(rows) == 6 and {r["job_id"] for r in rows if r["status"] == "ok"} == committed, (
        statuses
    )
    assert len(committed) == 1, statuses
    plan = nst("plan", tmp_path / "m.parquet", "--out", out)  # what a rerun would do
    assert "5 to run (new 5), 1 already done" in plan.output


def test_a_job_whose_worker_keeps_dying_is_recorded_failed_and_the_run_goes_on(ray_cpu, tmp_path):
    """No race with the machine's speed: the first job cannot finish by itself (10^6
    iterations), and each task takes both CPUs, so it is the only task running when the killer
    looks; the second job starts only after the first is given up on."""
    (c1, c2), (s,) = write_images(tmp_path / "c", 2, "c"), write_images(tmp_path / "s", 1, "s")
    endless = {"content_uri": c1, "style_uri": s, "iterations": 10**6}
    short = {"content_uri": c2, "style_uri": s, "iterations": 20}
    jobs = expand(table([endless, short], optimizer="adam", size=16, log_every=100))
    summary, _ = run_killing_one_worker(jobs, tmp_path / "out", max_retries=0, cpus_per_job=2)
    by_status = {r["status"]: r for r in summary.rows}
    assert [r["status"] for r in summary.rows] == ["failed", "ok"]
    dead = by_status["failed"]
    assert dead["committed"] is False and "Error" in dead["error"]  # Ray's error type, named
    assert pq.read_table(tmp_path / "out" / "results.parquet").num_rows == 2
