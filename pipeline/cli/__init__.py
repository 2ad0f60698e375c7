"""The `nst` command line: one module per command group, all on one Typer app.

`nst --help`, `params`, `plan`, `validate`, `status` and `show` import neither torch nor Ray
(tested): the modules here import them inside the commands that need them."""

# isort: off
from pipeline.cli.common import QUICK_START, app

# Each module registers its commands on `app`; this order is the order of `nst --help`.
from pipeline.cli import manifests, runs, transfer, reports, collections  # noqa: F401

# isort: on

__all__ = ["QUICK_START", "app"]
