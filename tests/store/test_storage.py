"""Writes are whole objects, retried on transient errors; the commit marker comes last."""

import io
import os
import time

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.memory import MemoryFileSystem
from helpers import TINY, png_bytes, write_images

from nst_ops.spec import JobSpec
from pipeline.jobs.job import Job
from pipeline.run.options import RunOptions
from pipeline.run.task import run_job
from pipeline.store import layout, record, storage


class FlakyFS(MemoryFileSystem):
    """A memory filesystem whose writes fail ``failures`` times before working."""

    protocol = "flaky"
    failures = 0
    writes: list[str] = []

    def pipe_file(self, path, value, **kwargs):
        if FlakyFS.failures > 0:
            FlakyFS.failures -= 1
            raise ConnectionError("injected transient failure")
        FlakyFS.writes.append(path)
        return super().pipe_file(path, value, **kwargs)


fsspec.register_implementation("flaky", FlakyFS, clobber=True)


def spec() -> JobSpec:
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in TINY.items()}
    return JobSpec(**params, optimizer="adam")


@pytest.fixture
def inputs():
    fs = fsspec.filesystem("memory")
    fs.pipe_file("/in/c.png", png_bytes(seed=1))
    fs.pipe_file("/in/s.png", png_bytes(seed=2))
    return "memory://in/c.png", "memory://in/s.png"


def test_a_job_runs_in_process_with_memory_inputs_and_outputs(inputs):
    job = Job(spec(), inputs[0], (inputs[1],), 0)
    row = run_job(job, RunOptions(out="memory://out"))
    assert row["status"] == "ok" and row["committed"]
    store = storage.Store("memory://out")
    assert store.committed()[job.id]["status"] == "ok"
    for name in ("image.png", "result.parquet"):
        assert store.exists(f"jobs/{job.id}/{name}")
    trace = pq.read_table(io.BytesIO(store.get(f"jobs/{job.id}/result.parquet")))
    assert trace.column("iteration").to_pylist()[-1] == job.spec.iterations
    assert store.job_record(job.id)["versions"]["torch"]


def test_transient_write_failures_are_retried_and_the_marker_is_written_last(inputs):
    FlakyFS.failures, FlakyFS.writes = 3, []
    job = Job(spec(), inputs[0], (inputs[1],), 0)
    row = run_job(job, RunOptions(out="flaky://out1"))
    assert row["status"] == "ok" and row["committed"]
    assert FlakyFS.writes[-1].endswith(f"{job.id}/result.parquet")
    assert len(FlakyFS.writes) == 2  # image, then the trace + record that commits it


def test_persistent_write_failure_is_recorded_as_failed_without_a_marker(inputs):
    FlakyFS.failures, FlakyFS.writes = 10**6, []
    job = Job(spec(), inputs[0], (inputs[1],), 0)
    row = run_job(job, RunOptions(out="flaky://out2", storage_attempts=2))
    FlakyFS.failures = 0
    assert row["status"] == "failed" and not row["committed"]
    assert "could not write outputs" in row["error"] and "after 2 attempts" in row["error"]
    assert storage.Store("flaky://out2").committed() == {}


def test_readers_ignore_jobs_without_a_commit_marker():
    store = storage.Store("memory://partial")
    store.put("jobs/aaaa/image.png", b"half")
    store.put("jobs/aaaa/job.json", b"{}")
    store.put_json("jobs/bbbb/_COMMIT", {"job_id": "bbbb", "status": "ok"})  # an earlier run's
    store.put("jobs/cccc/_COMMIT", b"{not json")
    store.put("jobs/dddd/result.parquet", b"PAR1 half")
    trace = pa.table({"iteration": [0]})
    store.put("jobs/eeee/result.parquet", record.result_file(trace, {"job_id": "eeee"}))
    store.put("jobs/ffff/result.parquet", record.result_file(trace, {})[:-20])  # cut short
    assert set(store.committed()) == {"bbbb", "eeee"}


def test_bad_input_becomes_a_failed_record_naming_the_uri(inputs):
    fsspec.filesystem("memory").pipe_file("/in/empty.png", b"")
    job = Job(spec(), "memory://in/empty.png", (inputs[1],), 0)
    row = run_job(job, RunOptions(out="memory://out3"))
    assert (
        row["status"] == "failed" and row["error"] == "memory://in/empty.png: empty file (0 bytes)"
    )
    rec = storage.Store("memory://out3").job_record(job.id)
    assert rec["error"] == row["error"] and rec["versions"]["torch"]


