"""The job, the evaluator and the network agree on what the style target is: the network is
trained toward exactly the loss its outputs are judged by (the job's own objective at the
output's shape and style preparation), for photos of any aspect; the evaluator prepares each
style as its job did and says so in score_by."""

import dataclasses

import pytest
import torch
from helpers import job_spec

from nst_ops.evaluator import default_evaluator, score_key
from nst_ops.image_ops import fit_longer_side, resize
from nst_ops.job_loss import job_losses
from nst_ops.scores import scores
from nst_ops.stylenet import StyleObjective
from nst_ops.vgg import VGGFeatures
from pipeline.errors import NstError
from pipeline.run import images, scoring
from pipeline.store import storage
from pipeline.stylenet import layout
from pipeline.stylenet.photos import CropSampler
from pipeline.stylenet.train import check_rerun
from pipeline.stylenet.train_settings import TrainSettings, parse_aspects


@pytest.mark.parametrize("style_scale", ["content", "own"])
@pytest.mark.parametrize("hw", [(24, 32), (32, 24), (32, 32)])
def test_the_training_loss_of_an_output_is_the_jobs_own_loss_at_its_shape(style_scale, hw, style):
    spec = job_spec(mode="transfer", size=32, style_scale=style_scale)
    vgg = VGGFeatures(spec.backbone, spec.active_layers, seed=0)
    g = torch.Generator().manual_seed(3)
    photo, output = torch.rand(3, *hw, generator=g), torch.rand(3, *hw, generator=g)
    trained_on = StyleObjective(vgg, spec, [style], crop=32)(output[None], photo[None])
    (judged_by,) = job_losses(vgg, spec, [output], photo, [style])
    assert float(trained_on.total[0]) == pytest.approx(judged_by, rel=1e-5)


def test_a_wide_crop_has_another_style_target_than_a_square_one(style):
    spec = job_spec(mode="transfer", size=32)
    objective = StyleObjective(VGGFeatures(spec.backbone, spec.active_layers, seed=0), spec,
                               [style], crop=32)  # fmt: skip
    square, wide = objective.style_for((32, 32)), objective.style_for((24, 32))
    assert any(not torch.allclose(square[k], wide[k]) for k in square)


def test_training_crops_come_in_every_aspect_asked_and_square_draws_are_unchanged(tmp_path):
    from test_stylenet import smooth_photos

    photos = smooth_photos(tmp_path, 3, size=64)
    varied = CropSampler(photos, 16, seed=0, aspects=parse_aspects("1,4:3,2:3"))
    shapes = {tuple(varied.batch(step, 2).shape[-2:]) for step in range(30)}
    assert shapes == {(16, 16), (16, 20), (24, 16)}
    square = CropSampler(photos, 16, seed=0)
    assert square.batch(7, 2).shape[-2:] == (16, 16)
    with pytest.raises(ValueError, match="outside 1:4"):
        parse_aspects("5:1")


def test_coarse_crops_are_windows_of_the_same_photo_scale_sharing_the_full_crops_target(
    tmp_path,
):
    from test_stylenet import smooth_photos

    photos = smooth_photos(tmp_path, 3, size=64)
    sampler = CropSampler(photos, 32, seed=0, aspects=parse_aspects("1,4:3"))
    for step in range(6):
        crops, style_hw = sampler.batch_of(step, 2, 16)
        aspect = 4 / 3 if crops.shape[-1] > crops.shape[-2] else 1.0
        assert tuple(crops.shape[-2:]) == sampler.shape(aspect, 16)
        assert style_hw == sampler.shape(aspect) == tuple(sampler.batch(step, 2).shape[-2:])
        cached = [sampler.photo(u) for u in photos]  # cut, never resized: the same scale
        assert all(_is_window(c, cached) for c in crops)


