"""Atomic parquet writing: the final name holds a whole file or nothing, with the user's umask; dataset folders
cleared of other plans' shards; scratch folders that killed jobs leave behind."""

from __future__ import annotations

import errno
import os
import re
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bacflow.core.scratch import scratch_dir
from bacflow.core.tables import atomic_path, parquet_writer, read_metadata, remove_stale_shards, write_parquet

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
    with (
        pytest.raises(RuntimeError, match="killed"),
        parquet_writer(path, TABLE.schema, {"bacflow.stage": "test"}) as writer,
    ):
        writer.write_table(TABLE)
        raise RuntimeError("killed midway")
    assert os.listdir(tmp_path) == []
    with parquet_writer(path, TABLE.schema, {"bacflow.stage": "test"}) as writer:
        writer.write_table(TABLE)
        writer.write_table(TABLE)
    assert pq.read_table(path).num_rows == 4 and read_metadata(path) == {"bacflow.stage": "test"}


def test_a_full_disk_names_the_output_and_leaves_nothing(tmp_path: Path) -> None:
    """The error a job reports names the output being written, not the temporary name it was written under."""
    path = tmp_path / "model"
    with pytest.raises(OSError) as raised, atomic_path(path) as temporary:
        temporary.mkdir()
        (temporary / "weights.bin").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(temporary / "weights.bin"))
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(path / "weights.bin")
    assert os.listdir(tmp_path) == []


def test_remove_stale_shards_keeps_exactly_the_plans_shards(tmp_path: Path):
    dataset, files = tmp_path / "proteins", tmp_path / "shards"
    for shard in ("00000", "00001", "00002"):
        write_parquet(pa.table({"x": [1]}), dataset / f"shard={shard}" / "part-0.parquet", {})
        write_parquet(pa.table({"x": [1]}), files / f"shard={shard}.parquet", {})
    (files / "notes.txt").write_text("not a shard: kept")
    (files / ".shard=00003.parquet.abc.tmp").write_text("another writer's temporary file: kept")
    current = [dataset / "shard=00000" / "part-0.parquet", files / "shard=00000.parquet", files / "shard=00002.parquet"]
    removed = remove_stale_shards(current)
    assert sorted(path.relative_to(tmp_path).as_posix() for path in removed) == [
        "proteins/shard=00001",
        "proteins/shard=00002",
        "shards/shard=00001.parquet",
    ]
    assert pq.read_table(dataset).num_rows == 1
    assert sorted(path.name for path in files.iterdir()) == [
        ".shard=00003.parquet.abc.tmp",
        "notes.txt",
        "shard=00000.parquet",
        "shard=00002.parquet",
    ]
    (tmp_path / "shard=00009.parquet").write_text("beside a file named freely: kept")
    assert remove_stale_shards([tmp_path / "elsewhere.parquet"]) == [] and (tmp_path / "shard=00009.parquet").exists()


def test_a_stale_shard_that_is_a_link_is_removed_and_its_target_kept(tmp_path: Path):
    """A shard folder or file linked from elsewhere (a user's own layout): the link goes, what it points to stays."""
    dataset, files, elsewhere = tmp_path / "proteins", tmp_path / "shards", tmp_path / "elsewhere"
    write_parquet(pa.table({"x": [1]}), dataset / "shard=00000" / "part-0.parquet", {})
    write_parquet(pa.table({"x": [1]}), elsewhere / "shard=00001" / "part-0.parquet", {})
    write_parquet(pa.table({"x": [1]}), elsewhere / "shard=00001.parquet", {})
    files.mkdir()
    (dataset / "shard=00001").symlink_to(elsewhere / "shard=00001", target_is_directory=True)
    (files / "shard=00001.parquet").symlink_to(elsewhere / "shard=00001.parquet")
    removed = remove_stale_shards([dataset / "shard=00000" / "part-0.parquet", files / "shard=00000.parquet"])
    assert removed == [dataset / "shard=00001", files / "shard=00001.parquet"]
    assert sorted(os.listdir(dataset)) == ["shard=00000"] and os.listdir(files) == []
    assert sorted(path.relative_to(elsewhere).as_posix() for path in elsewhere.rglob("*")) == [
        "shard=00001",
        "shard=00001.parquet",
        "shard=00001/part-0.parquet",
    ]


def test_scratch_dir_removes_what_killed_processes_left_and_nothing_else(tmp_path: Path):
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    host = re.sub(r"[^\w.]", "_", socket.gethostname())
    left = tmp_path / f"bacflow-families-{host}-{gone.stdout.strip()}-abc123"  # as a SIGKILL leaves it
    alive = tmp_path / f"bacflow-families-{host}-{os.getppid()}-def456"  # a job still running
    other = tmp_path / f"bacflow-assign-{host}-{gone.stdout.strip()}-ghi789"  # another prefix: not ours to judge
    for folder in (left, alive, other):
        (folder / "tmp").mkdir(parents=True)
    with scratch_dir(tmp_path, "bacflow-families") as work:
        assert work.is_dir() and work.name.startswith(f"bacflow-families-{host}-{os.getpid()}-")
        assert not left.exists() and alive.exists() and other.exists()
    assert not work.exists()
