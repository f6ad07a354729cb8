"""Lineage and freshness (bacflow.core.freshness), and stale buckets (bacflow.core.tables), on protein tables of a
real genome."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pytest

from bacflow.core.errors import InputError
from bacflow.core.freshness import (
    CONTENT_KEY,
    IDENTITY_KEY,
    PROTEINS_KEY,
    check_lineage,
    content_id,
    identity,
    is_current,
    lineage,
)
from bacflow.core.tables import read_metadata, remove_stale_buckets, write_parquet
from conftest import SMALL_GENOME


@pytest.fixture(scope="module")
def proteins(annotated) -> pa.Table:
    return pa.table(annotated(SMALL_GENOME).columns)


def test_content_id_follows_the_rows_not_the_chunks_or_metadata(proteins: pa.Table):
    rechunked = pa.Table.from_batches(proteins.to_batches(max_chunksize=7))
    assert rechunked.column(0).num_chunks > 1
    assert content_id(rechunked) == content_id(proteins.replace_schema_metadata({"x": "y"}))
    assert content_id(proteins.slice(1)) != content_id(proteins)
    renamed = proteins.set_column(0, "other", proteins.column(0))
    assert content_id(renamed) != content_id(proteins)
    swapped = proteins.take(list(range(proteins.num_rows))[::-1])
    assert content_id(swapped) != content_id(proteins)


def write_shard(table: pa.Table, path: Path) -> Path:
    write_parquet(table, path, {CONTENT_KEY: content_id(table)})
    return path


def test_a_table_made_from_other_proteins_is_refused(proteins: pa.Table, tmp_path: Path):
    shard = write_shard(proteins, tmp_path / "proteins.parquet")
    made = tmp_path / "vectors.parquet"
    write_parquet(proteins.select(["genome_id"]), made, lineage(shard, identity({"model": "m"})))
    assert read_metadata(made)[PROTEINS_KEY] == content_id(proteins)
    assert read_metadata(made)[IDENTITY_KEY] == identity({"model": "m"})
    check_lineage([made], [shard])

    write_shard(proteins.slice(0, 10), shard)  # the shard rewritten, its vectors not
    with pytest.raises(InputError, match=r"vectors\.parquet was made from other proteins than .*proteins\.parquet"):
        check_lineage([made], [shard])
    unknown = tmp_path / "unknown.parquet"  # made before lineage was recorded: not provably of these proteins
    write_parquet(proteins.select(["genome_id"]), unknown, {})
    with pytest.raises(InputError, match="unknown.parquet"):
        check_lineage([unknown], [shard])


def test_is_current_makes_snakemakes_own_checks(proteins: pa.Table, tmp_path: Path):
    source = write_shard(proteins, tmp_path / "proteins.parquet")
    output = tmp_path / "out.parquet"
    assert not is_current([output], [source])  # missing
    write_parquet(proteins.slice(0, 1), output, lineage(source, "abc"))
    assert is_current([output], [source]) and is_current([output], [source], "abc")
    assert not is_current([output], [source], "other")  # made with other parameters
    assert not is_current([output], [source, tmp_path / "absent"])  # an input still to be made
    later = output.stat().st_mtime_ns + 10**9
    os.utime(source, ns=(later, later))
    assert not is_current([output], [source], "abc")  # an input newer than the output
    (tmp_path / "broken.parquet").write_text("not parquet")
    os.utime(tmp_path / "broken.parquet", ns=(later, later))
    assert not is_current([tmp_path / "broken.parquet"], [source], "abc")

    # A folder output is as old as Snakemake's stamp inside it, not as its own mtime.
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / ".snakemake_timestamp").touch()
    os.utime(folder / ".snakemake_timestamp", ns=(later + 10**9, later + 10**9))
    assert not is_current([output], [folder]) and is_current([folder], [source])


def test_fewer_buckets_remove_the_higher_buckets_files_and_folders(tmp_path: Path):
    for bucket in range(4):
        (tmp_path / f"bucket={bucket:04d}.parquet").touch()
        (tmp_path / f"bucket={bucket:04d}").mkdir()
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards.json").touch()
    removed = remove_stale_buckets(tmp_path, 2)
    assert sorted(path.name for path in removed) == [
        "bucket=0002",
        "bucket=0002.parquet",
        "bucket=0003",
        "bucket=0003.parquet",
    ]
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "bucket=0000",
        "bucket=0000.parquet",
        "bucket=0001",
        "bucket=0001.parquet",
        "shards",
        "shards.json",
    ]
