"""Benchmarks, run as modules from the repository root: `python -m bench.run`, `python -m
bench.stylenet`, … (docs/performance.md says what each measures)."""
