"""Unique protein sequences of a cohort, partitioned by hash into buckets.

Every stage that works per distinct sequence (MMseqs2 families, ESM-2 embeddings) reads buckets, never
the protein tables. Two steps keep memory bounded by one shard or one bucket, never the cohort:

1. per shard, by the job that makes the shard's protein table: its distinct sequences with their counts,
   sorted by seq_hash in small row groups;
2. per bucket: the rows of that bucket from every shard, summed by seq_hash.

Bucket ``b`` of ``n`` is the ``b``-th of ``n`` equal slices of the hash space: the sequences whose first 8 hex
digits ``x`` have ``x * n // 16**8 == b``. It is fixed by the sequence alone, so the same sequence lands in
the same bucket in every run and cohort with the same bucket count; and since a bucket is a range of
seq_hash, one sorted shard table serves every bucket count (a bucket's reader skips the other row groups by
their statistics): changing the bucket count re-runs only the bucket jobs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bacflow.core.provenance import provenance
from bacflow.core.seqhash import seq_hash
from bacflow.core.tables import remove_stale_buckets, write_parquet

log = logging.getLogger("bacflow")

UNIQUE_SCHEMA = pa.schema(
    [
        ("seq_hash", pa.string()),
        ("sequence", pa.string()),
        ("length", pa.int32()),
        ("occurrences", pa.int64()),
    ]
)
#: Buckets slice the hash space by the first 8 hex digits of seq_hash.
_PREFIX_DIGITS = 8
_PREFIXES = 16**_PREFIX_DIGITS
# Small row groups: a bucket's reader skips the rest of a shard's file by row-group statistics.
_ROW_GROUP_ROWS = 4096


def bucket_of(seq_hash: str, n_buckets: int) -> int:
    return int(seq_hash[:_PREFIX_DIGITS], 16) * n_buckets // _PREFIXES


def bucket_bounds(bucket: int, n_buckets: int) -> tuple[int, int]:
    """The hash prefixes ``x`` of bucket `bucket` of `n_buckets`: ``low <= x < high`` (``bucket_of``'s inverse)."""
    return -(-bucket * _PREFIXES // n_buckets), -(-(bucket + 1) * _PREFIXES // n_buckets)


def bucket_filter(bucket: int, n_buckets: int) -> list[tuple[str, str, str]]:
    """A parquet filter for the rows of bucket `bucket` of `n_buckets`: a range of seq_hash (as text, hex digits
    compare as their numbers do)."""
    low, high = bucket_bounds(bucket, n_buckets)
    below = [("seq_hash", "<", f"{high:0{_PREFIX_DIGITS}x}")] if high < _PREFIXES else []
    return [("seq_hash", ">=", f"{low:0{_PREFIX_DIGITS}x}"), *below]


def distinct_sequences(proteins: pa.Table) -> pa.Table:
    """One row per seq_hash of a protein table (``seq_hash``, ``sequence``, ``length``), with its count, sorted
    by seq_hash."""
    proteins = proteins.select(["seq_hash", "sequence", "length"])
    return _sum_by_hash(proteins.append_column("occurrences", pa.array([1] * proteins.num_rows, pa.int64())))


def _sum_by_hash(table: pa.Table) -> pa.Table:
    """One row per seq_hash with its occurrences summed, sorted by seq_hash."""
    grouped = table.group_by("seq_hash", use_threads=False).aggregate(
        [("sequence", "first"), ("length", "first"), ("occurrences", "sum")]
    )
    grouped = grouped.rename_columns(["seq_hash", "sequence", "length", "occurrences"])
    return grouped.select(UNIQUE_SCHEMA.names).cast(UNIQUE_SCHEMA).sort_by("seq_hash")


def write_shard_unique(proteins: pa.Table, out_path: str | Path) -> int:
    """Write the distinct sequences of one shard's protein table, with their counts; return how many there are."""
    distinct = distinct_sequences(proteins)
    write_parquet(distinct, out_path, provenance("unique_shard", {}), row_group_size=_ROW_GROUP_ROWS)
    return distinct.num_rows


def gather_bucket(shard_unique_paths: Iterable[str | Path], bucket: int, n_buckets: int, out_path: str | Path) -> int:
    """Write one bucket's distinct sequences across all shards; return how many there are. Bucket 0 also removes
    the files of buckets beyond `n_buckets` (`remove_stale_buckets`)."""
    rows = bucket_filter(bucket, n_buckets)
    parts = [pq.read_table(path, filters=rows, columns=UNIQUE_SCHEMA.names) for path in shard_unique_paths]
    table = pa.concat_tables(parts) if parts else UNIQUE_SCHEMA.empty_table()
    unique = _sum_by_hash(table)
    write_parquet(unique, out_path, provenance("unique_bucket", {"bucket": bucket, "buckets": n_buckets}))
    if bucket == 0:
        for path in remove_stale_buckets(Path(out_path).parent, n_buckets):
            log.info("removed %s: not a bucket of this run's plan", path)
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
    write_shard_unique(proteins, folder / "shard.parquet")
    paths = [folder / f"bucket={bucket:04d}.parquet" for bucket in range(n_buckets)]
    for bucket, path in enumerate(paths):
        gather_bucket([folder / "shard.parquet"], bucket, n_buckets, path)
    return paths
