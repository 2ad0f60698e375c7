"""Batching several jobs into one forward/backward is exact for Adam and SGD; targets are cached."""

import dataclasses

import pytest
import torch

from nst_ops.spec import JobSpec
from nst_ops.transfer import batch_key, stylize, stylize_batch
from nst_ops.vgg import VGGFeatures

LAYERS = ("relu1_1", "relu2_1")


@pytest.fixture(scope="module")
def net():
    return VGGFeatures("vgg19", ("relu2_2",) + LAYERS, seed=0)


def images(n, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, 24, 32, generator=g) for _ in range(n)]


def specs(optimizer, **kw):
    base = JobSpec(
        weights="random:0",
        content_layers=("relu2_2",),
        style_layers=LAYERS,
        size=32,
        iterations=6,
        log_every=1,
        optimizer=optimizer,
        style_weight=1e3,
        **kw,
    )
    return [
        base,
        dataclasses.replace(base, seed=1, style_weight=1e4, lr=base.learning_rate * 2),
        dataclasses.replace(base, seed=2, content_weight=0.5, style_layer_weights=(0.9, 0.1)),
    ]


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_a_batch_gives_each_image_what_it_gets_alone(net, optimizer):
    ss = specs(optimizer, momentum=0.9) if optimizer == "sgd" else specs(optimizer)
    contents, styles = images(3, 1), images(3, 2)
    together = stylize_batch(ss, net, contents, [[s] for s in styles])
    for s, c, st, out in zip(ss, contents, styles, together, strict=True):
        alone = stylize(s, net, c, [st])
        assert torch.allclose(out.image, alone.image, atol=1e-4)
        assert out.final["total"] == pytest.approx(alone.final["total"], rel=1e-4)
        assert [r["iteration"] for r in out.trace] == [r["iteration"] for r in alone.trace]
    assert not torch.allclose(together[0].image, together[1].image)


def test_a_diverging_image_does_not_disturb_the_others_in_its_batch(net):
    good = specs("sgd")[0]
    bad = dataclasses.replace(good, lr=1e4, init="content")
    contents, styles = images(2, 3), images(2, 4)
    outs = stylize_batch([good, bad], net, contents, [[s] for s in styles])
    alone = stylize(good, net, contents[0], [styles[0]])
    assert outs[1].status == "diverged" and outs[0].status == "ok"
    assert torch.allclose(outs[0].image, alone.image, atol=1e-4)


def test_batches_refuse_jobs_that_cannot_share_a_step(net):
    a, b = specs("adam")[0], dataclasses.replace(specs("adam")[0], iterations=3)
    assert batch_key(a) != batch_key(b)
    with pytest.raises(ValueError, match="must agree on"):
        stylize_batch([a, b], net, images(2, 0), [[s] for s in images(2, 1)])
    lb = dataclasses.replace(a, optimizer="lbfgs", lr=None)
    with pytest.raises(ValueError, match="one image at a time"):
        stylize_batch([lb, lb], net, images(2, 0), [[s] for s in images(2, 1)])


def test_targets_are_computed_once_per_shared_image_and_reused(net):
    calls = []
    original = net.features_at

    def counting(x, layers):
        calls.append(x.shape[0])
        return original(x, layers)

    cache = {}
    (c,), (s,) = images(1, 5), images(1, 6)
    spec = specs("adam")[0]
    net.features_at = counting
    try:
        first = stylize(spec, net, c, [s], cache=cache, keys=("c.png", ["s.png"]))
        n_first = len(calls)
        second = stylize(
            dataclasses.replace(spec, style_weight=5e3),
            net,
            c,
            [s],
            cache=cache,
            keys=("c.png", ["s.png"]),
        )
    finally:
        del net.features_at
    assert len(cache) == 3  # content relu2_2, style Grams at relu1_1 and relu2_1
    assert len(calls) - n_first == n_first - 3  # the second job computed no target
    uncached = stylize(spec, net, c, [s])
    assert torch.equal(first.image, uncached.image)
    assert not torch.equal(first.image, second.image)


def test_multiresolution_jobs_are_never_batched(net):
    from nst_ops.transfer import batchable

    multi = dataclasses.replace(specs("adam")[0], multires=2)
    assert not batchable(multi) and batchable(specs("adam")[0])
    assert not batchable(specs("lbfgs")[0])
    with pytest.raises(ValueError, match="multi-resolution jobs run one image at a time"):
        stylize_batch([multi, multi], net, images(2, 0), [[s] for s in images(2, 1)])
