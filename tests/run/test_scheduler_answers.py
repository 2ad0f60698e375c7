"""What a scheduler or an operator reads after a run is true: the summary exists for every
exit, a failed redo leaves no stale result, inputs are checked before compute, and the
terminal output stays readable when piped."""

import json
import os
import subprocess
import time

import pyarrow.parquet as pq
import pytest
from helpers import nst, png_bytes, run_manifest, table, write_images

from pipeline.run import lease
from pipeline.store import storage


def _summary(path) -> dict:
    return json.loads(path.read_text())


def test_the_summary_is_written_on_an_error_exit_and_replaces_the_last_runs(tmp_path):
    summary = tmp_path / "s.json"
    summary.write_text(json.dumps({"exit_code": 0}))  # a previous run's success
    r = nst("run", tmp_path / "missing.parquet", "--out", tmp_path / "o", "--summary-json",
            summary)  # fmt: skip
    assert r.exit_code == 1
    doc = _summary(summary)
    assert doc["exit_code"] == 1 and "missing.parquet" in doc["error"] and doc["total"] is None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".summary-")]  # no temp left


def test_the_summary_says_exit_4_when_another_run_holds_the_output(tmp_path):
    c, s = write_images(tmp_path, 2, "i")
    pq.write_table(table([{"content_uri": c, "style_uri": s}]), tmp_path / "m.parquet")
    out, summary = tmp_path / "o", tmp_path / "s.json"
    with lease.held(storage.Store(str(out))):
        r = nst("run", tmp_path / "m.parquet", "--out", out, "--summary-json", summary)
    assert r.exit_code == 4
    doc = _summary(summary)
    assert doc["exit_code"] == 4 and "another nst run is writing" in doc["error"]


@pytest.mark.usefixtures("ray_cpu")
def test_the_summary_of_a_strict_run_with_a_failure_says_3(tmp_path):
    c, s = write_images(tmp_path, 2, "i")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    rows = [{"content_uri": c, "style_uri": s}, {"content_uri": str(bad), "style_uri": s}]
    summary = tmp_path / "s.json"
    r, _ = run_manifest(tmp_path, rows, "--strict", "--summary-json", summary)
    assert r.exit_code == 3
    doc = _summary(summary)
    assert doc["exit_code"] == 3 and doc["status"] == {"failed": 1, "ok": 1}
    assert doc["error"] is None


@pytest.mark.usefixtures("ray_cpu")
def test_a_failed_redo_removes_the_previous_inputs_image_and_snapshots(tmp_path):
    c, s = write_images(tmp_path, 2, "i")
    rows = [{"content_uri": c, "style_uri": s, "save_every": 1}]
    r, out = run_manifest(tmp_path, rows)
    assert r.exit_code == 0, r.output
    (job,) = (out / "jobs").iterdir()
    assert (job / "image.png").exists() and list((job / "snapshots").iterdir())
    with open(c, "wb") as f:  # the input changes into something that cannot be decoded
        f.write(png_bytes()[:30])
    os.utime(c, (1e9, 1e9))
    again = nst("run", tmp_path / "m.parquet", "--out", out, "--no-progress")
    assert again.exit_code == 0 and "input changed 1" in again.output
    row = pq.read_table(out / "results.parquet").to_pylist()[0]
    assert row["status"] == "failed" and row.get("image_uri") is None
    assert not (job / "image.png").exists() and not list((job / "snapshots").glob("*"))


def test_validate_checks_a_start_image_like_any_input(tmp_path):
    c, s = write_images(tmp_path, 2, "i")
    start = tmp_path / "start.png"
    start.write_bytes(b"GIF89a not really")
    rows = [{"content_uri": c, "style_uri": s, "init": str(start)}]
    pq.write_table(table(rows), tmp_path / "m.parquet")
    r = nst("validate", tmp_path / "m.parquet")
    assert r.exit_code == 1 and "start.png" in r.output and "rows [0]" in r.output