def _is_window(crop: torch.Tensor, photos: list[torch.Tensor]) -> bool:
    h, w = crop.shape[-2:]
    for img in photos:
        for view in (img, img.flip(-1)):
            windows = view.unfold(1, h, 1).unfold(2, w, 1)  # (3, H-h+1, W-w+1, h, w)
            if (windows == crop[:, None, None]).flatten(3).all(-1).all(0).any():
                return True
    return False


def test_a_coarse_crop_takes_its_full_crops_style_target_at_its_own_positions():
    spec = job_spec(mode="transfer", size=32)
    vgg = VGGFeatures(spec.backbone, spec.active_layers, seed=0)
    style = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(5))  # stationary
    objective = StyleObjective(vgg, spec, [style], crop=32)
    window = style[None, :, 8:24, 4:20]  # a part of the style itself, at its scale
    near = objective(window, window, (32, 32)).terms["style"]
    unscaled = StyleObjective(vgg, spec, [style], crop=32)
    unscaled._style[(16, 16)] = unscaled.style_for((32, 32))  # the whole's Grams, as they are
    assert float(near) < 0.05 * float(unscaled(window, window).terms["style"])
    # and weighted by its share of the pixels: the pull on each pixel is the whole picture's
    other = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    part = objective(other, window, (32, 32))
    expected = part.terms["content"] * spec.content_weight + part.terms["style"] * (
        spec.style_weight * (16 * 16) / (32 * 32)
    )
    assert float(part.total) == pytest.approx(float(expected), rel=1e-6)


def test_coarse_steps_come_first_cost_their_pixels_and_bad_schedules_are_refused():
    s = TrainSettings("o", {}, [], [], [], steps=10, crop=256, coarse_crop=128, coarse_steps=4)
    assert [s.crop_at(k) for k in (1, 4, 5, 10)] == [128, 128, 256, 256]
    assert s.work(0, 10) == 4 * 0.25 + 6 and s.work(4, 10) == 6 and s.work(2, 5) == 1.5
    with pytest.raises(ValueError, match="--coarse-steps 10: must be below --steps 10"):
        dataclasses.replace(s, coarse_steps=10)
    with pytest.raises(ValueError, match="--coarse-crop 256: must be at least 16 and below"):
        dataclasses.replace(s, coarse_crop=256)
    assert TrainSettings("o", {}, [], [], []).work(0, 10) == 10  # none: every step alike


def test_an_earlier_square_training_resumes_only_with_square_crops(tmp_path):
    store = storage.Store(str(tmp_path))
    old = TrainSettings(str(tmp_path), {"mode": "transfer"}, ["s.png"], ["p.png"], [])
    identity = old.identity()
    del identity["aspects"]  # written before crops had aspects
    store.put_json(layout.TRAIN_SETTINGS, {"identity": identity, "steps": 10})
    store.put(layout.checkpoint(5), b"x")
    with pytest.raises(NstError, match="aspects differ"):
        check_rerun(store, old)
    check_rerun(store, dataclasses.replace(old, aspects=(1.0,)))


@pytest.mark.parametrize("style_scale", ["content", "own"])
def test_the_evaluator_prepares_the_style_as_the_job_did_and_says_so(style_scale, content, style):
    spec = job_spec(mode="transfer", size=32, style_scale=style_scale)
    ev = default_evaluator([spec])
    result = images.decode(images.encode(content), "r")[None]
    found = scoring.score_image(ev, images.encode(content), spec, content, [style],
                                torch.device("cpu"))  # fmt: skip
    prepared = resize(style, (24, 32)) if style_scale == "content" else fit_longer_side(style, 32)
    net = scoring.network(ev, torch.device("cpu"))
    want = scores(net, ev, result, resize(content, (24, 32)), [prepared])
    assert found["score_style"] == pytest.approx(want["score_style"], rel=1e-6)
    assert found["score_by"] == score_key(ev, spec)
    assert found["score_by"].endswith("-content") == (style_scale == "content")
