"""Protein families: MMseqs2 clusters of a corpus's unique sequences, a frozen vocabulary, and assignment.

**Clustering** (`build_families`). All unique sequences of the corpus (the ``unique/bucket=*.parquet``
tables) go to MMseqs2 ``linclust`` (or ``cluster``) in one run, in ascending ``seq_hash`` order:
MMseqs2's result depends slightly on the order of its input, and this order depends on the sequences
alone, not on the sample sheet, shards or bucket count. Each cluster is a *family*, named by its
MMseqs2 representative.

**Vocabulary.** Families are ranked by size, the number of proteins of the corpus whose sequence is in
the family (the sum of ``occurrences``), largest first; ties go to the family whose representative has
the smaller ``seq_hash``. The first ``vocab_size`` families get ids ``0 .. vocab_size-1`` in that order;
every other sequence is unlabelled: a null ``family_id`` (label -100 in training), never a made-up id.
``families/vocab/`` holds what is needed to reuse the vocabulary:

- ``representatives.fasta`` (header ``>seq_hash family_id=N``, in id order) and ``mmseqs/representatives``,
  the same sequences as an MMseqs2 database (its internal key is the family id);
- ``ids.parquet``: one row per family id: representative, its sequence and length, size, sequences;
- ``members.parquet``: every ``seq_hash`` of the corpus with its ``family_id`` (null: unlabelled);
- ``vocab.json``: the clustering parameters, the MMseqs2 version, and counts.

**Assignment** (`assign_families`). A new corpus is never re-clustered. A sequence that is in the
vocabulary's own corpus keeps its family there (labelled or not). Every other sequence is searched with
MMseqs2 against the representatives, under the identity and coverage thresholds of the clustering,
and takes the family of its best hit (highest bit score; ties to the smaller family id); a sequence
without a hit is unlabelled.

``families.parquet`` has one row per unique sequence, sorted by ``seq_hash``, and is byte-identical
between runs on the same sequences with the same parameters.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from bacflow.core.errors import InputError
from bacflow.core.provenance import canonical_json, provenance
from bacflow.core.scratch import scratch_dir
from bacflow.core.seqhash import PROTEIN_LETTERS, protein_problem
from bacflow.core.tables import atomic_path, write_parquet
from bacflow.families import mmseqs

log = logging.getLogger(__name__)

FAMILIES_SCHEMA = pa.schema(
    [
        ("seq_hash", pa.string()),
        # Clustering: the representative of the sequence's cluster in this corpus (every row).
        # Assignment: the representative of its vocabulary family (null when unlabelled).
        ("representative", pa.string()),
        ("family_id", pa.int32()),  # null: unlabelled
        ("family_size", pa.int64()),  # proteins of the clustered corpus in the family
        ("family_sequences", pa.int64()),  # unique sequences of the clustered corpus in the family
    ]
)
VOCAB_IDS_SCHEMA = pa.schema(
    [
        pa.field("family_id", pa.int32(), nullable=False),
        ("representative", pa.string()),
        ("sequence", pa.string()),
        ("length", pa.int32()),
        ("family_size", pa.int64()),
        ("family_sequences", pa.int64()),
    ]
)
VOCAB_MEMBERS_SCHEMA = pa.schema([("seq_hash", pa.string()), ("family_id", pa.int32())])
FAMILY_QC_SCHEMA = pa.schema(
    [
        ("genome_id", pa.string()),
        ("proteins", pa.int32()),
        ("labelled", pa.int32()),
        ("unlabelled", pa.int32()),
    ]
)

VOCAB_FILES = (
    "vocab.json",
    "ids.parquet",
    "members.parquet",
    "representatives.fasta",
    "mmseqs/representatives",
    "mmseqs/representatives.index",
)
VOCAB_FORMAT = 1
TIE_BREAK = "family_size descending, then representative seq_hash ascending"

# Clustering aligns each representative (query) with its members (targets); an assignment search aligns
# a new sequence (query) with the representatives (targets). Swapping the roles keeps the coverage rule:
# e.g. cov_mode 1 (the member must be covered) becomes 2 (the query must be covered).
SEARCH_COV_MODE = {0: 0, 1: 2, 2: 1, 3: 4, 4: 3, 5: 5}

_PROTEIN_PATTERN = f"^[{PROTEIN_LETTERS}]+$"
_HASH_PATTERN = "^[0-9a-f]{32}$"
_HASH_BYTES = 32
# Rows held in memory while merging the buckets, over all buckets together (~100 MB of sequences).
_MERGE_ROWS = 1 << 18
# MMseqs2 may use this share of the job's memory; the rest is for this process's arrays.
_MMSEQS_MEMORY_SHARE = 0.7


@dataclass(frozen=True)
class FamilyParams:
    """How families are made; the defaults and the reasons for them are in docs/families.md."""

    method: Literal["linclust", "cluster"] = "linclust"
    min_seq_id: float = 0.5
    coverage: float = 0.8
    cov_mode: int = 1
    sensitivity: float = 4.0
    vocab_size: int = 50_000

    @classmethod
    def from_config(cls, families: dict[str, Any]) -> FamilyParams:
        """The parameters from the config's ``families`` block (other keys there are ignored)."""
        return cls(**{name: families[name] for name in cls.__dataclass_fields__ if name in families})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def cluster_args(self) -> list[str]:
        args = ["--min-seq-id", str(self.min_seq_id), "-c", str(self.coverage), "--cov-mode", str(self.cov_mode)]
        # linclust has no prefilter, so no sensitivity.
        return args + (["-s", str(self.sensitivity)] if self.method == "cluster" else [])

    def search_args(self) -> list[str]:
        return [
            *("--min-seq-id", str(self.min_seq_id), "-c", str(self.coverage)),
            *("--cov-mode", str(SEARCH_COV_MODE[self.cov_mode]), "-s", str(self.sensitivity)),
        ]


