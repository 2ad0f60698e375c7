"""Modes, optimizers, determinism, divergence, options — tiny images and random weights."""

import dataclasses

import pytest
import torch
from helpers import job_spec

from nst_ops.loop import Terms, optimize
from nst_ops.spec import JobSpec
from nst_ops.transfer import layer_sweep, stylize, sweep_layer_sets
from nst_ops.vgg import VGGFeatures

LAYERS = ("conv1_1", "conv2_1", "conv3_1")


@pytest.fixture(scope="module")
def net() -> VGGFeatures:
    return VGGFeatures("vgg19", ("relu2_2",) + LAYERS, seed=0)


def spec(**kw) -> JobSpec:
    return job_spec(style_layers=LAYERS, **kw)


def inputs(mode, content, style):
    return (None if mode == "style" else content), ([] if mode == "content" else [style])


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam", "sgd"])
@pytest.mark.parametrize("mode", ["transfer", "style", "content"])
def test_every_mode_lowers_its_loss_with_every_optimizer(net, content, style, mode, optimizer):
    # plain SGD's step must suit the loss scale, which the study's E_l makes small for style
    lr = 10.0 if (optimizer, mode) == ("sgd", "style") else None
    out = stylize(spec(mode=mode, optimizer=optimizer, lr=lr), net, *inputs(mode, content, style))
    assert out.status == "ok"
    assert out.final["total"] < 0.9 * out.trace[0]["total"]
    assert out.image.min() >= 0 and out.image.max() <= 1


def test_output_has_the_requested_longer_side(net, content, style):
    out = stylize(spec(size=40, iterations=1), net, content, [style])
    assert out.image.shape == (3, 30, 40)  # content is 24x32


def test_style_reconstruction_takes_the_style_images_shape(net, style):
    out = stylize(spec(mode="style", iterations=1, size=20), net, None, [style])
    assert out.image.shape == (3, 20, 20)


def test_same_inputs_and_seed_give_the_same_image_on_cpu(net, content, style):
    a = stylize(spec(optimizer="adam"), net, content, [style])
    b = stylize(spec(optimizer="adam"), net, content, [style])
    c = stylize(spec(optimizer="adam", seed=1), net, content, [style])
    assert torch.equal(a.image, b.image)
    assert not torch.equal(a.image, c.image)


def test_trace_has_every_term_and_each_style_layer(net, content, style):
    out = stylize(spec(iterations=6, log_every=3), net, content, [style])
    assert [r["iteration"] for r in out.trace] == [1, 3, 6]
    assert {"total", "content", "style", "tv", "seconds", "style_conv1_1", "style_conv3_1"} <= set(
        out.trace[0]
    )


def test_exploding_sgd_is_reported_as_diverged_with_best_image_kept(net, content, style):
    out = stylize(
        spec(optimizer="sgd", lr=1e4, init="content", iterations=30), net, content, [style]
    )
    assert out.status == "diverged"
    assert out.diverged_at is not None and out.diverged_at <= 30
    assert "exceeds" in out.reason or "non-finite" in out.reason
    assert torch.isfinite(out.image).all()
    assert out.final["total"] == min(r["total"] for r in out.trace)


def test_non_finite_loss_stops_the_run_at_that_iteration():
    calls = []

    def objective(x):
        calls.append(1)
        loss = ((x - 0.5) ** 2).flatten(1).sum(1)
        if len(calls) >= 4:
            loss = loss * float("nan")
        return Terms(loss, {"content": loss})

    s = spec(optimizer="adam", iterations=10)
    (out,) = optimize(objective, torch.zeros(1, 3, 4, 4), s)
    assert out.status == "diverged" and out.diverged_at == 4 and "non-finite" in out.reason
    assert out.final["iteration"] == 3


def test_strong_wolfe_line_search_option_runs(net, content, style):
    """The option is used: a strong-Wolfe search evaluates the loss more often per step."""
    evaluations = {}
    original = net.features_at
    for search in (False, True):
        calls = []

        def spy(x, layers, calls=calls):
            calls.append(1)
            return original(x, layers)

        net.features_at = spy
        try:
            out = stylize(spec(line_search=search), net, content, [style])
        finally:
            del net.features_at
        assert out.status == "ok" and out.final["total"] < out.trace[0]["total"]
        evaluations[search] = len(calls)
    assert evaluations[True] > evaluations[False]


