"""Trusting the outputs: nothing lost, nothing stale, no misleading answer (issue #10's cases)."""

import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import s3fs
import torch
from helpers import committed_records, nst, png_bytes, run_manifest, table, write_images

from pipeline.cli import QUICK_START
from pipeline.jobs.manifest import read_manifest
from pipeline.run import lease
from pipeline.store import storage

REPO = Path(__file__).resolve().parent.parent


def one_job(tmp_path, **common):
    """Run one tiny job into tmp_path/o; returns (result, out, rows) (rows: to run it again)."""
    c, s = write_images(tmp_path, 2, "t")
    rows = [{"content_uri": c, "style_uri": s}]
    return (*run_manifest(tmp_path, rows, **common), rows)


# 1 ----------------------------------------------------------------------------------------------
def test_a_bad_make_manifest_leaves_the_existing_manifest_untouched(tmp_path):
    write_images(tmp_path / "c", 1, "c"), write_images(tmp_path / "s", 1, "s")
    dest = tmp_path / "m.parquet"
    base = ["make-manifest", str(dest), "--content", str(tmp_path / "c")]
    base += ["--style", str(tmp_path / "s"), "--set", "weights=random:0"]
    assert nst(*base).exit_code == 0
    good = dest.read_bytes()
    bad = nst(*base, "--set", "size=0")
    assert bad.exit_code == 1 and "size must be an integer" in bad.output
    assert dest.read_bytes() == good
    grid = tmp_path / "g.yaml"
    grid.write_text("style_weight: []\n")
    assert nst(*base, "--grid", str(grid)).exit_code == 1
    assert dest.read_bytes() == good
    assert not list(tmp_path.glob("m.parquet.tmp*"))


# 2 ----------------------------------------------------------------------------------------------
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


# 3 ----------------------------------------------------------------------------------------------
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


# 4 ----------------------------------------------------------------------------------------------
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


# 5 ----------------------------------------------------------------------------------------------
def write_lease(out: Path, pid: int, heartbeat: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    doc = {"owner": "x", "host": platform.node(), "pid": pid, "heartbeat": heartbeat}
    (out / "_LEASE").write_text(json.dumps({**doc, "started": heartbeat}))


def test_a_second_run_on_a_live_runs_output_is_refused(ray_cpu, tmp_path):
    out = tmp_path / "o"
    write_lease(out, os.getpid(), time.time())  # this test process: alive, fresh heartbeat
    res, _, _ = one_job(tmp_path)
    assert res.exit_code == 4
    assert "another nst run is writing to" in res.output and f"pid {os.getpid()}" in res.output
    assert not list(out.glob("jobs/*"))


def test_a_stale_lease_is_taken_over_and_released_at_the_end(ray_cpu, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                          capture_output=True).stdout  # fmt: skip
    write_lease(tmp_path / "o", int(dead), time.time())
    res, out, _ = one_job(tmp_path)
    assert res.exit_code == 0, res.output
    assert not (out / "_LEASE").exists()
    write_lease(out, os.getpid(), time.time() - lease.TTL_S - 1)  # alive but silent too long
    assert lease.is_stale(json.loads((out / "_LEASE").read_text()))


# 6 ----------------------------------------------------------------------------------------------
def test_rows_differing_only_in_name_run_once_keeping_every_name_and_tag(tmp_path):
    c, s = write_images(tmp_path, 2, "n")
    rows = [
        {"content_uri": c, "style_uri": s, "job_name": "first", "tag_exp": "a"},
        {"content_uri": c, "style_uri": s, "job_name": "second", "tag_exp": "b"},
    ]
    pq.write_table(table(rows), tmp_path / "m.parquet")
    res = nst("plan", str(tmp_path / "m.parquet"))
    assert "1 jobs" in res.output and "differ only in job_name or tags" in res.output
    from pipeline.jobs.grid import expand

    (job,) = expand(read_manifest(str(tmp_path / "m.parquet")))
    assert job.job_name == "first | second" and dict(job.tags)["tag_exp"] == ["a", "b"]


# 7 ----------------------------------------------------------------------------------------------
def test_status_of_something_that_is_not_a_run_says_so(tmp_path):
    res = nst("status", str(tmp_path / "nowhere"))
    assert res.exit_code == 1 and "not a run" in res.output
    (tmp_path / "folder").mkdir()
    assert nst("status", str(tmp_path / "folder")).exit_code == 1


# 8 ----------------------------------------------------------------------------------------------
def test_weights_that_are_not_a_vgg_state_dict_are_named_for_what_they_are(tmp_path):
    from nst_ops.vgg import VGGFeatures, WeightsError
    from pipeline.run.weights import load_state_dict

    text = tmp_path / "w.txt"
    text.write_text("hello\n")
    with pytest.raises(WeightsError, match="not a PyTorch state dict file"):
        load_state_dict(str(text))
    resnet = {"conv1.weight": torch.zeros(64, 3, 7, 7), "bn1.weight": torch.zeros(64)}
    with pytest.raises(WeightsError, match="not a VGG16/VGG19 state dict.*conv1.weight"):
        VGGFeatures("vgg19", ["relu1_1"], state_dict=resnet)


def test_validate_loads_each_weights_source_once_and_checks_its_layers(tmp_path):
    c, s = write_images(tmp_path, 2, "w")
    weights = REPO / "manifests" / "weights" / "vgg19_tv_features_conv1_1-conv3_1.pth"
    rows = [{"content_uri": c, "style_uri": s, "weights": str(weights)}]
    pq.write_table(table(rows), tmp_path / "ok.parquet")
    ok = nst("validate", str(tmp_path / "ok.parquet"))
    assert ok.exit_code == 0 and "1 weights source(s) fit" in ok.output
    deep = [{**rows[0], "style_layers": ["relu1_1", "relu4_1"]}]
    pq.write_table(table(deep), tmp_path / "deep.parquet")
    bad = nst("validate", str(tmp_path / "deep.parquet"))
    assert bad.exit_code == 1 and "weights lack layer conv3_2" in bad.output


# 9 ----------------------------------------------------------------------------------------------
def test_set_refuses_empty_values_and_suggests_close_names(tmp_path):
    args = ["transfer", "c.png", "s.png", str(tmp_path / "o.png")]
    empty = nst(*args, "--set", "optimizer=")
    assert empty.exit_code == 1 and "--set optimizer=: empty value" in empty.output
    typo = nst(*args, "--set", "sizee=32")
    assert typo.exit_code == 1 and "did you mean 'size'?" in typo.output


def test_out_pointing_at_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "afile").write_text("x")
    c, s = write_images(tmp_path, 2, "o")
    pq.write_table(table([{"content_uri": c, "style_uri": s}]), tmp_path / "m.parquet")
    res = nst("run", str(tmp_path / "m.parquet"), "--out", str(tmp_path / "afile"))
    assert res.exit_code == 1 and "is a file" in res.output and "Errno" not in res.output


