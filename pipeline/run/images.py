"""Decoding input images safely into RGB tensors, and encoding results (PNG, JPEG, WebP, TIFF).

Grayscale, CMYK, palette, alpha and 16-bit images are converted (alpha composited on white);
empty, truncated, non-image and oversized (decompression-bomb) files are refused by name.
"""

from __future__ import annotations

import io
import warnings
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.errors import InputError, NstError

if TYPE_CHECKING:
    import torch

DEFAULT_MAX_PIXELS = 50_000_000
Image.MAX_IMAGE_PIXELS = None  # we enforce our own, configurable limit before decoding


def _to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if a.max() > 255 or img.mode.startswith("I;16") else 255.0
        g = np.clip(a / top, 0, 1).astype(np.float32)
        return np.repeat(g[..., None], 3, axis=2)
    if img.mode == "F":
        g = np.clip(np.asarray(img, dtype=np.float32), 0, 1)
        return np.repeat(g[..., None], 3, axis=2)
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def _open(data: bytes, name: str, max_pixels: int, draft: bool) -> Image.Image:
    """Open and fully load an image, turning every PIL failure into an InputError naming it."""
    if not data:
        raise InputError(f"{name}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opened = Image.open(io.BytesIO(data))
            w, h = opened.size
            if w * h > max_pixels:
                raise InputError(
                    f"{name}: image is {w}x{h} = {w * h:,} pixels, above the limit of "
                    f"{max_pixels:,} (possible decompression bomb; raise --max-pixels to allow)"
                )
            if draft:
                opened.draft("RGB", (max(1, w // 8), max(1, h // 8)))  # JPEG: 1/8 scale
            opened.load()
            loaded = opened.size
            img = upright(opened)
            img.info["full_size"] = (w, h) if img.size == loaded else (h, w)  # before any draft
            return img
    except UnidentifiedImageError:
        raise InputError(f"{name}: not an image file PIL can read") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise InputError(f"{name}: corrupt or truncated image ({e})") from None


def upright(img: Image.Image) -> Image.Image:
    """The image as its camera meant it to be seen: phone photos are stored sideways with an
    EXIF orientation tag, which Pillow does not apply unless asked (every decode path comes
    through here, so a grid job, a training crop and an applied photo agree)."""
    return ImageOps.exif_transpose(img) or img


def decode(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Bytes -> (3,H,W) float tensor in [0,1]; ``name`` goes into every error message."""
    import torch  # here, so commands that only probe images never load torch

    arr = _to_rgb(_open(data, name, max_pixels, draft=False))
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()


def probe(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Cheap check for `nst validate`: header, size limit and a reduced-size decode."""
    img = _open(data, name, max_pixels, draft=True)
    width, height = img.info["full_size"]
    return width, height


def probe_input(
    uri: str, storage_options: dict | None, max_pixels: int, attempts: int = 4
) -> tuple[int, int] | str:
    """An input's (width, height) as seen, read under the input policy, or why it cannot be
    used (one line naming it): what `nst validate` and `nst train`'s probe ask of each one."""
    from pipeline.store import storage

    try:
        return probe(storage.read_input(uri, storage_options, attempts), uri, max_pixels)
    except FileNotFoundError:
        return f"{uri}: not found"
    except (NstError, OSError) as e:
        return str(e)


# Output formats: name -> (Pillow format, file extension, takes a quality).
FORMATS: dict[str, tuple[str, str, bool]] = {
    "png": ("PNG", "png", False),
    "jpeg": ("JPEG", "jpg", True),
    "webp": ("WEBP", "webp", True),
    "tiff": ("TIFF", "tiff", False),
}
EXTENSIONS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp", ".tif": "tiff",
              ".tiff": "tiff"}  # fmt: skip


def format_of(path: str) -> str:
    """The output format a file name asks for, by its extension."""
    ext = "." + path.rsplit(".", 1)[-1].lower() if "." in path.rsplit("/", 1)[-1] else ""
    if ext not in EXTENSIONS:
        raise InputError(
            f"{path}: unknown image extension {ext or '(none)'}; use one of "
            + ", ".join(EXTENSIONS)
        )
    return EXTENSIONS[ext]


def encode(image: torch.Tensor, fmt: str = "png", quality: int = 95) -> bytes:
    """An RGB image (3,H,W) in [0,1] as PNG, JPEG, WebP or TIFF bytes (lossy ones at
    ``quality``, 1-100)."""
    if fmt not in FORMATS:
        raise InputError(f"unknown image format {fmt!r}; choose one of {', '.join(FORMATS)}")
    pil, _, lossy = FORMATS[fmt]
    arr = (image.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round()
    buf = io.BytesIO()
    options = {"quality": quality} if lossy else {}
    Image.fromarray(arr.astype(np.uint8), "RGB").save(buf, format=pil, **options)
    return buf.getvalue()


def encode_png(image: torch.Tensor) -> bytes:
    return encode(image, "png")
