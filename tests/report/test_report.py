"""The HTML report: layout by grid axes, escaping, and a real headless-Chromium load."""

import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import nst, run_manifest, table, write_images

from pipeline.report.page import varying_axes
from pipeline.run import lease
from pipeline.store import storage

ARTIFACTS = Path(
    os.environ.get("NST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts")
)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from conftest import start_ray

    start_ray(0)
    d = tmp_path_factory.mktemp("report")
    contents = write_images(d / "c", 2, "c")
    (style,) = write_images(d / "s", 1, "s")
    rows = [
        {
            "content_uri": c,
            "style_uri": style,
            "optimizer": ["adam", "lbfgs"],
            "job_name": "<script>alert(1)</script>",
        }
        for c in contents
    ]
    rows.append(
        {
            "content_uri": str(d / "missing.png"),
            "style_uri": style,
            "optimizer": ["adam"],
            "job_name": "missing",
        }
    )
    rows.append(
        {
            "content_uri": contents[0],
            "style_uri": style,
            "optimizer": ["sgd"],
            "lr": 1e4,
            "init": "content",
            "iterations": 10,
            "style_weight": 1e3,
            "job_name": "blowup",
        }
    )
    pq.write_table(table(rows), d / "m.parquet")
    res = nst("run", str(d / "m.parquet"), "--out", str(d / "out"), "--no-progress")
    assert res.exit_code == 0, res.output
    return d / "out"


def test_report_lays_out_the_varying_axes_and_escapes_user_strings(run_dir):
    res = nst("report", str(run_dir))
    assert res.exit_code == 0, res.output
    html = (run_dir / "report.html").read_text()
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html
    assert "rows: " in html and "optimizer" in html
    assert html.count('<tr class="') == 6  # one table row per job
    assert '<figure class="tile diverged">' in html  # the diverged job's tile, not the CSS
    assert '<tr class="diverged"' in html and "input not found" in html
    assert "ok" in res.output and "diverged" in res.output  # terminal summary


def test_report_axes_can_be_chosen_and_bad_choices_are_named(run_dir):
    ok = nst("report", str(run_dir), "--rows", "content_uri", "--cols", "optimizer")
    assert ok.exit_code == 0
    html = (run_dir / "report.html").read_text()
    assert "rows: content_uri · columns: optimizer" in html
    bad = nst("report", str(run_dir), "--rows", "colour")
    assert bad.exit_code == 1 and "'colour' is not a result column" in bad.output


def test_varying_axes_ignores_constant_parameters():
    rows = [
        {"optimizer": "adam", "size": 16, "lr": 0.1},
        {"optimizer": "sgd", "size": 16, "lr": 0.2},
    ]
    assert set(varying_axes(rows)) == {"optimizer", "lr"}


@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)"
)
def test_report_loads_in_headless_chromium_with_every_image_and_no_console_errors(run_dir):
    from playwright.sync_api import sync_playwright

    assert nst("report", str(run_dir)).exit_code == 0
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((run_dir / "report.html").as_uri())
        page.wait_for_load_state("load")
        images = page.eval_on_selector_all(
            "img", "els => els.map(e => [e.complete, e.naturalWidth])"
        )
        job_rows = page.eval_on_selector_all("#jobs tbody tr", "els => els.length")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        browser.close()
    assert errors == []
    assert images and all(done and width > 0 for done, width in images)
    assert job_rows == 6
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000


def _browser(p):
    return p.chromium.launch(
        executable_path=CHROMIUM,
        args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    )  # fmt: skip


