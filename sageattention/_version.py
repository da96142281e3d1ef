"""The package version: the installed distribution's metadata (which carries the wheel's
local label, e.g. ``0.1.0+cu128torch2.8``), else pyproject.toml's ``[project] version``,
the one place it is written."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path


def _from_pyproject() -> str:
    try:
        text = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return "0+unknown"
    project = re.search(r"^\[project\]\s*$(.*?)(?=^\[|\Z)", text, re.M | re.S)
    if not project or not re.search(r'^name\s*=\s*"sageattention"', project.group(1), re.M):
        return "0+unknown"  # not our checkout's pyproject.toml
    match = re.search(r'^version\s*=\s*"([^"]+)"', project.group(1), re.M)
    return match.group(1) if match else "0+unknown"


def _version() -> str:
    source = _from_pyproject()
    if source != "0+unknown":  # a source checkout: its pyproject.toml is the truth
        return source
    try:
        return metadata.version("sageattention")
    except metadata.PackageNotFoundError:
        return source


__version__ = _version()
