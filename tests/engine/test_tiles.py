"""Tiled optimisation (nst_ops.tiles): the whole image's loss and gradient, tile by tile."""

from __future__ import annotations

import pickle

import pytest
import torch

from nst_ops import transfer
from nst_ops.spec import JobSpec, SpecError
from nst_ops.tile_size import margin_of
from nst_ops.tiles import LocalTiles, TiledObjective, boxes_of, grid
from nst_ops.vgg import VGGFeatures

SHALLOW = {"content_layers": ["relu3_1"], "style_layers": ["relu1_1", "relu2_1", "relu3_1"]}


def _setup(params: dict, hw: tuple[int, int] = (56, 80)):
    spec = JobSpec.from_dict({"weights": "random:0", "size": max(hw), **params})
    ext = VGGFeatures(spec.backbone, spec.active_layers, spec.pooling, seed=0)
    gen = torch.Generator().manual_seed(0)
    content, style = torch.rand(3, *hw, generator=gen), torch.rand(3, 40, 40, generator=gen)
    c, sl, out_hw = transfer._prepare(spec, spec.size, content, [style], torch.device("cpu"))
    targets = transfer.compute_targets(ext, spec, c, sl, out_hw)
    x = torch.rand(2, 3, *out_hw, generator=gen)
    return spec, ext, targets, x, content, style


def _loss_and_grad(objective, x):
    xx = x.clone().requires_grad_(True)
    terms = objective(xx)
    terms.total.sum().backward()
    return terms, xx.grad


