"""The pretraining corpus: per genome, its protein vectors in genome order, contig indices and family labels.

Layout (the reference trainer's, ``bacformer==0.2.0`` ``run_pretraining.py``): parquet files under
``data/{train,val,test}/``, one row per genome, with

- ``protein_embeddings``: list of the genome's protein vectors (``FixedSizeList<float16|float32>``, the
  embedding store's dtype), in genome order;
- ``contig_idx``: list of int32, each protein's contig, numbered 0, 1, ... over the contigs that have proteins,
  in genome order (the numbering the reference's inference builder gives a genome's list of contigs);
- ``prot_cluster_id``: list of int32, each protein's family id, -100 when it is unlabelled; the same list again
  as ``prot_cluster_idx``, the name that the reference's ``run_pretraining`` reads by default (its data reader
  defaults to ``prot_cluster_idx``, its transform and its example data to ``prot_cluster_id``);

plus ``genome_id``, ``kind`` (``complete``, ``draft``, ``mag``: the trainer shuffles the contig order of the
last two), ``n_proteins``, ``n_contigs`` and ``n_labelled``, which the reference trainer ignores. Each genome is
its own row group, so a trainer reads one genome without reading its neighbours.

Splits are by genome (`assign_splits`): the sheet's ``split`` column where given, else a hash of the genome's
``group``, so that near-identical strains of one group never land in two splits, and a genome keeps its split
when genomes are added to the sheet.

The corpus is written one genome shard at a time (`build_corpus_shard`) from the shard's gathered protein vectors
(the embeddings stage's ``embeddings/shards/``, in genome order) and, streamed in batches, the families table.
`summarize_corpus` then checks the whole corpus (every split it needs has genomes, there are labels to learn) reading
only small columns, one file at a time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bacflow.bacformer.constants import IGNORE_INDEX
from bacflow.core.errors import InputError
from bacflow.core.freshness import check_lineage, lineage
from bacflow.core.provenance import provenance
from bacflow.core.tables import atomic_path, parquet_writer

if TYPE_CHECKING:
    from bacflow.core.samples import Sample

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
#: Label of a protein without a family (``torch.nn.functional.cross_entropy``'s ignore_index).
#: Kinds whose contig order carries no information (the trainer shuffles it every epoch).
UNORDERED_KINDS = ("draft", "mag")
_FAMILY_BATCH_ROWS = 1 << 20
_PACKAGES = ("bacflow", "pyarrow", "numpy")


def assign_splits(
    samples: Sequence[Sample], val_fraction: float, test_fraction: float, seed: int = 0
) -> dict[str, str]:
    """Each genome's split: its group's split from the sheet, else one drawn from a hash of (seed, group).

    Genomes of a group without a ``split`` in the sheet follow a groupmate that has one; groupmates with
    different splits in the sheet are an error (that is leakage). The hash makes a group's split independent of
    the sheet's order and of the other genomes, so adding genomes never moves one that was there.
    """
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise InputError(
            f"pretrain: val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be at least 0 and "
            "leave a share for training (sum below 1)"
        )
    named: dict[str, tuple[str, str]] = {}
    for sample in samples:
        if sample.split is None:
            continue
        first = named.setdefault(sample.group, (sample.split, sample.genome_id))
        if first[0] != sample.split:
            raise InputError(
                f"sample sheet: group '{sample.group}' spans two splits (genome '{first[1]}' is in '{first[0]}', "
                f"genome '{sample.genome_id}' in '{sample.split}'); a group must stay in one split"
            )
    splits = {}
    for sample in samples:
        if sample.group in named:
            splits[sample.genome_id] = named[sample.group][0]
            continue
        digest = hashlib.sha256(f"{seed}\t{sample.group}".encode()).digest()
        draw = int.from_bytes(digest[:8], "big") / 2**64
        splits[sample.genome_id] = (
            "val" if draw < val_fraction else "test" if draw < val_fraction + test_fraction else "train"
        )
    return splits


def splits_drawn(samples: Sequence[Sample]) -> bool:
    """Whether some group has no split in the sheet, so that val_fraction and test_fraction apply to it."""
    named = {sample.group for sample in samples if sample.split is not None}
    return any(sample.group not in named for sample in samples)


def required_splits(samples: Sequence[Sample], splits: Mapping[str, str], test_fraction: float) -> list[str]:
    """The splits the corpus must fill: train and val, and test where a genome is in it or groups drawn by hash
    get a test_fraction. Splits named in the sheet are taken as given: a sheet that names every group's split
    asks for no other (test_fraction, which applies only to groups without one, does not)."""
    wants_test = "test" in splits.values() or (test_fraction > 0 and splits_drawn(samples))
    return ["train", "val", *(["test"] if wants_test else [])]


def family_labels(families_path: str | Path, seq_hashes: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Family id of each hash (``IGNORE_INDEX`` where the families table says null), streaming the table.

    Memory holds the distinct query hashes and one batch of the table, never the whole table. A hash that the
    table lacks is an error: the families were made from another set of proteins.
    """
    distinct = pc.unique(seq_hashes)
    found = np.zeros(len(distinct), bool)
    labels = np.full(len(distinct), IGNORE_INDEX, np.int64)
    table = pq.ParquetFile(families_path)
    for batch in table.iter_batches(batch_size=_FAMILY_BATCH_ROWS, columns=["seq_hash", "family_id"]):
        where = pc.index_in(batch.column("seq_hash"), value_set=distinct)
        hit = pc.is_valid(where).to_numpy(zero_copy_only=False)
        if not hit.any():
            continue
        positions = where.filter(pc.is_valid(where)).to_numpy()
        family = batch.column("family_id").filter(pa.array(hit))
        found[positions] = True
        labels[positions] = pc.fill_null(family, IGNORE_INDEX).to_numpy(zero_copy_only=False)
    if not found.all():
        missing = distinct[int(np.flatnonzero(~found)[0])].as_py()
        raise InputError(
            f"{families_path}: {int((~found).sum())} protein sequences (e.g. seq_hash {missing}) have no row; the "
            "families were made from other proteins (re-run the families stage)"
        )
    return labels[pc.index_in(seq_hashes, value_set=distinct).to_numpy()]


