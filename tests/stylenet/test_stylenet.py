"""The collection path: a style network trained with a job's own loss (nst train, Ray
Train), applied to a collection (nst apply, Ray Data), and used to start a refinement."""

import io
import json
import os
import pickle
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
import torch
from helpers import nst, nst_cmd, png_bytes, write_images

from nst_ops.stylenet import NetConfig, StyleObjective, TransformerNet
from nst_ops.vgg import VGGFeatures
from pipeline.run import model_file
from pipeline.stylenet.photos import CropSampler

TINY_JOB = [
    "--set", "size=32", "--set", "iterations=10",  # the held-aside reference optimisation
    "--set", "weights=random:0", "--set", "content_layers=relu2_1",
    "--set", "style_layers=relu1_1,relu2_1", "--set", "style_weight=1e4",
]  # fmt: skip
TINY_NET = ["--crop", "32", "--width", "4", "--residual-blocks", "1", "--batch-size", "2"]
COARSE = ["--coarse-steps", "2"]  # of 6: the first two on 16-px crops


def smooth_photos(folder: Path, n: int, size: int = 48) -> list[str]:
    """Photos with structure (blurred noise), so crops differ and content loss means something."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        g = torch.Generator().manual_seed(i)
        x = torch.nn.functional.avg_pool2d(torch.rand(1, 3, size, size, generator=g), 5, 1, 2)
        from pipeline.run import images

        p = folder / f"p{i}.png"
        p.write_bytes(images.encode(x[0]))
        paths.append(str(p))
    return paths


# --- the network and its objective (nst_ops, no Ray) ---------------------------------------


def test_the_network_keeps_any_input_size_and_the_0_1_range():
    net = TransformerNet(NetConfig(width=4, residual_blocks=1))
    for h, w in ((17, 23), (32, 32), (5, 9)):
        y = net(torch.rand(2, 3, h, w))
        assert y.shape == (2, 3, h, w)
        assert 0 <= float(y.min()) and float(y.max()) <= 1


def test_a_photo_skip_network_starts_as_the_photo_and_stays_in_range():
    x = torch.rand(2, 3, 17, 23).clamp(0.01, 0.99)
    net = TransformerNet(NetConfig(width=4, residual_blocks=1, photo_skip=True))
    assert torch.allclose(net(x), x, atol=1e-6)  # untrained: the photo itself, not grey noise
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    y = net(torch.rand(1, 3, 16, 16))
    assert not torch.allclose(y, x[:1, :, :16, :16]) and 0 <= float(y.min()) <= float(y.max()) <= 1


def test_a_network_file_written_before_photo_skip_loads_as_the_published_network():
    assert NetConfig(**{"width": 4, "residual_blocks": 1}).photo_skip is False
    with pytest.raises(ValueError, match="photo_skip must be true or false"):
        NetConfig(4, 1, photo_skip="yes")  # type: ignore[arg-type]


def test_the_cosine_schedule_falls_from_lr_to_zero_at_the_last_step():
    from pipeline.stylenet.train_settings import TrainSettings

    s = TrainSettings("o", {}, [], [], [], steps=100, lr=1e-3, lr_schedule="cosine")
    assert [round(s.lr_at(k), 9) for k in (0, 50, 100, 150)] == [1e-3, 5e-4, 0, 0]
    assert TrainSettings("o", {}, [], [], [], steps=100, lr=1e-3).lr_at(100) == 1e-3


def test_the_published_width_has_the_published_parameter_count():
    from nst_ops.stylenet.network import parameter_count

    assert 1.6e6 < parameter_count(TransformerNet()) < 1.75e6  # pytorch/examples: ~1.7 M


def test_a_small_network_trained_for_a_few_steps_lowers_the_jobs_loss(tmp_path):
    from helpers import job_spec

    spec = job_spec(mode="transfer")
    torch.manual_seed(0)
    vgg = VGGFeatures(spec.backbone, ["relu3_1"], seed=0)
    style = torch.rand(3, 40, 40, generator=torch.Generator().manual_seed(9))
    objective = StyleObjective(vgg, spec, [style], crop=32)
    sampler = CropSampler(smooth_photos(tmp_path, 4), crop=32, seed=0)
    net = TransformerNet(NetConfig(width=4, residual_blocks=1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    fixed = sampler.batch(0, 4)
    before = float(objective(net(fixed), fixed).total.mean())
    for step in range(1, 41):
        x = sampler.batch(step, 4)
        loss = objective(net(x), x).total.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = float(objective(net(fixed), fixed).total.mean())
    assert after < 0.7 * before, (before, after)


def test_crops_depend_only_on_seed_rank_and_step(tmp_path):
    photos = smooth_photos(tmp_path, 3)
    a, b = CropSampler(photos, 16, seed=1), CropSampler(photos, 16, seed=1)
    assert torch.equal(a.batch(5, 3), b.batch(5, 3))  # a resumed run draws the same batches
    assert not torch.equal(a.batch(5, 3), a.batch(6, 3))
    assert not torch.equal(a.batch(5, 3), CropSampler(photos, 16, 1, rank=1).batch(5, 3))


# --- the model file ---------------------------------------------------------------------------


def test_a_model_file_round_trips_weights_metadata_and_style():
    net = TransformerNet(NetConfig(width=4, residual_blocks=1))
    style = torch.rand(3, 10, 12)
    data = model_file.to_bytes(net, net.config, {"spec": {"mode": "transfer"}, "steps": 3}, [style])
    m = model_file.from_bytes(data, "m.pt")
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(m.net(x), net.eval()(x)) and m.meta["steps"] == 3
    assert (m.styles[0] - style).abs().max() <= 0.5 / 255 + 1e-6
    assert m.fingerprint == model_file.fingerprint_bytes(data)


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/nst-pwned",))


@pytest.mark.parametrize("kind", ["vgg state dict", "pickled code", "garbage", "truncated"])
def test_a_wrong_model_file_is_refused_naming_it_and_running_nothing(kind):
    good = model_file.to_bytes(TransformerNet(NetConfig(4, 1)), NetConfig(4, 1), {}, [])
    data = {
        "vgg state dict": _saved({"features.0.weight": torch.zeros(1)}),
        "pickled code": pickle.dumps(Payload()),
        "garbage": b"not a model at all",
        "truncated": good[: len(good) // 2],
    }[kind]
    with pytest.raises(model_file.ModelError, match="bad.pt: not a style network file"):
        model_file.from_bytes(data, "bad.pt")
    assert not Path("/tmp/nst-pwned").exists()


def _saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


# --- nst train on Ray Train -------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One real 2-worker (gloo, data-parallel) training, shared by the tests that need a model."""
    from conftest import start_ray

    start_ray(0)
    root = tmp_path_factory.mktemp("train")
    smooth_photos(root / "photos", 5)
    style = root / "style.png"
    style.write_bytes(png_bytes(40, 40, seed=3))
    out = root / "model"
    result = nst("train", style, "--content", root / "photos", "--out", out, "--steps", "6",
                 "--checkpoint-every", "3", "--sample-every", "3", "--workers", "2",
                 *TINY_NET, *COARSE, *TINY_JOB)  # fmt: skip
    assert result.exit_code == 0, result.output
    return out, root


