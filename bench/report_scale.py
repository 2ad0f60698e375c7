"""`nst report` at scale: a synthetic finished run of N scored jobs (pipeline.testing.synthetic_run:
real images, traces, markers and results.parquet, nothing optimised), reported twice (the second
time with the thumbnail cache warm). Prints seconds and the page's size.

    python -m bench.report_scale --jobs 10000
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.testing import synthetic_run

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, nargs="+", default=[10_000])
    a = ap.parse_args()
    print("| jobs | report, first (s) | report, cached thumbnails (s) | report.html (MB) |")
    print("|---|---|---|---|")
    for n in a.jobs:
        with tempfile.TemporaryDirectory() as tmp:
            run = synthetic_run(Path(tmp) / "run", n)
            times = []
            for _ in range(2):
                start = time.perf_counter()
                cmd = [sys.executable, "-m", "pipeline.cli", "report", str(run)]
                subprocess.run(cmd, check=True, capture_output=True)
                times.append(time.perf_counter() - start)
            size = (run / "report.html").stat().st_size / 1e6
        print(f"| {n:,} | {times[0]:.1f} | {times[1]:.1f} | {size:.1f} |", flush=True)


if __name__ == "__main__":
    main()
