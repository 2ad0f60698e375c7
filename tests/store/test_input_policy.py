"""Inputs only from allowed places, credentials per store: a manifest written by someone else
cannot make workers call internal services or read devices, and each store gets its own
options (tested against a loopback HTTP server and moto S3 on loopback; nothing leaves
127.0.0.1)."""

import http.server
import json
import os
import subprocess
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import s3fs
from helpers import nst, nst_cmd, png_bytes, run_manifest, table, write_images

from pipeline.errors import InputError
from pipeline.store import storage


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self):  # noqa: N802
        type(self).requests.append(self.path)
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/x.png")
            self.end_headers()
            return
        super().do_GET()

    do_HEAD = do_GET  # noqa: N815

    def log_message(self, *args):
        pass


@pytest.fixture
def http_root(tmp_path):
    """A loopback HTTP server over tmp_path/www; yields (base URL, the paths it was asked)."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "x.png").write_bytes(png_bytes(seed=5))
    _Handler.requests = []
    handler = lambda *a, **k: _Handler(*a, directory=str(root), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Handler.requests
    server.shutdown()


@pytest.fixture
def policy(monkeypatch):
    def set_(http: bool = False, private: bool = False, max_bytes: int | None = None):
        monkeypatch.setenv("NST_ALLOW_HTTP", "1" if http else "")
        monkeypatch.setenv("NST_ALLOW_PRIVATE_HOSTS", "1" if private else "")
        monkeypatch.setenv("NST_MAX_INPUT_BYTES", str(max_bytes or ""))

    set_()
    return set_


def test_http_inputs_are_off_by_default_and_loopback_needs_its_own_permission(http_root, policy):
    base, asked = http_root
    with pytest.raises(InputError, match="http\\(s\\) inputs are off.*--allow-http"):
        storage.read_input(f"{base}/x.png")
    policy(http=True)
    with pytest.raises(InputError, match="loopback, link-local or private address"):
        storage.read_input(f"{base}/x.png")
    assert asked == []  # refused before any request
    policy(http=True, private=True)
    assert storage.read_input(f"{base}/x.png") == png_bytes(seed=5)


def test_a_redirect_is_not_followed(http_root, policy):
    base, asked = http_root
    policy(http=True, private=True)
    try:
        data = storage.read_input(f"{base}/redirect")
    except (OSError, InputError):
        data = b""
    assert data != png_bytes(seed=5) and "/x.png" not in asked  # never fetched via a redirect


@pytest.mark.parametrize("uri", ["/dev/zero", "file:///dev/zero"])
def test_devices_are_refused_before_reading(uri, policy):
    with pytest.raises(InputError, match="not a regular file"):
        storage.read_input(uri)


def test_a_fifo_is_refused_without_blocking(tmp_path, policy):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        storage.read_input(str(fifo))


def test_transfer_from_dev_zero_is_one_line_not_a_memory_error(tmp_path):
    s = write_images(tmp_path, 1, "s")[0]
    r = nst("transfer", "/dev/zero", s, tmp_path / "o.png", "--set", "weights=random:0")
    assert r.exit_code == 1 and "/dev/zero: not a regular file" in r.output
    assert "Traceback" not in r.output


def test_an_input_over_the_byte_limit_is_refused_before_decoding(tmp_path, policy):
    big = tmp_path / "big.png"
    big.write_bytes(png_bytes(200, 200))
    policy(max_bytes=1000)
    with pytest.raises(InputError, match="bytes, above the input limit of 1,000"):
        storage.read_input(str(big))


@pytest.mark.parametrize("uri", ["ftp://127.0.0.1:9/x.png", "ssh://127.0.0.1:9/x.png",
                                 "github://o:r@main/x.png"])  # fmt: skip
def test_other_protocols_are_refused(uri, policy):
    with pytest.raises(InputError, match="is not allowed for inputs"):
        storage.read_input(uri)


def test_validate_reports_each_disallowed_input_with_its_rows(tmp_path, http_root):
    base, asked = http_root
    c, s = write_images(tmp_path, 2, "i")
    rows = [{"content_uri": c, "style_uri": s},
            {"content_uri": f"{base}/x.png", "style_uri": s},
            {"content_uri": "/dev/zero", "style_uri": s,
             "init": "ftp://127.0.0.1:9/i.png"}]  # fmt: skip
    pq.write_table(table(rows), tmp_path / "m.parquet")
    r = nst("validate", tmp_path / "m.parquet")
    assert r.exit_code == 1
    assert "rows [1]" in r.output and "http(s) inputs are off" in r.output
    assert "rows [2]: /dev/zero: not a regular file" in r.output
    assert "protocol 'ftp' is not allowed" in r.output
    assert asked == []


@pytest.mark.usefixtures("ray_cpu")
def test_a_manifest_pointing_workers_at_a_loopback_service_fails_that_job_only(tmp_path, http_root):
    base, asked = http_root
    c, s = write_images(tmp_path, 2, "i")
    rows = [{"content_uri": c, "style_uri": s}, {"content_uri": f"{base}/x.png", "style_uri": s}]
    r, out = run_manifest(tmp_path, rows)
    assert r.exit_code == 0, r.output
    by = {row["content_uri"]: row for row in pq.read_table(out / "results.parquet").to_pylist()}
    assert by[c]["status"] == "ok"
    assert by[f"{base}/x.png"]["status"] == "failed"
    assert "http(s) inputs are off" in by[f"{base}/x.png"]["error"]
    assert asked == []


# --- credentials per store --------------------------------------------------------------------


def _bucket(endpoint: str, name: str) -> s3fs.S3FileSystem:
    fs = s3fs.S3FileSystem(endpoint_url=endpoint)
    fs.mkdir(name)
    return fs


@pytest.mark.usefixtures("ray_cpu")
def test_weights_on_s3_are_read_with_the_runs_storage_options(tmp_path, s3_endpoint):
    import io

    import torch

    from nst_ops.vgg import VGGFeatures

    fs = _bucket(s3_endpoint, "weights")
    net = VGGFeatures("vgg19", ["relu2_1"], seed=3)
    buf = io.BytesIO()
    torch.save({f"features.{k}": v for k, v in net.features.state_dict().items()}, buf)
    fs.pipe_file("weights/vgg.pth", buf.getvalue())
    c, s = write_images(tmp_path, 2, "i")
    rows = [{"content_uri": c, "style_uri": s, "weights": "s3://weights/vgg.pth"}]
    pq.write_table(table(rows), tmp_path / "m.parquet")
    so = json.dumps({"s3": {"endpoint_url": s3_endpoint}})
    v = nst("validate", tmp_path / "m.parquet", "--storage-options", so)
    assert v.exit_code == 0, v.output
    r = nst("run", tmp_path / "m.parquet", "--out", tmp_path / "o", "--no-progress",
            "--storage-options", so)  # fmt: skip
    assert r.exit_code == 0, r.output
    (row,) = pq.read_table(tmp_path / "o" / "results.parquet").to_pylist()
    assert row["status"] == "ok", row["error"]


def test_without_options_s3_weights_fail_validation_in_one_line(tmp_path, s3_endpoint, monkeypatch):
    """Without the endpoint the read goes to AWS, which this machine cannot reach: botocore's
    own retries are cut to one try (its default backoff made this test take ~35 s), ours stay."""
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_RETRY_MODE", "standard")
    c, s = write_images(tmp_path, 2, "i")
    rows = [{"content_uri": c, "style_uri": s, "weights": "s3://weights/none.pth"}]
    pq.write_table(table(rows), tmp_path / "m.parquet")
    v = nst("validate", tmp_path / "m.parquet")
    assert v.exit_code == 1 and "rows [0]: weights s3://weights/none.pth" in v.output
    assert "Traceback" not in v.output


def test_an_https_input_with_an_s3_output_gets_no_s3_options(tmp_path, s3_endpoint, http_root):
    """One object of options applies to the output's protocol (s3), not to the http input."""
    base, asked = http_root
    _bucket(s3_endpoint, "out")
    s = write_images(tmp_path, 1, "s")[0]
    rows = [{"content_uri": f"{base}/x.png", "style_uri": s}]
    pq.write_table(table(rows), tmp_path / "m.parquet")
    env = {**os.environ, "RAY_worker_niceness": "0", "NST_ALLOW_HTTP": "1",
           "NST_ALLOW_PRIVATE_HOSTS": "1"}  # fmt: skip
    cmd = nst_cmd("run", tmp_path / "m.parquet", "--out", "s3://out/run", "--no-progress",
                  "--storage-options", json.dumps({"endpoint_url": s3_endpoint}))  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    (row,) = pq.read_table(fs.open("out/run/results.parquet")).to_pylist()
    assert row["status"] == "ok", row["error"]
    assert "/x.png" in asked
    assert Path(tmp_path / "www" / "x.png").exists()