def test_two_ray_train_workers_write_one_model_with_its_trace_and_samples(trained):
    out, root = trained
    m = model_file.from_bytes((out / "model.pt").read_bytes(), "model.pt")
    assert m.meta["workers"] == 2 and m.meta["steps"] == 6 and m.meta["photos"] == 4
    assert m.meta["spec"]["style_weight"] == 1e4 and m.meta["holdout"] == [
        str(root / "photos/p4.png")
    ]
    assert m.meta["holdout_scores"]["images"] == 1
    assert m.meta["net"]["photo_skip"] is True and m.meta["lr_schedule"] == "constant"
    assert m.meta["coarse_steps"] == 2 and m.meta["coarse_crop"] == 16
    trace = pq.read_table(out / "trace.parquet").to_pylist()
    assert [r["step"] for r in trace] == [1, 2, 3, 4, 5, 6]
    assert [r["crop"] for r in trace] == [16, 16, 32, 32, 32, 32]
    assert all(r["total"] > 0 for r in trace)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step-000003.pt", "step-000006.pt"]  # fmt: skip
    assert sorted(p.parent.name for p in (out / "samples").glob("*/0.png")) == [
        "step-000003", "step-000006"]  # fmt: skip


def test_a_finished_training_run_again_does_nothing_and_other_settings_are_refused(trained):
    out, root = trained
    before = (out / "model.pt").read_bytes()
    again = nst("train", root / "style.png", "--content", root / "photos", "--out", out,
                "--steps", "6", "--workers", "2", *TINY_NET, *COARSE, *TINY_JOB)  # fmt: skip
    assert again.exit_code == 0, again.output
    other = nst("train", root / "style.png", "--content", root / "photos", "--out", out,
                "--steps", "6", *TINY_NET, *TINY_JOB[:-2], "--set", "style_weight=1e5")  # fmt: skip
    assert other.exit_code == 1 and "spec differ" in other.output and "new --out" in other.output
    assert (out / "model.pt").read_bytes() == before