# 10 ---------------------------------------------------------------------------------------------
def test_csv_and_json_lines_manifests_are_read_with_the_same_checks(tmp_path):
    from pipeline.jobs.grid import expand

    c, s = write_images(tmp_path, 2, "m")
    (tmp_path / "m.csv").write_text(
        "content_uri,style_uri,weights,optimizer,style_weight,style_layers\n"
        f'{c},{s},random:0,adam|sgd,"[1e6, 1e7]","relu1_1,relu2_1|relu1_1"\n'
        f"{c},{s},random:0,lbfgs,1e5,relu1_1\n"
    )
    jobs = expand(read_manifest(str(tmp_path / "m.csv")))
    assert len(jobs) == 2 * 2 * 2 + 1
    assert {j.spec.style_layers for j in jobs} == {("relu1_1", "relu2_1"), ("relu1_1",)}
    lines = [
        {"content_uri": c, "style_uri": s, "weights": "random:0", "optimizer": ["adam", "sgd"]},
        {"content_uri": c, "style_uri": s, "weights": "random:0", "optimizer": "lbfgs"},
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in lines))
    assert len(expand(read_manifest(str(tmp_path / "m.jsonl")))) == 3
    (tmp_path / "bad.csv").write_text("content_uri,style_uri,sizee\na,b,3\n")
    with pytest.raises(Exception, match="unknown column 'sizee'; did you mean 'size'"):
        read_manifest(str(tmp_path / "bad.csv"))
    (tmp_path / "m.txt").write_text("content_uri,style_uri\n")
    res = nst("plan", str(tmp_path / "m.txt"))
    assert res.exit_code == 1 and "CSV / JSON lines named .csv / .jsonl" in res.output


# 11 ---------------------------------------------------------------------------------------------
def test_a_rerun_with_failed_jobs_points_at_retry_failed(ray_cpu, tmp_path):
    (s,) = write_images(tmp_path, 1, "r")
    rows = [{"content_uri": str(tmp_path / "missing.png"), "style_uri": s}]
    first, _ = run_manifest(tmp_path, rows)
    assert "failed 1" in first.output
    again, _ = run_manifest(tmp_path, rows)
    assert "add --retry-failed" in again.output