def test_job_ids_that_are_not_plain_hex_never_become_paths():
    with pytest.raises(ValueError, match="invalid job id"):
        layout.job_dir("../../etc")


def test_results_tables_accept_rows_whose_tags_changed_type_between_runs():
    """A finished run must never fail at its last step: a tag that became a list (rows merged)
    or changed type since an earlier run still gives a results table."""
    from pipeline.store.results import normalise

    rows = [
        {"job_id": "a", "tag_experiment": "pooling", "tag_n": 3},
        {"job_id": "b", "tag_experiment": ["pooling", "alpha_beta"], "tag_n": "three"},
        {"job_id": "c"},
    ]
    t = normalise(rows)
    assert t.column("tag_experiment").to_pylist() == [
        ["pooling"],
        ["pooling", "alpha_beta"],
        None,
    ]
    assert t.column("tag_n").to_pylist() == ["3", '"three"', None]


def _committed_run(tmp_path, n: int = 3):
    """n committed jobs, then results.parquet, as `nst run` leaves them (markers 60 s older)."""
    from pipeline.run.scheduler import write_results

    store = storage.Store(str(tmp_path / "run"))
    jobs = [Job(spec(), f"/in/c{i}.png", ("/in/s.png",), i) for i in range(n)]
    rows = {}
    for j in jobs:
        rows[j.id] = {"job_id": j.id, "status": "ok", "inputs": [], "final_total": 1.0}
        rec = record.result_file(pa.table({"iteration": [0]}), rows[j.id])
        store.put(layout.job_path(j.id, layout.RESULT), rec)
        marker = tmp_path / "run" / layout.job_path(j.id, layout.RESULT)
        os.utime(marker, (time.time() - 60, time.time() - 60))
    write_results(store, jobs, {}, rows)
    return store, jobs


def _marker_reads(monkeypatch, store) -> list[str]:
    read: list[str] = []
    real = store.fs.cat

    def counting(paths, **kw):
        read.extend(paths)
        return real(paths, **kw)

    monkeypatch.setattr(store.fs, "cat", counting)
    return read


def test_rereading_a_finished_run_reads_results_parquet_not_every_marker(tmp_path, monkeypatch):
    store, jobs = _committed_run(tmp_path)
    read = _marker_reads(monkeypatch, store)
    done = store.committed()
    assert set(done) == {j.id for j in jobs} and read == []
    assert all(r["final_total"] == 1.0 for r in done.values())


def test_a_marker_written_after_results_parquet_is_read(tmp_path, monkeypatch):
    store, jobs = _committed_run(tmp_path)
    redone = {"job_id": jobs[0].id, "status": "diverged", "inputs": []}
    store.put(  # redone after the table was written
        layout.job_path(jobs[0].id, layout.RESULT),
        record.result_file(pa.table({"iteration": [0]}), redone),
    )
    (tmp_path / "run" / layout.job_path(jobs[1].id, layout.RESULT)).unlink()  # un-committed
    read = _marker_reads(monkeypatch, store)
    done = store.committed()
    assert [p.rsplit("/", 2)[-2] for p in read] == [jobs[0].id]
    assert done[jobs[0].id]["status"] == "diverged"
    assert set(done) == {jobs[0].id, jobs[2].id}


def test_a_worker_stats_each_input_once_and_records_the_fingerprint_of_what_it_read(
    tmp_path, monkeypatch
):
    """One stat and one read per input (on S3: one HEAD, one GET), the fingerprint taken from
    that stat: a separate fingerprint lookup had made it two HEADs per input."""
    from fsspec.implementations.local import LocalFileSystem

    from pipeline.run.options import RunOptions
    from pipeline.run.task import Inputs

    (uri,) = write_images(tmp_path, 1, "c")
    calls: list[str] = []
    for name in ("info", "cat_file"):
        real = getattr(LocalFileSystem, name)
        monkeypatch.setattr(
            LocalFileSystem,
            name,
            lambda self, p, *a, _r=real, _n=name, **k: (calls.append(_n), _r(self, p, *a, **k))[1],
        )
    inputs = Inputs(RunOptions(out=str(tmp_path / "o")))
    inputs.image(uri)
    inputs.image(uri)  # decoded once per task
    assert calls == ["info", "cat_file"]
    monkeypatch.undo()
    assert inputs.prints[uri] == storage.fingerprint_of(uri) is not None
