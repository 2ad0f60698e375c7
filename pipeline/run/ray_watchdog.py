"""Embedded Ray goes with the command that started it, even a SIGKILLed one.

When a driver dies without shutting Ray down, its raylet and GCS die with it, but Ray's two
agent processes first try to report the raylet's death to the (dead) GCS, with a 60 s
timeout: they lingered ~90 s, and the session folder stayed in /tmp/ray for good. This small
process, started beside embedded Ray, waits for the driver's PID to end, then ends every
process still running on that session (found by the session folder in its command line: only
what this run started) and removes the folder (NST_KEEP_RAY_SESSION=1 keeps it).

    python -m pipeline.run.ray_watchdog DRIVER_PID SESSION_DIR
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import psutil


def start(session_dir: str) -> None:
    """Watch this process (the driver) and clean up after it."""
    subprocess.Popen(
        [sys.executable, "-m", "pipeline.run.ray_watchdog", str(os.getpid()), session_dir],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # not in the driver's process group: a group kill spares it
    )


def session_processes(session_dir: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if p.pid != os.getpid() and session_dir in " ".join(p.info["cmdline"] or []):
                found.append(p)
        except psutil.Error:
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def main(driver: int, session_dir: str) -> None:
    while _alive(driver):
        time.sleep(0.5)
    for p in session_processes(session_dir):
        try:
            p.kill()
        except psutil.Error:
            pass
    if os.environ.get("NST_KEEP_RAY_SESSION") != "1":
        shutil.rmtree(session_dir, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
