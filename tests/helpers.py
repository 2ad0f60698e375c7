"""Small builders shared by the pipeline tests; the synthetic inputs and runs they share with the
benchmarks live in pipeline.testing."""

from __future__ import annotations

from pathlib import Path

from pipeline.testing import (  # noqa: F401  (re-exported for the tests)
    TINY,
    png_bytes,
    synthetic_run,
    table,
    write_images,
)


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


def committed_records(out: Path) -> dict[str, dict]:
    """job id -> the whole record of every committed job of a local run (either form)."""
    from pipeline.store.storage import Store

    store = Store(str(out))
    return {k: store.job_record(k) for k in store.committed()}


def markers(out: Path) -> list[Path]:
    """The commit markers of a local run (the current form)."""
    return sorted(out.glob("jobs/*/result.parquet"))


def nst_cmd(*args) -> list[str]:
    """`nst ARGS` as a separate process (for tests that kill, interrupt or time it)."""
    import sys

    return [sys.executable, "-m", "pipeline.cli", *(str(a) for a in args)]


def one_job(tmp_path, **common):
    """Run one tiny job into tmp_path/o; returns (result, out, rows) (rows: to run it again)."""
    c, s = write_images(tmp_path, 2, "t")
    rows = [{"content_uri": c, "style_uri": s}]
    return (*run_manifest(tmp_path, rows, **common), rows)


def phone_jpeg(path: Path, w: int = 40, h: int = 20, orientation: int = 6) -> Path:
    """A JPEG stored ``w`` x ``h`` with an EXIF orientation tag, as phones write them (6: the
    camera was turned a quarter, so the photo is seen ``h`` x ``w``). Its left half is dark."""
    import io

    import numpy as np
    from PIL import Image

    a = np.full((h, w, 3), 220, np.uint8)
    a[:, : w // 2] = 30
    img = Image.fromarray(a, "RGB")
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return path


def tiny_model(
    path: Path, meta: dict | None = None, seed: int = 0, photo_skip: bool = False
) -> Path:
    """A style network file as `nst train` writes it (a tiny untrained network), in no time."""
    import torch

    from nst_ops.stylenet import NetConfig, TransformerNet
    from pipeline.run import model_file

    torch.manual_seed(seed)
    net = TransformerNet(NetConfig(width=4, residual_blocks=1, photo_skip=photo_skip))
    if photo_skip:  # its last convolution starts at zero: a trained one is not
        with torch.no_grad():
            list(net.up.modules())[-1].weight.normal_(0, 0.1)
    spec = job_spec(mode="transfer").to_dict()
    meta = {"spec": spec, "net": net.config.to_dict(), "style_uris": [], "steps": 1} | (meta or {})
    style = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(seed))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model_file.to_bytes(net, net.config, meta, [style]))
    return path
