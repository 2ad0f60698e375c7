"""The job's own objective as a measure of any image, with the unstyled photo as zero point:
it is the loss the optimiser reports for its own result, and it orders photo, partly and fully
optimised images as the optimiser does."""

import dataclasses

import pytest
import torch
from helpers import job_spec

from nst_ops.image_ops import resize
from nst_ops.job_loss import gap_closure, job_losses
from nst_ops.transfer import stylize
from nst_ops.vgg import VGGFeatures


@pytest.mark.parametrize("style_scale", ["content", "own"])
def test_the_measure_of_an_optimised_image_is_the_loss_its_optimiser_reached(
    content, style, style_scale
):
    spec = job_spec(mode="transfer", init="content", size=32, iterations=20, optimizer="adam",
                    lr=0.02, style_scale=style_scale)  # fmt: skip
    net = VGGFeatures(spec.backbone, spec.active_layers, seed=0)
    out = stylize(spec, net, content, [style])
    best = min(row["total"] for row in out.trace)
    (measured,) = job_losses(net, spec, [out.image], content, [style])
    # the best image is the one whose loss was traced as the best (fp32, same kernels)
    assert measured == pytest.approx(best, rel=1e-4)


def test_the_photo_is_the_zero_point_and_more_iterations_close_more_of_the_gap(content, style):
    spec = job_spec(mode="transfer", init="content", size=32)  # L-BFGS
    net = VGGFeatures(spec.backbone, spec.active_layers, seed=0)
    short = stylize(dataclasses.replace(spec, iterations=2), net, content, [style]).image
    long = stylize(dataclasses.replace(spec, iterations=40), net, content, [style]).image
    photo, partly, optimised = job_losses(net, spec, [content, short, long], content, [style])
    assert optimised < partly < photo
    assert gap_closure(photo, photo, optimised) == 0.0
    assert gap_closure(photo, optimised, optimised) == 1.0
    assert 0 < gap_closure(photo, partly, optimised) < 1
    assert gap_closure(photo, partly, photo * 1.1) is None  # no gap to close


def test_an_image_of_another_size_is_measured_at_the_jobs_size(content, style):
    spec = job_spec(mode="transfer", size=32)
    net = VGGFeatures(spec.backbone, spec.active_layers, seed=0)
    big = torch.rand(1, 3, 72, 96, generator=torch.Generator().manual_seed(5))
    at_job_size = resize(big, (24, 32))  # the content is 24x32 and the job's size 32
    larger, resized = job_losses(net, spec, [big, at_job_size], content, [style])
    assert larger == resized
