"""What made an output: tool versions, parameters and their hash, stored in every parquet file."""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

CORE_PACKAGES = ("bacflow", "pyrodigal", "biopython", "pyarrow")


def tool_versions(packages: Iterable[str] = CORE_PACKAGES) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in packages:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(params: Any) -> str:
    """A short, stable hash of parameters (any JSON-able value), independent of key order."""
    return hashlib.sha256(canonical_json(params).encode()).hexdigest()[:16]


def provenance(stage: str, params: dict[str, Any], packages: Iterable[str] = CORE_PACKAGES) -> dict[str, str]:
    """Key-value metadata for a parquet file written by `stage` with `params`."""
    return {
        "bacflow.stage": stage,
        "bacflow.config_hash": config_hash(params),
        "bacflow.params": canonical_json(params),
        "bacflow.tool_versions": canonical_json(tool_versions(packages)),
    }
