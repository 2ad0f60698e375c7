"""Which device a worker computes on, whether it uses bf16 there, and the VGG it builds once
per process (job tasks, helper actors of workers_per_job, training and apply workers)."""

from __future__ import annotations

import functools

import torch

from nst_ops.layer_table import deepest
from nst_ops.vgg import VGGFeatures, use_cuda_precision
from pipeline.jobs.job import Job
from pipeline.run import weights

_EXTRACTORS: dict[tuple, VGGFeatures] = {}


def pick_device(prefer_gpu: bool = True) -> torch.device:
    return torch.device("cuda" if prefer_gpu and torch.cuda.is_available() else "cpu")


def amp_enabled(setting: bool | str, device: torch.device) -> bool:
    """``amp=auto``: bf16 where the device has bf16 units. bench/run.py measured it paying
    there (1.5x over fp32 on an AVX512-BF16 CPU); without such units bf16 is emulated and
    slower, so auto leaves it off."""
    if setting != "auto":
        return bool(setting)
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return _cpu_has_bf16()


@functools.cache
def _cpu_has_bf16() -> bool:
    try:
        flags = open("/proc/cpuinfo").read()  # Linux; elsewhere: off
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def extractor_for(
    job: Job, device: torch.device, storage_options: dict | None = None
) -> VGGFeatures:
    """A per-process cache: long-lived workers build each network once."""
    s = job.spec
    last = deepest(s.backbone, s.active_layers)
    amp = amp_enabled(s.amp, device)
    key = (s.backbone, s.pooling, s.weights, last, str(device), amp)
    if key not in _EXTRACTORS:
        _, seed = weights.parse(s.weights)
        sd = weights.cached_state_dict(s.weights, s.backbone, storage_options)
        net = VGGFeatures(s.backbone, [last], s.pooling, state_dict=sd, seed=seed, amp=amp)
        if device.type == "cuda":
            use_cuda_precision()
        _EXTRACTORS[key] = net.optimised_for(device)
    return _EXTRACTORS[key]
