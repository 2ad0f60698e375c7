"""Every result is scored under one evaluator for the whole run, so scores compare across the
axes a grid varies (beta here), and `nst score` recomputes the same numbers from the outputs."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from helpers import nst, run_manifest, write_images

from pipeline.store.storage import Store

pytestmark = pytest.mark.usefixtures("ray_cpu")


def _rows(out) -> dict[str, dict]:
    return {r["job_id"]: r for r in pq.read_table(out / "results.parquet").to_pylist()}


@pytest.fixture(scope="module")
def beta_run(tmp_path_factory):
    """Two transfers that differ only in beta, and one style reconstruction."""
    tmp = tmp_path_factory.mktemp("scores")
    c = write_images(tmp / "c", 1, "c")[0]
    s = write_images(tmp / "s", 1, "s")[0]
    common = dict(
        size=32,
        iterations=60,
        optimizer="adam",
        lr=0.05,
        init="noise",
        content_layers=["relu2_1"],
        style_layers=["relu1_1", "relu2_1"],
    )
    rows = [
        {"content_uri": c, "style_uri": s, "style_weight": [1e1, 1e5], **common},
        {"content_uri": None, "style_uri": s, "mode": "style", **common},
    ]
    from conftest import start_ray

    start_ray(0)
    result, out = run_manifest(tmp, rows)
    assert result.exit_code == 0, result.output
    return out


def test_every_ok_job_gets_scores_and_the_run_records_its_evaluator(beta_run):
    rows = _rows(beta_run)
    assert {r["status"] for r in rows.values()} == {"ok"}
    keys = {r["score_by"] for r in rows.values()}
    assert len(keys) == 1, "one evaluator for the whole run"
    meta = pq.read_schema(beta_run / "results.parquet").metadata
    ev = json.loads(meta[b"nst_evaluator"])
    assert ev["weights"] == "random:0" and ev["content_layer"] == "relu3_1"
    for job_id, r in rows.items():
        assert r["score_style"] > 0
        record = Store(str(beta_run)).job_record(job_id)
        assert record["score_style"] == r["score_style"]
        assert record["score_by"] == r["score_by"]


def test_a_style_reconstruction_has_a_style_score_only(beta_run):
    (recon,) = [r for r in _rows(beta_run).values() if r["mode"] == "style"]
    assert recon["score_content"] is None and recon["score_style"] > 0


def test_scores_compare_across_beta(beta_run):
    """The jobs' own losses are scaled by their own beta; the evaluator's are not: more style
    weight must mean a result closer to the style and further from the content."""
    low, high = sorted(
        (r for r in _rows(beta_run).values() if r["mode"] == "transfer"),
        key=lambda r: r["style_weight"],
    )
    assert high["score_style"] < low["score_style"]
    assert high["score_content"] > low["score_content"]


def test_nst_score_recomputes_the_same_numbers_from_the_outputs(beta_run):
    before = _rows(beta_run)
    result = nst("score", beta_run)
    assert result.exit_code == 0, result.output
    after = _rows(beta_run)
    for job_id, r in before.items():
        for k in ("score_content", "score_style"):
            if r[k] is None:
                assert after[job_id][k] is None
            else:
                assert after[job_id][k] == pytest.approx(r[k], rel=1e-5)


def test_nst_score_with_another_evaluator_rewrites_scores_and_metadata(beta_run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(beta_run, copy)
    before = _rows(copy)
    result = nst("score", copy, "--evaluator", '{"pooling": "avg", "content_layer": "relu1_1"}')
    assert result.exit_code == 0, result.output
    after = _rows(copy)
    assert {r["score_by"] for r in after.values()} != {r["score_by"] for r in before.values()}
    meta = json.loads(pq.read_schema(copy / "results.parquet").metadata[b"nst_evaluator"])
    assert meta["pooling"] == "avg" and meta["content_layer"] == "relu1_1"
    some = next(j for j, r in before.items() if r["score_content"] is not None)
    assert after[some]["score_content"] != before[some]["score_content"]
    record = Store(str(copy)).job_record(some)
    assert record["score_content"] == after[some]["score_content"]


def test_a_bad_evaluator_is_refused_before_running(tmp_path):
    c = write_images(tmp_path / "c", 1, "c")[0]
    s = write_images(tmp_path / "s", 1, "s")[0]
    result, _ = run_manifest(tmp_path, [{"content_uri": c, "style_uri": s}],
                             "--evaluator", '{"content_layer": "relu9_9"}')  # fmt: skip
    assert result.exit_code == 1
    assert "--evaluator" in result.output and "relu9_9" in result.output


def test_a_scoring_problem_never_fails_the_job(tmp_path):
    c = write_images(tmp_path / "c", 1, "c")[0]
    s = write_images(tmp_path / "s", 1, "s")[0]
    result, out = run_manifest(tmp_path, [{"content_uri": c, "style_uri": s}],
                               "--evaluator", '{"weights": "/nowhere/vgg.pth"}')  # fmt: skip
    assert result.exit_code == 0, result.output
    (row,) = _rows(out).values()
    assert row["status"] == "ok" and row["score_style"] is None
    assert "nowhere" in row["score_error"]
