"""Manifest schema checks, grid expansion and job identity."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import nst, table, write_images

from pipeline.errors import ManifestError
from pipeline.jobs.grid import expand
from pipeline.jobs.manifest import check_schema, read_manifest

PAIR = {"content_uri": "/c.png", "style_uri": "/s.png"}


def test_list_valued_columns_expand_to_the_cartesian_product():
    t = table([{**PAIR, "optimizer": ["adam", "sgd"], "style_weight": [1.0, 10.0, 100.0]}])
    jobs = expand(t)
    assert len(jobs) == 6
    assert {(j.spec.optimizer, j.spec.style_weight) for j in jobs} == {
        (o, w) for o in ("adam", "sgd") for w in (1.0, 10.0, 100.0)
    }


def test_list_parameters_are_values_and_lists_of_lists_are_axes():
    t = table([{**PAIR, "style_layers": [["relu1_1"], ["relu1_1", "relu2_1"]]}])
    assert sorted(len(j.spec.style_layers) for j in expand(t)) == [1, 2]
    assert len(expand(table([PAIR]))) == 1


def test_job_ids_are_deterministic_and_depend_on_parameters_and_inputs():
    t = table([{**PAIR, "seed": [0, 1]}])
    a, b = expand(t), expand(t)
    assert [j.id for j in a] == [j.id for j in b]
    assert a[0].id != a[1].id
    other = expand(table([{**PAIR, "style_uri": "/other.png"}]))[0]
    assert other.id not in {j.id for j in a}


def test_job_names_and_tags_do_not_change_the_id_and_are_carried_through():
    a = expand(table([{**PAIR, "job_name": "x", "tag_batch": "b1"}]))[0]
    b = expand(table([{**PAIR, "job_name": "../../etc/passwd"}]))[0]
    assert a.id == b.id and a.id.isalnum()
    assert a.to_record()["tag_batch"] == "b1" and a.to_record()["job_name"] == "x"


def test_duplicate_rows_collapse_by_job_id():
    assert len(expand(table([PAIR, PAIR, {**PAIR, "seed": 3}]))) == 2


def test_style_reconstruction_rows_need_no_content():
    jobs = expand(table([{"content_uri": None, "style_uri": "/s.png", "mode": "style"}]))
    assert jobs[0].content_uri is None and jobs[0].spec.mode == "style"


def test_layer_sweep_row_expands_into_growing_layer_sets():
    row = {
        "content_uri": None,
        "style_uri": "/s.png",
        "mode": "layer_sweep",
        "style_layers": ["conv1_1", "conv2_1", "conv3_1"],
    }
    jobs = expand(table([row]))
    assert [j.spec.style_layers for j in jobs] == [
        ("conv1_1",),
        ("conv1_1", "conv2_1"),
        ("conv1_1", "conv2_1", "conv3_1"),
    ]
    assert len({j.sweep_of for j in jobs}) == 1 and jobs[0].spec.mode == "style"


def test_blended_styles_are_one_job_with_several_style_uris():
    jobs = expand(table([{**PAIR, "style_uri": ["/a.png", "/b.png"], "style_blend": [1.0, 3.0]}]))
    assert len(jobs) == 1 and jobs[0].style_uris == ("/a.png", "/b.png")
    with pytest.raises(ManifestError, match="row 0: style_blend has 1 weights for 2 style images"):
        expand(table([{**PAIR, "style_uri": ["/a.png", "/b.png"], "style_blend": [1.0]}]))


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"style_uri": "/s.png"}], "missing required column"),
        ([{**PAIR, "optimiser": "adam"}], "unknown column 'optimiser'; did you mean 'optimizer'"),
        ([{**PAIR, "iterations": "many"}], "column 'iterations' has type string, expected int"),
        ([{**PAIR, "lr": []}], "row 0: grid axis 'lr' is empty"),
        ([PAIR, {**PAIR, "mode": "dream"}], "row 1: unknown mode 'dream'"),
        ([PAIR, {**PAIR, "style_weight": -5.0}], "row 1: style_weight must be finite and >= 0"),
        ([{**PAIR, "style_weight": float("nan")}], "row 0: style_weight must be finite"),
        ([{**PAIR, "iterations": 0}], "row 0: iterations must be an integer >= 1"),
        ([{**PAIR, "size": 10**6}], "row 0: size must be an integer in"),
        ([{**PAIR, "style_layers": ["relu9_9"]}], "row 0: layer.* relu9_9 not in vgg19"),
        ([{**PAIR, "content_uri": None}], "row 0: mode 'transfer' needs a content_uri"),
    ],
)
def test_bad_manifests_give_clear_row_numbered_errors(rows, message):
    t = table(rows)
    with pytest.raises(ManifestError, match=message):
        check_schema(t.schema)
        expand(t)


def test_a_grid_past_the_limit_is_refused_with_its_real_count():
    t = table([{**PAIR, "seed": list(range(50)), "lr": [0.1, 0.2, 0.3]}])
    with pytest.raises(ManifestError, match="expands to 150 jobs, more than --max-jobs 100"):
        expand(t, max_jobs=100)
    assert len(expand(t, max_jobs=150)) == 150


def test_a_200k_job_grid_is_refused_before_any_job_is_built(monkeypatch):
    from pipeline.jobs import grid

    def built(*args, **kwargs):
        raise AssertionError("a job was built")  # 200k of them took ~10 s and 290 MB

    monkeypatch.setattr(grid, "expand_row", built)
    t = table([{**PAIR, "seed": list(range(2000)), "lr": [0.01 * k for k in range(1, 101)]}])
    with pytest.raises(ManifestError, match="expands to 200,000 jobs, more than --max-jobs"):
        expand(t)


def test_an_empty_manifest_is_refused():
    with pytest.raises(ManifestError, match="no rows"):
        expand(table([PAIR]).slice(0, 0))


def test_relative_paths_resolve_against_the_manifest_folder(tmp_path):
    t = table([{"content_uri": "imgs/c.png", "style_uri": ["imgs/s.png"], "weights": "w.pth"}])
    pq.write_table(t, tmp_path / "m.parquet")
    row = read_manifest(str(tmp_path / "m.parquet")).to_pylist()[0]
    assert row["content_uri"] == str(tmp_path / "imgs/c.png")
    assert row["style_uri"] == [str(tmp_path / "imgs/s.png")]
    assert row["weights"] == str(tmp_path / "w.pth")


def test_a_file_that_is_not_parquet_is_a_clear_error(tmp_path):
    (tmp_path / "m.parquet").write_text("hello")
    with pytest.raises(ManifestError, match="not a readable Parquet file"):
        read_manifest(str(tmp_path / "m.parquet"))
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(str(tmp_path / "nope.parquet"))


def test_integer_columns_stored_as_floats_are_accepted_when_integral():
    t = pa.table(
        {"content_uri": ["/c"], "style_uri": ["/s"], "iterations": [3.0], "weights": ["random:0"]}
    )
    assert expand(t)[0].spec.iterations == 3
    with pytest.raises(ManifestError, match="iterations must be an integer"):
        expand(pa.table({"content_uri": ["/c"], "style_uri": ["/s"], "iterations": [2.5]}))


def test_job_ids_published_by_earlier_versions_stay_the_same():
    """Parameters added later (divergence_patience) must not re-key every finished run: these
    are the ids the first release computed for this row."""
    row = {"content_uri": "s3://b/c.png", "style_uri": "s3://b/s.png", "weights": "random:0"}
    jobs = expand(pa.Table.from_pylist([{**row, "optimizer": ["adam", "lbfgs"]}]))
    assert [j.id for j in jobs] == ["012aae45de26b6cd523d", "8992d1305064fc612cf3"]


@pytest.mark.parametrize("column", ["job_name", "tag_note"])
@pytest.mark.parametrize("bad", ["a\x00b", "two\nlines", "tab\there"])
def test_control_characters_in_names_and_tags_are_refused_naming_the_row(column, bad):
    t = table([PAIR, {**PAIR, column: bad}])
    with pytest.raises(ManifestError, match=f"row 1: {column} .* contains a control character"):
        expand(t)


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