# 12, 13, 16 -------------------------------------------------------------------------------------
def test_nst_params_lists_every_parameter_with_its_meaning():
    from nst_ops.spec import PARAM_HELP, JobSpec

    assert set(PARAM_HELP) == set(JobSpec.field_names())
    res = nst("params", env={"COLUMNS": "200"})
    assert res.exit_code == 0
    for name in JobSpec.field_names():
        assert name in res.output
    assert "init=content" in res.output


@pytest.mark.parametrize(
    "command", [[], ["make-manifest"], ["plan"], ["validate"], ["run"], ["status"], ["transfer"],
                ["report"], ["params"]]
)  # fmt: skip
def test_every_help_text_renders_its_brackets(command):
    res = nst(*command, "--help", env={"COLUMNS": "200"})
    assert res.exit_code == 0
    if command == ["make-manifest"]:
        assert "NAME: value or [values]" in res.output


def test_the_quick_start_in_help_works_offline_from_a_clone(tmp_path):
    """The make-manifest half of `nst --help`'s quick start, run from the repository root as
    written, gives a manifest whose inputs and weights `nst validate` accepts offline."""
    assert " ".join(QUICK_START.split()) in " ".join(nst("--help").output.split())
    make = shlex.split(QUICK_START.split("&&")[0])
    assert make[:2] == ["nst", "make-manifest"]
    dest = tmp_path / "m.parquet"
    args = [a if a != "m.parquet" else str(dest) for a in make[1:]]
    old = os.getcwd()
    os.chdir(REPO)
    try:
        assert nst(*args).exit_code == 0
        res = nst("validate", str(dest))
    finally:
        os.chdir(old)
    assert res.exit_code == 0 and "weights source(s) fit" in res.output, res.output


# 14, 15 -----------------------------------------------------------------------------------------
def test_a_run_without_a_terminal_prints_plain_progress_and_no_ray_banner(tmp_path):
    c, s = write_images(tmp_path, 2, "p")
    pq.write_table(table([{"content_uri": c, "style_uri": s}]), tmp_path / "m.parquet")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [sys.executable, "-m", "pipeline.cli", "run", str(tmp_path / "m.parquet")]
    cmd += ["--out", str(tmp_path / "o"), "--num-cpus", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert "nst run: 1/1 · ok 1" in done.stderr  # a plain line, not a bar cut at 80 columns
    assert "Token authentication" not in done.stderr and "Started a local Ray" not in done.stderr


def test_transfer_ends_with_a_readable_summary(tmp_path):
    c, s = write_images(tmp_path, 2, "x")
    dest = tmp_path / "o.png"
    sets = ["weights=random:0", "size=16", "iterations=2", "content_layers=relu2_1"]
    sets += ["style_layers=relu1_1"]
    res = nst("transfer", c, s, str(dest), *[a for x in sets for a in ("--set", x)])
    assert res.exit_code == 0, res.output
    assert "ok after 2 iterations" in res.output and f"image: {dest}" in res.output
    assert "{" not in res.output  # no raw Python dict


# 17 ---------------------------------------------------------------------------------------------
def test_the_reports_job_table_shows_inputs_and_grid_values(ray_cpu, tmp_path):
    c, s = write_images(tmp_path, 2, "j")
    res, out = run_manifest(
        tmp_path, [{"content_uri": c, "style_uri": s, "style_weight": [1e3, 1e4]}]
    )
    assert res.exit_code == 0, res.output
    assert nst("report", str(out)).exit_code == 0
    html = (out / "report.html").read_text()
    assert "<th>content</th>" in html and "<th>style_weight</th>" in html
    assert Path(c).name in html and "rows: style_weight" in html


# 18 ---------------------------------------------------------------------------------------------
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


def test_light_commands_never_import_torch_or_ray(tmp_path):
    """`nst --help`, `plan`, `validate` (random weights), `status`: no torch, no Ray, so they
    start in well under a second instead of importing 900 MB."""
    c, s = write_images(tmp_path, 2, "l")
    pq.write_table(table([{"content_uri": c, "style_uri": s}]), tmp_path / "m.parquet")
    (tmp_path / "o" / "jobs").mkdir(parents=True)
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from pipeline.cli import app\n"
        f"m, o = {str(tmp_path / 'm.parquet')!r}, {str(tmp_path / 'o')!r}\n"
        "for args in (['--help'], ['plan', m], ['validate', m], ['status', o], ['params']):\n"
        "    assert CliRunner().invoke(app, args).exit_code == 0, args\n"
        "print(sorted(n for n in ('torch', 'torchvision', 'ray') if n in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


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
