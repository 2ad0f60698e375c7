"""The straightforward baseline: the common tutorial structure, kept deliberately plain.

Full VGG19 ``features`` as one nn.Sequential with loss modules inserted after the chosen layers,
fp32, one image at a time, Gram targets recomputed for every job. It uses the study's formulas
(1/2 sum (F-P)^2 and 1/(4 N^2 M^2) sum (G-A)^2), so its loss values compare with ours directly.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import vgg19

from nst_ops.vgg import IMAGENET_MEAN, IMAGENET_STD, layer_names


class Normalization(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(-1, 1, 1))

    def forward(self, img):
        return (img - self.mean) / self.std


class ContentLoss(nn.Module):
    def __init__(self, target):
        super().__init__()
        self.target = target.detach()
        self.loss = torch.zeros(())

    def forward(self, x):
        self.loss = 0.5 * ((x - self.target) ** 2).sum()
        return x


def gram_matrix(x):
    a, b, c, d = x.size()
    features = x.view(a * b, c * d)
    return torch.mm(features, features.t())


class StyleLoss(nn.Module):
    def __init__(self, target_feature):
        super().__init__()
        self.target = gram_matrix(target_feature).detach()
        self.loss = torch.zeros(())

    def forward(self, x):
        _, n, h, w = x.shape
        self.loss = ((gram_matrix(x) - self.target) ** 2).sum() / (4 * n**2 * (h * w) ** 2)
        return x


def build_model(features, content_img, style_img, content_layers, style_layers, device):
    """Insert loss modules after the named layers of the *full* network (nothing is cut)."""
    model = nn.Sequential(Normalization().to(device))
    content_losses, style_losses = [], []
    for name, layer in zip(layer_names("vgg19"), features, strict=True):
        if isinstance(layer, nn.ReLU):
            layer = nn.ReLU(inplace=False)
        model.add_module(name, layer)
        if name in content_layers:
            cl = ContentLoss(model(content_img))
            model.add_module(f"content_loss_{name}", cl)
            content_losses.append(cl)
        if name in style_layers:
            sl = StyleLoss(model(style_img))
            model.add_module(f"style_loss_{name}", sl)
            style_losses.append(sl)
    return model, content_losses, style_losses


def load_vgg19(state_dict: dict | None, device) -> nn.Sequential:
    net = vgg19(weights=None)
    if state_dict is not None:
        net.load_state_dict(state_dict, strict=False)
    return net.features.to(device).eval().requires_grad_(False)


def run_baseline(
    features,
    content_img,
    style_img,
    content_layers,
    style_layers,
    iterations,
    optimizer="adam",
    lr=0.02,
    alpha=1.0,
    beta=1e7,
    seed=0,
    device="cpu",
):
    """One job: returns (image, final total loss, [(seconds, total)] per iteration)."""
    t0 = time.perf_counter()
    content_img = F.interpolate(content_img[None], size=content_img.shape[-2:]).to(device)
    style_img = F.interpolate(
        style_img[None], size=content_img.shape[-2:], mode="bilinear", antialias=True
    ).to(device)
    model, cls, sls = build_model(
        features, content_img, style_img, content_layers, style_layers, device
    )
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(content_img.shape, generator=gen).to(device).requires_grad_(True)
    opt = (
        torch.optim.LBFGS([x], lr=1.0, max_iter=1)
        if optimizer == "lbfgs"
        else torch.optim.Adam([x], lr=lr)
    )
    history = []

    def total():
        model(x)
        content = sum(cl.loss for cl in cls)
        style = sum(sl.loss for sl in sls) / len(sls)
        return alpha * content + beta * style

    def closure():
        opt.zero_grad()
        loss = total()
        loss.backward()
        return loss

    for _ in range(iterations):
        loss = opt.step(closure)
        with torch.no_grad():
            x.clamp_(0, 1)
        history.append((time.perf_counter() - t0, float(loss.detach())))
    with torch.no_grad():
        final = float(total())
    return x.detach()[0].cpu(), final, history
