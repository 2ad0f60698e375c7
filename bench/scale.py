"""Scale: `nst status`, `nst run` with nothing to do, and a resume, over 10k/100k committed jobs
on S3 (moto's S3 server on loopback), with request counts, wall time and driver peak RSS.

    python bench/scale.py --jobs 10000 100000

Committed jobs are synthesised (image, trace, job.json and _COMMIT exactly as a worker writes
them, with the inputs' real fingerprints) straight into moto's in-memory backend; the commands
then run as a user runs them, as subprocesses talking HTTP to the server, which counts every
request by kind (LIST, GET, HEAD, PUT, DELETE). The resume adds 2 new jobs to the manifest and
reports when the first of them started (its job.json `started_at`) after the command began."""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from moto.core import DEFAULT_ACCOUNT_ID
from moto.moto_server.threaded_moto_server import MotoRequestHandler, ThreadedMotoServer
from moto.s3.models import s3_backends
from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from helpers import TINY, png_bytes  # noqa: E402

from nst_ops.vocab import Status  # noqa: E402
from pipeline import layout, record  # noqa: E402
from pipeline.grid import expand  # noqa: E402

BUCKET = "bench"
ENV = {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1"}


class CountingServer(ThreadedMotoServer):
    """moto's S3 server with a WSGI wrapper that counts requests by kind."""

    counts: Counter[str] = Counter()

    def _server_entry(self) -> None:
        app = DomainDispatcherApplication(create_backend_app)

        def counting(environ: dict, start_response: Any) -> Any:
            self.counts[_kind(environ)] += 1
            return app(environ, start_response)

        self._server = make_server(
            self._ip_address, self._port, counting, True, request_handler=MotoRequestHandler
        )
        self._server_ready_event.set()
        self._server.serve_forever()


def _kind(environ: dict) -> str:
    method, path, query = environ["REQUEST_METHOD"], environ["PATH_INFO"], environ["QUERY_STRING"]
    if method == "GET" and (path.rstrip("/").count("/") <= 1 or "list-type" in query):
        return "LIST"
    if method == "POST" and "delete" in query:
        return "DELETE (batch)"
    return method


def synthesise(n: int) -> tuple[str, list[str]]:
    """A manifest of n jobs (contents x styles) and n committed jobs; returns its URI and the
    URIs of 2 extra contents for the resume."""
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    backend.create_bucket(BUCKET, "us-east-1")
    styles = [f"s3://{BUCKET}/in/style/s{i}.png" for i in range(10)]
    contents = [f"s3://{BUCKET}/in/content/c{i}.png" for i in range(n // len(styles) + 2)]
    for i, uri in enumerate(styles + contents):
        backend.put_object(BUCKET, uri.split("/", 3)[3], png_bytes(seed=i))
    rows = [{**TINY, "content_uri": c, "style_uri": s} for c in contents[:-2] for s in styles]
    jobs = expand(pa.Table.from_pylist(rows), max_jobs=10**7)
    etag = {
        u: backend.get_object(BUCKET, u.split("/", 3)[3]).etag.strip('"') for u in styles + contents
    }
    for job in jobs:
        inputs = [
            {"uri": u, "fingerprint": f"etag:{etag[u]}"} for u in (job.content_uri, *job.style_uris)
        ]
        row = record.row(
            job,
            Status.OK,
            inputs=inputs,
            final_total=1.0,
            seconds=1.0,
            image_uri=layout.job_path(job.id, layout.IMAGE),
            trace_uri=layout.job_path(job.id, layout.TRACE),
        )
        for name, data in (
            (layout.IMAGE, b"png"),
            (layout.TRACE, b"parquet"),
            (layout.RECORD, json.dumps(row).encode()),
            (layout.MARKER, json.dumps(row).encode()),
        ):
            backend.put_object(BUCKET, f"run/{layout.job_path(job.id, name)}", data)
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    backend.put_object(BUCKET, "manifest.parquet", buf.getvalue())
    extra = [{**TINY, "content_uri": c, "style_uri": styles[0]} for c in contents[-2:]]
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows + extra), buf)
    backend.put_object(BUCKET, "manifest2.parquet", buf.getvalue())
    return f"s3://{BUCKET}/manifest.parquet", contents[-2:]


def timed(cmd: list[str], env: dict, server: CountingServer) -> dict[str, Any]:
    """Run a command; its wall time, peak RSS and requests. The peak is the kernel's high-water
    mark of the command's own memory (VmHWM, reset at exec), read until it exits: wait4's
    ru_maxrss would include the forked copy of this (large) benchmark process."""
    server.counts.clear()
    start = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _hwm_kib(proc.pid))
        time.sleep(0.02)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.decode()}\n{err.decode()}")
    return {
        "seconds": round(time.time() - start, 1),
        "rss_mib": peak // 1024,
        "requests": dict(server.counts),
        "started": start,
    }


def _hwm_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def bench(n: int, server: CountingServer, endpoint: str) -> dict[str, Any]:
    t0 = time.time()
    manifest, _ = synthesise(n)
    made = time.time() - t0
    opts = json.dumps({"endpoint_url": endpoint})
    env = {**os.environ, **ENV, "NST_STORAGE_OPTIONS": opts, "RAY_AUTH_MODE": "disabled"}
    nst = [sys.executable, "-m", "pipeline.cli"]
    out = f"s3://{BUCKET}/run"
    res = {"jobs": n, "synthesised_s": round(made, 1)}
    time.sleep(3)  # the markers are older than what follows, as in a run that took a while
    # first: no results.parquet yet (a driver killed before writing it), so every marker is read
    res["run, nothing to do"] = timed([*nst, "run", manifest, "--out", out], env, server)
    res["status"] = timed([*nst, "status", out], env, server)
    resume = timed(
        [
            *nst,
            "run",
            manifest.replace("manifest", "manifest2"),
            "--out",
            out,
            "--gpus-per-job",
            "0",
        ],
        env,
        server,
    )
    firsts = [json.loads(k.value) for key, k in _records(n)]
    first = min(r["started_at"] for r in firsts)
    resume["first_task_after_s"] = round(first - resume["started"], 1)
    res["resume (+2 jobs)"] = resume
    return res


def _records(n: int) -> list[tuple[str, Any]]:
    """job.json of the jobs the resume ran (the only ones with started_at)."""
    bucket = s3_backends[DEFAULT_ACCOUNT_ID]["aws"].buckets[BUCKET]
    return [
        (k, v)
        for k, v in bucket.keys.items()
        if k.endswith(layout.RECORD) and b"started_at" in v.value
    ]


def main() -> None:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, nargs="+", default=[10_000])
    a = ap.parse_args()
    for n in a.jobs:
        server = CountingServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        endpoint = "http://{}:{}".format(*server.get_host_and_port())
        r = bench(n, server, endpoint)
        server.stop()
        s3_backends[DEFAULT_ACCOUNT_ID]["aws"].reset()
        print(f"\n## {n:,} committed jobs (synthesised in {r['synthesised_s']} s)")
        print("| command | seconds | driver peak RSS | requests |")
        print("|---|---|---|---|")
        for cmd in ("run, nothing to do", "status", "resume (+2 jobs)"):
            m = r[cmd]
            reqs = ", ".join(f"{k} {v}" for k, v in sorted(m["requests"].items()))
            first = m.get("first_task_after_s")
            extra = f" (first task at {first} s)" if first is not None else ""
            print(f"| nst {cmd} | {m['seconds']}{extra} | {m['rss_mib']} MiB | {reqs} |")


if __name__ == "__main__":
    main()
