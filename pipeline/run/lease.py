"""One live `nst run` per output root: a lease object with owner, host, pid and heartbeat.

The lease is created exclusively where the store can (a local ``open(..., "x")``, S3's
``If-None-Match: *``); elsewhere it is written and read back. A lease whose heartbeat is older
than ``ttl`` seconds, or whose process is gone from this host, is stale and taken over.
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psutil

from pipeline.errors import NstError
from pipeline.store import layout, storage

TTL_S = float(os.environ.get("NST_LEASE_TTL_S", 120))
HEARTBEAT_S = float(os.environ.get("NST_LEASE_HEARTBEAT_S", 20))


class LeaseHeld(NstError):
    """Another live run writes to this output root."""

    exit_code = 4


def _record(owner: str, started: float) -> bytes:
    now = time.time()
    doc = {"owner": owner, "host": platform.node(), "pid": os.getpid()}
    return json.dumps({**doc, "started": started, "heartbeat": now}).encode()


def _create_exclusive(store: storage.Store, data: bytes) -> bool:
    full = storage.join(store.root, layout.LEASE)
    if "file" in store.fs.protocol:
        store.fs.makedirs(store.root, exist_ok=True)
        try:
            with open(full, "xb") as f:
                f.write(data)
            return True
        except FileExistsError:
            return False
    if store.exists(layout.LEASE):
        return False
    if "s3" in store.fs.protocol:
        try:
            store.fs.pipe_file(full, data, mode="create")
            return True
        except (FileExistsError, OSError) as e:
            if store.exists(layout.LEASE):
                return False
            raise type(e)(f"writing {store.url(layout.LEASE)}: {e}") from e  # names the bucket
    store.put(layout.LEASE, data)
    return True


def current(store: storage.Store) -> dict[str, Any] | None:
    """The lease at the root (None: no live or dead run holds one)."""
    return _read(store)


def _read(store: storage.Store) -> dict[str, Any] | None:
    try:
        return json.loads(store.get(layout.LEASE))
    except (FileNotFoundError, ValueError):
        return None


def is_stale(lease: dict[str, Any], now: float | None = None) -> bool:
    """Old heartbeat, or its process gone from this very host."""
    now = time.time() if now is None else now
    if now - float(lease.get("heartbeat", 0)) > TTL_S:
        return True
    return lease.get("host") == platform.node() and not psutil.pid_exists(int(lease.get("pid", 0)))


def acquire(store: storage.Store, owner: str, started: float) -> None:
    if _create_exclusive(store, _record(owner, started)):
        return
    held = _read(store)
    if held is not None and not is_stale(held):
        age = time.time() - float(held.get("heartbeat", 0))
        raise LeaseHeld(
            f"another nst run is writing to {store.url('')} (host {held.get('host')}, pid "
            f"{held.get('pid')}, heartbeat {age:.0f}s ago); wait for it to finish. If it is "
            f"dead, its lease goes stale after {TTL_S:.0f}s without a heartbeat"
        )
    store.put(layout.LEASE, _record(owner, started))  # stale (or vanished): take it over
    time.sleep(0.2)  # a racing taker writes too: whoever reads its own owner back holds it
    again = _read(store)
    if again is None or again.get("owner") != owner:
        raise LeaseHeld(f"another nst run took over {store.url('')} at the same moment")


@contextmanager
def held(store: storage.Store) -> Iterator[str]:
    """Hold the run's lease for the block, heartbeating in the background."""
    owner, started = uuid.uuid4().hex, time.time()
    acquire(store, owner, started)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                store.put(layout.LEASE, _record(owner, started))
            except OSError:
                pass  # the next beat tries again; a lease is advisory, the run goes on

    thread = threading.Thread(target=beat, name="nst-lease", daemon=True)
    thread.start()
    try:
        yield owner
    finally:
        stop.set()
        thread.join()
        current = _read(store)
        if current is not None and current.get("owner") == owner:
            store.fs.rm(storage.join(store.root, layout.LEASE))
