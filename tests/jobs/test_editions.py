"""Defaults editions: new runs get the latest defaults, existing runs keep the edition (and so
the job ids) they started with."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from helpers import nst, run_manifest, table, write_images

from nst_ops.presets import LATEST_DEFAULTS
from nst_ops.spec import JobSpec
from pipeline.jobs.job import job_id

LBFGS = {"optimizer": "lbfgs", "iterations": 300}


@pytest.mark.parametrize(
    ("params", "amp"),
    [
        ({**LBFGS, "size": 256}, "auto"),  # measured: the same quality 1.5x sooner
        ({**LBFGS, "size": 1024, "multires": 2}, "auto"),
        ({**LBFGS, "size": 128}, False),  # not measured at this size: as edition 1
        ({"optimizer": "adam", "size": 512}, False),  # Adam and SGD: as edition 1
        ({"optimizer": "sgd", "size": 512}, False),
        ({**LBFGS, "size": 256, "amp": False}, False),  # what the row gives wins
    ],
)
def test_edition_2_gives_large_lbfgs_jobs_amp_auto_and_nothing_else(params, amp):
    spec = JobSpec.from_dict(params, None, 2)
    assert spec.amp == amp
    changed = {k for k, v in spec.to_dict().items() if v != JobSpec(**params).to_dict()[k]}
    assert changed <= {"amp"}  # schedules, sizes, budgets: as the row and edition 1 say


def test_the_first_edition_and_presets_resolve_exactly_as_before_editions():
    params = {**LBFGS, "size": 256}
    assert JobSpec.from_dict(params, None, 1) == JobSpec(**params)
    assert JobSpec.from_dict({}, "study", 2) == JobSpec.from_dict({}, "study", 1)
    first = JobSpec.from_dict(params, None, 1)
    assert job_id(first, "c.png", ("s.png",)) != job_id(
        JobSpec.from_dict(params, None, 2), "c.png", ("s.png",)
    )


def test_a_new_run_records_the_latest_edition_and_its_jobs_use_it(ray_cpu, tmp_path):
    c, s = write_images(tmp_path, 1, "c"), write_images(tmp_path, 1, "s")
    row = {"content_uri": c[0], "style_uri": s[0], "optimizer": "lbfgs", "size": 256}
    res, out = run_manifest(tmp_path, [row])
    assert res.exit_code == 0, res.output
    meta = pq.read_schema(out / "jobs.parquet").metadata
    assert meta[b"nst_defaults"] == str(LATEST_DEFAULTS).encode()
    (row,) = pq.read_table(out / "results.parquet").to_pylist()
    assert row["amp"] == "auto" and row["status"] == "ok" and row["iterations_run"] == 2
    assert row["restarts"] == 2 and row["restarts_used"] == 0  # edition 3: L-BFGS restarts


def test_edition_3_adds_only_lbfgs_restarts_to_edition_2():
    for params in ({**LBFGS, "size": 256}, {**LBFGS, "size": 64}, {"optimizer": "adam"}):
        two, three = JobSpec.from_dict(params, None, 2), JobSpec.from_dict(params, None, 3)
        changed = {k for k, v in three.to_dict().items() if v != two.to_dict()[k]}
        assert changed == ({"restarts"} if params.get("optimizer") == "lbfgs" else set())


def test_a_run_from_before_editions_keeps_its_job_ids_and_redoes_nothing(ray_cpu, tmp_path):
    c, s = write_images(tmp_path, 1, "c"), write_images(tmp_path, 1, "s")
    rows = [{"content_uri": c[0], "style_uri": s[0], "optimizer": "lbfgs", "size": 256}]
    res, out = run_manifest(tmp_path, rows, "--defaults", "1")
    assert res.exit_code == 0, res.output
    jobs = pq.read_table(out / "jobs.parquet")
    pq.write_table(jobs.replace_schema_metadata(), out / "jobs.parquet")  # as before editions
    ids = set(jobs.column("job_id").to_pylist())

    plan = nst("plan", tmp_path / "m.parquet", "--out", out)
    assert "0 to run" in plan.output and "defaults edition 1" in plan.output, plan.output
    again = nst("run", tmp_path / "m.parquet", "--out", out, "--no-progress")
    assert "1 jobs (1 already done)" in again.output, again.output
    assert set(pq.read_table(out / "jobs.parquet").column("job_id").to_pylist()) == ids
    latest = nst("plan", tmp_path / "m.parquet", "--out", out, "--defaults", "2")
    assert "1 to run" in latest.output and "new 1" in latest.output, latest.output


def test_an_unknown_edition_is_refused_by_name(tmp_path):
    pq.write_table(table([{"content_uri": "c.png", "style_uri": "s.png"}]), tmp_path / "m.parquet")
    res = nst("plan", tmp_path / "m.parquet", "--defaults", "7")
    assert res.exit_code != 0 and "--defaults 7: choose one of 1, 2, 3" in res.output


@pytest.mark.parametrize(
    ("params", "init"),
    [
        ({**LBFGS, "size": 1024}, "content"),  # measured: noise was still 2x the photo's loss
        ({**LBFGS, "size": 4096, "tile": 1024}, "content"),
        ({**LBFGS, "size": 1024, "init": "noise"}, "noise"),  # what the row gives wins
        ({**LBFGS, "size": 512}, "noise"),  # below 1024 px: as edition 3
        ({**LBFGS, "size": 1024, "mode": "style"}, "noise"),  # texture synthesis has no photo
        ({**LBFGS, "size": 1024, "mode": "content"}, "noise"),  # the photo is its answer
        ({"optimizer": "adam", "size": 1024}, "noise"),  # not measured for Adam and SGD
    ],
)
def test_edition_4_starts_large_lbfgs_transfers_from_the_photo(params, init):
    spec, three = JobSpec.from_dict(params, None, 4), JobSpec.from_dict(params, None, 3)
    assert spec.init == init
    changed = {k for k, v in spec.to_dict().items() if v != three.to_dict()[k]}
    assert changed == ({"init"} if init != three.init else set())


def test_edition_4_leaves_a_preset_and_the_study_alone():
    big = {**LBFGS, "size": 1024}
    assert JobSpec.from_dict(big, "study", 4) == JobSpec.from_dict(big, "study", 3)
    assert JobSpec.from_dict(big, "study", 4).init == "noise"
