"""`nst train` on real inputs: bad photos found before step 1, reruns that bind only what was
really started, a finished model never rewritten with false metadata, a live line, Ctrl-C."""

import json
import os
import signal
import subprocess
import time

import pytest
import torch
from helpers import nst, nst_cmd, png_bytes, tiny_model, write_images

from pipeline.errors import NstError
from pipeline.store import storage
from pipeline.stylenet import layout
from pipeline.stylenet.photos import list_photos, probe_photos
from pipeline.stylenet.train import check_rerun, check_steps
from pipeline.stylenet.train_progress import TrainProgress
from pipeline.stylenet.train_settings import TrainSettings

TINY = ["--crop", "32", "--width", "4", "--residual-blocks", "1", "--batch-size", "2",
        "--set", "weights=random:0", "--set", "content_layers=relu2_1",
        "--set", "style_layers=relu1_1,relu2_1", "--no-reference"]  # fmt: skip


def settings(out, photos, steps=10) -> TrainSettings:
    return TrainSettings(str(out), {"mode": "transfer"}, ["s.png"], photos, [], steps=steps)


def test_every_photo_is_probed_before_training_and_a_bad_one_is_skipped_saying_why(tmp_path):
    good = write_images(tmp_path / "photos", 3, "p")
    (tmp_path / "photos" / "torn.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    photos, skipped = probe_photos(list_photos([str(tmp_path / "photos")]), None, 10**8)
    assert photos == good
    assert len(skipped) == 1 and "torn.jpg: corrupt or truncated image" in skipped[0]


def test_a_coarse_schedule_that_leaves_no_full_crop_step_is_refused_before_any_photo_is_read(
    tmp_path, monkeypatch
):
    from pipeline.stylenet import train

    write_images(tmp_path / "photos", 2, "p")
    (tmp_path / "s.png").write_bytes(png_bytes(32, 32))
    monkeypatch.setattr(train, "probe_photos", lambda *a: pytest.fail("photos probed first"))
    r = nst("train", tmp_path / "s.png", "--content", tmp_path / "photos", "--out",
            tmp_path / "m", "--steps", "10", "--coarse-steps", "10", *TINY)  # fmt: skip
    assert r.exit_code == 1 and "--coarse-steps 10: must be below --steps 10" in r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "m").exists()


def test_a_relative_weights_path_reaches_the_training_workers_absolute(tmp_path, monkeypatch):
    from pipeline.stylenet import train

    write_images(tmp_path / "photos", 2, "p")
    (tmp_path / "s.png").write_bytes(png_bytes(32, 32))
    (tmp_path / "w").mkdir()
    torch.save({}, tmp_path / "w" / "vgg.pth")
    seen = []
    monkeypatch.setattr(train, "train", lambda s, *a: seen.append(s) or {"steps": 1,
                        "final_loss": 1.0})  # fmt: skip
    monkeypatch.chdir(tmp_path)  # Ray Train's workers run elsewhere: ./w/vgg.pth names nothing
    r = nst("train", "s.png", "--content", "photos", "--out", "m", "--steps", "2",
            *TINY[:-7], *TINY[-5:-1], "--set", "weights=w/vgg.pth", "--no-reference")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert seen[0].spec["weights"] == str(tmp_path / "w" / "vgg.pth")
    assert seen[0].style_uris == [str(tmp_path / "s.png")] and seen[0].out == str(tmp_path / "m")


def test_a_list_files_relative_entries_are_relative_to_the_list(tmp_path, monkeypatch):
    write_images(tmp_path / "photos", 2, "p")
    (tmp_path / "list.txt").write_text("photos/p0.png\nphotos/p1.png\n")
    monkeypatch.chdir(tmp_path / "photos")  # elsewhere: the list decides, not the cwd
    assert list_photos(["../list.txt"]) == [str(tmp_path / "photos" / f"p{i}.png") for i in (0, 1)]


def test_a_start_that_reached_no_checkpoint_does_not_bind_the_next_command(tmp_path):
    store = storage.Store(str(tmp_path))
    earlier = settings(tmp_path, ["/elsewhere/relative/photo.png"])
    store.put_json(layout.TRAIN_SETTINGS, {"identity": earlier.identity(), "steps": 10})
    now = settings(tmp_path, ["/work/photos/photo.png"])
    check_rerun(store, now)  # the failed start left train.json only: no refusal
    store.put(layout.checkpoint(5), b"x")
    with pytest.raises(NstError, match="photos differ"):
        check_rerun(store, now)


def test_fewer_steps_than_a_finished_model_or_checkpoint_are_refused(tmp_path):
    store = storage.Store(str(tmp_path))
    tiny_model(tmp_path / layout.MODEL, {"steps": 25})
    before = (tmp_path / layout.MODEL).read_bytes()
    with pytest.raises(NstError, match="at step 25; --steps 10 would not train"):
        check_steps(store, settings(tmp_path, [], steps=10))
    check_steps(store, settings(tmp_path, [], steps=25))
    check_steps(store, settings(tmp_path, [], steps=40))
    assert (tmp_path / layout.MODEL).read_bytes() == before