def test_validate_loads_a_refinement_model_and_names_a_bad_one(tmp_path):
    c, s = write_images(tmp_path, 2, "i")
    rows = [{"content_uri": c, "style_uri": s, "init": f"model:{tmp_path / 'none.pt'}"}]
    pq.write_table(table(rows), tmp_path / "m.parquet")
    r = nst("validate", tmp_path / "m.parquet")
    assert r.exit_code == 1 and "init model" in r.output and "none.pt: not found" in r.output


def test_params_piped_is_one_aligned_line_per_parameter():
    from nst_ops.spec import JobSpec

    r = nst("params", env={"COLUMNS": "80"})
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    names = [ln.split()[0] for ln in lines]
    assert names[: len(JobSpec.field_names()) + 2] == ["name", *JobSpec.field_names(), "preset"]
    assert not any(ch in r.output for ch in "┃│┏━")  # no box drawn into a pipe
    starts = {ln.index(ln.split()[1]) for ln in lines[: len(JobSpec.field_names()) + 2]}
    assert len(starts) == 1  # the type column is aligned


def _strip(tmp_path, w: int = 400, h: int = 8):
    from PIL import Image

    p = tmp_path / "strip.png"
    Image.new("RGB", (w, h), (120, 30, 200)).save(p)
    return str(p)


def test_validate_refuses_a_size_too_small_for_the_layers_with_the_size_that_works(tmp_path):
    s = write_images(tmp_path, 1, "s")[0]
    rows = [{"content_uri": _strip(tmp_path), "style_uri": s, "size": 64,
             "style_layers": ["relu1_1", "relu3_1"]}]  # fmt: skip
    pq.write_table(table(rows), tmp_path / "m.parquet")
    r = nst("validate", tmp_path / "m.parquet")
    assert r.exit_code == 1
    assert "rows [0]" in r.output and "too small for relu3_1" in r.output
    assert "the smallest size that works is 175" in r.output  # round(175 * 8 / 400) = 4 px


def test_transfer_with_a_size_too_small_is_one_line_in_our_words(tmp_path):
    s = write_images(tmp_path, 1, "s")[0]
    r = nst("transfer", _strip(tmp_path), s, tmp_path / "o.png", "--set", "weights=random:0",
            "--set", "size=64", "--set", "style_layers=relu3_1", "--set",
            "content_layers=relu3_1")  # fmt: skip
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "too small for relu3_1" in r.output and "Output size is too small" not in r.output


def test_a_size_too_small_even_for_a_square_is_refused_by_plan(tmp_path):
    c, s = write_images(tmp_path, 2, "i")
    rows = [{"content_uri": c, "style_uri": s, "size": 16, "style_layers": ["pool5"],
             "weights": "random:0"}]  # fmt: skip
    pq.write_table(table(rows), tmp_path / "m.parquet")
    r = nst("plan", tmp_path / "m.parquet")
    assert r.exit_code == 1 and "row 0: size 16 is too small for pool5" in r.output
    assert "the smallest size that works is 32" in r.output


@pytest.mark.usefixtures("ray_cpu")
def test_corrupt_and_stale_run_files_are_named_or_rebuilt_and_status_agrees_with_plan(tmp_path):
    cs = write_images(tmp_path / "c", 4, "c")
    s = write_images(tmp_path / "s", 1, "s")[0]
    r, out = run_manifest(tmp_path, [{"content_uri": c, "style_uri": s} for c in cs])
    assert r.exit_code == 0, r.output
    m = tmp_path / "m.parquet"

    (out / "results.parquet").write_bytes(b"")  # 0 bytes: report and status both cope
    assert nst("report", out).exit_code == 0
    assert "ok: 4" in nst("status", out).output

    gone = sorted((out / "jobs").iterdir())[0] / "result.parquet"
    gone.unlink()  # a job un-committed behind results.parquet's back: the table is stale
    nst("run", m, "--out", out, "--no-progress", "--force")  # rewrites every derived file
    gone.unlink()
    status, plan = nst("status", out).output, nst("plan", m, "--out", out).output
    assert "ok: 3" in status and "pending: 1" in status
    assert "1 to run (new 1)" in plan

    (out / "jobs.parquet").write_bytes(b"garbage")  # results.parquet still knows the edition
    assert "ok: 3" in nst("status", out).output
    again = nst("run", m, "--out", out, "--no-progress")
    assert again.exit_code == 0 and "1 to run (new 1)" in again.output
    assert pq.read_metadata(out / "jobs.parquet").num_rows == 4  # rebuilt

    (out / "jobs.parquet").write_bytes(b"garbage")
    (out / "results.parquet").write_bytes(b"garbage")
    lost = nst("run", m, "--out", out, "--no-progress")
    assert lost.exit_code == 1 and "jobs.parquet is unreadable" in lost.output
    assert "--defaults" in lost.output and "Traceback" not in lost.output
    fixed = nst("run", m, "--out", out, "--no-progress", "--defaults", "3")  # the latest
    assert fixed.exit_code == 0 and "0 to run" in fixed.output