# ---------------------------------------------------------------------------------------------------
# Reading the buckets


class _Bucket:
    """One bucket table, read in batches; every batch is checked before it is used."""

    def __init__(self, path: Path, columns: list[str], rows: int):
        self.path = path
        parquet = pq.ParquetFile(path)
        missing = [name for name in columns if name not in parquet.schema_arrow.names]
        if missing:
            raise InputError(f"{path}: not a unique-sequences bucket (no column {', '.join(missing)})")
        self._batches = parquet.iter_batches(batch_size=rows, columns=columns)
        self._last_hash: str | None = None
        self.buffer = parquet.schema_arrow.empty_table().select(columns)
        self.done = False

    def fill(self) -> None:
        """Read the next batch when the buffer is empty."""
        while self.buffer.num_rows == 0 and not self.done:
            batch = next(self._batches, None)
            if batch is None:
                self.done = True
            elif batch.num_rows:
                _check_batch(batch, self.path, self._last_hash)
                self._last_hash = batch.column("seq_hash")[-1].as_py()
                self.buffer = pa.Table.from_batches([batch])


def iter_sorted(bucket_paths: Iterable[str | Path], columns: list[str]) -> Iterator[pa.Table]:
    """The rows of all buckets in ascending ``seq_hash`` order, as a stream of tables.

    Each bucket is sorted by seq_hash, so this is a k-way merge that holds one batch per bucket: every
    buffered row up to the smallest last hash among the buckets that have more rows is safe to emit.
    """
    paths = [Path(path) for path in bucket_paths]
    columns = ["seq_hash", "sequence", *(name for name in columns if name not in ("seq_hash", "sequence"))]
    rows = max(1024, _MERGE_ROWS // max(len(paths), 1))
    buckets = [_Bucket(path, columns, rows) for path in paths]
    last_emitted: str | None = None
    while True:
        for bucket in buckets:
            bucket.fill()
        live = [bucket for bucket in buckets if bucket.buffer.num_rows]
        if not live:
            return
        bounds = [bucket.buffer.column("seq_hash")[-1].as_py() for bucket in live if not bucket.done]
        bound = min(bounds) if bounds else None
        parts = []
        for bucket in live:
            hashes = bucket.buffer.column("seq_hash")
            take = bucket.buffer.num_rows if bound is None else pc.sum(pc.less_equal(hashes, bound)).as_py() or 0
            parts.append(bucket.buffer.slice(0, take))
            bucket.buffer = bucket.buffer.slice(take)
        merged = pa.concat_tables(parts).sort_by("seq_hash")
        hashes = merged.column("seq_hash")
        first = hashes[0].as_py()
        if (last_emitted is not None and first <= last_emitted) or not _strictly_increasing(hashes):
            raise InputError(
                f"the bucket tables share a seq_hash ({_first_repeat(hashes, last_emitted)}); each sequence "
                "must be in exactly one bucket (were they made with different bucket counts?)"
            )
        last_emitted = hashes[-1].as_py()
        yield merged


def _strictly_increasing(values: pa.ChunkedArray | pa.Array) -> bool:
    if len(values) < 2:
        return True
    return bool(pc.all(pc.greater(values[1:], values[:-1])).as_py())


def _first_repeat(hashes: pa.ChunkedArray, previous: str | None) -> str:
    values = ([previous] if previous is not None else []) + hashes.to_pylist()
    return next(value for value, following in zip(values, values[1:], strict=False) if following <= value)


def _check_batch(batch: pa.RecordBatch, path: Path, previous_hash: str | None) -> None:
    """One clear error for the first malformed row of a bucket batch."""
    hashes, sequences = batch.column("seq_hash"), batch.column("sequence")
    good_hashes = pc.fill_null(pc.match_substring_regex(hashes, _HASH_PATTERN), False)
    if not pc.all(good_hashes).as_py():
        row = pc.index(good_hashes, False).as_py()
        raise InputError(f"{path}: seq_hash {hashes[row].as_py()!r} is not {_HASH_BYTES} lower-case hex digits")
    good_sequences = pc.fill_null(pc.match_substring_regex(sequences, _PROTEIN_PATTERN), False)
    if not pc.all(good_sequences).as_py():
        row = pc.index(good_sequences, False).as_py()
        raise InputError(
            f"{path}, seq_hash {hashes[row].as_py()}: {protein_problem(sequences[row].as_py() or '')}; bucket "
            f"tables hold normalised protein sequences ({PROTEIN_LETTERS} only)"
        )
    first = hashes[0].as_py()
    if (previous_hash is not None and first <= previous_hash) or not _strictly_increasing(hashes):
        raise InputError(f"{path}: not sorted by seq_hash, or a seq_hash occurs twice")


def _sequences_of(bucket_paths: Iterable[str | Path], wanted: pa.Array) -> pa.Table:
    """seq_hash and sequence of the `wanted` hashes (all present in the buckets), in that order."""
    parts = []
    for path in bucket_paths:
        table = pq.ParquetFile(path).read(columns=["seq_hash", "sequence"])
        parts.append(table.filter(pc.is_in(table.column("seq_hash"), value_set=wanted)))
    found = pa.concat_tables(parts)
    return found.take(pc.index_in(wanted, value_set=found.column("seq_hash")))


# ---------------------------------------------------------------------------------------------------
# Sorted hash lookups without a hash table of the whole corpus


def _fixed_width(hashes: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """seq_hash values as a numpy array of 32-byte strings (for `np.searchsorted`)."""
    if isinstance(hashes, pa.ChunkedArray):
        hashes = hashes.combine_chunks()
    if len(hashes) == 0:
        return np.zeros(0, f"S{_HASH_BYTES}")
    fixed = hashes.cast(pa.binary(_HASH_BYTES))
    data = np.frombuffer(fixed.buffers()[1], dtype=f"S{_HASH_BYTES}")
    return data[fixed.offset : fixed.offset + len(fixed)]


def _lookup(sorted_keys: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each query: whether it is among the sorted keys, and its position there (valid where found)."""
    if len(sorted_keys) == 0:
        return np.zeros(len(queries), bool), np.zeros(len(queries), np.int64)
    positions = np.minimum(np.searchsorted(sorted_keys, queries), len(sorted_keys) - 1)
    return sorted_keys[positions] == queries, positions


# ---------------------------------------------------------------------------------------------------
# Clustering


def build_families(
    bucket_paths: Iterable[str | Path],
    families_path: str | Path,
    vocab_dir: str | Path,
    params: FamilyParams,
    threads: int = 1,
    memory_mb: int | None = None,
    tmpdir: str | Path | None = None,
) -> dict[str, int]:
    """Cluster the corpus in `bucket_paths`; write `families_path` and the vocabulary in `vocab_dir`.

    On error neither is written. `memory_mb` caps MMseqs2's memory (a share of it); `tmpdir` is where
    MMseqs2 works. Returns counts, also logged.
    """
    bucket_paths = [Path(path) for path in bucket_paths]
    version = mmseqs.version()
    with scratch_dir(tmpdir, "bacflow-families") as work:
        hashes, occurrences = _write_corpus(bucket_paths, work / "corpus.fasta")
        if len(hashes) == 0:
            raise InputError(
                f"no protein sequences to cluster: the {len(bucket_paths)} bucket table(s) are empty "
                "(did every genome fail? see qc/genomes.parquet)"
            )
        log.info("clustering %d unique sequences (%d proteins) with %s", len(hashes), occurrences.sum(), params)
        # Arrow's allocator keeps freed buffers; MMseqs2 needs the memory more while it runs.
        pa.default_memory_pool().release_unused()
        representative = _cluster(work, len(hashes), params, threads, memory_mb)
    families, vocab_rows = _rank(hashes, occurrences, representative, params.vocab_size)
    counts = {
        "sequences": len(hashes),
        "proteins": int(occurrences.sum()),
        "clusters": int(np.count_nonzero(representative == np.arange(len(representative)))),
        "families": vocab_rows.num_rows,
        "labelled_sequences": len(hashes) - families.column("family_id").null_count,
        "labelled_proteins": int(pc.sum(vocab_rows.column("family_size")).as_py() or 0),
    }
    log.info("families: %s", counts)
    metadata = _metadata("families", {"families": params.as_dict()}, version)
    manifest = {
        "format": VOCAB_FORMAT,
        "params": params.as_dict(),
        "mmseqs_version": version,
        "tie_break": TIE_BREAK,
        "counts": counts,
    }
    vocab_ids = _vocab_ids(bucket_paths, vocab_rows)
    # The vocabulary is made in a folder beside its final place and renamed there, then the table is
    # written (itself atomically); an error on the way leaves neither.
    vocab_dir = Path(vocab_dir)
    with atomic_path(vocab_dir) as staging:
        staging.mkdir()
        _write_vocab(staging, vocab_ids, families.select(["seq_hash", "family_id"]), manifest, metadata)
    try:
        write_parquet(families, families_path, metadata)
    except BaseException:
        shutil.rmtree(vocab_dir, ignore_errors=True)
        raise
    return counts


def _write_corpus(bucket_paths: list[Path], fasta: Path) -> tuple[pa.ChunkedArray, np.ndarray]:
    """Write every unique sequence to `fasta`, named by its index in seq_hash order; return the hashes
    and occurrences in that order."""
    hashes, occurrences = [], []
    count = 0
    with open(fasta, "wb") as handle:
        for table in iter_sorted(bucket_paths, ["occurrences"]):
            _write_fasta(handle, pa.array(np.arange(count, count + table.num_rows)), table.column("sequence"))
            count += table.num_rows
            hashes.extend(table.column("seq_hash").chunks)
            occurrences.append(table.column("occurrences").to_numpy())
    return pa.chunked_array(hashes, pa.string()), np.concatenate([np.zeros(0, np.int64), *occurrences])


def _write_fasta(handle: BinaryIO, names: pa.Array, sequences: pa.Array | pa.ChunkedArray) -> None:
    """Append the records ``>name\\nsequence\\n``, joined by Arrow rather than row by row in Python."""
    records = pc.binary_join_element_wise(">", pc.cast(names, pa.string()), "\n", sequences, "\n", "")
    for chunk in records.chunks if isinstance(records, pa.ChunkedArray) else [records]:
        if len(chunk):
            offsets = np.frombuffer(chunk.buffers()[1], np.int32)
            handle.write(chunk.buffers()[2][offsets[chunk.offset] : offsets[chunk.offset + len(chunk)]])


def _cluster(work: Path, count: int, params: FamilyParams, threads: int, memory_mb: int | None) -> np.ndarray:
    """MMseqs2 clustering of ``work/corpus.fasta``; returns each sequence's representative (an index)."""
    database, clusters, table = work / "corpus", work / "clusters", work / "clusters.tsv"
    # --dbtype 1: a short protein made only of A, C, G, T and N letters must not turn the input into DNA.
    mmseqs.run("createdb", work / "corpus.fasta", database, "--dbtype", 1, "--createdb-mode", 1)
    tmp = work / "tmp"
    options = ["--threads", threads, "--remove-tmp-files", 1, *params.cluster_args(), *_memory_args(memory_mb)]
    mmseqs.run(params.method, database, clusters, tmp, *options)
    mmseqs.run("createtsv", database, database, clusters, table, "--threads", threads)
    pairs = pacsv.read_csv(
        table,
        read_options=pacsv.ReadOptions(column_names=["representative", "member"]),
        parse_options=pacsv.ParseOptions(delimiter="\t"),
        convert_options=pacsv.ConvertOptions(column_types={"representative": pa.int64(), "member": pa.int64()}),
    )
    member = pairs.column("member").to_numpy()
    representative = np.full(count, -1, np.int64)
    representative[member] = pairs.column("representative").to_numpy()
    if len(member) != count or (representative < 0).any() or (representative[representative] != representative).any():
        raise mmseqs.MmseqsError(
            f"mmseqs {params.method} returned {len(member)} cluster members for {count} sequences; "
            "expected every sequence exactly once, each representative in its own cluster"
        )
    return representative


def _memory_args(memory_mb: int | None) -> list[str]:
    return ["--split-memory-limit", f"{int(memory_mb * _MMSEQS_MEMORY_SHARE)}M"] if memory_mb else []


def _rank(
    hashes: pa.ChunkedArray, occurrences: np.ndarray, representative: np.ndarray, vocab_size: int
) -> tuple[pa.Table, pa.Table]:
    """The families table, and the vocabulary's rows (family_id, representative, size, sequences)."""
    count = len(representative)
    sequences = np.bincount(representative, minlength=count)
    # Sums of int64 counts as float64 are exact below 2**53 proteins.
    size = np.bincount(representative, weights=occurrences, minlength=count).astype(np.int64)
    representatives = np.flatnonzero(sequences)
    # Indices follow seq_hash order, so the smaller index is the smaller representative seq_hash.
    ranked = representatives[np.lexsort((representatives, -size[representatives]))]
    in_vocab = ranked[:vocab_size]
    family_of = np.full(count, -1, np.int32)
    family_of[in_vocab] = np.arange(len(in_vocab), dtype=np.int32)
    family_id = family_of[representative]
    families = pa.table(
        [
            hashes,
            hashes.take(pa.array(representative)),
            pa.array(family_id, pa.int32(), mask=family_id < 0),
            pa.array(size[representative]),
            pa.array(sequences[representative].astype(np.int64)),
        ],
        schema=FAMILIES_SCHEMA,
    )
    vocab_rows = pa.table(
        {
            "family_id": pa.array(np.arange(len(in_vocab), dtype=np.int32)),
            "representative": hashes.take(pa.array(in_vocab)),
            "family_size": pa.array(size[in_vocab]),
            "family_sequences": pa.array(sequences[in_vocab].astype(np.int64)),
        }
    )
    return families, vocab_rows


def _vocab_ids(bucket_paths: list[Path], vocab_rows: pa.Table) -> pa.Table:
    sequences = _sequences_of(bucket_paths, vocab_rows.column("representative").combine_chunks())
    sequence = sequences.column("sequence")
    return pa.table(
        [
            vocab_rows.column("family_id"),
            vocab_rows.column("representative"),
            sequence,
            pc.utf8_length(sequence).cast(pa.int32()),
            vocab_rows.column("family_size"),
            vocab_rows.column("family_sequences"),
        ],
        schema=VOCAB_IDS_SCHEMA,
    )


# ---------------------------------------------------------------------------------------------------
# The vocabulary folder


def _write_vocab(
    folder: Path, ids: pa.Table, members: pa.Table, manifest: dict[str, Any], metadata: dict[str, str]
) -> None:
    fasta = folder / "representatives.fasta"
    names = pc.binary_join_element_wise(
        ids.column("representative"), pc.cast(ids.column("family_id"), pa.string()), " family_id="
    )
    with open(fasta, "wb") as handle:
        _write_fasta(handle, names, ids.column("sequence"))
    (folder / "mmseqs").mkdir()
    # --shuffle 0 keeps the file's order, so the database's internal key is the family id.
    mmseqs.run("createdb", fasta, folder / "mmseqs" / "representatives", "--dbtype", 1, "--shuffle", 0)
    write_parquet(ids, folder / "ids.parquet", metadata)
    write_parquet(members.cast(VOCAB_MEMBERS_SCHEMA), folder / "members.parquet", metadata)
    (folder / "vocab.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def check_vocab(vocab_dir: str | Path, params: FamilyParams) -> dict[str, Any]:
    """The manifest of the vocabulary in `vocab_dir`; `InputError` if it is missing, incomplete, or was
    built with parameters other than `params`."""
    folder = Path(vocab_dir)
    where = f"families.vocab: {folder}"
    if not folder.is_dir():
        raise InputError(f"{where} does not exist (give the families/vocab folder of an earlier bacflow run)")
    missing = [name for name in VOCAB_FILES if not (folder / name).is_file()]
    if missing:
        raise InputError(f"{where} is not a bacflow vocabulary: {', '.join(missing)} missing")
    try:
        manifest = json.loads((folder / "vocab.json").read_text())
        built = manifest["params"]
    except (ValueError, KeyError, TypeError):
        raise InputError(f"{where}: vocab.json is unreadable or has no 'params'") from None
    if manifest.get("format") != VOCAB_FORMAT:
        raise InputError(f"{where}: vocabulary format {manifest.get('format')!r}, this bacflow reads {VOCAB_FORMAT}")
    differences = [
        f"{name}: {built.get(name)!r} there, {value!r} here"
        for name, value in params.as_dict().items()
        if built.get(name) != value
    ]
    if differences:
        raise InputError(
            f"{where} was built with other parameters ({'; '.join(differences)}); set the families "
            "parameters to the vocabulary's, or build a new vocabulary"
        )
    return manifest


# ---------------------------------------------------------------------------------------------------
# Assignment to a frozen vocabulary


def assign_families(
    bucket_paths: Iterable[str | Path],
    vocab_dir: str | Path,
    families_path: str | Path,
    params: FamilyParams,
    threads: int = 1,
    memory_mb: int | None = None,
    tmpdir: str | Path | None = None,
) -> dict[str, int]:
    """Give the corpus in `bucket_paths` the families of the vocabulary in `vocab_dir`; write
    `families_path` (nothing at all on error). Returns counts, also logged."""
    bucket_paths = [Path(path) for path in bucket_paths]
    vocab_dir = Path(vocab_dir)
    manifest = check_vocab(vocab_dir, params)
    version = mmseqs.version()
    if manifest["mmseqs_version"] != version:
        log.warning("the vocabulary was built with MMseqs2 %s, this is %s", manifest["mmseqs_version"], version)
    members = pq.read_table(vocab_dir / "members.parquet", columns=["seq_hash", "family_id"])
    member_keys = _fixed_width(members.column("seq_hash"))
    member_family = pc.fill_null(members.column("family_id"), -1).to_numpy()
    ids = pq.read_table(vocab_dir / "ids.parquet", schema=VOCAB_IDS_SCHEMA)

    with scratch_dir(tmpdir, "bacflow-assign") as work:
        hashes, families, novel = [], [], []
        count = 0
        with open(work / "query.fasta", "wb") as handle:
            for table in iter_sorted(bucket_paths, []):
                found, position = _lookup(member_keys, _fixed_width(table.column("seq_hash")))
                new = np.flatnonzero(~found)
                _write_fasta(handle, pa.array(new + count), table.column("sequence").take(pa.array(new)))
                hashes.extend(table.column("seq_hash").chunks)
                families.append(np.where(found, member_family[position], -1).astype(np.int32))
                novel.append(new + count)
                count += table.num_rows
        if count == 0:
            raise InputError(f"no protein sequences to assign: the {len(bucket_paths)} bucket table(s) are empty")
        family_id = np.concatenate(families)
        searched = np.concatenate(novel)
        hits = 0
        if len(searched):
            log.info("%d of %d unique sequences are new to the vocabulary: searching them", len(searched), count)
            pa.default_memory_pool().release_unused()
            query, family = _search(work, vocab_dir, params, threads, memory_mb)
            family_id[query] = family
            hits = len(query)
    labelled = family_id >= 0
    rows = pa.array(np.where(labelled, family_id, 0))
    table = pa.table(
        [
            pa.chunked_array(hashes, pa.string()),
            _masked(ids.column("representative").take(rows), labelled),
            pa.array(family_id, pa.int32(), mask=~labelled),
            _masked(ids.column("family_size").take(rows), labelled),
            _masked(ids.column("family_sequences").take(rows), labelled),
        ],
        schema=FAMILIES_SCHEMA,
    )
    counts = {
        "sequences": count,
        "in_vocab_corpus": count - len(searched),
        "searched": len(searched),
        "assigned_by_search": hits,
        "labelled_sequences": int(np.count_nonzero(labelled)),
    }
    log.info("assignment: %s", counts)
    record = {"families": params.as_dict(), "vocab": str(vocab_dir.resolve()), "vocab_counts": manifest["counts"]}
    write_parquet(table, families_path, _metadata("families_assign", record, version))
    return counts


def _masked(values: pa.ChunkedArray, keep: np.ndarray) -> pa.Array:
    return pc.if_else(pa.array(keep), values.combine_chunks(), pa.scalar(None, values.type))


def _search(
    work: Path, vocab_dir: Path, params: FamilyParams, threads: int, memory_mb: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Search ``work/query.fasta`` against the representatives; the queries with a hit and their family."""
    query, result, hits = work / "query", work / "hits", work / "hits.tsv"
    mmseqs.run("createdb", work / "query.fasta", query, "--dbtype", 1, "--createdb-mode", 1)
    representatives = vocab_dir / "mmseqs" / "representatives"
    options = ["--threads", threads, "--remove-tmp-files", 1, *params.search_args(), *_memory_args(memory_mb)]
    mmseqs.run("search", query, representatives, result, work / "tmp", *options)
    output = ["--format-output", "query,target,bits", "--threads", threads]
    mmseqs.run("convertalis", query, representatives, result, hits, *output)
    table = pacsv.read_csv(
        hits,
        read_options=pacsv.ReadOptions(column_names=["query", "target", "bits"]),
        parse_options=pacsv.ParseOptions(delimiter="\t"),
        convert_options=pacsv.ConvertOptions(
            column_types={"query": pa.int64(), "target": pa.string(), "bits": pa.float64()}
        ),
    )
    ids = pq.read_table(vocab_dir / "ids.parquet", columns=["representative"]).column("representative")
    table = table.append_column("family_id", pc.index_in(table.column("target"), value_set=ids))
    table = table.sort_by([("query", "ascending"), ("bits", "descending"), ("family_id", "ascending")])
    query_index = table.column("query").to_numpy()
    first = np.flatnonzero(np.r_[True, query_index[1:] != query_index[:-1]]) if len(query_index) else np.zeros(0, int)
    return query_index[first], table.column("family_id").to_numpy()[first]


# ---------------------------------------------------------------------------------------------------
# Writing results, and per-genome QC


def _metadata(stage: str, params: dict[str, Any], mmseqs_version: str) -> dict[str, str]:
    metadata = provenance(stage, params, packages=("bacflow", "pyarrow", "numpy"))
    versions = json.loads(metadata["bacflow.tool_versions"])
    metadata["bacflow.tool_versions"] = canonical_json({**versions, "mmseqs": mmseqs_version})
    return metadata


def family_qc(
    protein_paths: Iterable[str | Path], genomes_path: str | Path, families_path: str | Path, out_path: str | Path
) -> pa.Table:
    """Per genome: proteins, and how many of them have a family id (labelled) or not (unlabelled).

    Genomes follow `genomes_path` (qc/genomes.parquet), quarantined ones included with zero proteins.
    Protein tables are read one at a time.
    """
    families = pq.read_table(families_path, columns=["seq_hash", "family_id"])
    labelled_keys = _fixed_width(families.filter(pc.is_valid(families.column("family_id"))).column("seq_hash"))
    counts: dict[str, tuple[int, int]] = {}
    for path in protein_paths:
        proteins = pq.read_table(path, columns=["genome_id", "seq_hash"])
        if proteins.num_rows == 0:
            continue
        found, _ = _lookup(labelled_keys, _fixed_width(proteins.column("seq_hash")))
        grouped = (
            pa.table({"genome_id": proteins.column("genome_id"), "labelled": pa.array(found.astype(np.int32))})
            .group_by("genome_id", use_threads=False)
            .aggregate([("labelled", "count"), ("labelled", "sum")])
        )
        for genome_id, total, labelled in zip(
            *(grouped.column(name).to_pylist() for name in ("genome_id", "labelled_count", "labelled_sum")),
            strict=False,
        ):
            counts[genome_id] = (total, labelled)
    genomes = pq.read_table(genomes_path, columns=["genome_id"]).column("genome_id").to_pylist()
    rows = [(genome_id, *counts.get(genome_id, (0, 0))) for genome_id in genomes]
    table = pa.table(
        [
            pa.array([row[0] for row in rows], pa.string()),
            pa.array([row[1] for row in rows], pa.int32()),
            pa.array([row[2] for row in rows], pa.int32()),
            pa.array([row[1] - row[2] for row in rows], pa.int32()),
        ],
        schema=FAMILY_QC_SCHEMA,
    )
    write_parquet(table, out_path, provenance("qc_families", {"genomes": len(rows)}))
    return table