def test_strong_wolfe_line_search_keeps_lowering_the_loss_after_an_overshoot(net):
    """One L-BFGS step per call leaves torch's search no evaluations of its own unless given
    them: an overshooting first trial then became a zero step, and the loss stayed put (these
    inputs overshoot at step 2)."""
    g = torch.Generator().manual_seed(0)
    content, style = torch.rand(3, 24, 32, generator=g), torch.rand(3, 24, 32, generator=g)
    out = stylize(spec(line_search=True, iterations=12), net, content, [style])
    totals = [row["total"] for row in out.trace]
    assert totals[-1] < totals[1] * (1 - 1e-4)
    assert all(b <= a for a, b in zip(totals[1:], totals[2:], strict=False))


def test_avg_pooling_changes_the_result(content, style):
    mx = VGGFeatures("vgg19", ("relu3_1",) + LAYERS, seed=0)
    av = VGGFeatures("vgg19", ("relu3_1",) + LAYERS, pooling="avg", seed=0)
    s = spec(content_layers=("relu3_1",), iterations=3)
    assert not torch.equal(
        stylize(s, mx, content, [style]).image, stylize(s, av, content, [style]).image
    )


def test_inits_content_and_style_start_from_those_images(net, content, style):
    for init in ("content", "style"):
        out = stylize(spec(init=init, iterations=1), net, content, [style])
        assert out.trace[0]["content" if init == "content" else "style"] < 1e-3


def test_blended_styles_differ_from_each_style_alone(net, content, style):
    other = torch.rand(3, 30, 30, generator=torch.Generator().manual_seed(9))
    one = stylize(spec(iterations=3), net, content, [style])
    blend = stylize(spec(iterations=3, style_blend=(1.0, 1.0)), net, content, [style, other])
    assert not torch.equal(one.image, blend.image)
    with pytest.raises(ValueError, match="style_blend has 1 weights for 2 styles"):
        stylize(spec(style_blend=(1.0,)), net, content, [style, other])


def test_own_style_scale_keeps_the_style_shape_and_runs(net, content, style):
    """The style (30x30) is not resized to the output's 24x32: it keeps its own aspect at the
    job's size (32x32), its Grams come from that shape (per-layer rescaling is checked by hand
    in test_study.py), and the run converges."""
    calls = []
    original = net.features_at

    def spy(x, layers):
        calls.append(tuple(x.shape[-2:]))
        return original(x, layers)

    net.features_at = spy
    try:
        out = stylize(spec(style_scale="own", iterations=3), net, content, [style])
    finally:
        del net.features_at
    assert (32, 32) in calls and out.image.shape == (3, 24, 32)
    assert out.status == "ok" and out.final["total"] < out.trace[0]["total"]


def test_preserve_color_keeps_the_content_chrominance(net, content, style):
    from nst_ops.image_ops import fit_longer_side, rgb_to_yiq

    content = 0.4 + 0.2 * content  # mid-range colours: recombined pixels stay inside the gamut
    out = stylize(spec(preserve_color=True, iterations=3), net, content, [style])
    want = rgb_to_yiq(fit_longer_side(content, 32))[0, 1:]
    got = rgb_to_yiq(out.image[None])[0, 1:]
    assert torch.allclose(got, want, atol=0.05)


def test_multires_optimises_small_then_full_size(net, content, style):
    out = stylize(spec(multires=2, iterations=4), net, content, [style])
    assert out.image.shape == (3, 24, 32)
    assert {r["level"] for r in out.trace} == {0, 1} and out.iterations == 8


def test_level_iterations_give_each_multires_level_its_own_budget(net, content, style):
    s = spec(multires=2, iterations=4, level_iterations=(5, 2), log_every=1)
    out = stylize(s, net, content, [style])
    levels = [r["level"] for r in out.trace if r["iteration"] > 0]
    assert levels.count(0) == 5 and levels.count(1) == 2
    assert out.iterations == 7 == s.total_iterations


def test_layer_sweep_reconstructs_with_growing_layer_sets(net, style):
    assert sweep_layer_sets(LAYERS) == [LAYERS[:1], LAYERS[:2], LAYERS]
    outs = layer_sweep(spec(mode="style", iterations=3), net, style)
    assert len(outs) == 3
    assert [sum(k.startswith("style_conv") for k in o.trace[0]) for o in outs] == [1, 2, 3]


def test_lbfgs_with_line_search_refuses_a_batch(net):
    s = dataclasses.replace(spec(), optimizer="lbfgs", line_search=True)
    with pytest.raises(ValueError, match="one image at a time"):
        optimize(lambda x: None, torch.zeros(2, 3, 4, 4), s)
