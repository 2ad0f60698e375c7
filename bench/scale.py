"""Scale: `nst status`, `nst run` with nothing to do, and a resume, over 10k/100k committed jobs
on S3 (moto's S3 server on loopback), with request counts, wall time and driver peak RSS.

    python -m bench.scale --jobs 10000                  # S3 (moto server), request counts
    python -m bench.scale --jobs 100000 --store local   # driver memory at 100k jobs

Committed jobs are synthesised (image and result.parquet exactly as a worker writes them, with
the inputs' real fingerprints; ``--v1``: the four-file form of earlier runs, for comparison)
straight into moto's in-memory backend; the commands then run as a user runs them, as
subprocesses talking HTTP to the server, which counts every request by kind (LIST, GET, HEAD,
PUT, DELETE). The resume adds 2 new jobs to the manifest and reports when the first of them
started (its record's `started_at`) after the command began. moto's server is one Python
process: at 100k jobs it, not the pipeline, sets the pace (a 100k-marker first read took over
25 minutes there), so the 100k driver-memory figure is measured on a local folder with the
same layout (``--store local``)."""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
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

from nst_ops.vocab import Status
from pipeline.jobs.grid import expand
from pipeline.store import layout, record
from pipeline.testing import TINY, png_bytes

ROOT = Path(__file__).resolve().parent.parent

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


class S3Target:
    """moto's in-memory backend: objects written without HTTP, read back over HTTP."""

    def __init__(self) -> None:
        self.backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
        self.backend.create_bucket(BUCKET, "us-east-1")

    def uri(self, key: str) -> str:
        return f"s3://{BUCKET}/{key}"

    def put(self, key: str, data: bytes) -> None:
        self.backend.put_object(BUCKET, key, data)

    def fingerprint(self, key: str) -> str:
        return "etag:" + self.backend.get_object(BUCKET, key).etag.strip('"')


