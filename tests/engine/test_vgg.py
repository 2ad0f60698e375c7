"""Feature extractor: names, truncation, pooling, weight loading checks."""

import pytest
import torch
from torchvision.models import vgg19

from nst_ops.vgg import VGGFeatures, WeightsError, layer_names


def test_layer_names_follow_the_literature():
    names = layer_names("vgg19")
    assert names[:5] == ["conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1"]
    assert names[-1] == "pool5" and "relu5_4" in names
    assert "conv5_4" not in layer_names("vgg16")


def test_unknown_layer_error_lists_valid_names():
    with pytest.raises(ValueError, match="conv5_4 not in vgg16; valid layers: conv1_1, relu1_1"):
        VGGFeatures("vgg16", ["conv5_4"])


def test_network_is_truncated_after_the_deepest_requested_layer():
    net = VGGFeatures("vgg19", ["relu2_1", "conv1_1"])
    assert net.names[-1] == "relu2_1" and len(net.features) == 7


def test_truncated_network_matches_full_torchvision_network_exactly():
    x = torch.rand(1, 3, 32, 32)
    small = VGGFeatures("vgg19", ["relu3_1", "conv2_2"], seed=3)
    full = vgg19(weights=None)
    full.features.load_state_dict(small.features.state_dict(), strict=False)
    full.eval()
    h = (x - small.mean) / small.std
    want = {}
    for i, m in enumerate(full.features):
        h = m(h)
        if i == 7:
            want["conv2_2"] = h.clone()
        if i == 11:
            want["relu3_1"] = h.clone()
            break
    got = small(x)
    deeper = VGGFeatures("vgg19", ["relu5_4", "relu3_1"], seed=3)(x)
    for name in want:
        assert torch.equal(got[name], want[name])
    assert torch.equal(deeper["relu3_1"], got["relu3_1"])


def test_avg_and_max_pooling_give_different_features():
    x = torch.rand(1, 3, 32, 32)
    a = VGGFeatures("vgg16", ["relu3_1"], pooling="avg", seed=0)
    m = VGGFeatures("vgg16", ["relu3_1"], pooling="max", seed=0)
    assert "AvgPool2d" in repr(a.features) and "MaxPool2d" not in repr(a.features)
    assert not torch.allclose(a(x)["relu3_1"], m(x)["relu3_1"])


def test_parameters_are_frozen_and_seeded():
    a, b = VGGFeatures("vgg16", ["conv2_1"], seed=5), VGGFeatures("vgg16", ["conv2_1"], seed=5)
    assert not any(p.requires_grad for p in a.parameters())
    assert torch.equal(a.features[0].weight, b.features[0].weight)
    c = VGGFeatures("vgg16", ["conv2_1"], seed=6)
    assert not torch.equal(a.features[0].weight, c.features[0].weight)


def test_partial_state_dict_covering_the_truncated_network_loads():
    sd = {
        f"features.{k}": v
        for k, v in VGGFeatures("vgg19", ["relu1_2"], seed=1).features.state_dict().items()
    }
    net = VGGFeatures("vgg19", ["relu1_1"], state_dict=sd)
    assert torch.equal(net.features[0].weight, sd["features.0.weight"])


def test_partial_state_dict_missing_a_layer_is_refused_naming_it():
    sd = VGGFeatures("vgg19", ["relu1_2"], seed=1).features.state_dict()
    with pytest.raises(WeightsError, match="lack layer conv2_1"):
        VGGFeatures("vgg19", ["relu2_1"], state_dict=sd)


def test_wrong_shape_tensor_is_refused_naming_the_tensor():
    sd = VGGFeatures("vgg19", ["relu1_2"], seed=1).features.state_dict()
    sd["2.weight"] = torch.zeros(64, 3, 3, 3)
    with pytest.raises(
        WeightsError, match=r"features\.2\.weight \(conv1_2\) has shape \(64, 3, 3, 3\)"
    ):
        VGGFeatures("vgg19", ["relu1_2"], state_dict=sd)


def test_channels_last_layout_gives_the_same_features():
    x = torch.rand(2, 3, 32, 32)
    a = VGGFeatures("vgg19", ["relu3_1", "conv1_1"], seed=2)
    b = VGGFeatures("vgg19", ["relu3_1", "conv1_1"], seed=2).optimised_for("cpu", True)
    assert b.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    for name, fa in a(x).items():
        # other kernels, other summation order: float32 rounding relative to the feature scale
        torch.testing.assert_close(b(x)[name], fa, rtol=1e-4, atol=1e-5 * fa.abs().max().item())


def test_amp_runs_the_convolutions_in_bf16_but_returns_fp32_features_close_to_fp32():
    x = torch.rand(1, 3, 32, 32)
    full = VGGFeatures("vgg19", ["relu2_1"], seed=1)(x)["relu2_1"]
    amp = VGGFeatures("vgg19", ["relu2_1"], seed=1, amp=True)(x)["relu2_1"]
    assert amp.dtype == torch.float32
    assert not torch.equal(full, amp)
    assert torch.allclose(full, amp, rtol=0.05, atol=0.05 * full.abs().max().item())


def test_the_torch_free_layer_table_is_torchvisions():
    from torchvision.models.vgg import cfgs

    from nst_ops.layer_table import BACKBONE_CFG, CFGS

    for cfg in BACKBONE_CFG.values():
        assert CFGS[cfg] == cfgs[cfg]
