"""`nst export`: the network leaves the project as ONNX or TorchScript, for any image size,
giving what `nst apply`'s network gives, with the model's metadata carried along."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import nst, tiny_model

from pipeline.run import images, model_file

PHOTO = Path(__file__).parents[2] / "manifests" / "images" / "content" / "chelsea.jpg"


def real_photo() -> torch.Tensor:
    from nst_ops.image_ops import fit_longer_side

    return fit_longer_side(images.decode(PHOTO.read_bytes(), "chelsea.jpg"), 96)


@pytest.fixture(params=[False, True], ids=["published", "photo_skip"])
def model(tmp_path, request):
    path = tiny_model(tmp_path / "m" / "model.pt", {"steps": 7}, photo_skip=request.param)
    return path, model_file.from_bytes(path.read_bytes(), str(path))


def test_an_onnx_export_takes_any_size_and_matches_the_network(model, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    import onnx

    path, loaded = model
    out = tmp_path / "e" / "starry.onnx"
    r = nst("export", path, "--out", out)
    assert r.exit_code == 0 and "onnx" in r.output, r.output
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    photo = real_photo()
    for x in (torch.rand(1, 3, 37, 50), torch.rand(2, 3, 64, 33), torch.rand(1, 3, 5, 9), photo):
        (y,) = session.run(None, {"image": x.numpy()})
        with torch.no_grad():
            want = loaded.net(x).numpy()
        assert y.shape == want.shape and np.abs(y - want).max() < 1e-4
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    meta = json.loads(props["nst_model"])
    assert meta["steps"] == 7 and props["fingerprint"] == loaded.fingerprint
    assert meta["spec"]["mode"] == "transfer"


def test_a_torchscript_export_takes_any_size_and_carries_the_metadata(model, tmp_path):
    path, loaded = model
    out = tmp_path / "starry.pt"
    r = nst("export", path, "--out", out, "--format", "torchscript")
    assert r.exit_code == 0, r.output
    extra = {"nst_model.json": ""}
    scripted = torch.jit.load(io.BytesIO(out.read_bytes()), _extra_files=extra)
    for x in (torch.rand(1, 3, 37, 50), torch.rand(1, 3, 6, 5), real_photo()):
        with torch.no_grad():
            assert (scripted(x) - loaded.net(x)).abs().max() < 1e-5
    assert json.loads(extra["nst_model.json"])["fingerprint"] == loaded.fingerprint


def test_export_answers_a_wrong_file_or_an_unknown_format_in_one_line(tmp_path):
    bad = tmp_path / "vgg.pth"
    bad.write_bytes(b"not a model")
    r = nst("export", bad, "--out", tmp_path / "x.onnx")
    assert r.exit_code == 1 and "vgg.pth: not a style network file" in r.output
    good = tiny_model(tmp_path / "model.pt")
    r = nst("export", good, "--out", tmp_path / "x.bin")
    assert r.exit_code == 1 and "give --format onnx or torchscript" in r.output
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "x.bin").exists()
