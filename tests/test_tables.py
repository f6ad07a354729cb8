"""Atomic parquet writing: the final name holds a whole file or nothing, with the user's umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bacflow.tables import parquet_writer, read_metadata, write_parquet

TABLE = pa.table({"genome_id": ["a", "b"], "n": [1, 2]})


def test_write_parquet_keeps_metadata_and_follows_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "out" / "table.parquet"
    previous = os.umask(0o022)
    try:
        write_parquet(TABLE, path, {"bacflow.stage": "test"})
    finally:
        os.umask(previous)
    assert pq.read_table(path).equals(TABLE.replace_schema_metadata(pq.read_table(path).schema.metadata))
    assert read_metadata(path) == {"bacflow.stage": "test"}
    # Shared cohort outputs must be readable by the group, which mkstemp's 0600 files are not.
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(path.parent) == ["table.parquet"]


def test_a_failed_streamed_write_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "streamed.parquet"
    with pytest.raises(RuntimeError, match="killed"):
        with parquet_writer(path, TABLE.schema, {"bacflow.stage": "test"}) as writer:
            writer.write_table(TABLE)
            raise RuntimeError("killed midway")
    assert os.listdir(tmp_path) == []
    with parquet_writer(path, TABLE.schema, {"bacflow.stage": "test"}) as writer:
        writer.write_table(TABLE)
        writer.write_table(TABLE)
    assert pq.read_table(path).num_rows == 4 and read_metadata(path) == {"bacflow.stage": "test"}