def _vector_column(table: pa.Table, path: Path) -> str:
    names = [field.name for field in table.schema if pa.types.is_fixed_size_list(field.type)]
    if len(names) != 1:
        raise InputError(f"{path}: expected one vector column (FixedSizeList), found {names or 'none'}")
    return names[0]


def _dense_contigs(genome_starts: np.ndarray, contig_index: np.ndarray) -> np.ndarray:
    """Contig indices renumbered 0, 1, ... within each genome over the contigs that have proteins."""
    change = np.zeros(len(contig_index), np.int64)
    change[1:] = contig_index[1:] != contig_index[:-1]
    change[genome_starts] = 0
    counts = np.cumsum(change)
    return counts - np.repeat(counts[genome_starts], np.diff(np.append(genome_starts, len(contig_index))))


def corpus_rows(vectors_path: str | Path, families_path: str | Path, kinds: Mapping[str, str]) -> pa.Table:
    """One row per genome of a shard, in the corpus layout (see the module docstring).

    ``vectors_path``: the shard's gathered protein vectors (``embeddings/shards/``: ``genome_id``,
    ``contig_index``, ``protein_index``, ``seq_hash`` and one vector column, one row per protein in genome order).
    """
    vectors_path = Path(vectors_path)
    vectors = pq.read_table(vectors_path)
    vector_column = _vector_column(vectors, vectors_path)
    proteins = vectors.select(["genome_id", "contig_index", "protein_index", "seq_hash"])
    labels = family_labels(families_path, proteins.column("seq_hash"))

    genome_ids = proteins.column("genome_id").to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(np.append(True, genome_ids[1:] != genome_ids[:-1])[: len(genome_ids)])
    genomes = genome_ids[starts]
    if len(set(genomes)) != len(genomes):
        raise InputError(f"{vectors_path}: a genome's proteins are not contiguous (the table is not in genome order)")
    unknown = sorted(set(genomes) - set(kinds))
    if unknown:
        raise InputError(f"{vectors_path}: genome '{unknown[0]}' is not in the sample sheet")
    ends = np.append(starts[1:], len(genome_ids)).astype(np.int64)
    expected_index = np.arange(len(genome_ids)) - np.repeat(starts, ends - starts)
    if not np.array_equal(proteins.column("protein_index").to_numpy(), expected_index):
        raise InputError(
            f"{vectors_path}: proteins are not in genome order (protein_index is not 0, 1, ... per genome)"
        )
    contigs = _dense_contigs(starts, proteins.column("contig_index").to_numpy())
    labelled_before = np.append(0, np.cumsum(labels != IGNORE_INDEX))
    offsets = pa.array(np.append(starts, len(genome_ids)), pa.int32())
    family_ids = pa.ListArray.from_arrays(offsets, pa.array(labels, pa.int32()))
    return pa.table(
        {
            "genome_id": pa.array(genomes, pa.string()),
            "kind": pa.array([kinds[genome] for genome in genomes], pa.string()),
            "protein_embeddings": pa.ListArray.from_arrays(offsets, vectors.column(vector_column).combine_chunks()),
            "contig_idx": pa.ListArray.from_arrays(offsets, pa.array(contigs, pa.int32())),
            "prot_cluster_id": family_ids,
            "prot_cluster_idx": family_ids,
            "n_proteins": pa.array(ends - starts, pa.int32()),
            "n_contigs": pa.array(contigs[ends - 1] + 1, pa.int32()),
            "n_labelled": pa.array(labelled_before[ends] - labelled_before[starts], pa.int32()),
        }
    )


