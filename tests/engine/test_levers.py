"""What users of the peers rely on: early stopping, snapshots, a start image from a file, output
formats, and a listing of layer names."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch
from helpers import job_spec, nst, run_manifest, write_images
from PIL import Image

from nst_ops.loop import Convergence
from nst_ops.transfer import stylize
from nst_ops.vgg import VGGFeatures


@pytest.fixture(scope="module")
def net():
    return VGGFeatures("vgg19", ["relu2_2", "conv1_1", "conv2_1", "conv3_1"], seed=0)


def test_convergence_stops_when_the_best_loss_improves_less_than_tol_over_the_window():
    c = Convergence(tol=0.01, window=2)
    assert [c.check(b) for b in (100.0, 50.0, 40.0, 39.9, 39.8)] == [False] * 4 + [True]
    off = Convergence(tol=0.0, window=2)
    assert not any(off.check(b) for b in (1.0, 1.0, 1.0, 1.0))


def test_early_stopping_ends_a_converged_lbfgs_job_before_its_budget(net, content, style):
    spec = job_spec(optimizer="lbfgs", iterations=300, tol=1e-3, tol_window=10)
    out = stylize(spec, net, content, [style])
    full = stylize(job_spec(optimizer="lbfgs", iterations=300), net, content, [style])
    assert out.converged_at is not None and out.iterations == out.converged_at < 300
    assert out.trace[-1]["iteration"] == out.converged_at
    assert full.iterations == 300 and full.converged_at is None
    # the same run up to there (deterministic): the rule held on the full run's trace
    best = {r["iteration"]: r["total"] for r in full.trace}
    running = [min(best[i] for i in best if i <= k) for k in range(1, out.converged_at + 1)]
    before, now = running[-1 - 10], running[-1]
    assert (before - now) <= 1e-3 * before
    assert out.final["total"] == pytest.approx(now, rel=1e-6)


def test_a_start_image_from_a_file_is_where_the_optimisation_begins(net, content, style):
    start = torch.rand(3, 10, 10, generator=torch.Generator().manual_seed(5))
    spec = job_spec(optimizer="sgd", lr=1e-30, iterations=1, init="start.png")
    out = stylize(spec, net, content, [style], init=start)
    from nst_ops.image_ops import resize

    expected = resize(start, tuple(out.image.shape[-2:]))[0]
    assert torch.allclose(out.image, expected, atol=1e-6)


def test_a_misspelt_init_is_refused_but_paths_and_urls_are_start_images():
    from nst_ops.spec import SpecError

    with pytest.raises(SpecError, match="unknown init 'nosie'"):
        job_spec(init="nosie")
    for ref in ("a/b.png", "s3://bucket/x.jpg", "prev.png"):
        assert job_spec(init=ref).init_image == ref
    assert job_spec(init="content").init_image is None


@pytest.mark.usefixtures("ray_cpu")
def test_snapshots_formats_and_file_init_through_nst_run(tmp_path):
    c = write_images(tmp_path / "c", 1, "c")[0]
    s = write_images(tmp_path / "s", 1, "s")[0]
    start = write_images(tmp_path / "start", 1, "x")[0]
    rows = [
        {
            "content_uri": c,
            "style_uri": s,
            "iterations": 6,
            "save_every": 2,
            "optimizer": "adam",
            "init": "../start/x0.png",
        }
    ]  # relative to the manifest
    (tmp_path / "m").mkdir()
    result, out = run_manifest(tmp_path / "m", rows, "--image-format", "jpeg", "--image-quality",
                               "80")  # fmt: skip
    assert result.exit_code == 0, result.output
    (row,) = pq.read_table(out / "results.parquet").to_pylist()
    assert row["status"] == "ok" and row["image_uri"].endswith("image.jpg")
    assert Image.open(out / row["image_uri"]).format == "JPEG"
    assert [p.rsplit("/", 1)[-1] for p in row["snapshots"]] == ["000002.jpg", "000004.jpg",
                                                                "000006.jpg"]  # fmt: skip
    assert all((out / p).stat().st_size > 0 for p in row["snapshots"])
    assert start in [i["uri"] for i in row["inputs"]], "the start image is fingerprinted"
    assert row["score_style"] is not None, "scored from the saved JPEG"
    again = nst("run", tmp_path / "m" / "m.parquet", "--out", out, "--no-progress")
    assert "0 to run" in again.output, "a JPEG result counts as present"
    (out / row["image_uri"]).unlink()
    status = nst("status", out)
    assert "outputs missing: 1" in status.output


@pytest.mark.usefixtures("ray_cpu")
def test_a_missing_start_image_fails_its_job_with_the_path(tmp_path):
    c = write_images(tmp_path / "c", 1, "c")[0]
    s = write_images(tmp_path / "s", 1, "s")[0]
    rows = [{"content_uri": c, "style_uri": s, "init": str(tmp_path / "nope.png")}]
    result, out = run_manifest(tmp_path, rows)
    (row,) = pq.read_table(out / "results.parquet").to_pylist()
    assert row["status"] == "failed" and "nope.png" in row["error"]


def test_transfer_writes_the_format_its_extension_asks_for(tmp_path):
    c = write_images(tmp_path / "c", 1, "c")[0]
    s = write_images(tmp_path / "s", 1, "s")[0]
    args = ["--set", "weights=random:0", "--set", "size=16", "--set", "iterations=2",
            "--set", "content_layers=relu2_1", "--set", "style_layers=relu1_1",
            "--device", "cpu"]  # fmt: skip
    done = nst("transfer", c, s, tmp_path / "out.webp", *args, "--quality", "70")
    assert done.exit_code == 0, done.output
    assert Image.open(tmp_path / "out.webp").format == "WEBP"
    bad = nst("transfer", c, s, tmp_path / "out.bmpx", *args)
    assert bad.exit_code == 1 and "unknown image extension .bmpx" in bad.output
    assert not (tmp_path / "out.trace.parquet").with_name("out.bmpx").exists()


def test_nst_layers_lists_every_layer_with_channels_and_scale():
    done = nst("layers", "vgg16")
    assert done.exit_code == 0
    for name in ("conv1_1", "relu3_3", "pool5"):
        assert name in done.output
    assert "conv5_4" not in done.output  # vgg19 only
    assert nst("layers", "vgg9").exit_code == 1


def test_new_parameters_at_their_defaults_keep_existing_job_ids():
    from nst_ops.spec import ADDED_LATER

    spec = job_spec()
    for name, default in ADDED_LATER.items():
        assert getattr(spec, name) == default
    assert json.dumps(ADDED_LATER)  # plain values only


def test_amp_auto_turns_bf16_on_only_where_the_device_has_bf16_units(monkeypatch):
    from nst_ops.spec import SpecError
    from pipeline.run import devices as task

    assert job_spec(amp="auto").amp == "auto"
    with pytest.raises(SpecError, match="amp must be true, false or auto"):
        job_spec(amp="yes")
    cpu = torch.device("cpu")
    monkeypatch.setattr(task, "_cpu_has_bf16", lambda: True)
    assert task.amp_enabled("auto", cpu) is True
    monkeypatch.setattr(task, "_cpu_has_bf16", lambda: False)
    assert task.amp_enabled("auto", cpu) is False
    assert task.amp_enabled(True, cpu) is True and task.amp_enabled(False, cpu) is False


@pytest.mark.usefixtures("ray_cpu")
def test_amp_auto_from_a_csv_manifest_runs_and_records_what_it_used(tmp_path):
    from pipeline.run import devices as task

    c = write_images(tmp_path / "c", 1, "c")[0]
    s = write_images(tmp_path / "s", 1, "s")[0]
    (tmp_path / "m.csv").write_text(
        "content_uri,style_uri,weights,size,iterations,amp,content_layers,style_layers\n"
        f"{c},{s},random:0,16,2,auto,relu2_1,relu1_1\n"
    )
    done = nst("run", tmp_path / "m.csv", "--out", tmp_path / "o", "--no-progress")
    assert done.exit_code == 0, done.output
    (row,) = pq.read_table(tmp_path / "o" / "results.parquet").to_pylist()
    assert row["status"] == "ok" and row["amp"] == "auto"
    assert row["amp_used"] == task._cpu_has_bf16()
