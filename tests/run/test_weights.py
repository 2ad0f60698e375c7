"""Weights files: round trips through paths and fsspec URLs; unsafe or wrong files refused."""

import io
import os
import pickle
from pathlib import Path

import fsspec
import pyarrow.parquet as pq
import pytest
import torch
from helpers import nst, table, write_images

from nst_ops.vgg import VGGFeatures, WeightsError
from pipeline.run.weights import load_state_dict

ROOT = Path(__file__).resolve().parents[2]


def tv_state_dict(layer: str = "relu2_1", full: bool = True) -> dict:
    sd = VGGFeatures("vgg19", [layer], seed=4).features.state_dict()
    return {f"features.{k}" if full else k: v for k, v in sd.items()}


def to_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.mark.parametrize("full", [True, False])
def test_weights_round_trip_through_a_local_path(tmp_path, full):
    sd = tv_state_dict(full=full)
    (tmp_path / "w.pth").write_bytes(to_bytes(sd))
    net = VGGFeatures("vgg19", ["relu2_1"], state_dict=load_state_dict(str(tmp_path / "w.pth")))
    assert torch.equal(
        net.features[5].weight, VGGFeatures("vgg19", ["relu2_1"], seed=4).features[5].weight
    )


def test_weights_round_trip_through_memory_url():
    fs = fsspec.filesystem("memory")
    fs.pipe_file("/weights/w.pth", to_bytes(tv_state_dict()))
    sd = load_state_dict("memory://weights/w.pth")
    assert set(sd) == set(tv_state_dict())


def test_wrong_shape_file_is_refused_naming_the_tensor(tmp_path):
    sd = tv_state_dict()
    sd["features.5.weight"] = torch.zeros(128, 32, 3, 3)
    (tmp_path / "w.pth").write_bytes(to_bytes(sd))
    with pytest.raises(
        WeightsError, match=r"features\.5\.weight \(conv2_1\) has shape \(128, 32, 3, 3\)"
    ):
        VGGFeatures("vgg19", ["relu2_1"], state_dict=load_state_dict(str(tmp_path / "w.pth")))


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/nst_pwned",))


def test_a_pickle_carrying_code_is_refused_and_never_run(tmp_path):
    if os.path.exists("/tmp/nst_pwned"):
        os.remove("/tmp/nst_pwned")
    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"features.0.weight": Exploit()}))
    with pytest.raises(WeightsError, match="holds Python objects, not only tensors") as e:
        load_state_dict(str(tmp_path / "evil.pth"))
    assert not os.path.exists("/tmp/nst_pwned")
    assert "weights_only" not in str(e.value)  # never PyTorch's advice to load it unsafely


def test_a_pickled_module_is_refused_as_not_a_state_dict(tmp_path):
    (tmp_path / "m.pth").write_bytes(to_bytes(torch.nn.Conv2d(3, 4, 3)))
    with pytest.raises(WeightsError, match="not a plain tensor state dict"):
        load_state_dict(str(tmp_path / "m.pth"))


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(WeightsError, match="weights file not found"):
        load_state_dict(str(tmp_path / "none.pth"))


SHARED = os.path.join(
    os.path.dirname(__file__),
    "..",
    "..",
    "manifests",
    "weights",
    "vgg19_tv_features_conv1_1-conv3_1.pth",
)


def test_shipped_partial_imagenet_weights_load_up_to_relu3_1_and_not_beyond():
    sd = load_state_dict(SHARED)
    VGGFeatures("vgg19", ["relu3_1"], state_dict=sd)
    with pytest.raises(WeightsError, match="lack layer conv3_2"):
        VGGFeatures("vgg19", ["relu3_2"], state_dict=sd)


def test_imagenet_weights_come_from_torchvisions_weights_api(monkeypatch):
    import torchvision.models._api as api

    from pipeline.run.weights import imagenet_state_dict

    asked = []

    def fake_load(url, *args, **kwargs):
        asked.append((url, kwargs))
        return tv_state_dict()

    monkeypatch.setattr(api, "load_state_dict_from_url", fake_load)
    sd = imagenet_state_dict("vgg19")
    assert asked[0][0].endswith("/vgg19-dcbb9e9d.pth") and asked[0][1]["check_hash"] is True
    assert "features.0.weight" in sd


def test_imagenet_weights_offline_give_a_clear_error_with_the_staging_hint(monkeypatch):
    import urllib.error

    import torchvision.models._api as api

    from pipeline.run.weights import imagenet_state_dict

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    with pytest.raises(
        WeightsError,
        match="could not fetch torchvision's vgg16 ImageNet weights.*"
        "stage the file and pass its path or URL",
    ):
        imagenet_state_dict("vgg16")


def test_weights_that_are_not_a_vgg_state_dict_are_named_for_what_they_are(tmp_path):
    from nst_ops.vgg import VGGFeatures, WeightsError
    from pipeline.run.weights import load_state_dict

    text = tmp_path / "w.txt"
    text.write_text("hello\n")
    with pytest.raises(WeightsError, match="not a PyTorch state dict file"):
        load_state_dict(str(text))
    resnet = {"conv1.weight": torch.zeros(64, 3, 7, 7), "bn1.weight": torch.zeros(64)}
    with pytest.raises(WeightsError, match="not a VGG16/VGG19 state dict.*conv1.weight"):
        VGGFeatures("vgg19", ["relu1_1"], state_dict=resnet)


def test_validate_loads_each_weights_source_once_and_checks_its_layers(tmp_path):
    c, s = write_images(tmp_path, 2, "w")
    weights = ROOT / "manifests" / "weights" / "vgg19_tv_features_conv1_1-conv3_1.pth"
    rows = [{"content_uri": c, "style_uri": s, "weights": str(weights)}]
    pq.write_table(table(rows), tmp_path / "ok.parquet")
    ok = nst("validate", str(tmp_path / "ok.parquet"))
    assert ok.exit_code == 0 and "1 weights source(s) fit" in ok.output
    deep = [{**rows[0], "style_layers": ["relu1_1", "relu4_1"]}]
    pq.write_table(table(deep), tmp_path / "deep.parquet")
    bad = nst("validate", str(tmp_path / "deep.parquet"))
    assert bad.exit_code == 1 and "weights lack layer conv3_2" in bad.output
