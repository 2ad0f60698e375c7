"""The PyTorch tutorial "Neural Transfer Using PyTorch" (Jacobs, pytorch.org/tutorials), as
published: its Normalization, ContentLoss (mse), gram_matrix (divided by a*b*c*d), StyleLoss
(mse of Grams), model built by inserting loss modules after the chosen layers and **trimmed
after the last loss module**, and its run_style_transfer loop (L-BFGS with default max_iter=20,
closures counted until num_steps, clamping inside the closure). Only the layer names are ours
(conv1_1 ... instead of conv_1 ...), so both tools are fed the same weights and layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import vgg16, vgg19

from nst_ops.vgg import IMAGENET_MEAN, IMAGENET_STD, layer_names


class Normalization(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mean = torch.tensor(IMAGENET_MEAN).view(-1, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(-1, 1, 1)

    def forward(self, img):
        return (img - self.mean) / self.std


class ContentLoss(nn.Module):
    def __init__(self, target):
        super().__init__()
        self.target = target.detach()

    def forward(self, input):
        self.loss = F.mse_loss(input, self.target)
        return input


def gram_matrix(input):
    a, b, c, d = input.size()
    features = input.view(a * b, c * d)
    G = torch.mm(features, features.t())
    return G.div(a * b * c * d)


class StyleLoss(nn.Module):
    def __init__(self, target_feature):
        super().__init__()
        self.target = gram_matrix(target_feature).detach()

    def forward(self, input):
        G = gram_matrix(input)
        self.loss = F.mse_loss(G, self.target)
        return input


def features(
    state_dict: dict | None, backbone: str = "vgg19", device: str = "cpu"
) -> nn.Sequential:
    net = (vgg19 if backbone == "vgg19" else vgg16)(weights=None)
    if state_dict is not None:
        net.features.load_state_dict(
            {k.removeprefix("features."): v for k, v in state_dict.items()}, strict=False
        )
    return net.features.to(device).eval()


def get_style_model_and_losses(cnn, style_img, content_img, content_layers, style_layers,
                               backbone: str = "vgg19"):  # fmt: skip
    normalization = Normalization().to(content_img.device)
    normalization.mean = normalization.mean.to(content_img.device)
    normalization.std = normalization.std.to(content_img.device)
    content_losses, style_losses = [], []
    model = nn.Sequential(normalization)
    for name, layer in zip(layer_names(backbone), cnn.children(), strict=True):
        if isinstance(layer, nn.ReLU):
            layer = nn.ReLU(inplace=False)
        model.add_module(name, layer)
        if name in content_layers:
            target = model(content_img).detach()
            content_loss = ContentLoss(target)
            model.add_module(f"content_loss_{name}", content_loss)
            content_losses.append(content_loss)
        if name in style_layers:
            target_feature = model(style_img).detach()
            style_loss = StyleLoss(target_feature)
            model.add_module(f"style_loss_{name}", style_loss)
            style_losses.append(style_loss)
    for i in range(len(model) - 1, -1, -1):  # the tutorial's trimming
        if isinstance(model[i], (ContentLoss, StyleLoss)):
            break
    model = model[: (i + 1)]
    return model, style_losses, content_losses


def loss_and_grad(model, style_losses, content_losses, input_img, style_weight=1e6,
                  content_weight=1.0):  # fmt: skip
    """One evaluation of the tutorial's closure body (what each L-BFGS evaluation costs)."""
    model(input_img)
    style_score = sum(sl.loss for sl in style_losses) * style_weight
    content_score = sum(cl.loss for cl in content_losses) * content_weight
    loss = style_score + content_score
    loss.backward()
    return loss


def run_style_transfer(cnn, content_img, style_img, input_img, content_layers, style_layers,
                       num_steps=300, style_weight=1000000, content_weight=1,
                       backbone: str = "vgg19"):  # fmt: skip
    """The tutorial's loop as published (its optimizer, its closure, its step counting)."""
    model, style_losses, content_losses = get_style_model_and_losses(
        cnn, style_img, content_img, content_layers, style_layers, backbone
    )
    input_img.requires_grad_(True)
    model.eval()
    model.requires_grad_(False)
    optimizer = torch.optim.LBFGS([input_img])
    run = [0]
    while run[0] <= num_steps:

        def closure():
            with torch.no_grad():
                input_img.clamp_(0, 1)
            optimizer.zero_grad()
            model(input_img)
            style_score = 0
            content_score = 0
            for sl in style_losses:
                style_score += sl.loss
            for cl in content_losses:
                content_score += cl.loss
            style_score *= style_weight
            content_score *= content_weight
            loss = style_score + content_score
            loss.backward()
            run[0] += 1
            return style_score + content_score

        optimizer.step(closure)
    with torch.no_grad():
        input_img.clamp_(0, 1)
    run_style_transfer.evaluations = run[0]  # type: ignore[attr-defined]  (ours: 300 -> 320)
    return input_img
