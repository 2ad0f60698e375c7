"""`nst apply` on real collections: every problem answered in one line before any work (and
nothing written), or handled with nothing lost; reruns that do only what changed."""

import http.server
import threading

import pyarrow.parquet as pq
import pytest
from helpers import nst, one_job, phone_jpeg, png_bytes, tiny_model, write_images
from PIL import Image

from pipeline.stylenet.apply import check_clashes, list_collection


@pytest.fixture
def model(tmp_path):
    return tiny_model(tmp_path / "m" / "model.pt")


@pytest.fixture
def no_ray(monkeypatch):
    """Fails the test if the command starts Ray (answers must come before it)."""

    def refuse(*a, **k):
        raise AssertionError("Ray was started")

    monkeypatch.setattr("pipeline.run.scheduler.init_ray", refuse)


def apply(model, coll, out, *args):
    return nst("apply", model, "--input", coll, "--out", out, "--no-progress", *args)


def rows(out):
    return {r["input"]: r for r in pq.read_table(out / "results.parquet").to_pylist()}


# --- answers before any work -------------------------------------------------------------------


@pytest.mark.parametrize("names", [("a.jpg", "a.png"), ("b.JPG", "b.jpg")])
def test_two_inputs_that_would_write_one_output_are_refused_naming_both(model, tmp_path, names):
    coll = tmp_path / "photos"
    for n in names:
        (coll / n).parent.mkdir(parents=True, exist_ok=True)
        (coll / n).write_bytes(png_bytes(seed=1))
    write_images(coll, 2, "ok")
    with pytest.raises(Exception, match=" and ".join(sorted(names))):
        check_clashes(list_collection(str(coll), None), "png")
    r = apply(model, coll, tmp_path / "o")
    assert r.exit_code == 1 and all(n in r.output for n in names), r.output
    assert "nothing was written" in r.output and not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "case, args, says",
    [
        ("empty folder", [], "no images there"),
        ("glob matching nothing", [], "no images there"),
        ("score not a number", ["--score", "abc"], "--score 'abc'"),
        ("size too small", ["--size", "8"], "--size 8: give 0"),
    ],
)
def test_bad_options_and_empty_inputs_answer_in_one_line_before_anything(
    model, tmp_path, no_ray, case, args, says
):
    coll = tmp_path / "empty"
    coll.mkdir()
    if case != "empty folder":
        write_images(coll, 2, "x")
    given = str(coll / "*.tif") if case == "glob matching nothing" else str(coll)
    r = apply(model, given, tmp_path / "o", *args)
    assert r.exit_code in (1, 2) and says in r.output, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()  # no lease, no apply.json, no _KIND


def test_the_input_policy_holds_before_any_request_to_list_a_collection(model, tmp_path):
    hits = []

    class Count(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            super().do_GET()

        do_HEAD = do_GET

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Count)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        for given in (f"{base}/", f"{base}/*.png"):
            r = apply(model, given, tmp_path / "o")
            assert r.exit_code == 1 and "http(s) inputs are off" in r.output, r.output
        style = tmp_path / "s.png"
        style.write_bytes(png_bytes())
        for content in (f"{base}/photos/", f"{base}/list.txt"):
            r = nst("train", style, "--content", content, "--out", tmp_path / "t")
            assert r.exit_code == 1 and "http(s) inputs are off" in r.output, r.output
        r = nst("train", f"{base}/style.png", "--content", tmp_path, "--out", tmp_path / "t")
        assert r.exit_code == 1 and "http(s) inputs are off" in r.output, r.output
    finally:
        server.shutdown()
    assert hits == []
    assert not (tmp_path / "o").exists() and not (tmp_path / "t").exists()


# --- roots of another kind --------------------------------------------------------------------