class LocalTarget:
    """A local folder: the same layout on disk (for the 100k-job driver-memory figure, where
    moto's single-threaded server, not the pipeline, would set the pace)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def uri(self, key: str) -> str:
        return str(self.root / key)

    def put(self, key: str, data: bytes) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def fingerprint(self, key: str) -> str:
        from pipeline.store.storage import fingerprint_of

        return fingerprint_of(self.uri(key)) or ""


TRACE_OF = {False: layout.RESULT, True: layout.V1_TRACE}
TRACE = pa.table({"iteration": [0, 1, 2], "total": [3.0, 2.0, 1.0], "content": [1.0, 1.0, 1.0],
                  "style": [2.0, 1.0, 0.0]})  # fmt: skip  # the trace of TINY's 2 iterations


def _committed_files(row: dict[str, Any], v1: bool) -> dict[str, bytes]:
    """A committed job's files after its image, marker last: result.parquet, or with ``v1``
    the four-file form of runs before November 2026 (trace.parquet, job.json, _COMMIT)."""
    rec = record.job_json(row, started=0.0)  # 0: not started by the benchmark's commands
    if not v1:
        return {layout.RESULT: record.result_file(TRACE, rec)}
    buf = io.BytesIO()
    pq.write_table(TRACE, buf)
    return {layout.V1_TRACE: buf.getvalue(), layout.V1_RECORD: record.to_json(rec),
            layout.V1_MARKER: record.to_json(row)}  # fmt: skip


def synthesise(n: int, target: S3Target | LocalTarget, v1: bool = False) -> str:
    """A manifest of n jobs (contents x styles), n committed jobs, and manifest2 with 2 more
    jobs for the resume; returns the manifest's URI."""
    styles = [f"in/style/s{i}.png" for i in range(10)]
    contents = [f"in/content/c{i}.png" for i in range(n // len(styles) + 2)]
    for i, key in enumerate(styles + contents):
        target.put(key, png_bytes(seed=i))
    prints = {target.uri(k): target.fingerprint(k) for k in styles + contents}
    s_uris, c_uris = [target.uri(k) for k in styles], [target.uri(k) for k in contents]
    rows = [{**TINY, "content_uri": c, "style_uri": s} for c in c_uris[:-2] for s in s_uris]
    for job in expand(pa.Table.from_pylist(rows), max_jobs=10**7):
        inputs = [{"uri": u, "fingerprint": prints[u]} for u in job.input_uris]
        row = record.row(job, Status.OK, inputs=inputs, final_total=1.0, seconds=1.0,
                         image_uri=layout.job_path(job.id, layout.IMAGE),
                         trace_uri=layout.job_path(job.id, TRACE_OF[v1]))  # fmt: skip
        files = {layout.IMAGE: b"png", **_committed_files(row, v1)}
        for name, data in files.items():
            target.put(f"run/{layout.job_path(job.id, name)}", data)
    extra = [{**TINY, "content_uri": c, "style_uri": s_uris[0]} for c in c_uris[-2:]]
    for name, table in (("manifest.parquet", rows), ("manifest2.parquet", rows + extra)):
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(table), buf)
        target.put(name, buf.getvalue())
    return target.uri("manifest.parquet")


def timed(cmd: list[str], env: dict, server: CountingServer | None) -> dict[str, Any]:
    """Run a command; its wall time, peak RSS and requests. The peak is the kernel's high-water
    mark of the command's own memory (VmHWM, reset at exec), read until it exits: wait4's
    ru_maxrss would include the forked copy of this (large) benchmark process."""
    if server is not None:
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
        "requests": dict(server.counts) if server else {},
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


def bench(n: int, target: S3Target | LocalTarget, server: CountingServer | None,
          env: dict[str, str], v1: bool = False) -> dict[str, Any]:  # fmt: skip
    t0 = time.time()
    manifest = synthesise(n, target, v1)
    res: dict[str, Any] = {"jobs": n, "synthesised_s": round(time.time() - t0, 1)}
    nst = [sys.executable, "-m", "pipeline.cli"]
    out = target.uri("run")
    time.sleep(3)  # the markers are older than what follows, as in a run that took a while
    # first: no results.parquet yet (a driver killed before writing it), so every marker is read
    limit = ["--max-jobs", str(2 * n)]
    res["run, nothing to do"] = timed([*nst, "run", manifest, "--out", out, *limit], env, server)
    res["status"] = timed([*nst, "status", out], env, server)
    again = [*nst, "run", manifest.replace("manifest", "manifest2"), "--out", out, *limit]
    resume = timed([*again, "--gpus-per-job", "0"], env, server)
    done = pq.read_table(io.BytesIO(_read(target, "run/results.parquet"))).to_pylist()
    starts = [r["started_at"] for r in _new_records(target, done) if r.get("started_at")]
    resume["first_task_after_s"] = round(min(starts) - resume["started"], 1)
    res["resume (+2 jobs)"] = resume
    return res


def _read(target: S3Target | LocalTarget, key: str) -> bytes:
    if isinstance(target, LocalTarget):
        return (target.root / key).read_bytes()
    return bytes(target.backend.get_object(BUCKET, key).value)


def _new_records(target: S3Target | LocalTarget, rows: list[dict]) -> list[dict]:
    """Records of the jobs the resume ran (synthesised ones have started_at 0)."""
    ran = [r["job_id"] for r in rows if r.get("device")]
    paths = [f"run/{layout.job_path(j, layout.RESULT)}" for j in ran]
    return [record.read_record(_read(target, p)) for p in paths]


def main() -> None:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, nargs="+", default=[10_000])
    ap.add_argument("--store", choices=("s3", "local"), default="s3")
    ap.add_argument("--v1", action="store_true", help="runs in the earlier four-file form")
    a = ap.parse_args()
    for n in a.jobs:
        env = {**os.environ, **ENV, "RAY_AUTH_MODE": "disabled"}
        server = None
        if a.store == "s3":
            server = CountingServer(ip_address="127.0.0.1", port=0, verbose=False)
            server.start()
            endpoint = "http://{}:{}".format(*server.get_host_and_port())
            env["NST_STORAGE_OPTIONS"] = json.dumps({"endpoint_url": endpoint})
            r = bench(n, S3Target(), server, env, a.v1)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                r = bench(n, LocalTarget(Path(tmp)), server, env, a.v1)
        if server is not None:
            server.stop()
            s3_backends[DEFAULT_ACCOUNT_ID]["aws"].reset()
        form = "4 objects per job (earlier runs)" if a.v1 else "2 objects per job"
        print(f"\n## {n:,} committed jobs on {a.store}, {form} "
              f"(synthesised in {r['synthesised_s']} s)")  # fmt: skip
        print("| command | seconds | driver peak RSS | requests |")
        print("|---|---|---|---|")
        for cmd in ("run, nothing to do", "status", "resume (+2 jobs)"):
            m = r[cmd]
            reqs = ", ".join(f"{k} {v}" for k, v in sorted(m["requests"].items())) or "—"
            first = m.get("first_task_after_s")
            extra = f" (first task at {first} s)" if first is not None else ""
            print(f"| nst {cmd} | {m['seconds']}{extra} | {m['rss_mib']} MiB | {reqs} |",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
