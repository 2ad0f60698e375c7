"""What an output root holds: a grid run (`nst run`), a collection (`nst apply`) or a training
(`nst train`). Each command claims its root before it writes anything, and refuses a root of
another kind in one line: an apply into a run root would replace the run's results.parquet
with another schema, a training into one would mix checkpoints into it.

The kind is recorded in ``_KIND`` (written once, when a command first claims the root); roots
written before it existed are recognised by the files only their kind writes. One listing of
the root's top level (one LIST request on S3), not a request per file.
"""

from __future__ import annotations

import json
from enum import Enum

from pipeline.errors import NstError
from pipeline.store import storage

KIND_FILE = "_KIND"


class RootKind(str, Enum):
    RUN = "run"
    APPLY = "apply"
    TRAIN = "train"

    @property
    def command(self) -> str:
        return f"nst {self.value}"


# Files only one kind writes (checked in this order: results.parquet is in runs and applies).
EVIDENCE: tuple[tuple[RootKind, tuple[str, ...]], ...] = (
    (RootKind.APPLY, ("apply.json", "parts")),
    (RootKind.TRAIN, ("train.json", "checkpoints", "model.pt")),
    (RootKind.RUN, ("jobs.parquet", "jobs", "results.parquet")),
)


def top_level(store: storage.Store) -> set[str]:
    """Names directly under the root (empty for a root that does not exist yet)."""
    try:
        found = storage.with_retries(
            lambda: store.fs.ls(store.root, detail=False), f"listing {store.url('')}"
        )
    except (FileNotFoundError, NotADirectoryError):
        return set()
    return {p.rstrip("/").rsplit("/", 1)[-1] for p in found}


def detect(store: storage.Store) -> RootKind | None:
    """The kind of root ``store`` is (None: empty, missing, or holding none of ours)."""
    return _scan(store)[0]


def _scan(store: storage.Store) -> tuple[RootKind | None, bool]:
    """(the root's kind, whether it is recorded in _KIND) from one listing."""
    names = top_level(store)
    if KIND_FILE in names:
        try:
            return RootKind(json.loads(store.get(KIND_FILE))["kind"]), True
        except (ValueError, KeyError, TypeError):
            pass  # an unreadable marker: judge by the files, as for an older root
    for kind, files in EVIDENCE:
        if names & set(files):
            return kind, False
    return None, False


def check(store: storage.Store, kind: RootKind) -> bool:
    """Refuse a root of another kind (NstError naming both; nothing written). Returns
    whether the kind is already recorded."""
    found, recorded = _scan(store)
    if found is not None and found != kind:
        raise NstError(
            f"--out {store.url('')} is the root of an `{found.command}`; `{kind.command}` needs "
            "a folder of its own (nothing was written)"
        )
    return recorded


def claim(store: storage.Store, kind: RootKind) -> None:
    """``check``, then record the kind (call it when the command starts writing)."""
    if not check(store, kind):
        store.put_json(KIND_FILE, {"kind": kind.value})
