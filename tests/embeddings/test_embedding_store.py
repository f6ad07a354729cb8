"""The embedding store: which parts a bucket reads, atomic immutable parts, duplicates, and bad parts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bacflow.core.errors import InputError
from bacflow.core.seqhash import seq_hash
from bacflow.embeddings.recipe import EmbeddingRecipe
from bacflow.embeddings.store import EmbeddingStore, buckets_overlap, vector_array
from bacflow.proteins.unique import bucket_bounds, bucket_of

RECIPE = EmbeddingRecipe("org/esm2", "a" * 40, False, "float32", "mean", 1024, "float32")


def part(sequences: list[str], value: float = 0.0, dim: int = 4) -> pa.Table:
    vectors = np.full((len(sequences), dim), value, dtype=np.float32) + np.arange(len(sequences))[:, None]
    return pa.table(
        {
            "seq_hash": [seq_hash(s) for s in sequences],
            "vector": vector_array(vectors, "float32"),
            "tokens": pa.array([len(s) + 2 for s in sequences], pa.int32()),
            "truncated": [False] * len(sequences),
        }
    )


def test_buckets_overlap_exactly_when_a_hash_can_be_in_both():
    for n in range(1, 13):
        for m in range(1, 13):
            # Two slices that share a hash share the larger of their first hashes: a first hash of some bucket.
            firsts = {f"{bucket_bounds(b, k)[0]:08x}" + "0" * 24 for k in (n, m) for b in range(k)}
            both = {(bucket_of(x, n), bucket_of(x, m)) for x in firsts}
            for b in range(n):
                for c in range(m):
                    assert buckets_overlap(b, n, c, m) == ((b, c) in both), (b, n, c, m)


def test_parts_round_trip_and_bucket_filter(tmp_path: Path):
    store = EmbeddingStore(tmp_path, RECIPE).open()
    sequences = [f"MK{'A' * i}V" for i in range(40)]
    by_bucket = {b: [s for s in sequences if bucket_of(seq_hash(s), 4) == b] for b in range(4)}
    for bucket, members in by_bucket.items():
        store.add(part(members, value=bucket), bucket, 4, {"bacflow.stage": "test"})
    # A store written with 4 buckets serves a run with 2: bucket 1 of 2 is buckets 2 and 3 of 4.
    assert [p.name[:12] for p in store.parts(1, 2)] == ["s0002-of-000", "s0003-of-000"]
    wanted = pa.array([seq_hash(s) for s in by_bucket[2] + by_bucket[3]] + [seq_hash("NOTSTORED")])
    found = store.lookup(wanted, 1, 2)
    assert sorted(found.column("seq_hash").to_pylist()) == sorted(wanted.to_pylist()[:-1])
    assert store.lookup(pa.array([seq_hash("NOTSTORED")]), 0, 4) is None
    # A temporary file of a killed writer is never read.
    (store.parts_folder / ".s0000-of-0004-0000000000000000.parquet.x.tmp").write_bytes(b"partial")
    assert store.lookup(pa.array([seq_hash(by_bucket[0][0])]), 0, 4).num_rows == 1


def test_parts_of_residue_class_buckets_are_read_by_every_bucket(tmp_path: Path):
    """Parts named b<bucket>-of-<buckets> come from stores written when a bucket was `x % n`: their vectors are
    still found, by every bucket job, whatever slice a sequence is in now."""
    store = EmbeddingStore(tmp_path, RECIPE).open()
    sequences = [f"MK{'A' * i}V" for i in range(40)]
    residue_class = [s for s in sequences if int(seq_hash(s)[:8], 16) % 4 == 1]
    written = store.add(part(residue_class, value=1.0), 0, 1, {})
    written.rename(written.with_name("b0001-of-0004" + written.name.removeprefix("s0000-of-0001")))
    for sequence in residue_class:
        bucket = bucket_of(seq_hash(sequence), 4)
        assert store.lookup(pa.array([seq_hash(sequence)]), bucket, 4).num_rows == 1
    assert len({bucket_of(seq_hash(s), 4) for s in residue_class}) > 1  # the old bucket spans several slices


def test_duplicates_from_concurrent_writers_are_read_once(tmp_path: Path):
    store = EmbeddingStore(tmp_path, RECIPE).open()
    sequences = ["MKV", "MKVL", "MKVLA"]
    bucket = [bucket_of(seq_hash(s), 1) for s in sequences][0]
    store.add(part(sequences, value=1.0), bucket, 1, {})
    store.add(part(sequences[1:] + ["MKVLAW"], value=1.0), bucket, 1, {})
    found = store.lookup(pa.array([seq_hash(s) for s in sequences + ["MKVLAW"]]), bucket, 1)
    assert sorted(found.column("seq_hash").to_pylist()) == sorted(seq_hash(s) for s in sequences + ["MKVLAW"])


def test_recipe_json_is_checked(tmp_path: Path):
    store = EmbeddingStore(tmp_path, RECIPE).open()
    assert EmbeddingStore(tmp_path, RECIPE).open().folder == store.folder
    (store.folder / "recipe.json").write_text((store.folder / "recipe.json").read_text().replace("float32", "float16"))
    with pytest.raises(InputError, match="another recipe"):
        EmbeddingStore(tmp_path, RECIPE).open()


def test_bad_parts_are_named(tmp_path: Path):
    store = EmbeddingStore(tmp_path, RECIPE).open()
    path = store.add(part(["MKV"]), 0, 1, {})
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(InputError, match=f"{path.name}.*unreadable.*delete it"):
        store.lookup(pa.array([seq_hash("MKV")]), 0, 1)
    path.unlink()
    pq.write_table(part(["MKV"]).drop_columns(["tokens"]), path)
    with pytest.raises(InputError, match="has columns"):
        store.lookup(pa.array([seq_hash("MKV")]), 0, 1)