def build_corpus_shard(
    vectors_path: str | Path,
    families_path: str | Path,
    members: Iterable[Mapping[str, Any]],
    outputs: Mapping[str, str | Path],
    proteins_path: str | Path | None = None,
    job_identity: str | None = None,
) -> dict[str, int]:
    """Write one protein shard's genomes to their splits' files (``outputs``: split → path; every split gets a
    file, possibly without rows). ``members``: the shard's sheet rows with their ``split`` already assigned.
    With `proteins_path` (the shard's protein table), the vectors must have been gathered from its current rows.
    Returns the number of genomes per split."""
    members = list(members)
    if proteins_path is not None:
        check_lineage([vectors_path], [proteins_path])
    split_of = {member["genome_id"]: member["split"] for member in members}
    rows = corpus_rows(vectors_path, families_path, {m["genome_id"]: m["kind"] for m in members})
    splits = pa.array([split_of[genome] for genome in rows.column("genome_id").to_pylist()], pa.string())
    metadata = {
        **provenance("pretrain_corpus", {"members": members}, _PACKAGES),
        **lineage(proteins_path, job_identity),
    }
    counts = {}
    for split in SPLITS:
        part = rows.filter(pc.equal(splits, split))
        # A split without genomes of this shard gets a file without row groups: an empty row group stops the
        # reference's reader (``datasets`` sizes its batches by a file's first row group).
        with parquet_writer(outputs[split], rows.schema, metadata) as writer:
            if part.num_rows:
                writer.write_table(part, row_group_size=1)
        counts[split] = part.num_rows
    log.info("%s: genomes per split %s", vectors_path, counts)
    return counts


def summarize_corpus(
    parts: Mapping[str, Sequence[str | Path]],
    vocab_size: int,
    required: Sequence[str],
    drawn: bool,
    out_path: str | Path,
) -> dict[str, Any]:
    """Check the corpus and write its summary (JSON): genomes, proteins and labels per split, the vector size,
    and the most frequent family of the training split with its share of the validation labels (the accuracy
    of always predicting it). Reads the small columns, one file at a time.

    `required`: the splits that must have genomes (`required_splits`); `drawn`: whether the fractions apply
    to some group (`splits_drawn`), and so can fill an empty split.
    """
    summary: dict[str, Any] = {"vocab_size": vocab_size, "splits": {}}
    train_families: Counter[int] = Counter()
    val_families: Counter[int] = Counter()
    for split in SPLITS:
        # Relative to the summary's folder, so that the corpus can move as a whole.
        files = [os.path.relpath(path, Path(out_path).parent) for path in parts[split]]
        totals = {"genomes": 0, "proteins": 0, "labelled": 0, "files": files}
        for path in parts[split]:
            schema = pq.read_schema(path)
            vector_type = schema.field("protein_embeddings").type.value_type
            summary["embedding_dim"] = vector_type.list_size
            # numpy's name ("float32"), not Arrow's ("float").
            summary["embedding_dtype"] = np.dtype(vector_type.value_type.to_pandas_dtype()).name
            table = pq.read_table(path, columns=["n_proteins", "n_labelled", "prot_cluster_id"])
            totals["genomes"] += table.num_rows
            totals["proteins"] += int(pc.sum(table.column("n_proteins")).as_py() or 0)
            totals["labelled"] += int(pc.sum(table.column("n_labelled")).as_py() or 0)
            ids = pc.list_flatten(table.column("prot_cluster_id")).to_numpy()
            ids = ids[ids != IGNORE_INDEX]
            if len(ids) and ids.max() >= vocab_size:
                raise InputError(f"{path}: family id {int(ids.max())} is outside the vocabulary of {vocab_size}")
            if split in ("train", "val"):
                values, counts = np.unique(ids, return_counts=True)
                (train_families if split == "train" else val_families).update(
                    dict(zip(values.tolist(), counts.tolist(), strict=False))
                )
        summary["splits"][split] = totals
    for split in required:
        if summary["splits"][split]["genomes"] == 0:
            fractions = f"raise pretrain.{split}_fraction"
            if split == "train":
                fractions = "lower pretrain.val_fraction / pretrain.test_fraction"
            raise InputError(
                f"pretraining corpus: the {split} split has no genomes; name it in the sample sheet's split column for "
                f"some groups{f', or {fractions}' if drawn else ''}"
            )
    for split in ("train", "val"):
        if summary["splits"][split]["labelled"] == 0:
            raise InputError(
                f"pretraining corpus: no protein of the {split} split has a family label, so there is nothing to "
                "learn or measure; check families/ (its vocabulary may be empty or from another cohort)"
            )
    majority, _ = train_families.most_common(1)[0]
    summary["majority_family"] = int(majority)
    summary["majority_val_share"] = val_families[majority] / summary["splits"]["val"]["labelled"]
    with atomic_path(out_path) as temporary:
        temporary.write_text(json.dumps(summary, indent=1) + "\n")
    return summary