def test_a_killed_training_resumes_from_its_last_checkpoint_to_the_requested_steps(tmp_path):
    smooth_photos(tmp_path / "photos", 3)
    style = tmp_path / "style.png"
    style.write_bytes(png_bytes(40, 40, seed=3))
    out = tmp_path / "model"
    args = nst_cmd("train", style, "--content", tmp_path / "photos", "--out", out, "--steps",
                   "200", "--checkpoint-every", "2", "--sample-every", "1000", *TINY_NET,
                   *TINY_JOB)  # fmt: skip
    env = {**os.environ, "RAY_worker_niceness": "0"}
    proc = subprocess.Popen(args, env=env, start_new_session=True, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not list(out.glob("checkpoints/step-*.pt")) and time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its embedded Ray, mid-training
    proc.wait()
    assert not (out / "model.pt").exists(), "training finished before the kill"
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "resuming from the checkpoint at step" in done.stderr
    m = model_file.from_bytes((out / "model.pt").read_bytes(), "model.pt")
    assert m.meta["steps"] == 200
    steps = [r["step"] for r in pq.read_table(out / "trace.parquet").to_pylist()]
    assert steps == list(range(1, 201))  # each step once: the kill lost only uncheckpointed ones


# --- nst apply on Ray Data --------------------------------------------------------------------


def kill_first_actor_after_first_part(out: Path, killed: list, stop: threading.Event) -> None:
    """SIGKILL a Ray Data actor of this test process once the first batch has committed."""
    me = psutil.Process()
    while not stop.is_set() and not killed:
        if list(out.glob("parts/*.parquet")):
            for p in me.children(recursive=True):
                try:
                    if p.cmdline() and p.cmdline()[0].startswith("ray::MapWorker"):
                        p.send_signal(signal.SIGKILL)
                        killed.append(p.pid)
                        return
                except psutil.Error:
                    continue
        time.sleep(0.01)


def test_apply_writes_each_good_image_once_despite_a_corrupt_one_and_a_killed_worker(
    trained, tmp_path
):
    model = trained[0] / "model.pt"
    coll = tmp_path / "coll"
    write_images(coll / "a", 150, "x")
    write_images(coll / "b" / "c", 150, "y")
    (coll / "b" / "broken.png").write_bytes(png_bytes()[:40])  # truncated
    out = tmp_path / "out"
    killed, stop = [], threading.Event()
    killer = threading.Thread(target=kill_first_actor_after_first_part, args=(out, killed, stop))
    killer.start()
    try:
        first = nst("apply", model, "--input", coll, "--out", out, "--batch-size", "8",
                    "--no-progress", "--score", "5",
                    "--summary-json", tmp_path / "s.json")  # fmt: skip
    finally:
        stop.set()
        killer.join()
    assert first.exit_code == 0, first.output
    assert killed, "no Ray Data actor was seen to kill"
    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert len(rows) == 301 and len({r["input"] for r in rows}) == 301
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 300
    (bad,) = [r for r in rows if r["status"] == "failed"]
    assert bad["input"] == "b/broken.png" and "broken.png: not an image file" in bad["error"]
    written = sorted(str(p.relative_to(out)) for p in (out / "images").rglob("*.png"))
    assert written == sorted(r["output"] for r in ok)
    assert all(r["out_width"] == 20 and r["model_fingerprint"] for r in ok)
    assert sum(r["score_content"] is not None for r in ok) == 5
    assert not list(out.glob("parts/*"))  # compacted into results.parquet
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["status"] == {"failed": 1, "ok": 300} and summary["failed_inputs"] == [
        "b/broken.png"]  # fmt: skip
    record = json.loads((out / "apply.json").read_text())
    assert record["model_fingerprint"] == ok[0]["model_fingerprint"]

    again = nst("apply", model, "--input", coll, "--out", out, "--no-progress")
    assert again.exit_code == 0 and "0 to do (nothing to do)" in again.output
    changed = coll / "a" / "x3.png"
    changed.write_bytes(png_bytes(24, 12, seed=99))
    before = {r["input"]: r["finished_at"] for r in rows}
    third = nst("apply", model, "--input", coll, "--out", out, "--no-progress", "--strict")
    assert third.exit_code == 3 and "1 to do (input changed 1)" in third.output
    now = {r["input"]: r for r in pq.read_table(out / "results.parquet").to_pylist()}
    assert now["a/x3.png"]["out_width"] == 24 and now["a/x3.png"]["status"] == "ok"
    assert all(now[k]["finished_at"] == v for k, v in before.items() if k != "a/x3.png")


def test_apply_resizes_to_size_in_bf16_and_writes_the_chosen_format(trained, tmp_path):
    coll = tmp_path / "c"
    write_images(coll, 3, "i")
    out = tmp_path / "o"
    r = nst("apply", trained[0] / "model.pt", "--input", coll, "--out", out, "--size", "40",
            "--image-format", "jpeg", "--precision", "bf16", "--no-progress",
            "--score", "none")  # fmt: skip
    assert r.exit_code == 0, r.output
    from PIL import Image

    sizes = {Image.open(p).size for p in (out / "images").glob("*.jpg")}
    assert sizes == {(40, 32)}


def test_apply_refuses_a_file_that_is_not_a_model(tmp_path):
    bad = tmp_path / "vgg.pth"
    bad.write_bytes(_saved({"features.0.weight": torch.zeros(1)}))
    r = nst("apply", bad, "--input", tmp_path, "--out", tmp_path / "o", "--no-progress")
    assert r.exit_code == 1 and "vgg.pth: not a style network file" in r.output
    assert not (tmp_path / "o").exists()


# --- refinement: init=model: ------------------------------------------------------------------


def test_refinement_starts_from_the_networks_output_and_lowers_the_loss(trained, tmp_path):
    from helpers import job_spec

    from pipeline.jobs.job import Job
    from pipeline.run.options import RunOptions
    from pipeline.run.task import run_job

    model = trained[0] / "model.pt"
    content = write_images(tmp_path / "c", 1, "c")[0]
    style = str(trained[1] / "style.png")
    spec = job_spec(init=f"model:{model}", optimizer="adam", lr=0.01, iterations=10,
                    content_layers=("relu2_1",), style_layers=("relu1_1", "relu2_1"))  # fmt: skip
    row = run_job(Job(spec, content, (style,), 0), RunOptions(out=str(tmp_path / "o")))
    assert row["status"] == "ok", row.get("error")
    assert str(model) in {i["uri"] for i in row["inputs"]}  # fingerprinted: a new model redoes it
    trace = pq.read_table(tmp_path / "o" / row["trace_uri"]).to_pylist()
    assert trace[-1]["total"] < trace[0]["total"]
    from nst_ops.spec import JobSpec, SpecError

    with pytest.raises(SpecError, match="init=model: starts from a stylised content image"):
        JobSpec(mode="style", init=f"model:{model}")


# --- report and registry ----------------------------------------------------------------------


def test_report_of_an_apply_run_compares_network_optimisation_and_refinement(trained, tmp_path):
    from helpers import run_manifest

    model, style = trained[0] / "model.pt", str(trained[1] / "style.png")
    coll = tmp_path / "coll"
    photos = write_images(coll, 2, "<b>x")  # a name that would be markup
    a = nst("apply", model, "--input", coll, "--out", tmp_path / "a", "--no-progress",
            "--score", "all")  # fmt: skip
    assert a.exit_code == 0, a.output
    rows = [{"content_uri": p, "style_uri": style, "init": init, "optimizer": "adam"}
            for p in photos for init in ("content", f"model:{model}")]  # fmt: skip
    # the network's objective (its size, beta): only such jobs compare with it
    r, run = run_manifest(tmp_path, rows, "--evaluator", "{}", size=32, style_weight=1e4)
    assert r.exit_code == 0, r.output
    rep = nst("report", tmp_path / "a", "--compare", run)
    assert rep.exit_code == 0, rep.output
    assert "images 2, ok 2, failed 0, scored 2" in rep.output
    page = (tmp_path / "a" / "report.html").read_text()
    assert "Network vs optimisation vs refinement" in page
    assert page.count("<tr><td>&lt;b&gt;x") == 2 and "<b>x" not in page
    assert page.count('<img src="data:image/jpeg') == 2 * 2 + 2 * 3  # sheet pairs + 3 per row
    assert page.count("unstyled: ") == 2  # every compared photo's zero point
    assert "How far from the optimiser" in page and "(photo − result) / (photo − optimised)" in page


def test_each_compared_result_states_the_share_of_the_gap_it_closes():
    from pipeline.stylenet.apply_report import _closures

    c = _closures({"photo": 10.0, "network": {"loss": 6.0}, "optimised": {"loss": 2.0},
                   "refined": {"loss": 2.5}})  # fmt: skip
    assert (c["network"]["closure"], c["optimised"]["closure"]) == (0.5, 1.0)
    assert c["refined"]["closure"] == pytest.approx(0.9375)
    worse = _closures({"photo": 1.0, "network": {"loss": 2.0}, "optimised": {"loss": 3.0}})
    assert worse["network"]["closure"] is None  # the optimiser did not improve on the photo


def test_models_lists_every_trained_network_with_its_parameters(trained, tmp_path):
    r = nst("models", trained[0].parent, "--json")
    assert r.exit_code == 0, r.output
    (row,) = [json.loads(line) for line in r.output.splitlines()]
    assert row["style_weight"] == 1e4 and row["steps"] == 6 and row["width"] == 4
    assert row["holdout_score"] > 0 and row["error"] is None
    none = nst("models", tmp_path)
    assert none.exit_code == 1 and "no model.pt" in none.output


def test_a_relative_model_path_in_a_manifest_is_relative_to_the_manifest(tmp_path):
    import pyarrow as pa

    from pipeline.jobs.manifest import resolve_paths

    t = pa.table({"content_uri": ["c.png"], "init": ["model:models/m.pt"]})
    out = resolve_paths(t, str(tmp_path / "m.parquet")).column("init").to_pylist()
    assert out == [f"model:{tmp_path}/models/m.pt"]
    absolute = pa.table({"init": ["model:s3://b/m.pt"]})
    assert resolve_paths(absolute, str(tmp_path / "m.parquet")).column("init").to_pylist() == [
        "model:s3://b/m.pt"
    ]


def test_the_plan_redoes_exactly_new_changed_other_model_missing_and_with_retry_failed():
    import pyarrow as pa

    from pipeline.stylenet import apply_record
    from pipeline.stylenet.apply import plan

    names = ["new", "same", "changed", "model", "gone", "failed"]
    listing = pa.table({"input": names, "input_uri": names, "input_fingerprint": ["f"] * 6})
    done = apply_record.table(
        {"input": n, "input_fingerprint": "old" if n == "changed" else "f", "output": f"o/{n}",
         "status": "failed" if n == "failed" else "ok",
         "model_fingerprint": "other" if n == "model" else "m"}
        for n in names[1:]
    )  # fmt: skip
    outputs = pa.array([f"o/{n}" for n in ("same", "changed", "model", "failed")])
    todo, why = plan(listing, done, outputs, "m", retry_failed=False)
    assert sorted(todo.column("input").to_pylist()) == ["changed", "gone", "model", "new"]
    assert why == {"new": 1, "input changed": 1, "other model": 1, "output missing": 1}
    todo, why = plan(listing, done, outputs, "m", retry_failed=True)
    assert "failed" in todo.column("input").to_pylist() and why["retry failed"] == 1


def test_a_second_apply_into_a_live_output_exits_4_and_writes_nothing(trained, tmp_path):
    from pipeline.run import lease
    from pipeline.store import storage

    coll = tmp_path / "c"
    write_images(coll, 2, "i")
    out = tmp_path / "o"
    with lease.held(storage.Store(str(out))):
        r = nst("apply", trained[0] / "model.pt", "--input", coll, "--out", out, "--no-progress")
    assert r.exit_code == 4 and "another nst run is writing" in r.output
    assert sorted(p.name for p in out.iterdir()) == []


def test_train_from_a_committed_job_takes_its_parameters_and_style(tmp_path):
    from conftest import start_ray
    from helpers import run_manifest

    start_ray(0)
    photos = smooth_photos(tmp_path / "photos", 3)
    style = tmp_path / "style.png"
    style.write_bytes(png_bytes(40, 40, seed=3))
    rows = [{"content_uri": photos[0], "style_uri": str(style), "style_weight": 3e3,
             "tv_weight": 0.5}]  # fmt: skip
    r, run = run_manifest(tmp_path, rows)
    assert r.exit_code == 0, r.output
    (job_id,) = [p.name for p in (run / "jobs").iterdir()]
    (tmp_path / "list.txt").write_text("\n".join(photos) + "\n")
    out = tmp_path / "model"
    t = nst("train", "--content", tmp_path / "list.txt", "--from-job", run, job_id, "--out", out,
            "--steps", "2", "--holdout", "0", *TINY_NET, "--set", "content_weight=2")  # fmt: skip
    assert t.exit_code == 0, t.output
    m = model_file.from_bytes((out / "model.pt").read_bytes(), "m")
    assert m.meta["spec"]["style_weight"] == 3e3 and m.meta["spec"]["tv_weight"] == 0.5
    assert m.meta["spec"]["content_weight"] == 2  # --set wins over the job's value
    assert m.meta["style_uris"] == [str(style)] and m.meta["photos"] == 3
    assert m.meta["from_job"] == {"run": str(run), "job_id": job_id}
    bad = nst("train", "--content", tmp_path / "photos", "--from-job", run, "0" * 20, "--out",
              tmp_path / "m2")  # fmt: skip
    assert bad.exit_code == 1 and "is not committed in" in bad.output
