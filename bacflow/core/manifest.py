"""Manifests: one small file that stands for many, so that the workflow's DAG stays linear.

A job that needs every output of a stage (every bucket job needs every genome shard's distinct sequences,
every gather job every bucket folder) would otherwise list them all as inputs: buckets x shards edges,
which is what made planning a million genomes take many minutes. Instead one job per stage takes the
stage's outputs and writes a manifest of them (id -> path), and the jobs that need them all take that one
file: shards + buckets edges. The manifest is rewritten whenever one of its files is, so a job below it
re-runs as it would have with all the files as inputs. It holds paths relative to its own folder, so that it
(like every output) does not depend on where the outdir is.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from bacflow.core.errors import InputError
from bacflow.core.tables import atomic_path


def write_manifest(files: Mapping[str, str | Path], path: str | Path) -> None:
    """Write `files` (id -> path) to `path`, atomically."""
    folder = Path(path).parent
    relative = {key: os.path.relpath(value, folder) for key, value in files.items()}
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(relative, indent=1) + "\n")


def read_manifest(path: str | Path) -> dict[str, str]:
    """The files (id -> path) a manifest lists, in its order, as paths from where `path` is given from."""
    try:
        files = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"manifest {path}: unreadable ({error}); rerun the job that writes it") from None
    if not isinstance(files, dict) or not all(isinstance(value, str) for value in files.values()):
        raise InputError(f"manifest {path}: not a mapping of ids to paths; rerun the job that writes it")
    folder = Path(path).parent
    return {key: os.path.normpath(folder / value) for key, value in files.items()}
