"""Is a job's output current? Lineage recorded in every per-shard table, and the check the run plan makes with it.

Two guarantees, both about outputs made below the bucket jobs (gathered vectors, Bacformer vectors, corpus parts
and the tables gathered from them):

1. **Provenance that can be checked.** A protein shard records a content id of its rows (`CONTENT_KEY`), and every
   table made from it records that id (`PROTEINS_KEY`); a job that reads such tables together refuses any made
   from other proteins than the shard's current ones (`check_lineage`), so vectors never attach to the wrong
   genome even if an earlier run left a table out of date.
2. **Jobs re-run when they must.** Snakemake 9 looks at a job's own reasons to re-run (an input newer than its
   outputs, other params, another list of inputs) only while no job upstream of it re-runs; past that point it
   follows re-running jobs down their inputs, skipping inputs marked ``ancient`` (snakemake/snakemake#4166).
   The gather jobs take the bucket folders' manifest as ``ancient``: bucket jobs re-run for every appended
   genome, and a shard whose vectors are current must not be gathered again. So a job at or below the gathers
   that an earlier, partial run left out of date (a ``proteins`` run after a sheet edit, a run killed after its
   protein jobs) would be skipped silently whenever bucket jobs re-run. Each such job therefore takes the
   manifest too: ``ancient`` when `is_current` says its outputs are current, and plain (so that it re-runs
   with the bucket jobs) when not. `is_current` makes Snakemake's own checks: every output there, none older
   than an input, and made with the same identity (`IDENTITY_KEY`: a hash of what the job's params decide).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from bacflow.core.errors import InputError
from bacflow.core.provenance import config_hash
from bacflow.core.tables import read_metadata

#: A protein shard's content id: a hash of its rows.
CONTENT_KEY = "bacflow.content_id"
#: The content id of the protein shard a table was made from.
PROTEINS_KEY = "bacflow.proteins_content_id"
#: A hash of what decides a job's output besides its input files (model, settings, shard list...).
IDENTITY_KEY = "bacflow.job_identity"
#: Snakemake's stamp inside a directory output: the folder's own mtime changes only when entries come or go.
_DIRECTORY_STAMP = ".snakemake_timestamp"


def content_id(table: pa.Table) -> str:
    """A hash of a table's rows and columns (not of its metadata or how it is chunked)."""
    digest = hashlib.sha256()
    for name, column in zip(table.column_names, table.columns, strict=True):
        digest.update(name.encode() + b"\0")
        for buffer in column.combine_chunks().buffers():
            digest.update(b"\1" if buffer is None else b"\2" + bytes(buffer))
    return digest.hexdigest()[:32]


def identity(value: Any) -> str:
    """The identity hash of a job's parameters (any JSON-able value)."""
    return config_hash(value)


def lineage(proteins_path: str | Path | None, job_identity: str | None) -> dict[str, str]:
    """The metadata that ties a table to what made it: the content id of the protein shard it was made from (read
    from that shard's metadata) and the job's identity, each where given."""
    metadata = {}
    if proteins_path is not None:
        metadata[PROTEINS_KEY] = read_metadata(proteins_path).get(CONTENT_KEY, "")
    if job_identity is not None:
        metadata[IDENTITY_KEY] = job_identity
    return metadata


def check_lineage(tables: Sequence[str | Path], proteins: Sequence[str | Path]) -> None:
    """Refuse a table made from other proteins than the protein shard beside it in `proteins` holds now,
    naming both files."""
    for path, proteins_path in zip(tables, proteins, strict=True):
        made_from = read_metadata(path).get(PROTEINS_KEY)
        if not made_from or made_from != read_metadata(proteins_path).get(CONTENT_KEY):
            raise InputError(
                f"{path} was made from other proteins than {proteins_path} holds now (an earlier run was cut off "
                "or changed the shard): run the target again, which re-makes it"
            )


def _mtime(path: str | Path) -> float:
    stamp = Path(path) / _DIRECTORY_STAMP
    return os.stat(stamp if stamp.exists() else path).st_mtime


def is_current(outputs: Iterable[str | Path], inputs: Iterable[str | Path], job_identity: str | None = None) -> bool:
    """Whether a job need not re-run: its outputs all exist, none is older than any of its `inputs` (all there),
    and, with `job_identity`, its first output (a parquet table) records that identity."""
    outputs = list(outputs)
    try:
        oldest = min(_mtime(path) for path in outputs)
        if any(_mtime(path) > oldest for path in inputs):
            return False
        return job_identity is None or read_metadata(outputs[0]).get(IDENTITY_KEY) == job_identity
    except (OSError, pa.ArrowException):  # missing, or unreadable: made again
        return False
