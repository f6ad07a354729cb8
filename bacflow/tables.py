"""Writing parquet tables atomically, with provenance in their key-value metadata."""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path in `path`'s folder that becomes `path` when the block ends without error.

    A crash or kill therefore never leaves a partial file under the final name. The temporary name is
    unique per writer (not from `mkstemp`, whose files are private to the user: outputs keep the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


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
