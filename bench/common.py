"""What the benchmarks share: the shipped weights and photos, the two layer sets, one evaluation
of our objective, interleaved timing, and the objective weights that equal the tutorial's."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from nst_ops.image_ops import fit_longer_side, resize
from nst_ops.layer_table import feature_hw, layer_table
from nst_ops.spec import JobSpec
from nst_ops.transfer import compute_targets, make_objective
from nst_ops.vgg import VGGFeatures
from pipeline.run.images import decode
from pipeline.run.weights import load_state_dict

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"  # ../shared/data: 512-px photos, training photos
WEIGHTS = ROOT / "manifests/weights/vgg19_tv_features_conv1_1-conv3_1.pth"
IMAGES = ROOT / "manifests/images"
CONFIGS = {
    "gatys": (("conv4_2",), ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")),
    "real": (("relu3_1",), ("relu1_1", "relu2_1", "relu3_1")),
}


def load(path: Path) -> torch.Tensor:
    return decode(path.read_bytes(), str(path))


def pair(size: int, ci: int = 0, si: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A content (longer side ``size``) and a style resized to it, both (1,3,H,W)."""
    c = fit_longer_side(load(sorted((IMAGES / "content").glob("*"))[ci]), size)
    s = resize(load(sorted((IMAGES / "style").glob("*"))[si]), tuple(c.shape[-2:]))
    return c, s


def weights_for(config: str) -> tuple[dict | None, str]:
    if config == "real" and WEIGHTS.exists():
        return load_state_dict(str(WEIGHTS)), str(WEIGHTS)
    return None, "random:0"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved(steps: dict[str, Callable[[], object]], device, repeats: int) -> dict[str, float]:
    """Median seconds per call of each step, calls interleaved so load hits all alike."""
    for fn in steps.values():  # warm-up: first calls allocate and pick kernels
        fn(), fn()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def ours_step(config, sd, wname, c, s, device, channels_last: bool, amp: bool = False):
    """One evaluation of our objective (loss + gradient), in a given layout."""
    cl, sl = CONFIGS[config]
    net = VGGFeatures("vgg19", cl + sl, state_dict=sd, seed=0, amp=amp)
    net.optimised_for(device, channels_last)
    spec = JobSpec(weights=wname, content_layers=cl, style_layers=sl, size=max(c.shape[-2:]))
    targets = compute_targets(net, spec, c, [s], tuple(c.shape[-2:]))
    objective = make_objective(net, [spec], targets)
    x = c.clone().requires_grad_(True)

    def step():
        x.grad = None
        objective(x).total.sum().backward()

    return step


def tutorial_equivalent(config: str, c_hw: tuple[int, int], beta_t: float) -> dict:
    """Our α, β and w_l that make our objective equal (up to one constant factor) to the
    tutorial's: its content term is mse(F, P) = Σ(F-P)²/(N·M), its style term per layer
    mse(G/NM, A/NM) = Σ(G-A)²/(N⁴M²); ours are ½Σ(F-P)² and Σ(G-A)²/(4N²M²)."""
    cl, sl = CONFIGS[config]
    channels = {n: c for n, _, c, _ in layer_table("vgg19")}
    h, w = feature_hw("vgg19", cl[0], c_hw)
    alpha = 2.0 / (channels[cl[0]] * h * w)
    return {"content_weight": alpha, "style_weight": 1.0,
            "style_layer_weights": [4.0 * beta_t / channels[n] ** 2 for n in sl]}  # fmt: skip
