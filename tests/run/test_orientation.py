"""Phone photos come out upright: the EXIF orientation tag is applied in every decode path
(grid jobs, `nst transfer`, training crops, `nst apply`, validation, scoring, thumbnails)."""

import io

import pyarrow.parquet as pq
import torch
from helpers import nst, phone_jpeg, run_manifest
from PIL import Image

from pipeline.run import images


def test_a_photo_stored_sideways_decodes_as_it_is_seen(tmp_path):
    photo = phone_jpeg(tmp_path / "p.jpg", w=40, h=20, orientation=6)
    x = images.decode(photo.read_bytes(), "p.jpg")
    assert x.shape == (3, 40, 20)  # stored 40 wide, seen 20 wide
    # orientation 6 turns the stored image a quarter clockwise: its dark left half is on top
    assert x[:, :20].mean() < 0.3 < 0.7 < x[:, 20:].mean()


def test_validation_measures_a_phone_photo_upright(tmp_path):
    photo = phone_jpeg(tmp_path / "p.jpg", w=40, h=20, orientation=8)
    assert images.probe(photo.read_bytes(), "p.jpg") == (20, 40)  # (width, height) as seen
    plain = phone_jpeg(tmp_path / "q.jpg", w=40, h=20, orientation=1)
    assert images.probe(plain.read_bytes(), "q.jpg") == (40, 20)


def test_training_crops_come_from_the_upright_photo(tmp_path):
    from pipeline.stylenet.photos import CropSampler

    photo = phone_jpeg(tmp_path / "p.jpg", w=40, h=20)
    sampler = CropSampler([str(photo)], crop=10, seed=0)
    assert sampler.photo(str(photo)).shape == (3, 20, 10)  # shorter side 10, portrait


def test_report_thumbnails_are_upright(tmp_path):
    from pipeline.report.figures import thumbnail

    photo = phone_jpeg(tmp_path / "p.jpg", w=40, h=20)
    thumb = Image.open(io.BytesIO(thumbnail(str(photo), None, px=160)))
    assert thumb.size == (20, 40)


def test_nst_transfer_styles_a_phone_photo_upright(tmp_path):
    photo = phone_jpeg(tmp_path / "p.jpg", w=40, h=20)
    style = phone_jpeg(tmp_path / "s.jpg", w=24, h=24, orientation=1)
    sets = ["weights=random:0", "size=32", "iterations=2", "content_layers=relu2_1",
            "style_layers=relu1_1"]  # fmt: skip
    out = tmp_path / "o.png"
    res = nst("transfer", photo, style, out, *[a for s in sets for a in ("--set", s)])
    assert res.exit_code == 0, res.output
    assert Image.open(out).size == (16, 32)  # longer side 32, portrait as the photo is seen


def test_a_grid_job_and_its_scores_use_the_upright_photo(ray_cpu, tmp_path):
    photo = phone_jpeg(tmp_path / "p.jpg", w=40, h=20)
    style = phone_jpeg(tmp_path / "s.jpg", w=24, h=24, orientation=1)
    res, out = run_manifest(tmp_path, [{"content_uri": str(photo), "style_uri": str(style)}],
                            size=32)  # fmt: skip
    assert res.exit_code == 0, res.output
    (row,) = pq.read_table(out / "results.parquet").to_pylist()
    assert row["status"] == "ok" and row["score_content"] is not None
    assert Image.open(out / row["image_uri"]).size == (16, 32)


def test_scoring_compares_a_result_with_the_upright_photo(tmp_path):
    """`nst score` and apply's scores decode the content photo through the same path: a result
    that is the photo as seen scores near zero against it, the sideways stored one does not."""
    from helpers import job_spec

    from nst_ops.evaluator import default_evaluator
    from pipeline.run import scoring

    photo = phone_jpeg(tmp_path / "p.jpg", w=40, h=20)
    content = images.decode(photo.read_bytes(), "p.jpg")  # as rescore() reads it
    stored = torch.from_numpy(__import__("numpy").asarray(Image.open(photo), "float32") / 255)
    spec, ev = job_spec(mode="transfer", size=40), None
    ev = default_evaluator([spec])

    def content_score(result: torch.Tensor) -> float:
        found = scoring.score_image(ev, images.encode(result), spec, content,
                                    [torch.rand(3, 16, 16)], torch.device("cpu"))  # fmt: skip
        assert found["score_error"] is None
        return found["score_content"]

    upright = content_score(content)
    sideways = content_score(stored.permute(2, 0, 1).contiguous())
    assert upright < sideways / 10
