"""Unique protein sequences of a cohort, partitioned by hash into buckets.

Every stage that works per distinct sequence (MMseqs2 families, ESM-2 embeddings) reads buckets, never
the protein tables. Two steps keep memory bounded by one shard or one bucket, never the cohort:

1. per shard: the shard's distinct sequences with their counts, sorted by (bucket, seq_hash) in small
   row groups, so that a reader of one bucket skips the other buckets' row groups by their statistics;
2. per bucket: the rows of that bucket from every shard, summed by seq_hash.

A sequence's bucket is ``int(seq_hash[:8], 16) % n_buckets``: fixed by the sequence alone, so the
same sequence lands in the same bucket in every run and cohort with the same bucket count.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bacflow.core.provenance import provenance
from bacflow.core.seqhash import seq_hash
from bacflow.core.tables import write_parquet

UNIQUE_SCHEMA = pa.schema(
    [
        ("seq_hash", pa.string()),
        ("sequence", pa.string()),
        ("length", pa.int32()),
        ("occurrences", pa.int64()),
    ]
)
# Small row groups: a bucket's reader skips the rest of a shard's file by row-group statistics.
_ROW_GROUP_ROWS = 4096


def bucket_of(seq_hash: str, n_buckets: int) -> int:
    return int(seq_hash[:8], 16) % n_buckets


def _bucket_column(hashes: pa.ChunkedArray | pa.Array, n_buckets: int) -> pa.Array:
    return pa.array([bucket_of(value, n_buckets) for value in hashes.to_pylist()], pa.int32())


def _sum_by_hash(table: pa.Table) -> pa.Table:
    """One row per seq_hash with its occurrences summed, sorted by seq_hash."""
    grouped = table.group_by("seq_hash", use_threads=False).aggregate(
        [("sequence", "first"), ("length", "first"), ("occurrences", "sum")]
    )
    grouped = grouped.rename_columns(["seq_hash", "sequence", "length", "occurrences"])
    return grouped.select(UNIQUE_SCHEMA.names).cast(UNIQUE_SCHEMA).sort_by("seq_hash")


def shard_unique(proteins_path: str | Path, out_path: str | Path, n_buckets: int) -> None:
    """Write the distinct sequences of one protein shard, with counts and buckets."""
    proteins = pq.read_table(proteins_path, columns=["seq_hash", "sequence", "length"])
    counted = _sum_by_hash(proteins.append_column("occurrences", pa.array([1] * proteins.num_rows, pa.int64())))
    counted = counted.append_column("bucket", _bucket_column(counted.column("seq_hash"), n_buckets))
    counted = counted.sort_by([("bucket", "ascending"), ("seq_hash", "ascending")])
    write_parquet(counted, out_path, provenance("unique_shard", {"buckets": n_buckets}), row_group_size=_ROW_GROUP_ROWS)


def gather_bucket(shard_unique_paths: Iterable[str | Path], bucket: int, out_path: str | Path) -> int:
    """Write one bucket's distinct sequences across all shards; return how many there are."""
    parts = [
        pq.read_table(path, filters=[("bucket", "=", bucket)], columns=UNIQUE_SCHEMA.names)
        for path in shard_unique_paths
    ]
    table = pa.concat_tables(parts) if parts else UNIQUE_SCHEMA.empty_table()
    unique = _sum_by_hash(table)
    write_parquet(unique, out_path, provenance("unique_bucket", {"bucket": bucket}))
    return unique.num_rows


def sequence_buckets(sequences: list[str], folder: str | Path, n_buckets: int) -> list[Path]:
    """Buckets `folder/bucket=NNNN.parquet` of a plain list of protein sequences (one protein each, so
    repeats count), made by the same two steps as a cohort's: for sequences that come from no genome
    (a protein FASTA to cluster, a benchmark corpus)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    proteins = pa.table(
        {
            "seq_hash": [seq_hash(sequence) for sequence in sequences],
            "sequence": sequences,
            "length": pa.array([len(sequence) for sequence in sequences], pa.int32()),
        }
    )
    write_parquet(proteins, folder / "proteins.parquet", provenance("sequences", {}))
    shard_unique(folder / "proteins.parquet", folder / "shard.parquet", n_buckets)
    paths = [folder / f"bucket={bucket:04d}.parquet" for bucket in range(n_buckets)]
    for bucket, path in enumerate(paths):
        gather_bucket([folder / "shard.parquet"], bucket, path)
    return paths
