"""Input decoding: odd formats converted, broken or hostile files refused by name."""

import io

import numpy as np
import pytest
from helpers import png_bytes
from PIL import Image

from pipeline.errors import InputError
from pipeline.run.images import decode, encode_png, probe


def save(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "P", "LA"])
def test_grayscale_cmyk_palette_and_alpha_images_are_converted_to_rgb(mode):
    x = decode(png_bytes(mode=mode), f"img.{mode}")
    assert x.shape == (3, 16, 20) and x.dtype.is_floating_point
    assert 0 <= float(x.min()) and float(x.max()) <= 1


def test_alpha_is_composited_on_white():
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    assert decode(save(img), "a.png").min() == 1.0


def test_grayscale_keeps_equal_channels():
    x = decode(png_bytes(mode="L"), "g.png")
    assert (x[0] == x[1]).all() and (x[1] == x[2]).all()


def test_16_bit_images_use_their_full_range():
    a = np.array([[0, 32768, 65535]], dtype=np.uint16)
    img = Image.frombytes("I;16", (3, 1), a.tobytes())
    data = save(img)
    assert Image.open(io.BytesIO(data)).mode in ("I;16", "I")  # really a 16-bit PNG
    x = decode(data, "deep.png")
    assert x.shape == (3, 1, 3)
    assert x[0, 0].tolist() == pytest.approx([0.0, 0.5, 1.0], abs=1e-4)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty file"),
        (b"this is a text file, not an image", "not an image file"),
        (png_bytes(64, 64)[:200], "corrupt or truncated"),
    ],
)
def test_broken_files_are_refused_naming_the_file(data, message):
    with pytest.raises(InputError, match=f"bad.png: {message}"):
        decode(data, "bad.png")
    with pytest.raises(InputError, match=message):
        probe(data, "bad.png")


def test_decompression_bomb_is_refused_before_decoding():
    big = save(Image.new("L", (3000, 3000)))
    with pytest.raises(InputError, match="9,000,000 pixels, above the limit of 1,000,000"):
        decode(big, "bomb.png", max_pixels=1_000_000)
    assert decode(big, "ok.png", max_pixels=10_000_000).shape == (3, 3000, 3000)


def test_png_round_trip_is_exact_at_8_bits():
    x = decode(png_bytes(), "a.png")
    assert (decode(encode_png(x), "b.png") == x).all()
