"""What the command line says: help, errors, summaries and progress, readable and exact."""

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import nst, table, write_images

from pipeline.cli import QUICK_START, app

ROOT = Path(__file__).resolve().parents[2]


def test_status_of_something_that_is_not_a_run_says_so(tmp_path):
    res = nst("status", str(tmp_path / "nowhere"))
    assert res.exit_code == 1 and "not a run" in res.output
    (tmp_path / "folder").mkdir()
    assert nst("status", str(tmp_path / "folder")).exit_code == 1


def test_set_refuses_empty_values_and_suggests_close_names(tmp_path):
    args = ["transfer", "c.png", "s.png", str(tmp_path / "o.png")]
    empty = nst(*args, "--set", "optimizer=")
    assert empty.exit_code == 1 and "--set optimizer=: empty value" in empty.output
    typo = nst(*args, "--set", "sizee=32")
    assert typo.exit_code == 1 and "did you mean 'size'?" in typo.output


def test_out_pointing_at_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "afile").write_text("x")
    c, s = write_images(tmp_path, 2, "o")
    pq.write_table(table([{"content_uri": c, "style_uri": s}]), tmp_path / "m.parquet")
    res = nst("run", str(tmp_path / "m.parquet"), "--out", str(tmp_path / "afile"))
    assert res.exit_code == 1 and "is a file" in res.output and "Errno" not in res.output


def test_nst_params_lists_every_parameter_with_its_meaning():
    from nst_ops.spec import PARAM_HELP, JobSpec

    assert set(PARAM_HELP) == set(JobSpec.field_names())
    res = nst("params", env={"COLUMNS": "200"})
    assert res.exit_code == 0
    for name in JobSpec.field_names():
        assert name in res.output
    assert "init=content" in res.output


def _commands() -> list[str]:
    import typer.main

    return ["", *typer.main.get_command(app).commands]


@pytest.mark.parametrize("command", _commands())
def test_every_help_shows_its_usage_every_option_and_its_brackets(command):
    """Rich reads `[...]` in help text as markup and drops it unless escaped; every option
    must be listed (a typo in an Annotated option hides it)."""
    import re

    import typer.main

    group = typer.main.get_command(app)
    cmd = group.commands[command] if command else group
    res = nst(*([command] if command else []), "--help", env={"COLUMNS": "200"})
    assert res.exit_code == 0
    shown = " ".join(res.output.split())
    assert re.search(rf"^Usage: \S+ {command}\s*\[OPTIONS\]", shown)  # CliRunner says 'root'
    for param in cmd.params:
        for flag in [o for o in param.opts if o.startswith("--")][:1]:
            assert flag in shown, flag
    texts = [cmd.help or ""] + [getattr(p, "help", None) or "" for p in cmd.params]
    for bracketed in {m for t in texts for m in re.findall(r"\[[^\]\[]+\]", t)}:
        assert bracketed in shown  # e.g. make-manifest's "NAME: value or [values]"


def test_the_quick_start_in_help_works_offline_from_a_clone(tmp_path):
    """The make-manifest half of `nst --help`'s quick start, run from the repository root as
    written, gives a manifest whose inputs and weights `nst validate` accepts offline."""
    assert " ".join(QUICK_START.split()) in " ".join(nst("--help").output.split())
    make = shlex.split(QUICK_START.split("&&")[0])
    assert make[:2] == ["nst", "make-manifest"]
    dest = tmp_path / "m.parquet"
    args = [a if a != "m.parquet" else str(dest) for a in make[1:]]
    old = os.getcwd()
    os.chdir(ROOT)
    try:
        assert nst(*args).exit_code == 0
        res = nst("validate", str(dest))
    finally:
        os.chdir(old)
    assert res.exit_code == 0 and "weights source(s) fit" in res.output, res.output


def test_without_a_terminal_progress_is_a_plain_line_at_intervals_and_at_the_end(capsys):
    """Cron, CI and `| tee` get whole lines, not a bar cut at 80 columns."""
    from pipeline.run.scheduler import RunProgress

    progress = RunProgress(total=3, enabled=True, every=0.0)
    progress.update([{"status": "ok"}], running=2)
    progress.update([{"status": "failed"}], running=1, note="waiting for GPUs (1 per task)")
    progress.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("nst run: 1/3 · ok 1 · failed 0 · diverged 0 · in flight 2 · ")
    assert lines[1].endswith("· waiting for GPUs (1 per task)")
    assert lines[-1].startswith("nst run: 2/3 · ok 1 · failed 1 · diverged 0 · in flight 1")
    assert all("\r" not in line and "━" not in line for line in lines)


def test_ray_is_started_without_its_banners_unless_asked(monkeypatch):
    """Ray's own start-up lines (token authentication, 'Started a local Ray instance') stay off
    the terminal: ray.init is asked for errors only and no worker logs; `nst --debug` shows
    them."""
    import logging

    from pipeline.run import scheduler

    calls: list[dict] = []
    monkeypatch.setattr(scheduler.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(scheduler.ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setattr(scheduler, "_session_dir", lambda: None)
    scheduler.init_ray(None, num_cpus=1)
    scheduler.init_ray("auto", quiet=False)
    assert calls[0]["logging_level"] == logging.ERROR and calls[0]["log_to_driver"] is False
    assert calls[0]["include_dashboard"] is False
    assert calls[1]["logging_level"] == logging.INFO and calls[1]["address"] == "auto"


def test_transfer_ends_with_a_readable_summary(tmp_path):
    c, s = write_images(tmp_path, 2, "x")
    dest = tmp_path / "o.png"
    sets = ["weights=random:0", "size=16", "iterations=2", "content_layers=relu2_1"]
    sets += ["style_layers=relu1_1"]
    res = nst("transfer", c, s, str(dest), *[a for x in sets for a in ("--set", x)])
    assert res.exit_code == 0, res.output
    assert "ok after 2 iterations" in res.output and f"image: {dest}" in res.output
    assert "{" not in res.output  # no raw Python dict


def test_light_commands_never_import_torch_or_ray(tmp_path):
    """`nst --help`, `plan`, `validate` (random weights), `status`: no torch, no Ray, so they
    start in well under a second instead of importing 900 MB."""
    c, s = write_images(tmp_path, 2, "l")
    pq.write_table(table([{"content_uri": c, "style_uri": s}]), tmp_path / "m.parquet")
    (tmp_path / "o" / "jobs").mkdir(parents=True)
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from pipeline.cli import app\n"
        f"m, o = {str(tmp_path / 'm.parquet')!r}, {str(tmp_path / 'o')!r}\n"
        "for args in (['--help'], ['plan', m], ['validate', m], ['status', o], ['params']):\n"
        "    assert CliRunner().invoke(app, args).exit_code == 0, args\n"
        "print(sorted(n for n in ('torch', 'torchvision', 'ray') if n in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
