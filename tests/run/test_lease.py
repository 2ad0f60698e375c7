"""One live run per output root: a second run is refused, a dead run's lease is taken over."""

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from helpers import one_job

from pipeline.run import lease


def write_lease(out: Path, pid: int, heartbeat: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    doc = {"owner": "x", "host": platform.node(), "pid": pid, "heartbeat": heartbeat}
    (out / "_LEASE").write_text(json.dumps({**doc, "started": heartbeat}))


def test_a_second_run_on_a_live_runs_output_is_refused(ray_cpu, tmp_path):
    out = tmp_path / "o"
    write_lease(out, os.getpid(), time.time())  # this test process: alive, fresh heartbeat
    res, _, _ = one_job(tmp_path)
    assert res.exit_code == 4
    assert "another nst run is writing to" in res.output and f"pid {os.getpid()}" in res.output
    assert not list(out.glob("jobs/*"))


def test_a_stale_lease_is_taken_over_and_released_at_the_end(ray_cpu, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                          capture_output=True).stdout  # fmt: skip
    write_lease(tmp_path / "o", int(dead), time.time())
    res, out, _ = one_job(tmp_path)
    assert res.exit_code == 0, res.output
    assert not (out / "_LEASE").exists()
    write_lease(out, os.getpid(), time.time() - lease.TTL_S - 1)  # alive but silent too long
    assert lease.is_stale(json.loads((out / "_LEASE").read_text()))
