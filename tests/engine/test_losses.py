"""The study's formulas, checked against values worked out by hand."""

import torch

from nst_ops import losses


def test_content_loss_is_half_the_summed_squared_error():
    F = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    assert losses.content_loss(F, torch.zeros_like(F)).tolist() == [15.0]  # (1+4+9+16)/2


def test_gram_is_vt_v_of_vectorised_feature_maps():
    F = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])  # N=2 maps, M=2 positions
    assert losses.gram(F)[0].tolist() == [[5.0, 11.0], [11.0, 25.0]]


def test_gram_of_a_batch_equals_gram_of_each_image():
    F = torch.randn(3, 4, 5, 6)
    batched = losses.gram(F)
    for i in range(3):
        assert torch.allclose(batched[i], losses.gram(F[i : i + 1])[0])
    assert not torch.allclose(batched[0], batched[1])


def test_gram_gradient_is_the_exact_derivative_of_vt_v():
    """The one-matmul backward against finite differences (float64) and against autograd's
    own bmm backward, for a gradient that is not symmetric."""
    F = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f: losses._Gram.apply(f.reshape(2, 3, -1)), (F,))
    W = torch.randn(2, 3, 3)
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    (losses.gram(x) * W).sum().backward()
    ours = x.grad.clone()
    x.grad = None
    V = x.reshape(2, 3, -1)
    (torch.bmm(V, V.transpose(1, 2)) * W).sum().backward()
    assert torch.allclose(ours, x.grad, rtol=1e-5, atol=1e-6)


def test_style_layer_loss_uses_one_over_4_n2_m2():
    G = torch.tensor([[[5.0, 11.0], [11.0, 25.0]]])
    e = losses.style_layer_loss(G, torch.zeros_like(G), n=2, m=2)
    assert e.tolist() == [(25 + 121 + 121 + 625) / (4 * 4 * 4)]


def test_style_loss_weights_each_layer():
    per_layer = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([10.0, 20.0])}
    assert losses.weighted_style(per_layer, [0.5, 0.1]).tolist() == [1.5, 3.0]


def test_tv_loss_sums_squared_neighbour_differences():
    x = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    assert losses.tv_loss(x).tolist() == [10.0]  # vertical 4+4, horizontal 1+1


def test_total_loss_is_alpha_content_plus_beta_style_plus_tv():
    one = torch.ones(1)
    assert losses.total_loss([2 * one, 3 * one, 5 * one], [10.0, 100.0, 0.5]).tolist() == [322.5]


def test_losses_are_per_image_so_a_batch_is_separable():
    F, P = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    batched = losses.content_loss(F, P)
    assert torch.allclose(batched[1], losses.content_loss(F[1:], P[1:])[0])
