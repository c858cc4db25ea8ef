"""What installs gochat: one version, one lock, and a build backend the lock agrees with."""

from __future__ import annotations

import importlib.metadata
import tomllib

import gochat

from .util import ROOT


def _toml(name: str) -> dict[str, object]:
    return tomllib.loads((ROOT / name).read_text())


def test_the_version_is_written_once() -> None:
    project = _toml("pyproject.toml")["project"]
    assert isinstance(project, dict)
    assert "version" not in project and "version" in project["dynamic"]
    assert importlib.metadata.version("gochat") == gochat.__version__


def test_the_build_backend_pin_is_the_locked_hatchling() -> None:
    """uv builds gochat itself with the hatchling that [tool.uv] pins: after `make lock`
    moves hatchling, that pin must follow, or the package is built by another release."""
    tool = _toml("pyproject.toml")["tool"]
    assert isinstance(tool, dict)
    (pin,) = [c for c in tool["uv"]["build-constraint-dependencies"] if c.startswith("hatchling")]
    packages = _toml("uv.lock")["package"]
    assert isinstance(packages, list)
    (locked,) = [p["version"] for p in packages if p["name"] == "hatchling"]
    assert pin == f"hatchling=={locked}"
