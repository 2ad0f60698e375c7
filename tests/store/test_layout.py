"""The output layout: two objects per job, and runs written in the earlier four-file form still
read, resume and are rewritten cleanly."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pyarrow.parquet as pq
from helpers import nst, run_manifest, synthetic_run, write_images

from pipeline.store import layout, record
from pipeline.store.storage import Store


def _to_v1(out: Path) -> None:
    """Rewrite a run as runs before November 2026 were written: image, trace.parquet, job.json,
    _COMMIT (markers older than results.parquet, as a finished run leaves them)."""
    past = time.time() - 60
    for result in out.glob("jobs/*/result.parquet"):
        rec = record.read_record(result.read_bytes())
        rec["trace_uri"] = rec["trace_uri"].replace(layout.RESULT, layout.V1_TRACE)
        pq.write_table(
            pq.read_table(result).replace_schema_metadata(), result.with_name("trace.parquet")
        )
        result.with_name("job.json").write_text(json.dumps(rec))
        marker = result.with_name("_COMMIT")
        marker.write_text(json.dumps(record.row_of(rec)))
        os.utime(marker, (past, past))
        result.unlink()
    table = pq.read_table(out / "results.parquet")
    traces = [u.replace(layout.RESULT, layout.V1_TRACE) for u in table["trace_uri"].to_pylist()]
    table = table.set_column(table.schema.get_field_index("trace_uri"), "trace_uri", [traces])
    pq.write_table(table, out / "results.parquet")


def test_every_job_of_a_run_is_two_objects_its_image_and_its_result(ray_cpu, tmp_path):
    c, s = write_images(tmp_path, 2, "c"), write_images(tmp_path, 1, "s")
    res, out = run_manifest(tmp_path, [{"content_uri": x, "style_uri": s[0]} for x in c])
    assert res.exit_code == 0, res.output
    folders = list((out / "jobs").iterdir())
    assert len(folders) == 2
    for f in folders:
        assert {p.name for p in f.iterdir()} == {"image.png", "result.parquet"}
        trace = pq.read_table(f / "result.parquet")
        assert trace.column("iteration").to_pylist()[-1] == 2  # TINY's iterations
    shown = nst("show", out, folders[0].name)
    assert shown.exit_code == 0, shown.output
    rec = json.loads(shown.output)
    assert rec["job_id"] == folders[0].name and rec["status"] == "ok"
    assert rec["versions"]["torch"] and rec["finished_at"] >= rec["started_at"]


def test_a_run_in_the_earlier_four_file_form_reads_resumes_and_is_rewritten_on_rerun(
    ray_cpu, tmp_path
):
    c, s = write_images(tmp_path, 2, "c"), write_images(tmp_path, 1, "s")
    res, out = run_manifest(tmp_path, [{"content_uri": x, "style_uri": s[0]} for x in c])
    assert res.exit_code == 0, res.output
    _to_v1(out)
    ids = sorted(p.name for p in (out / "jobs").iterdir())
    assert "ok: 2" in nst("status", out).output
    assert "outputs missing" not in nst("status", out).output
    again = nst("run", tmp_path / "m.parquet", "--out", out, "--no-progress")
    assert "2 jobs (2 already done)" in again.output, again.output
    assert not list(out.glob("jobs/*/result.parquet"))  # nothing rewritten
    assert nst("report", out).exit_code == 0
    assert "output missing" not in (out / "report.html").read_text()
    assert json.loads(nst("show", out, ids[0]).output)["job_id"] == ids[0]

    forced = nst("run", tmp_path / "m.parquet", "--out", out, "--no-progress", "--force")
    assert forced.exit_code == 0, forced.output
    for i in ids:  # the earlier form's record, trace and marker are gone, not left stale
        assert {p.name for p in (out / "jobs" / i).iterdir()} == {"image.png", "result.parquet"}
    assert "ok: 2" in nst("status", out).output


def test_a_synthetic_run_in_either_form_reads_back_the_same_rows(tmp_path):
    new = Store(str(synthetic_run(tmp_path / "new", 16)))
    old = Store(str(synthetic_run(tmp_path / "old", 16, v1=True)))
    for store in (new, old):  # the markers, not results.parquet, give the rows
        store.fs.rm(f"{store.root}/results.parquet")
    rows_new, rows_old = new.committed(), old.committed()
    assert set(rows_new) == set(rows_old) and len(rows_new) == 16
    for k, r in rows_new.items():
        assert {**r, "trace_uri": None} == {**rows_old[k], "trace_uri": None}
        assert new.job_record(k)["finished_at"] == old.job_record(k)["finished_at"]


def test_show_names_the_job_when_it_is_not_committed_or_not_an_id(tmp_path):
    out = synthetic_run(tmp_path / "run", 8)
    missing = nst("show", out, "0123456789abcdef")
    assert missing.exit_code != 0 and "job 0123456789abcdef: not committed" in missing.output
    bad = nst("show", out, "../../etc")
    assert bad.exit_code != 0 and "invalid job id" in bad.output
