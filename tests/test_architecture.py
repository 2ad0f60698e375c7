"""The code's shape: layers that import only downwards, short modules and functions, and a
parameter defined in one place (docs/development.md, "The code's layout")."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("nst_ops", "pipeline")

# Lowest first: a module may import its own package's modules and anything in a lower layer.
LAYERS = (
    "nst_ops",
    "pipeline.errors",
    "pipeline.store",
    "pipeline.jobs",
    "pipeline.run",
    "pipeline.report",
    "pipeline.stylenet",
    "pipeline.cli",
    "pipeline.testing",
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every project module ``name`` imports, wherever the import stands (type-only and
    function-level imports included: a cycle through them is still a cycle)."""
    found = set()
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + [base]).strip(".")
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in known else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in known and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(m, p, set(modules)) for m, p in modules.items()}


def _layer(module: str) -> int:
    return max(i for i, prefix in enumerate(LAYERS) if (module + ".").startswith(prefix + "."))


def test_every_import_points_to_the_same_layer_or_a_lower_one():
    upward = [f"{m} -> {d}" for m, deps in _graph().items() for d in deps if _layer(d) > _layer(m)]
    assert upward == []


def test_no_import_circle_even_through_type_only_imports():
    graph, done, circles = _graph(), set(), []

    def visit(module: str, path: list[str]) -> None:
        for dep in sorted(graph[module]):
            if dep in path:
                circles.append(path[path.index(dep) :] + [dep])
            elif dep not in done:
                visit(dep, [*path, dep])
        done.add(module)

    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    assert circles == []


def test_the_engine_has_no_ray_files_or_pipeline():
    for name, path in _modules().items():
        if not name.startswith("nst_ops"):
            continue
        roots = {
            (n.module or "").split(".")[0] if isinstance(n, ast.ImportFrom) else a.name
            for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, (ast.Import, ast.ImportFrom)) and not getattr(n, "level", 0)
            for a in n.names
        }
        assert not roots & {"ray", "fsspec", "pipeline", "pyarrow", "typer"}, name


def test_no_module_over_400_lines_and_no_function_body_over_50():
    long_modules, long_functions = [], []
    for name, path in _modules().items():
        text = path.read_text()
        if text.count("\n") > 400:
            long_modules.append(f"{name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.end_lineno - node.body[0].lineno + 1  # Typer option lists excluded
                if body > 50:
                    long_functions.append(f"{name}.{node.name}: {body} lines")
    assert long_modules == [] and long_functions == []


NEW_FIELD = (
    '    gamma: float = param(0.5, "a new loss weight (this test adds it)", role=Role.BATCH,\n'
    "                         minimum=0, added_later=True)\n"
)

CHECKS = """
import json, sys
import pyarrow as pa
from typer.testing import CliRunner
from nst_ops.spec import BATCH_FIELDS, JobSpec, SpecError, batch_key
from pipeline.cli import app
from pipeline.jobs.grid import expand

out = {}
try:
    JobSpec(gamma=-1.0)
except SpecError as e:
    out["refused"] = str(e)
out["batch"] = "gamma" in BATCH_FIELDS
out["key_differs"] = batch_key(JobSpec(gamma=0.1)) != batch_key(JobSpec())
listed = CliRunner().invoke(app, ["params"], env={"COLUMNS": "200"}).output
out["listed"] = [line for line in listed.splitlines() if "gamma" in line]
row = {"content_uri": "s3://b/c.png", "style_uri": "s3://b/s.png", "weights": "random:0"}
jobs = expand(pa.Table.from_pylist([{**row, "optimizer": ["adam", "lbfgs"]}]))
out["ids"] = [j.id for j in jobs]
axis = expand(pa.Table.from_pylist([{**row, "gamma": [0.5, 2.0]}]))
out["axis"] = [j.spec.gamma for j in axis]
out["axis_ids_differ"] = axis[0].id != axis[1].id
print(json.dumps(out))
"""


def test_adding_a_parameter_is_one_field(tmp_path):
    """One line in JobSpec, in a copy of the code: the new parameter is validated by its
    bounds, listed by `nst params` with its help, read from a manifest as a grid axis, part of
    the batch key by its role, and (added later) leaves every existing job id as it was."""
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    spec = tmp_path / "nst_ops" / "spec.py"
    text = spec.read_text()
    anchor = "    # fmt: on\n"
    assert text.count(anchor) == 1
    spec.write_text(text.replace(anchor, NEW_FIELD + anchor))
    done = subprocess.run(
        [sys.executable, "-c", CHECKS], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["refused"] == "gamma must be finite and >= 0, got -1.0"
    assert out["batch"] and out["key_differs"]
    assert len(out["listed"]) == 1 and "a new loss weight" in out["listed"][0]
    assert "0.5" in out["listed"][0] and "float" in out["listed"][0]
    assert out["ids"] == ["012aae45de26b6cd523d", "8992d1305064fc612cf3"]  # as published
    assert out["axis"] == [0.5, 2.0] and out["axis_ids_differ"]
