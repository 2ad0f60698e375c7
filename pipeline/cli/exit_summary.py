"""`--summary-json`: what a scheduler reads after `nst run` or `nst apply`, written on every
exit (0, 1, 3, 4, 5, 130) with the exit code and, when the command failed, its error, and
written whole (a local file is replaced atomically; an object store's PUT is atomic), so a
previous run's file never survives to report a success that did not happen."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import typer

from pipeline.store import storage


@dataclass
class ExitSummary:
    fields: dict[str, Any] = field(default_factory=dict)  # what the command learnt so far
    code: int = 1
    error: str | None = None


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


@contextmanager
def summary_on_exit(
    dest: str | None, so: dict | None, keys: tuple[str, ...]
) -> Iterator[ExitSummary]:
    """Yield a summary the command fills in (``keys`` start as null) and sets ``code`` on;
    whatever ends the block, ``dest`` gets the document."""
    started, s = time.time(), ExitSummary(dict.fromkeys(keys))
    try:
        yield s
    except typer.Exit as e:
        s.code = e.exit_code
        raise
    except KeyboardInterrupt:
        s.code, s.error = 130, "interrupted"
        raise
    except BaseException as e:
        s.code, s.error = getattr(e, "exit_code", 1), _one_line(e)
        raise
    finally:
        if dest:
            doc = {**s.fields, "error": s.error, "seconds": round(time.time() - started, 3)}
            write_atomically(dest, so, json.dumps({**doc, "exit_code": s.code}, indent=1))


def write_atomically(dest: str, so: dict | None, text: str) -> None:
    fs, path = storage.filesystem(dest, so)
    if "file" not in fs.protocol:
        fs.pipe_file(path, text.encode())
        return
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".summary-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
