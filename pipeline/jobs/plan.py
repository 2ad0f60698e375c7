"""What a run has to do, and why: one listing of the run and one of the inputs' folders.

A job is redone when it is new, when its committed outputs are gone (a deleted or empty image or
trace), when an input's fingerprint changed since it ran (a scheduled run over a folder whose
files are replaced), when it failed or diverged and ``retry_failed`` is set, or when ``force``.
"""

from __future__ import annotations

import posixpath
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from nst_ops.vocab import BAD_STATUSES
from pipeline.jobs.job import Job
from pipeline.store import layout, storage


class Reason(str, Enum):
    NEW = "new"
    FAILED = "failed"
    INPUT_CHANGED = "input changed"
    OUTPUT_MISSING = "output missing"
    FORCED = "forced"


@dataclass
class Plan:
    todo: list[Job]
    reasons: dict[str, Reason]  # job id -> why it runs
    done: dict[str, dict[str, Any]]  # committed rows (before this run)
    not_retried: int = 0  # failed or diverged jobs kept as they are (no --retry-failed)
    missing_outputs: list[str] = field(default_factory=list)
    files: storage.JobFiles = field(default_factory=storage.JobFiles)  # the listing it read

    def counts(self) -> Counter[str]:
        return Counter(r.value for r in self.reasons.values())


def input_fingerprints(uris: Iterable[str], so: dict | None = None) -> dict[str, str]:
    """Current fingerprints of ``uris`` from one listing per folder (not one request per file)."""
    by_dir: dict[str, set[str]] = {}
    for uri in uris:
        by_dir.setdefault(posixpath.dirname(uri), set()).add(uri)
    out: dict[str, str] = {}
    for folder, members in by_dir.items():
        fs, path = storage.filesystem(folder or ".", so)
        try:
            fs.invalidate_cache(path)  # a long-lived process must not see an old listing
            listing = {e["name"].rstrip("/"): e for e in fs.ls(path, detail=True)}
        except (FileNotFoundError, PermissionError):
            continue
        for uri in members:
            entry = listing.get(storage.filesystem(uri, so)[1])
            if entry is not None:
                out[uri] = storage.fingerprint(entry)
    return out


def _inputs_changed(row: dict[str, Any], current: dict[str, str]) -> bool:
    recorded = row.get("inputs") or []  # runs from before fingerprints: nothing to compare
    return any(current.get(i["uri"]) != i["fingerprint"] for i in recorded)


def make_plan(
    jobs: Sequence[Job],
    store: storage.Store,
    force: bool = False,
    retry_failed: bool = False,
    so: dict | None = None,
) -> Plan:
    files = store.job_files()
    done = store.committed(files)
    uris = {u for j in jobs if j.id in done for u in j.input_uris}
    current = input_fingerprints(sorted(uris), so) if uris and not force else {}
    plan = Plan([], {}, done, files=files)
    for j in jobs:
        row = done.get(j.id)
        reason = None
        if row is None:
            reason = Reason.NEW
        elif force:
            reason = Reason.FORCED
        elif layout.outputs_missing(row, files.get(j.id, {})):
            reason = Reason.OUTPUT_MISSING
            plan.missing_outputs.append(j.id)
        elif _inputs_changed(row, current):
            reason = Reason.INPUT_CHANGED
        elif row.get("status") in BAD_STATUSES:
            if retry_failed:
                reason = Reason.FAILED
            else:
                plan.not_retried += 1
        if reason is not None:
            plan.todo.append(j)
            plan.reasons[j.id] = reason
    return plan
