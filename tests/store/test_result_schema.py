"""results.parquet has one declared type per column in every run (pipeline.store.result_schema),
and earlier runs, whose column types Parquet inferred per run, read back in those types."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
from helpers import run_manifest, write_images

from pipeline.store.result_schema import DECLARED, SCHEMA, conform, rows_of
from pipeline.store.results import normalise


def _types(table: pa.Table) -> dict[str, pa.DataType]:
    return {name: table.schema.field(name).type for name in table.column_names}


def test_two_runs_with_different_values_get_the_same_column_types():
    """Run A: every optional value missing (job_name, lr, errors null; amp false); run B: all
    present (amp auto, a divergence, a GPU id): before the schema A's columns were null-typed
    and B's amp was JSON text."""
    base = {"job_id": "a", "row": 0, "content_uri": "c.png", "style_uris": ["s.png"]}
    quiet = normalise([{**base, "job_name": None, "lr": None, "amp": False, "error": None,
                        "diverged_at": None, "restarted_at": [], "final_total": 1}])  # fmt: skip
    busy = normalise([
        {**base, "job_name": "x", "lr": 0.5, "amp": "auto", "error": "boom", "diverged_at": 7,
         "restarted_at": [3], "final_total": 2.5},
        {**base, "job_id": "b", "amp": True, "tag_note": "hi"},
    ])  # fmt: skip
    shared = set(quiet.column_names) & set(busy.column_names)
    assert {k: _types(quiet)[k] for k in shared} == {k: _types(busy)[k] for k in shared}
    assert all(_types(busy)[k] == DECLARED[k] for k in shared if k in DECLARED)
    assert busy.column("amp").to_pylist() == ["auto", "true"]
    assert quiet.column("amp").to_pylist() == ["false"]
    assert _types(quiet)["final_total"] == pa.float64()  # a family: final_<term>
    assert _types(busy)["tag_note"] == pa.string()  # tags keep their values' type


def test_a_real_run_writes_every_declared_column_in_its_declared_type(ray_cpu, tmp_path):
    c, s = write_images(tmp_path / "in", 1, "c"), write_images(tmp_path / "in", 1, "s")
    rows = [{"content_uri": c[0], "style_uri": s[0], "job_name": "n", "amp": "auto"},
            {"content_uri": c[0], "style_uri": s[0], "lr": 0.1, "optimizer": "adam"}]  # fmt: skip
    result, out = run_manifest(tmp_path, rows, "--evaluator", "none")
    assert result.exit_code == 0, result.output
    table = pq.read_table(out / "results.parquet")
    declared = {k: t for k, t in _types(table).items() if k in DECLARED}
    assert declared == {k: SCHEMA.field(k).type for k in declared}
    assert len(declared) > 50  # the job, every parameter, the outcome
    assert {r["amp"] for r in table.to_pylist()} == {"auto", "false"}


def test_an_earlier_runs_table_reads_back_in_the_declared_types():
    """As runs before the schema wrote them: null-typed columns, a bool amp in one run and
    JSON text in another (the old fallback for mixed values), integers as text."""
    old = pa.table({
        "job_id": ["a", "b"],
        "lr": pa.array([None, None], pa.null()),
        "amp": pa.array(["true", '"auto"']),
        "diverged_at": pa.array(["12", None]),
        "tag_x": pa.array([1, 2]),
    })  # fmt: skip
    again = conform(old)
    assert _types(again) == {"job_id": pa.string(), "lr": pa.float64(), "amp": pa.string(),
                             "diverged_at": pa.int64(), "tag_x": pa.int64()}  # fmt: skip
    assert again.column("amp").to_pylist() == ["true", "auto"]
    assert again.column("diverged_at").to_pylist() == [12, None]
    assert [r["amp"] for r in rows_of(old)] == [True, "auto"]  # as a JobSpec takes it
    names = pa.table({"job_name": ['"quoted"', "plain"], "seed": ["n/a", None]})
    kept = conform(names)  # a real name in quotes is text; non-JSON text is kept, not fatal
    assert kept.column("job_name").to_pylist() == ['"quoted"', "plain"]
    assert kept.column("seed").to_pylist() == ["n/a", None]
    assert conform(pa.table({"amp": pa.array([True, False])})).column("amp").to_pylist() == [
        "true",
        "false",
    ]


def test_every_score_the_evaluator_gives_and_every_parameter_has_a_declared_column():
    from nst_ops.evaluator import SCORE_FIELDS
    from nst_ops.spec import JobSpec
    from pipeline.store.result_schema import ResultRow

    assert set(SCORE_FIELDS) <= set(ResultRow.__annotations__)
    assert set(JobSpec.field_names()) <= set(DECLARED)
    assert SCHEMA.field("inputs").type == pa.list_(
        pa.struct([("uri", pa.string()), ("fingerprint", pa.string())])
    )
