"""cluster.yaml is checked the way `ray up` checks it, without launching anything."""

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("jsonschema")
from ray.autoscaler._private.util import prepare_config, validate_config  # noqa: E402

CONFIG = Path(__file__).resolve().parents[2] / "cluster.yaml"


def _load() -> dict[str, Any]:
    return yaml.safe_load(CONFIG.read_text())


def test_cluster_yaml_passes_rays_own_validation() -> None:
    config = prepare_config(_load())
    validate_config(config)
    assert config["head_node_type"] in config["available_node_types"]


def test_gpu_workers_declare_their_gpu_so_the_autoscaler_can_start_them_from_zero() -> None:
    worker = _load()["available_node_types"]["gpu_worker"]
    assert worker["min_workers"] == 0
    assert worker["resources"]["GPU"] >= 1


def test_nodes_run_a_gpu_image_and_setup_is_idempotent() -> None:
    config = _load()
    assert config["docker"]["image"].startswith("rayproject/ray:")
    assert config["docker"]["image"].endswith("-gpu")
    for command in config["setup_commands"]:
        assert ">>" not in command, "setup must not append to files on every `ray up`"


def test_environments_and_runs_are_never_uploaded() -> None:
    excluded = _load()["rsync_exclude"]
    for path in (".venv", "results", "**/.git"):
        assert path in excluded


def test_the_validation_rejects_a_broken_config() -> None:
    """Proves the check above can fail: a head type that does not exist."""
    config = copy.deepcopy(_load())
    config["head_node_type"] = "missing"
    with pytest.raises(ValueError):
        validate_config(prepare_config(config))