# --- storage errors: one line naming the URL ------------------------------------------------


def _pair_manifest(tmp_path) -> Path:
    c, s = write_images(tmp_path, 2, "i")
    pq.write_table(table([{"content_uri": c, "style_uri": s}]), tmp_path / "m.parquet")
    return tmp_path / "m.parquet"


def test_an_unreachable_endpoint_is_one_line_naming_the_output(tmp_path):
    dead = json.dumps({"endpoint_url": "http://127.0.0.1:9", "config_kwargs": {
        "retries": {"max_attempts": 1}, "connect_timeout": 1}})  # fmt: skip
    r = nst("run", _pair_manifest(tmp_path), "--out", "s3://bucket/run", "--storage-options", dead)
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "s3://bucket/run" in r.output or "127.0.0.1:9" in r.output
    assert len([ln for ln in r.output.splitlines() if ln.startswith("error:")]) == 1


def test_an_option_the_store_does_not_take_is_one_line(tmp_path):
    r = nst("run", _pair_manifest(tmp_path), "--out", "s3://bucket/run", "--storage-options",
            json.dumps({"no_such_option": 1}))  # fmt: skip
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "no_such_option" in r.output and "--storage-options" in r.output


def test_a_missing_bucket_is_named(tmp_path, s3_endpoint):
    so = json.dumps({"endpoint_url": s3_endpoint})
    r = nst("run", _pair_manifest(tmp_path), "--out", "s3://no-such-bucket-x/run",
            "--storage-options", so)  # fmt: skip
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "no-such-bucket-x" in r.output
