"""JobSpec refuses every value that can never make a valid job, with a clear message."""

import math

import pytest

from nst_ops.spec import JobSpec, SpecError


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"optimizer": "rmsprop"}, "unknown optimizer 'rmsprop'; choose one of lbfgs, adam, sgd"),
        ({"mode": "dream"}, "unknown mode"),
        ({"backbone": "resnet50"}, "unknown backbone"),
        ({"pooling": "min"}, "unknown pooling"),
        ({"style_weight": -1.0}, "style_weight must be finite and >= 0"),
        ({"content_weight": math.nan}, "content_weight must be finite"),
        ({"style_layer_weights": (1.0, math.inf, 1, 1, 1)}, "style_layer_weights must be finite"),
        ({"style_layer_weights": (1.0,)}, "1 values for 5 style layers"),
        ({"style_layers": ()}, "needs at least one style layer"),
        ({"mode": "content", "content_layers": ()}, "needs at least one content layer"),
        ({"backbone": "vgg16", "style_layers": ("conv5_4",)}, "conv5_4 not in vgg16; valid layers"),
        ({"iterations": 0}, "iterations must be an integer >= 1"),
        ({"size": 8}, r"size must be an integer in \[16, 8192\]"),
        ({"size": 100000}, "size must be an integer"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"weights": "random:abc"}, "expected random:<integer seed>"),
        ({"mode": "style", "init": "content"}, "no content image"),
        ({"mode": "style", "preserve_color": True}, "preserve_color applies to style transfer"),
        ({"divergence_factor": 1.0}, "divergence_factor must be > 1"),
        ({"size": 32, "multires": 3}, "smaller than 16"),
        ({"multires": 2, "level_iterations": (10,)}, "1 values for multires=2 levels"),
        ({"multires": 2, "level_iterations": (10, 0)}, "integers >= 1"),
    ],
)
def test_bad_spec_raises_a_clear_error(params, message):
    with pytest.raises(SpecError, match=message):
        JobSpec(**params)


def test_defaults_follow_the_study():
    spec = JobSpec()
    assert spec.style_layers == ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
    assert spec.layer_weights == (0.2,) * 5
    assert spec.learning_rate == 1.0


def test_spec_round_trips_through_a_plain_dict():
    spec = JobSpec(style_layers=["relu1_1", "relu2_1"], style_blend=[1, 2], optimizer="adam")
    assert JobSpec.from_dict(spec.to_dict()) == spec
    assert isinstance(spec.style_layers, tuple)


def test_unknown_parameter_is_named():
    with pytest.raises(SpecError, match="unknown parameter.*colour"):
        JobSpec.from_dict({"colour": 1})
