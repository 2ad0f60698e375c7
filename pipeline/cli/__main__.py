"""`python -m pipeline.cli` (what the tests and benches start as a subprocess)."""

from pipeline.cli import app

app()
