"""The embedding store: seq_hash -> vector for one recipe, shared by runs and cohorts.

Layout of a store root (``embedding_store:``, default ``<outdir>/embeddings``)::

    <root>/<recipe key>/recipe.json                                   the recipe, written once
    <root>/<recipe key>/parts/s<bucket>-of-<buckets>-<digest>.parquet  vectors, immutable

A part holds vectors that one bucket job computed (``seq_hash``, ``vector``, ``tokens``, ``truncated``,
sorted by seq_hash); its name says which bucket of how many buckets it belongs to, and ``digest`` is a
hash of its seq_hashes. Safety under concurrency and kills follows from three rules:

- a part is written to a temporary file in ``parts/`` and renamed into place, so a part either exists
  whole or not at all; readers list only ``*.parquet`` names, never temporary files;
- parts are never modified or deleted by bacflow, so a reader never sees one change under it;
- concurrent writers of the same sequence (two runs sharing a store) may both add it; readers keep the
  first copy in name order, and both copies are vectors of the same recipe.

A bucket job writes a part every ``checkpoint_sequences`` vectors, so a job that is killed keeps what it
had finished, and its rerun embeds only the rest. A bucket job reads only parts whose bucket can hold
its sequences: a bucket is a slice of the hash space (`bacflow.proteins.unique`), so those are the parts
whose slice overlaps its own; with the same bucket count in every run, exactly one bucket's parts. Parts
named ``b<bucket>-of-<buckets>-...`` were written when a bucket was a residue class of the hash, not a
slice: any of them may hold any hash, so every bucket job reads them (a store keeps its vectors across
that change).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bacflow.core.errors import InputError
from bacflow.core.tables import atomic_path, write_parquet
from bacflow.embeddings.recipe import EmbeddingRecipe
from bacflow.proteins.unique import bucket_bounds

_PART = re.compile(r"^([sb])(\d{4})-of-(\d{4})-([0-9a-f]{16})\.parquet$")
_ARROW_FLOATS = {"float32": pa.float32(), "float16": pa.float16()}


def vector_type(dim: int, dtype: str) -> pa.DataType:
    return pa.list_(_ARROW_FLOATS[dtype], dim)


def vector_array(vectors: np.ndarray, dtype: str) -> pa.FixedSizeListArray:
    """A FixedSizeList column of the rows of a 2-D array."""
    values = pa.array(np.ascontiguousarray(vectors, dtype=np.dtype(dtype)).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(values, vectors.shape[1])


def part_schema(dim: int, dtype: str) -> pa.Schema:
    return pa.schema(
        [
            ("seq_hash", pa.string()),
            ("vector", vector_type(dim, dtype)),
            ("tokens", pa.int32()),
            ("truncated", pa.bool_()),
        ]
    )


def buckets_overlap(bucket: int, n_buckets: int, other: int, n_other: int) -> bool:
    """Whether a hash can be in bucket `bucket` of `n_buckets` and in bucket `other` of `n_other`."""
    (low, high), (other_low, other_high) = bucket_bounds(bucket, n_buckets), bucket_bounds(other, n_other)
    return max(low, other_low) < min(high, other_high)


class EmbeddingStore:
    """The store folder of one recipe under `root`."""

    def __init__(self, root: str | Path, recipe: EmbeddingRecipe):
        self.recipe = recipe
        self.folder = Path(root) / recipe.key
        self.parts_folder = self.folder / "parts"

    def open(self) -> EmbeddingStore:
        """Create the folder and its recipe.json, or check that an existing one is this recipe's."""
        self.parts_folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / "recipe.json"
        if not path.exists():
            # atomic_path, not mkstemp: a store shared by several users must stay readable to them all.
            with atomic_path(path) as temporary:  # concurrent writers write the same content
                temporary.write_text(json.dumps(self.recipe.description(), indent=2, sort_keys=True) + "\n")
        try:
            stored = json.loads(path.read_text())
            same = EmbeddingRecipe(**{key: stored[key] for key in self.recipe.identity()}).identity()
        except (ValueError, KeyError, TypeError) as error:
            raise InputError(f"embedding store {path}: unreadable recipe ({error})") from None
        if same != self.recipe.identity():
            raise InputError(f"embedding store {path} holds another recipe than its name says: {stored}")
        return self

    def parts(self, bucket: int, n_buckets: int) -> list[Path]:
        """The parts that may hold sequences of bucket `bucket` of `n_buckets`, in name order."""
        found = []
        for path in sorted(self.parts_folder.glob("*.parquet")):
            match = _PART.match(path.name)
            if match and (match[1] == "b" or buckets_overlap(bucket, n_buckets, int(match[2]), int(match[3]))):
                found.append(path)
        return found

    def lookup(self, hashes: pa.Array, bucket: int, n_buckets: int) -> pa.Table | None:
        """The stored rows of those of `hashes` (of bucket `bucket`) that the store holds, one per hash;
        None when it holds none."""
        found = []
        for path in self.parts(bucket, n_buckets):
            try:
                stored = pq.read_table(path, columns=["seq_hash"]).column(0)
                mask = pc.is_in(stored, value_set=hashes)
                if pc.any(mask).as_py():
                    found.append(self._checked(pq.read_table(path), path).filter(mask))
            except (OSError, pa.ArrowException) as error:
                raise InputError(
                    f"embedding store part {path} is unreadable ({error}); delete it and rerun (its "
                    "sequences will be embedded again)"
                ) from None
        if not found:
            return None
        table = pa.concat_tables(found)
        _, first = np.unique(table.column("seq_hash").to_numpy(zero_copy_only=False), return_index=True)
        return table.take(pa.array(np.sort(first)))

    def add(self, table: pa.Table, bucket: int, n_buckets: int, metadata: dict[str, str]) -> Path:
        """Write one part (rows of `part_schema`, all of bucket `bucket`) atomically; return its path."""
        table = table.sort_by("seq_hash")
        digest = hashlib.sha256("\n".join(table.column("seq_hash").to_pylist()).encode()).hexdigest()[:16]
        path = self.parts_folder / f"s{bucket:04d}-of-{n_buckets:04d}-{digest}.parquet"
        write_parquet(table, path, metadata)
        return path

    def _checked(self, table: pa.Table, path: Path) -> pa.Table:
        vector = table.schema.field("vector").type if "vector" in table.schema.names else None
        dim = vector.list_size if vector is not None and pa.types.is_fixed_size_list(vector) else 0
        expected = part_schema(dim, self.recipe.vector_dtype)
        if not dim or not table.schema.remove_metadata().equals(expected):
            raise InputError(f"embedding store part {path} has columns {table.schema} instead of {expected}")
        return table