class FakeQueue:
    def __init__(self, rows):
        self.rows = list(rows)

    def get(self, timeout):
        from ray.util.queue import Empty

        if not self.rows:
            raise Empty
        return self.rows.pop(0)


def test_the_live_line_shows_step_loss_rate_and_time_left(capsys):
    rows = [{"step": s, "total": 100.0 / s, "images_per_s": 4.0} for s in (11, 12)]
    with TrainProgress(20, 10, True, FakeQueue(rows), every=0.0) as bar:
        bar.follow(0.01)
        bar.follow(0.01)
    err = capsys.readouterr().err
    assert "nst train: step 12/20 · loss 8.333 · 4.00 images/s" in err and "min left" in err
    with TrainProgress(20, 10, False, FakeQueue(rows), every=0.0) as quiet:
        quiet.follow(0.01)
    assert capsys.readouterr().err == ""


def test_one_embedded_worker_trains_with_the_machines_cpus():
    from pipeline.cli.collections import _worker_cpus

    assert _worker_cpus(None, 1, None) == float(os.cpu_count() or 1)
    assert _worker_cpus(None, 2, None) == float(max(1, (os.cpu_count() or 1) // 2))
    assert _worker_cpus(None, 1, "auto") == 1.0 and _worker_cpus(3.0, 1, None) == 3.0


def test_a_model_file_with_the_marker_but_a_wrong_record_is_refused_in_one_line(tmp_path):
    from nst_ops.stylenet import NetConfig, TransformerNet
    from pipeline.run import model_file

    tiny_model(tmp_path / "good" / "model.pt")
    for name, meta in (("empty", {}), ("list", [])):
        path = tmp_path / name / "model.pt"
        path.parent.mkdir()
        net = TransformerNet(NetConfig(4, 1))
        data = model_file.to_bytes(net, net.config, meta, [torch.rand(3, 8, 8)])  # type: ignore
        path.write_bytes(data)
        with pytest.raises(model_file.ModelError, match=f"{name}/model.pt: damaged"):
            model_file.from_bytes(data, str(path))
        r = nst("apply", path, "--input", tmp_path, "--out", tmp_path / "o", "--no-progress")
        assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output
        assert "damaged style network file" in r.output and "Warning" not in r.output
    listing = nst("models", tmp_path, "--json")
    assert listing.exit_code == 0, listing.output
    found = [json.loads(line) for line in listing.output.splitlines() if line.startswith("{")]
    assert [bool(r["error"]) for r in found] == [True, False, True]  # empty, good, list
    w = write_images(tmp_path / "c", 2, "c")
    m = tmp_path / "m.parquet"
    made = nst("make-manifest", m, "--content", w[0], "--style", w[1],
               "--set", f"init=model:{tmp_path / 'empty' / 'model.pt'}")  # fmt: skip
    assert made.exit_code == 0, made.output
    v = nst("validate", m)
    assert v.exit_code == 1 and "damaged style network file" in v.output, v.output


def test_a_grid_axis_over_init_keeps_a_named_start_next_to_a_model(tmp_path):
    import pyarrow.parquet as pq

    c, s = write_images(tmp_path, 2, "x")
    model = tiny_model(tmp_path / "m.pt")
    r = nst("make-manifest", tmp_path / "m.parquet", "--content", c, "--style", s,
            "--set", f"init=model:{model},content")  # fmt: skip
    assert r.exit_code == 0, r.output
    (inits,) = pq.read_table(tmp_path / "m.parquet").column("init").to_pylist()
    assert inits[1] == "content" and inits[0].startswith("model:")
    plan = nst("plan", tmp_path / "m.parquet")
    assert plan.exit_code == 0 and "2 jobs" in plan.output, plan.output


def _ctrl_c_as_in_a_terminal() -> None:
    """A shell starts background jobs with SIGINT ignored, and Python then never raises
    KeyboardInterrupt: the child gets the default, as a foreground command would (so the test
    holds when the suite itself runs in the background)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_a_training_with_130_and_says_how_to_resume(tmp_path):
    write_images(tmp_path / "photos", 3, "p")
    (tmp_path / "s.png").write_bytes(png_bytes(40, 40, seed=3))
    out = tmp_path / "model"
    cmd = nst_cmd("train", tmp_path / "s.png", "--content", tmp_path / "photos", "--out", out,
                  "--steps", "100000", "--checkpoint-every", "5", *TINY)  # fmt: skip
    env = {**os.environ, "RAY_worker_niceness": "0"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_ctrl_c_as_in_a_terminal)  # fmt: skip
    deadline = time.time() + 240
    while not (out / "checkpoints").exists():  # training is under way
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted: checkpoints are kept; run the same command to resume" in err
    assert list((out / "checkpoints").glob("step-*.pt"))


def test_status_of_a_training_root_says_how_far_it_is(tmp_path):
    store = storage.Store(str(tmp_path))
    store.put_json(layout.TRAIN_SETTINGS, {"identity": {}, "steps": 10})
    store.put(layout.checkpoint(5), b"x")
    r = nst("status", tmp_path)
    assert r.exit_code == 0 and "training: step 5 of 10 · no model.pt yet" in r.output, r.output