def test_apply_and_train_refuse_a_runs_root_and_run_refuses_an_apply_root(model, tmp_path):
    res, run, _ = one_job(tmp_path)
    assert res.exit_code == 0, res.output
    before = (run / "results.parquet").read_bytes()
    coll = tmp_path / "photos"
    write_images(coll, 2, "p")
    r = apply(model, coll, run)
    assert r.exit_code == 1 and "is the root of an `nst run`; `nst apply` needs" in r.output
    style = tmp_path / "s.png"
    style.write_bytes(png_bytes())
    t = nst("train", style, "--content", coll, "--out", run, "--holdout", "0")
    assert t.exit_code == 1 and "is the root of an `nst run`" in t.output, t.output
    assert (run / "results.parquet").read_bytes() == before
    assert sorted(p.name for p in run.iterdir()) == sorted(
        ["_KIND", "jobs", "jobs.parquet", "results.parquet"]
    )
    assert "ok: 1" in nst("status", run).output

    a = apply(model, coll, tmp_path / "a")
    assert a.exit_code == 0, a.output
    m = tmp_path / "m.parquet"
    r = nst("run", m, "--out", tmp_path / "a", "--no-progress")
    assert r.exit_code == 1 and "is the root of an `nst apply`" in r.output


def test_an_output_root_inside_the_collection_is_never_styled_again(model, tmp_path):
    coll = tmp_path / "photos"
    write_images(coll, 3, "p")
    for _ in range(2):
        r = apply(model, coll, coll / "styled")
        assert r.exit_code == 0, r.output
        assert "3 images" in r.output
    assert len(list((coll / "styled" / "images").rglob("*.png"))) == 3
    # every scored output states the job's own loss beside its unstyled photo's
    assert all(
        r["objective"] > 0 and r["objective_photo"] > 0 for r in rows(coll / "styled").values()
    )
    assert "of the unstyled photo's (median, the job's own objective)" in r.output
    assert "refine first (least changed): " in r.output


# --- reruns: nothing lost, nothing stale ---------------------------------------------------------


def test_an_apply_collection_rerun_keeps_counts_true_and_leaves_nothing_stale(
    model, tmp_path, monkeypatch
):
    coll = tmp_path / "my [photos]"  # a folder name that looks like a glob
    write_images(coll, 3, "p")
    phone_jpeg(coll / "phone.jpg", w=40, h=20)
    frames = [Image.new("RGB", (24, 16), c) for c in ("red", "blue")]
    frames[0].save(coll / "anim.gif", save_all=True, append_images=frames[1:])
    out = tmp_path / "o"
    first = apply(model, coll, out, "--score", "none")
    assert first.exit_code == 0, first.output
    got = rows(out)
    assert set(got) == {"p0.png", "p1.png", "p2.png", "phone.jpg", "anim.gif"}
    assert all(r["status"] == "ok" for r in got.values())
    assert (got["phone.jpg"]["out_width"], got["phone.jpg"]["out_height"]) == (20, 40)
    assert (got["anim.gif"]["out_width"], got["anim.gif"]["out_height"]) == (24, 16)

    (coll / "p1.png").write_bytes(b"\x89PNG broken now")  # a redo that fails
    (coll / "p2.png").unlink()  # a deleted input
    again = apply(model, coll, out, "--score", "none")
    assert again.exit_code == 0, again.output
    assert "4 images" in again.output and "failed 1" in again.output
    got = rows(out)
    assert set(got) == {"p0.png", "p1.png", "phone.jpg", "anim.gif"}
    assert got["p1.png"]["status"] == "failed" and not (out / "images" / "p1.png").exists()
    assert (out / "images" / "p2.png").exists()  # the deleted input's output is kept
    status = nst("status", out)
    assert status.exit_code == 0 and "failed: 1, ok: 3" in status.output, status.output

    (coll / "p1.png").write_bytes(png_bytes(seed=5))  # mended: redone, its output back
    assert apply(model, coll, out, "--score", "none").exit_code == 0
    assert (out / "images" / "p1.png").exists() and rows(out)["p1.png"]["status"] == "ok"

    def refuse(*a, **k):
        raise AssertionError("Ray was started with nothing to do")

    monkeypatch.setattr("pipeline.run.scheduler.init_ray", refuse)
    done = apply(model, coll, out, "--score", "none")
    assert done.exit_code == 0 and "nothing to do" in done.output, done.output
