"""Distinct sequences and buckets (bacflow/proteins/unique.py) on real proteins: a bucket is a slice of the hash
space, so one sorted table per shard serves every bucket count, and each bucket's reader can skip the rest."""

from __future__ import annotations

import gzip
import random
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bacflow.core.seqhash import seq_hash
from bacflow.proteins.unique import (
    _PREFIXES,
    bucket_bounds,
    bucket_filter,
    bucket_of,
    gather_bucket,
    write_shard_unique,
)
from conftest import SHARED_DATA

#: Real proteins: MMseqs2's example database (UniProt) and Prodigal's proteins of an E. faecalis genome.
UNIPROT = SHARED_DATA / "mmseqs2" / "DB.fasta.gz"
EFAECALIS = SHARED_DATA / "reference_outputs" / "Efaecalis_TX0104.drep-prodigal.faa.gz"

BUCKET_COUNTS = (1, 2, 3, 7, 16, 64, 1000)


@pytest.mark.parametrize("n_buckets", BUCKET_COUNTS)
def test_bucket_bounds_are_the_slices_of_bucket_of(n_buckets: int):
    def bucket(prefix: int) -> int:
        return bucket_of(f"{prefix:08x}" + "f" * 24, n_buckets)

    bounds = [bucket_bounds(b, n_buckets) for b in range(n_buckets)]
    # The slices tile the hash space, in order, with sizes that differ by at most one prefix.
    assert bounds[0][0] == 0 and bounds[-1][1] == _PREFIXES
    assert all(high == next_low for (_, high), (next_low, _) in zip(bounds, bounds[1:], strict=False))
    assert max(high - low for low, high in bounds) - min(high - low for low, high in bounds) <= 1
    for b, (low, high) in enumerate(bounds):
        assert bucket(low) == b and bucket(high - 1) == b
        assert b == 0 or bucket(low - 1) == b - 1
    for prefix in random.Random(n_buckets).sample(range(_PREFIXES), 1000):
        low, high = bounds[bucket(prefix)]
        assert low <= prefix < high


def read_proteins(path: Path) -> list[str]:
    with gzip.open(path, "rt") as handle:
        return ["".join(block.partition("\n")[2].split()) for block in handle.read().lstrip(">").split("\n>")]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Counter]:
    """Two shards' distinct-sequence tables made from real proteins, with sequences in both shards and repeated
    within one; and every distinct sequence's count."""
    folder = tmp_path_factory.mktemp("unique")
    uniprot, efaecalis = read_proteins(UNIPROT), read_proteins(EFAECALIS)
    members = [uniprot[:12000] + efaecalis, uniprot[8000:] + efaecalis[:100]]
    paths, counts = [], Counter()
    for index, sequences in enumerate(members):
        hashes = [seq_hash(sequence) for sequence in sequences]
        proteins = pa.table(
            {"seq_hash": hashes, "sequence": sequences, "length": pa.array(map(len, sequences), pa.int32())}
        )
        paths.append(folder / f"shard={index:05d}.parquet")
        assert write_shard_unique(proteins, paths[-1]) == len(set(hashes))
        counts.update(hashes)
    return paths, counts


def test_a_shard_table_is_sorted_by_hash_in_small_row_groups(shards):
    paths, _ = shards
    for path in paths:
        hashes = pq.read_table(path, columns=["seq_hash"]).column(0).to_pylist()
        assert hashes == sorted(set(hashes))
        assert pq.ParquetFile(path).metadata.num_row_groups > 1


@pytest.mark.parametrize("n_buckets", [1, 3, 16])
def test_every_bucket_count_partitions_the_same_shard_tables(shards, tmp_path: Path, n_buckets: int):
    paths, counts = shards
    found: Counter = Counter()
    for bucket in range(n_buckets):
        path = tmp_path / f"bucket={bucket:04d}.parquet"
        rows = gather_bucket(paths, bucket, n_buckets, path)
        table = pq.read_table(path)
        assert table.num_rows == rows
        hashes = table.column("seq_hash").to_pylist()
        assert hashes == sorted(hashes) and {bucket_of(value, n_buckets) for value in hashes} <= {bucket}
        found.update(dict(zip(hashes, table.column("occurrences").to_pylist(), strict=True)))
    # Each distinct sequence is in exactly one bucket, with its occurrences summed over both shards.
    assert found == counts
    assert max(counts.values()) > 1


def test_a_bucket_reader_can_skip_the_other_row_groups(shards):
    """The filter is a seq_hash range, so the row groups' statistics rule out all but a bucket's own few."""
    paths, _ = shards
    metadata = pq.ParquetFile(paths[0]).metadata
    column = metadata.schema.names.index("seq_hash")
    groups = [metadata.row_group(index).column(column).statistics for index in range(metadata.num_row_groups)]
    n_buckets = 16
    for bucket in range(n_buckets):
        (_, _, low), *below = bucket_filter(bucket, n_buckets)
        high = below[0][2] if below else None
        needed = [group for group in groups if group.max >= low and (high is None or group.min < high)]
        assert 1 <= len(needed) <= 2 < len(groups)
