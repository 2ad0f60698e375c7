"""Soak benchmark: thousands of tiny jobs on S3 (moto on loopback) behind a fault-injecting
proxy, with Ray workers SIGKILLed at random moments and the driver killed once and started
again. Checks, against a clean run of the same manifest in the same session:

- every job is committed exactly once (one marker per job, one commit record per job),
- no partial object (every image decodes, every result.parquet reads),
- results equal to the clean run's (images byte for byte, CPU),

and prints the faults injected, the redone jobs and the time against the clean run.

    python -m bench.soak                       # 2,000 jobs, ~15 min on 2 cores
    python -m bench.soak --jobs 300 --fault-rate 0.05   # a quick look

Nothing leaves 127.0.0.1: moto and the proxy listen there, and AWS_ENDPOINT_URL points any
stray S3 call at a dead loopback port.
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "BOTO_CONFIG": "/dev/null",
    "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
    "RAY_worker_niceness": "0",
    "NST_LEASE_TTL_S": "5",  # the restarted driver takes the dead one's lease over quickly
    "NST_LEASE_HEARTBEAT_S": "1",
}
BUCKET = "soak"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FaultProxy(http.server.ThreadingHTTPServer):
    """Forwards S3 requests to moto; a share are answered 503 SlowDown instead, and a share
    of GET and LIST answers are cut off mid-body. Counts what it did and every successful
    PUT of a commit marker (to find jobs committed more than once)."""

    daemon_threads = True

    def __init__(self, upstream: int, rate: float, seed: int = 0):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream, self.rate, self.rng = upstream, rate, random.Random(seed)
        self.faults: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        self.commits: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.enabled = True

    def roll(self) -> float:
        with self.lock:
            return self.rng.random()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FaultProxy

    def log_message(self, *args: object) -> None:
        pass

    def _body(self) -> bytes:
        """The request body, de-chunked (botocore streams uploads with chunked encoding). A
        body cut short (its sender killed mid-upload) raises, as S3 refuses it: it is never
        stored."""
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            want = int(self.headers.get("Content-Length") or 0)
            data = self.rfile.read(want)
            if len(data) != want:
                raise ConnectionError("incomplete body")
            return data
        data = b""
        while True:
            line = self.rfile.readline()
            if not line:
                raise ConnectionError("incomplete chunked body")
            size = int(line.split(b";")[0], 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return data
            data += self.rfile.read(size)
            self.rfile.readline()

    def _forward(self) -> None:
        try:
            body = self._body()
        except (ConnectionError, ValueError):
            self.close_connection = True
            return
        kind = f"{self.command} {'LIST' if 'list-type' in self.path else 'object'}"
        self.server.requests[kind] += 1
        roll = self.server.roll() if self.server.enabled else 1.0
        if roll < self.server.rate / 2:
            self.server.faults[f"503 on {kind}"] += 1
            self._reply(
                503,
                b"<Error><Code>SlowDown</Code><Message>Reduce your rate</Message></Error>",
                {"Content-Type": "application/xml"},
            )
            return
        conn = http.client.HTTPConnection("127.0.0.1", self.server.upstream, timeout=60)
        drop = ("host", "transfer-encoding", "content-length")
        headers = {k: v for k, v in self.headers.items() if k.lower() not in drop}
        headers["Content-Length"] = str(len(body))
        headers["Host"] = f"127.0.0.1:{self.server.upstream}"
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        if self.command == "PUT" and resp.status == 200 and self.path.endswith("result.parquet"):
            with self.server.lock:
                self.server.commits[self.path] += 1
        cut = self.command == "GET" and len(data) > 16 and roll < self.server.rate
        if cut:
            self.server.faults[f"cut mid-body on {kind}"] += 1
        self._reply(resp.status, data, dict(resp.getheaders()), cut)

    def _reply(self, status: int, data: bytes, headers: dict, cut: bool = False) -> None:
        self.send_response(status)
        head = self.command == "HEAD"  # no body, but the object's own length
        skip = {"transfer-encoding", "connection", "server", "date"} | (
            set() if head else {"content-length"}
        )
        for k, v in headers.items():
            if k.lower() not in skip:
                self.send_header(k, v)
        if not head:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2] if cut else data)
        if cut:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

    do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _forward  # noqa: N815


def png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray((rng.random((16, 20, 3)) * 255).astype("uint8"), "RGB").save(buf, "PNG")
    return buf.getvalue()


def setup(endpoint: str, jobs: int, root: Path) -> Path:
    """Inputs on S3 and a manifest of ``jobs`` tiny jobs (contents x seeds)."""
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=endpoint)
    fs.mkdir(BUCKET)
    contents = max(1, jobs // 20)
    for i in range(contents):
        fs.pipe_file(f"{BUCKET}/in/c{i}.png", png(i))
    fs.pipe_file(f"{BUCKET}/in/s.png", png(10_000))
    rows = [
        {
            "content_uri": f"s3://{BUCKET}/in/c{i}.png",
            "style_uri": f"s3://{BUCKET}/in/s.png",
            "seed": list(range(20)),
            "weights": "random:0",
            "size": 16,
            "iterations": 2,
            "optimizer": "adam",
            "content_layers": ["relu2_1"],
            "style_layers": ["relu1_1", "relu2_1"],
        }
        for i in range(contents)
    ]
    manifest = root / "m.parquet"
    pq.write_table(pa.Table.from_pylist(rows), manifest)
    return manifest


def nst(manifest: Path, out: str, endpoint: str) -> list[str]:
    opts = json.dumps({"endpoint_url": endpoint, "config_kwargs": {"retries": {"max_attempts": 2}}})
    return [
        sys.executable,
        "-m",
        "pipeline.cli",
        "run",
        str(manifest),
        "--out",
        out,
        "--no-progress",
        "--storage-options",
        opts,
        "--max-retries",
        "10",
    ]


def killer(stop: threading.Event, killed: list[int], every: float, seed: int) -> None:
    """SIGKILL a random Ray task worker of this benchmark every ~``every`` seconds."""
    rng = random.Random(seed)
    me = psutil.Process()
    while not stop.wait(rng.uniform(0.5, 1.5) * every):
        workers = []
        for p in me.children(recursive=True):
            try:
                if p.cmdline() and p.cmdline()[0].startswith("ray::_task"):
                    workers.append(p)
            except psutil.Error:
                continue
        if workers:
            victim = rng.choice(workers)
            try:
                victim.send_signal(signal.SIGKILL)
                killed.append(victim.pid)
            except psutil.Error:
                pass


def committed(endpoint: str, out: str) -> dict[str, bytes]:
    """job id -> image bytes of every committed job (every object read: none partial)."""
    import s3fs

    from pipeline.store import record

    fs = s3fs.S3FileSystem(
        endpoint_url=endpoint, skip_instance_cache=True, use_listings_cache=False
    )
    found = {}
    for path in fs.find(f"{BUCKET}/{out}/jobs"):
        if path.endswith("result.parquet"):
            job = path.split("/")[-2]
            rec = record.read_record(fs.cat_file(path))
            image = fs.cat_file(f"{BUCKET}/{out}/{rec['image_uri']}")
            Image.open(io.BytesIO(image)).load()  # a partial image would not decode
            found[job] = image
    return found


def faulty_run(
    cmd: list[str], env: dict, out_prefix: str, endpoint: str, jobs: int, kill_every: float
) -> tuple[float, list[int], int]:
    """The run with worker kills and one driver kill at ~40% committed; returns (seconds,
    killed workers, driver starts)."""
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=endpoint)
    stop, killed = threading.Event(), []
    t = threading.Thread(target=killer, args=(stop, killed, kill_every, 1))
    t.start()
    t0, starts = time.perf_counter(), 0
    try:
        proc = subprocess.Popen(cmd, env=env, start_new_session=True)
        starts += 1
        while proc.poll() is None:
            fs.invalidate_cache()
            done = (
                sum(
                    1
                    for p in fs.find(f"{BUCKET}/{out_prefix}/jobs")
                    if p.endswith("result.parquet")
                )
                if fs.exists(f"{BUCKET}/{out_prefix}")
                else 0
            )
            if done >= 0.4 * jobs:
                os.killpg(proc.pid, signal.SIGKILL)  # the driver and its embedded Ray
                proc.wait()
                break
            time.sleep(0.5)
        while True:
            starts += 1
            code = subprocess.run(cmd, env=env).returncode
            if code == 0:
                break
            if starts > 6:
                raise SystemExit(f"the faulty run did not finish (last exit code {code})")
    finally:
        stop.set()
        t.join()
    return time.perf_counter() - t0, killed, starts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--jobs", type=int, default=2000)
    p.add_argument("--fault-rate", type=float, default=0.03, help="share of requests faulted")
    p.add_argument("--kill-every", type=float, default=4.0, help="seconds between worker kills")
    a = p.parse_args()
    os.environ.update(ENV)
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    moto_port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port, verbose=False)
    server.start()
    proxy = FaultProxy(moto_port, a.fault_rate)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    direct, faulty = f"http://127.0.0.1:{moto_port}", f"http://127.0.0.1:{proxy.server_port}"
    env = {**os.environ, **ENV}
    with tempfile.TemporaryDirectory() as tmp:
        manifest = setup(direct, a.jobs, Path(tmp))
        t0 = time.perf_counter()
        subprocess.run(nst(manifest, f"s3://{BUCKET}/clean", direct), env=env, check=True)
        clean_s = time.perf_counter() - t0
        seconds, killed, starts = faulty_run(
            nst(manifest, f"s3://{BUCKET}/faulty", faulty),
            env,
            "faulty",
            direct,
            a.jobs,
            a.kill_every,
        )
        proxy.enabled = False
        report(
            a,
            committed(direct, "clean"),
            committed(direct, "faulty"),
            proxy,
            clean_s,
            seconds,
            killed,
            starts,
        )
    server.stop()


def report(
    a: argparse.Namespace,
    clean: dict[str, bytes],
    faulty: dict[str, bytes],
    proxy: FaultProxy,
    clean_s: float,
    seconds: float,
    killed: list[int],
    starts: int,
) -> None:
    twice = {k: n for k, n in proxy.commits.items() if n > 1}
    same = sum(clean[k] == v for k, v in faulty.items() if k in clean)
    lines = [
        f"jobs: {a.jobs}; committed: clean {len(clean)}, faulty {len(faulty)}; images equal to "
        f"the clean run's: {same}/{len(clean)}",
        f"requests through the proxy: {sum(proxy.requests.values())} "
        f"({', '.join(f'{k} {v}' for k, v in sorted(proxy.requests.items()))})",
        f"faults injected: {sum(proxy.faults.values())} "
        f"({', '.join(f'{k} {v}' for k, v in sorted(proxy.faults.items()))})",
        f"worker processes SIGKILLed: {len(killed)}; driver starts: {starts} (killed once)",
        f"commit markers written more than once (jobs redone): {len(twice)}",
        f"time: clean {clean_s:.0f} s, faulty {seconds:.0f} s ({seconds / clean_s:.2f}x)",
    ]
    ok = len(faulty) == len(clean) == a.jobs and same == len(clean)
    lines.append(
        "verdict: "
        + ("every job committed, none partial, equal to the clean run" if ok else "FAILED")
    )
    print("\n".join(lines))
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