@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)"
)
def test_a_large_report_shows_the_scatter_pareto_front_sampled_sheet_and_pages(tmp_path):
    from helpers import synthetic_run
    from playwright.sync_api import sync_playwright

    from pipeline.report.ranking import pareto_front

    run = synthetic_run(tmp_path / "run", 250)
    assert nst("report", str(run), "--max-tiles", "40", "--color", "lr").exit_code == 0
    rows = pq.read_table(run / "results.parquet").to_pylist()
    front = {r["job_id"] for r in pareto_front(rows)}
    errors: list[str] = []
    with sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((run / "report.html").as_uri())
        page.wait_for_load_state("load")
        dots = page.eval_on_selector_all("#scatter circle", "els => els.length")
        marked = page.eval_on_selector_all(
            "#scatter circle.pareto", "els => els.map(e => e.dataset.job)"
        )
        colours = page.eval_on_selector_all(
            "#scatter circle", "els => new Set(els.map(e => e.getAttribute('fill'))).size"
        )
        assert page.inner_text("#page-info") == "page 1 of 3"
        visible = lambda: page.eval_on_selector_all(  # noqa: E731
            "#jobs tbody tr", "els => els.filter(e => e.offsetParent !== null).map(e => e.id)"
        )
        first_page = visible()
        page.click("#next")
        second_page = visible()
        page.click(".curve-btn")
        curve = page.get_attribute("#curve-line", "points")
        tiles = page.eval_on_selector_all(".sheet .tile", "els => els.length")
        hidden_note = page.inner_text("#hidden-note")
        last = rows[-1]["job_id"]  # on page 3: following its link turns the page
        page.evaluate(f"location.hash = 'job-{last}'")
        page.wait_for_function(f"document.getElementById('job-{last}').offsetParent !== null")
        page.screenshot(path=str(ARTIFACTS / "report-large.png"), full_page=False)
        browser.close()
    assert errors == []
    assert dots == 250 and set(marked) == front and len(front) >= 2
    assert colours == 2  # --color lr: two values
    assert len(first_page) == 100 and len(second_page) == 100
    assert not set(first_page) & set(second_page)
    assert curve and len(curve.split()) >= 5
    assert tiles <= 40 + 8 and "more tiles hidden" in hidden_note


def test_tiles_order_numbers_by_value_and_layer_lists_by_length():
    from pipeline.report.page import _order

    assert sorted([1e8, 1e5, 1e6, 2], key=_order) == [2, 1e5, 1e6, 1e8]
    sweep = [["conv1_1", "conv2_1", "conv3_1"], ["conv1_1"], ["conv1_1", "conv2_1"]]
    assert [len(v) for v in sorted(sweep, key=_order)] == [1, 2, 3]


def test_every_tile_of_a_sampled_sheet_gets_its_thumbnail_even_without_scores(tmp_path):
    """Unscored jobs tie in the ranking: the tiles shown and the thumbnails made must still be
    the same jobs (a tile without one would wrongly read "output missing")."""
    from helpers import synthetic_run

    # 12 contents per cell, 3 tiles each: c10 sorts before c2 by name, not by row order
    run = synthetic_run(tmp_path / "run", 96, scored=False)
    assert nst("report", str(run), "--max-tiles", "24").exit_code == 0
    page = (run / "report.html").read_text()
    assert "more tiles hidden" in page
    assert "output missing" not in page and "no image" not in page


def test_an_axis_with_scores_inside_one_decade_still_has_labels():
    from pipeline.report.figures import _ticks

    logs = [1.0, 1.05, 1.28]  # scores 10 to 19
    ticks = _ticks(logs, lambda v: v * 100)
    assert len(ticks) >= 2 and all(label for _, label in ticks)
    assert [t for _, t in _ticks([0.0, 3.0], lambda v: v)] == ["1e0", "1e1", "1e2", "1e3"]


def test_the_sheet_never_crosses_two_axes_that_group_the_jobs_alike():
    from pipeline.report.page import _choose_axes

    results = [
        {"job_id": f"{c}{s}", "content_uri": c, "style_uris": [s], "tag_style": s.upper(),
         "style_weight": w}
        for c in ("c1", "c2") for s in ("a", "b") for w in (1.0,)
    ]  # fmt: skip
    axes = varying_axes(results)
    rows, cols = _choose_axes(results, axes, None, None)
    assert {rows, cols} != {"tag_style", "style_uris"}
    assert "content_uri" in (rows, cols)


def test_tiles_are_named_inputs_head_the_sheet_and_a_live_run_is_announced(run_dir, tmp_path):

    with lease.held(storage.Store(str(run_dir))):
        res = nst("report", run_dir, "--rows", "content_uri", "--cols", "optimizer")
    assert res.exit_code == 0, res.output
    page = (run_dir / "report.html").read_text()
    assert 'id="live"' in page and "still writing to this output" in page
    assert page.count('<img class="input"') == 2  # each content row with a readable image
    assert ">blowup</b>" in page and ">missing</b>" in page  # job names, not hash ids
    again = nst("report", run_dir)
    assert again.exit_code == 0 and 'id="live"' not in (run_dir / "report.html").read_text()


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