@pytest.mark.parametrize("extra", [{}, {"tv_weight": 10.0}, {"mode": "style", "init": "noise"}])
def test_tiled_loss_and_gradient_equal_the_whole_images_where_the_margin_covers_the_field(extra):
    spec, ext, targets, x, _, _ = _setup({**SHALLOW, "tile": 24, **extra})
    whole, g_whole = _loss_and_grad(transfer.make_objective(ext, [spec, spec], targets), x)
    tiles = TiledObjective(ext, [spec, spec], targets.content, targets.style)
    assert len(grid(x.shape[-2:], 24, margin_of(spec))) >= 12  # really tiled
    tiles.exact = False  # as with a smaller margin: the grid moves; the result does not
    for _ in range(3):
        tiled, g_tiled = _loss_and_grad(tiles, x)
        torch.testing.assert_close(tiled.total, whole.total, rtol=1e-5, atol=0)
        for name in whole.terms:
            torch.testing.assert_close(tiled.terms[name], whole.terms[name], rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(g_tiled, g_whole, rtol=0, atol=1e-5 * float(g_whole.abs().max()))


@pytest.mark.parametrize("style_scale", ["content", "own"])
def test_targets_of_a_tiled_job_are_computed_tile_by_tile_and_equal_the_whole_images(style_scale):
    """A print's content and style images are as large as its output: their targets too are
    computed tile by tile, and equal the one-pass targets where the margin covers the field."""
    gen = torch.Generator().manual_seed(1)
    content, style = torch.rand(3, 56, 80, generator=gen), torch.rand(3, 72, 60, generator=gen)
    found = []
    for tile in (0, 24):
        spec = JobSpec.from_dict({"weights": "random:0", "size": 80, "tile": tile,
                                  "style_scale": style_scale, **SHALLOW})  # fmt: skip
        ext = VGGFeatures(spec.backbone, spec.active_layers, spec.pooling, seed=0)
        c, sl, hw = transfer._prepare(spec, spec.size, content, [style], torch.device("cpu"))
        found.append(transfer.compute_targets(ext, spec, c, sl, hw))
    untiled, tiled = found
    for name, t in untiled.content.items():
        torch.testing.assert_close(
            tiled.content[name], t, rtol=1e-5, atol=1e-5 * float(t.abs().max())
        )
    for name, g in untiled.style.items():
        torch.testing.assert_close(
            tiled.style[name], g, rtol=1e-5, atol=1e-5 * float(g.abs().max())
        )


def test_the_grid_stays_put_with_an_exact_margin_and_moves_with_a_smaller_one():
    """A moving grid cuts one more tile per axis (n / tile + 1 pieces, each with margins):
    worth it only where borders would otherwise leave a seam."""
    found = {}
    for margin in (None, 4):
        spec, ext, targets, *_ = _setup({**SHALLOW, "tile": 24, "tile_margin": margin})
        objective = TiledObjective(ext, [spec], targets.content, targets.style)
        found[margin] = {objective.offset() for _ in range(4)}
    assert found[None] == {(0, 0)} and len(grid((56, 80), 24, 16)) == 3 * 4
    assert len(found[4]) == 4


def test_pass_one_runs_every_tile_but_the_largest_without_autograd_and_keeps_that_one(
    monkeypatch,
):
    """The tile pass 2 starts with is one forward pass 1 does not repeat: the largest saves
    the most (1,536 px with 1,024-px tiles: the 1,120-px tile, not the 608-px corner)."""
    spec, ext, targets, x, _, _ = _setup({**SHALLOW, "tile": 24})
    tiles = grid(x.shape[-2:], 24, margin_of(spec))
    largest = max(tiles, key=lambda t: (t.box[1] - t.box[0]) * (t.box[3] - t.box[2]))
    assert largest != tiles[-1]  # the grid's last tile is a corner: smaller
    local = LocalTiles(ext, spec, targets.content, torch.tensor([1.0, 1.0]))
    forwards: list[bool] = []  # per forward of a tile: with autograd?
    extract = ext.features_at
    monkeypatch.setattr(ext, "features_at", lambda *a, **k: (
        forwards.append(torch.is_grad_enabled()), extract(*a, **k))[1])  # fmt: skip
    grams = local.grams(x, tiles)
    assert forwards == [False] * (len(tiles) - 1) + [True] and local._kept.tile == largest
    coef = {n: torch.ones_like(g) * 1e-3 for n, g in grams.items()}
    local.backward(x, tiles, coef)
    assert forwards.count(True) == len(tiles)  # pass 2 did not run the kept tile again


def test_a_worker_given_only_its_tiles_boxes_computes_what_it_would_from_the_image():
    """workers_per_job's halo exchange: a helper gets the boxes of its own tiles (every other
    tile here), not the image, and returns one gradient per box."""
    big = torch.rand(1, 3, 512, 512)
    helpers = grid((512, 512), 256, 32)[1::2]  # the second of two workers' tiles
    area = sum((t.box[1] - t.box[0]) * (t.box[3] - t.box[2]) for t in helpers)
    sent = len(pickle.dumps(boxes_of(big, helpers)))  # what Ray would serialise
    assert area * 12 < sent < 1.05 * area * 12 < 0.7 * len(pickle.dumps(big))

    spec, ext, targets, x, _, _ = _setup({**SHALLOW, "tile": 24})
    shard = grid(x.shape[-2:], 24, margin_of(spec))[1::2]
    boxes = boxes_of(x, shard)
    local = LocalTiles(ext, spec, targets.content, torch.tensor([1.0, 1.0]))
    crop = dict(zip(shard, boxes, strict=True)).__getitem__
    expected = local.grams(x, shard)
    for n, g in local.grams_of(crop, shard).items():
        torch.testing.assert_close(g, expected[n], rtol=1e-6, atol=0)
    coef = {n: torch.rand(g.shape, generator=torch.Generator().manual_seed(2)) * 1e-3
            for n, g in expected.items()}  # fmt: skip
    grad, content = local.backward(x, shard, coef)
    pieces: list = []
    found = local.backward_of(crop, shard, coef, lambda t, g: pieces.append((t, g)))
    torch.testing.assert_close(found, content, rtol=1e-6, atol=0)
    rebuilt = torch.zeros_like(x)
    for t, g in pieces:
        rebuilt[..., t.box[0] : t.box[1], t.box[2] : t.box[3]] += g
    torch.testing.assert_close(rebuilt, grad, rtol=1e-6, atol=1e-9)


def test_a_margin_below_the_receptive_field_is_an_approximation_not_the_same_gradient():
    spec, ext, targets, x, _, _ = _setup({**SHALLOW, "tile": 24, "tile_margin": 4})
    _, g_whole = _loss_and_grad(transfer.make_objective(ext, [spec, spec], targets), x)
    _, g_tiled = _loss_and_grad(
        TiledObjective(ext, [spec, spec], targets.content, targets.style), x
    )
    assert float((g_tiled - g_whole).abs().max()) > 1e-3 * float(g_whole.abs().max())


@pytest.mark.parametrize("offset", [(0, 0), (4, 8), (20, 12)])
def test_tile_cores_cover_every_pixel_once_and_boxes_stay_inside_the_image(offset):
    hw = (57, 83)
    seen = torch.zeros(hw, dtype=torch.int32)
    for t in grid(hw, 24, 16, offset):
        y0, y1, x0, x1 = t.core
        seen[y0:y1, x0:x1] += 1
        by0, by1, bx0, bx1 = t.box
        assert 0 <= by0 <= y0 < y1 <= by1 <= hw[0] and 0 <= bx0 <= x0 < x1 <= bx1 <= hw[1]
        assert by0 % 4 == 0 and bx0 % 4 == 0  # poolings pair the pixels the whole image's do
    assert bool((seen == 1).all())


def test_default_margin_is_the_deepest_layers_receptive_field_on_its_stride():
    assert margin_of(JobSpec.from_dict({**SHALLOW, "tile": 64})) == 16  # relu3_1: 13 -> 16
    assert margin_of(JobSpec.from_dict({"tile": 64})) == 96  # conv5_1: 85 -> 96
    assert margin_of(JobSpec.from_dict({"tile": 64, "tile_margin": 20})) == 32


def _stylize(params: dict):
    common = {**SHALLOW, "init": "content", "iterations": 20, "log_every": 1, **params}
    spec, ext, _, _, content, style = _setup(common, hw=(64, 64))
    out = transfer.stylize(spec, ext, content, [style])
    return min(r["total"] for r in out.trace), _seam_ratio(out.image, 16)


def test_a_tiled_job_reaches_the_untiled_jobs_loss_and_leaves_no_seam_on_its_grid(monkeypatch):
    whole_loss, whole_seam = _stylize({})
    tiled_loss, tiled_seam = _stylize({"tile": 16})
    assert abs(tiled_loss - whole_loss) <= 0.02 * whole_loss
    assert tiled_seam == pytest.approx(whole_seam, rel=0.1)
    # a margin below the receptive field: the moving grid spreads its error, no seam stays
    assert _stylize({"tile": 16, "tile_margin": 4})[1] == pytest.approx(whole_seam, rel=0.1)
    monkeypatch.setattr(TiledObjective, "offset", lambda self: (0, 0))  # a grid that stays put
    assert _stylize({"tile": 16, "tile_margin": 0})[1] > 1.2 * whole_seam  # the seam shows


def _seam_ratio(image: torch.Tensor, tile: int) -> float:
    """Squared differences across the first grid's tile borders over those elsewhere."""
    dx = (image[:, :, 1:] - image[:, :, :-1]).pow(2).mean(0)  # between column j and j+1
    border = torch.zeros(dx.shape[1], dtype=torch.bool)
    border[tile - 1 :: tile] = True
    return float(dx[:, border].mean() / dx[:, ~border].mean())


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"tile": 8}, "tile 8 is too small: at least 32 px"),
        ({"tile": 64, "tile_margin": -1}, "tile_margin must be an integer >= 0"),
        ({"history_size": 0}, "history_size must be an integer >= 1"),
    ],
)
def test_tile_and_history_settings_are_refused_in_our_words(params, message):
    with pytest.raises(SpecError, match=message):
        JobSpec.from_dict(params)
