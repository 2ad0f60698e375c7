"""What a training leaves under --out to resume from: its checkpoints and its loss trace."""

from __future__ import annotations

import io

import pyarrow as pa

from pipeline.store import storage
from pipeline.stylenet import layout


def latest_checkpoint(store: storage.Store) -> int:
    """The step of the newest checkpoint under the root (0: none yet)."""
    try:
        names = store.fs.ls(storage.join(store.root, layout.CHECKPOINTS), detail=False)
    except FileNotFoundError:
        return 0
    return max((s for n in names if (s := layout.step_of_checkpoint(n)) is not None), default=0)


def trace_table(rows: list[dict[str, float]]) -> bytes:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    table = pa.Table.from_pylist(rows) if rows else pa.table({"step": pa.array([], pa.int64())})
    pq.write_table(table, buf)
    return buf.getvalue()
