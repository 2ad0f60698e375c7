"""Small builders shared by the pipeline tests (tiny images, tiny manifests)."""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

TINY = {
    "weights": "random:0",
    "size": 16,
    "iterations": 2,
    "content_layers": ["relu2_1"],
    "style_layers": ["relu1_1", "relu2_1"],
    "log_every": 1,
}


def job_spec(**overrides):
    """A small, fast JobSpec on seeded random weights (conv layers up to conv3_1)."""
    from nst_ops.spec import JobSpec

    base = dict(
        weights="random:0",
        content_layers=("relu2_2",),
        style_layers=("conv1_1", "conv2_1", "conv3_1"),
        size=32,
        iterations=8,
        log_every=1,
        style_weight=1e3,
    )
    return JobSpec(**{**base, **overrides})


def png_bytes(w: int = 20, h: int = 16, seed: int = 0, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8"), "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG" if mode != "CMYK" else "JPEG")
    return buf.getvalue()


def write_images(folder: Path, n: int, prefix: str) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"{prefix}{i}.png"
        p.write_bytes(png_bytes(seed=zlib.crc32(prefix.encode()) % 1000 + i))  # not hash(): salted
        paths.append(str(p))
    return paths


def table(rows: list[dict], **common) -> pa.Table:
    """A manifest table; every row gets every column (from_pylist reads keys off row 0)."""
    full = [{**TINY, **common, **r} for r in rows]
    keys = list(dict.fromkeys(k for r in full for k in r))
    return pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in full])


def nst(*args: str, env: dict | None = None):
    """`nst ARGS` in-process (the CLI as a user runs it), exceptions not swallowed."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False, env=env)


def run_manifest(tmp_path: Path, rows: list[dict], *args: str, **common):
    """Write ``rows`` as a manifest and `nst run` it into tmp_path/o; returns (result, out)."""
    import pyarrow.parquet as pq

    pq.write_table(table(rows, **common), tmp_path / "m.parquet")
    out = tmp_path / "o"
    return nst("run", tmp_path / "m.parquet", "--out", out, "--no-progress", *args), out
