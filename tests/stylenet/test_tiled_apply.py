"""A style network at print size: applied tile by tile with the whole image's instance-norm
statistics, its output is the one-pass output; `nst apply --tile` does it per photo."""

import pytest
import torch
from helpers import nst, tiny_model

from nst_ops.stylenet import NetConfig, TransformerNet
from nst_ops.stylenet.tiled import receptive_radius, tiled_apply
from pipeline.run import images


def _net(photo_skip: bool, blocks: int = 2) -> TransformerNet:
    torch.manual_seed(0)
    net = TransformerNet(NetConfig(8, blocks, photo_skip=photo_skip)).eval()
    with torch.no_grad():
        for p in net.parameters():  # a trained network's weights are not the init's
            p.add_(0.1 * torch.randn_like(p))
    return net


def _photo(h: int, w: int) -> torch.Tensor:
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(3))
    return torch.nn.functional.avg_pool2d(x, 5, 1, 2)


@pytest.mark.parametrize("photo_skip", [False, True])
@pytest.mark.parametrize("tile", [32, 48])
def test_a_network_applied_tile_by_tile_equals_its_one_pass_output(photo_skip, tile):
    net, x = _net(photo_skip), _photo(90, 131)  # sides not multiples of the tile or of 4
    with torch.no_grad():
        whole = net(x)
    tiled = tiled_apply(net, x, tile)
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-5)
    assert all(type(m).__name__ != "_WholeImageNorm" for m in net.modules())  # restored


def test_the_margin_must_cover_the_networks_receptive_field():
    net, x = _net(False, blocks=1), _photo(96, 96)
    radius = receptive_radius(net)  # 22 px with one block
    with torch.no_grad():
        whole = net(x)
    exact = tiled_apply(net, x, 32, margin=radius)
    short = tiled_apply(net, x, 32, margin=radius - 8)
    assert float((exact - whole).abs().max()) < 1e-5
    assert float((short - whole).abs().max()) > 1e-3


def test_nst_apply_runs_large_photos_tile_by_tile_with_the_same_output(tmp_path):
    from pipeline.run import model_file

    path = tiny_model(tmp_path / "m" / "model.pt", photo_skip=True)
    photos, photo = tmp_path / "photos", _photo(70, 100)
    photos.mkdir()
    (photos / "big.png").write_bytes(images.encode(photo[0]))
    out = tmp_path / "o"
    r = nst("apply", path, "--input", photos, "--out", out, "--tile", "32",
            "--score", "none", "--no-progress", "--precision", "fp32")  # fmt: skip
    assert r.exit_code == 0, r.output
    got = images.decode((out / "images" / "big.png").read_bytes(), "out")
    with torch.no_grad():  # the network in one pass, on the photo as stored
        want = model_file.from_bytes(path.read_bytes(), "m").net(images.decode(
            (photos / "big.png").read_bytes(), "in")[None])[0]  # fmt: skip
    assert got.shape == (3, 70, 100) and (photos / "big.png").exists()
    assert float((got - want).abs().max()) <= 1 / 255 + 1e-6  # PNG's rounding at most
    assert '"tile": 32' in (out / "apply.json").read_text()
