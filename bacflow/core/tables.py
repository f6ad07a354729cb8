"""Writing parquet tables atomically, with provenance in their key-value metadata."""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bacflow.core.errors import FULL_DISK


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path in `path`'s folder that becomes `path` when the block ends without error.

    A crash or kill therefore never leaves a partial file or folder under the final name (a folder that
    is already there is replaced). The temporary name is unique per writer (not from `mkstemp`, whose
    files are private to the user: outputs keep the umask); `remove_leftovers` clears those of killed writers.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        yield temporary
        if temporary.is_dir() and path.is_dir():
            shutil.rmtree(path)
        os.replace(temporary, path)
    except BaseException as error:
        _remove(temporary)
        if isinstance(error, OSError) and error.errno in FULL_DISK:
            # Writers name the temporary file, or (pyarrow) none: the job's one-line message names the output.
            written = str(path) if error.filename is None else str(error.filename).replace(str(temporary), str(path))
            raise OSError(error.errno, error.strerror, written) from error
        raise


def remove_leftovers(path: str | Path) -> None:
    """Remove the temporary files or folders that killed writers of `path` (through `atomic_path`) left
    behind. Only for a writer that knows it is the only one: another's would be removed under it."""
    path = Path(path)
    for left in path.parent.glob(f".{path.name}.*.tmp"):
        _remove(left)


def _remove(path: Path, *, ignore_errors: bool = True) -> None:
    """Remove a file, a folder or a link (the link itself, never what it points to), if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=ignore_errors)
    else:
        path.unlink(missing_ok=True)


def write_parquet(
    table: pa.Table, path: str | Path, metadata: dict[str, str], row_group_size: int | None = None
) -> None:
    """Write `table` to `path` atomically. Nothing in the file depends on the time of writing, so the
    same table and metadata give the same bytes."""
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    with atomic_path(path) as temporary:
        pq.write_table(table, temporary, compression="zstd", row_group_size=row_group_size)


@contextmanager
def parquet_writer(path: str | Path, schema: pa.Schema, metadata: dict[str, str]) -> Iterator[pq.ParquetWriter]:
    """A ParquetWriter for a table written piece by piece (each `write_table` call makes its own row
    groups), atomic like `write_parquet`: the file appears at `path` only when the block ends without error."""
    schema = schema.with_metadata({**(schema.metadata or {}), **metadata})
    with atomic_path(path) as temporary, pq.ParquetWriter(temporary, schema, compression="zstd") as writer:
        yield writer


def read_metadata(path: str | Path) -> dict[str, str]:
    """The bacflow key-value metadata of a parquet file, decoded."""
    raw = pq.read_schema(path).metadata or {}
    return {key.decode(): value.decode() for key, value in raw.items() if key.startswith(b"bacflow.")}


#: A shard's entry in a dataset folder: a Hive folder (``shard=00001/``) or a file (``shard=00001.parquet``).
_SHARD_ENTRY = re.compile(r"^shard=\d+(\.parquet)?$")


#: A bucket's entry in its stage's folder: a file (``bucket=0001.parquet``) or a folder (``bucket=0001/``).
_BUCKET_ENTRY = re.compile(r"^bucket=(\d+)(\.parquet)?$")


def remove_stale_buckets(folder: str | Path, n_buckets: int) -> list[Path]:
    """Delete the bucket entries of `folder` numbered `n_buckets` or above: what a run with more buckets left.

    Left there, reading the folder as a dataset would return their rows too. Only the job of bucket 0 calls it
    (every bucket job re-runs when the count changes), so no other writer is at work on these names. Returns what
    was removed."""
    removed = []
    for entry in sorted(Path(folder).iterdir()):
        match = _BUCKET_ENTRY.match(entry.name)
        if match and int(match.group(1)) >= n_buckets:
            _remove(entry)
            removed.append(entry)
    return removed


def remove_stale_shards(current: Iterable[str | Path]) -> list[Path]:
    """Delete the shard entries in the folders of `current` (the files of the run's plan) that are not theirs.

    They are what a plan that no longer holds left behind (another ``shard_size``, genomes removed from the
    sheet): left there, reading the folder as a dataset would return their rows too. Paths outside a shard
    entry (library callers may name their files freely) make no folder a dataset. An entry that is a link loses the
    link, never what it points to. Returns what was removed; one that cannot be removed raises its OSError (left
    there, it would be read with the dataset).
    """
    kept: dict[Path, set[str]] = {}
    for path in map(Path, current):
        entry = next((part for part in (path, *path.parents) if _SHARD_ENTRY.match(part.name)), None)
        if entry is not None:
            kept.setdefault(entry.parent, set()).add(entry.name)
    removed = []
    for folder, names in kept.items():
        for entry in sorted(folder.iterdir()):
            if _SHARD_ENTRY.match(entry.name) and entry.name not in names:
                _remove(entry, ignore_errors=False)
                removed.append(entry)
    return removed