def test_an_embedded_run_removes_its_ray_session_folder(tmp_path):
    import glob
    import tempfile

    from helpers import nst_cmd

    c, s = write_images(tmp_path, 2, "i")
    pq.write_table(table([{"content_uri": c, "style_uri": s}]), tmp_path / "m.parquet")
    own = tempfile.mkdtemp(prefix="nst-ray-")  # its own Ray temp folder: other Rays stay out
    env = {**os.environ, "RAY_worker_niceness": "0", "RAY_TMPDIR": own}
    cmd = nst_cmd("run", tmp_path / "m.parquet", "--out", tmp_path / "o", "--no-progress")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "o" / "results.parquet").exists()
    assert glob.glob(f"{own}/ray/session_2*") == []  # its own session is gone


def _watched_session(driver_pid: int) -> str:
    """The session folder of the embedded Ray that ``driver_pid`` started, from its watchdog's
    command line (`ray_watchdog DRIVER_PID SESSION_DIR`): found by PID, never as "the one new
    folder" (another Ray on the machine may start a session meanwhile)."""
    import psutil

    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "pipeline.run.ray_watchdog" in cmd and cmd[-2:-1] == [str(driver_pid)]:
            return cmd[-1]
    raise AssertionError(f"no watchdog for driver {driver_pid}")


def test_a_sigkilled_drivers_embedded_ray_and_session_folder_go_with_it(tmp_path):
    import signal
    import tempfile

    from helpers import nst_cmd

    from pipeline.run.ray_watchdog import session_processes

    cs = write_images(tmp_path / "c", 6, "c")
    s = write_images(tmp_path / "s", 1, "s")[0]
    rows = [{"content_uri": c, "style_uri": s} for c in cs]
    pq.write_table(table(rows, iterations=300, size=32), tmp_path / "m.parquet")
    env = {**os.environ, "RAY_worker_niceness": "0"}
    cmd = nst_cmd("run", tmp_path / "m.parquet", "--out", tmp_path / "o", "--no-progress")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (tmp_path / "o" / "jobs.parquet").exists():  # Ray is up, jobs are submitted
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    session = _watched_session(proc.pid)  # this driver's own, whatever else runs Ray here
    assert session.startswith(tempfile.gettempdir()) and session_processes(session)
    proc.send_signal(signal.SIGKILL)  # the driver alone
    proc.wait()
    deadline = time.time() + 45  # Ray's own agents lingered ~90 s
    while (session_processes(session) or os.path.exists(session)) and time.time() < deadline:
        time.sleep(0.2)
    assert not session_processes(session), "Ray processes outlived the driver"
    assert not os.path.exists(session)


def test_summary_json_tells_a_scheduler_what_ran_and_what_failed(ray_cpu, tmp_path):
    (s,) = write_images(tmp_path, 1, "q")
    (c,) = write_images(tmp_path / "c", 1, "q")
    rows = [{"content_uri": c, "style_uri": s}, {"content_uri": "nope.png", "style_uri": s}]
    summary = tmp_path / "summary.json"
    res, _ = run_manifest(tmp_path, rows, "--summary-json", str(summary), "--strict")
    assert res.exit_code == 3
    doc = json.loads(summary.read_text())
    assert doc["ran"] == {"new": 2} and doc["status"] == {"failed": 1, "ok": 1}
    assert len(doc["failed_jobs"]) == 1 and doc["exit_code"] == 3
    storage.Store(str(tmp_path / "o")).job_files()  # the run is readable back
