"""Protein families (bacflow.families.stage) on real sequences: equality with plain MMseqs2, the vocabulary,
reproducibility, assignment to a frozen vocabulary, per-genome QC, and bad input."""

from __future__ import annotations

import filecmp
import gzip
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bacflow.core.errors import InputError
from bacflow.core.seqhash import PROTEIN_LETTERS, seq_hash
from bacflow.core.tables import read_metadata
from bacflow.families import mmseqs
from bacflow.families.stage import (
    FAMILY_QC_SCHEMA,
    FamilyParams,
    assign_families,
    build_families,
    check_vocab,
    family_qc,
    iter_sorted,
)
from bacflow.proteins.unique import UNIQUE_SCHEMA, sequence_buckets
from conftest import SHARED_DATA, needs_mmseqs, needs_shared

MMSEQS_EXAMPLE = SHARED_DATA / "mmseqs2" / "DB.fasta.gz"


def read_protein_fasta(path: Path) -> list[str]:
    with gzip.open(path, "rt") as handle:
        blocks = handle.read().lstrip(">").split("\n>")
    return ["".join(block.partition("\n")[2].split()) for block in blocks]


def write_raw_bucket(path: Path, sequences: list[str]) -> list[Path]:
    """A bucket table written directly, bypassing normalisation (for malformed input)."""
    rows = sorted((seq_hash(sequence), sequence) for sequence in sequences)
    table = pa.table(
        [
            pa.array([row[0] for row in rows]),
            pa.array([row[1] for row in rows]),
            pa.array([len(row[1]) for row in rows], pa.int32()),
            pa.array([1] * len(rows), pa.int64()),
        ],
        schema=UNIQUE_SCHEMA,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return [path]


def families_of(path: Path) -> dict[str, dict]:
    return {row["seq_hash"]: row for row in pq.read_table(path).to_pylist()}


def plain_mmseqs_clusters(workdir: Path, buckets: list[Path], module: str, *args: str) -> dict[str, str]:
    """member seq_hash -> representative seq_hash from `mmseqs easy-<module>` on the same sequences in
    the order bacflow gives them (ascending seq_hash), named by seq_hash."""
    fasta = workdir / "plain.fasta"
    with open(fasta, "w") as handle:
        for table in iter_sorted(buckets, []):
            for hash_, sequence in zip(
                table.column("seq_hash").to_pylist(), table.column("sequence").to_pylist(), strict=False
            ):
                handle.write(f">{hash_}\n{sequence}\n")
    subprocess.run(
        ["mmseqs", f"easy-{module}", fasta, workdir / "plain", workdir / "plain_tmp", "--threads", "2", *args],
        check=True,
        capture_output=True,
    )
    pairs = (line.split("\t") for line in (workdir / "plain_cluster.tsv").read_text().splitlines())
    return {member: representative for representative, member in pairs}


@pytest.fixture(scope="module")
def example_buckets(tmp_path_factory) -> list[Path]:
    if not MMSEQS_EXAMPLE.is_file():
        pytest.skip(f"{MMSEQS_EXAMPLE} is absent")
    return sequence_buckets(read_protein_fasta(MMSEQS_EXAMPLE), tmp_path_factory.mktemp("example"), 8)


@pytest.fixture(scope="module")
def example_families(example_buckets, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("example_families")
    build_families(example_buckets, out / "families.parquet", out / "vocab", FamilyParams(), threads=2)
    return out


@needs_shared
@needs_mmseqs
def test_linclust_families_equal_plain_easy_linclust(example_buckets, example_families, tmp_path):
    ours = {hash_: row["representative"] for hash_, row in families_of(example_families / "families.parquet").items()}
    assert len(ours) == 18801  # 20,000 proteins, 18,801 distinct sequences
    plain = plain_mmseqs_clusters(
        tmp_path, example_buckets, "linclust", "--min-seq-id", "0.5", "-c", "0.8", "--cov-mode", "1"
    )
    assert ours == plain


@needs_shared
@needs_mmseqs
def test_cluster_method_equals_plain_easy_cluster(tmp_path):
    sequences = read_protein_fasta(MMSEQS_EXAMPLE)[:1000]
    buckets = sequence_buckets(sequences, tmp_path / "buckets", 4)
    params = FamilyParams(method="cluster", min_seq_id=0.3, coverage=0.8, cov_mode=0, sensitivity=4.0)
    build_families(buckets, tmp_path / "families.parquet", tmp_path / "vocab", params, threads=2)
    ours = {hash_: row["representative"] for hash_, row in families_of(tmp_path / "families.parquet").items()}
    plain = plain_mmseqs_clusters(
        tmp_path, buckets, "cluster", "--min-seq-id", "0.3", "-c", "0.8", "--cov-mode", "0", "-s", "4.0"
    )
    assert ours == plain
    assert len(set(ours.values())) < len(ours)


@needs_shared
@needs_mmseqs
def test_vocabulary_ids_are_dense_ordered_by_size_and_complete(example_families):
    families = pq.read_table(example_families / "families.parquet")
    assert families.column("seq_hash").to_pylist() == sorted(families.column("seq_hash").to_pylist())
    ids = pq.read_table(example_families / "vocab" / "ids.parquet").to_pandas()
    assert ids.family_id.tolist() == list(range(len(ids)))
    assert (ids.family_size.diff().dropna() <= 0).all()
    ties = ids.groupby("family_size").representative.apply(lambda reps: reps.is_monotonic_increasing)
    assert ties.all(), "equal sizes are ordered by representative seq_hash"
    table = families.to_pandas()
    # every family is the cluster of its representative; its size is the proteins carrying its sequences
    assert set(ids.representative) == set(table.representative)
    sizes = table.groupby("representative").family_size.first()
    assert (sizes[ids.representative].to_numpy() == ids.family_size.to_numpy()).all()
    assert ids.family_size.sum() == 20000 and ids.family_sequences.sum() == 18801
    vocab = example_families / "vocab"
    assert check_vocab(vocab, FamilyParams())["mmseqs_version"] == mmseqs.version()
    assert "mmseqs" in read_metadata(example_families / "families.parquet")["bacflow.tool_versions"]
    header = (vocab / "representatives.fasta").read_text().split("\n", 1)[0]
    assert header == f">{ids.representative[0]} family_id=0"


@needs_shared
@needs_mmseqs
def test_only_the_largest_families_are_labelled(example_buckets, tmp_path):
    build_families(example_buckets, tmp_path / "families.parquet", tmp_path / "vocab", FamilyParams(vocab_size=100))
    table = pq.read_table(tmp_path / "families.parquet").to_pandas()
    labelled = table[table.family_id.notna()]
    assert sorted(labelled.family_id.unique()) == list(range(100))
    smallest_labelled = labelled.family_size.min()
    assert (table[table.family_id.isna()].family_size <= smallest_labelled).all()
    assert table.representative.notna().all()  # unlabelled sequences still name their cluster
    assert (
        pq.read_table(tmp_path / "vocab" / "members.parquet").column("family_id").null_count
        == table.family_id.isna().sum()
    )


@needs_shared
@needs_mmseqs
def test_two_runs_are_byte_identical_whatever_the_threads_and_buckets(example_buckets, example_families, tmp_path):
    sequences = read_protein_fasta(MMSEQS_EXAMPLE)
    rebucketed = sequence_buckets(sequences, tmp_path / "buckets", 3)
    build_families(rebucketed, tmp_path / "families.parquet", tmp_path / "vocab", FamilyParams(), threads=1)
    assert (tmp_path / "families.parquet").read_bytes() == (example_families / "families.parquet").read_bytes()
    comparison = filecmp.dircmp(tmp_path / "vocab", example_families / "vocab")
    files = [path.relative_to(tmp_path / "vocab") for path in (tmp_path / "vocab").rglob("*") if path.is_file()]
    assert len(files) >= 10
    for name in files:
        assert (tmp_path / "vocab" / name).read_bytes() == (example_families / "vocab" / name).read_bytes(), name
    assert not comparison.left_only and not comparison.right_only


@needs_shared
@needs_mmseqs
def test_assignment_keeps_the_corpus_families_and_searches_new_sequences(tmp_path):
    sequences = read_protein_fasta(MMSEQS_EXAMPLE)
    # The vocabulary of 10,000 proteins; then 12,000 to assign, the first 10,000 of them already seen.
    corpus = sequence_buckets(sequences[:10000], tmp_path / "corpus", 4)
    build_families(corpus, tmp_path / "corpus.parquet", tmp_path / "vocab", FamilyParams(), threads=2)
    cohort = sequence_buckets(sequences[:12000], tmp_path / "cohort", 3)
    counts = assign_families(cohort, tmp_path / "vocab", tmp_path / "assigned.parquet", FamilyParams(), threads=2)

    original = families_of(tmp_path / "corpus.parquet")
    assigned = families_of(tmp_path / "assigned.parquet")
    assert len(assigned) == len(set(sequences[:12000]))
    for hash_, row in original.items():
        assert assigned[hash_]["family_id"] == row["family_id"]
    new = [hash_ for hash_ in assigned if hash_ not in original]
    assert counts["searched"] == len(new) and counts["in_vocab_corpus"] == len(original)
    labelled_new = [assigned[hash_] for hash_ in new if assigned[hash_]["family_id"] is not None]
    assert counts["assigned_by_search"] == len(labelled_new) > 0
    ids = pq.read_table(tmp_path / "vocab" / "ids.parquet").to_pandas().set_index("family_id")
    for row in labelled_new:
        assert row["representative"] == ids.representative[row["family_id"]]
        assert row["family_size"] == ids.family_size[row["family_id"]]
    unlabelled = [assigned[hash_] for hash_ in new if assigned[hash_]["family_id"] is None]
    assert unlabelled and all(row["representative"] is None for row in unlabelled)
    assert read_metadata(tmp_path / "assigned.parquet")["bacflow.stage"] == "families_assign"


@needs_mmseqs
def test_vocab_that_does_not_exist_or_differs_is_refused(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        check_vocab(tmp_path / "nope", FamilyParams())
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a bacflow vocabulary: vocab.json"):
        check_vocab(tmp_path / "empty", FamilyParams())
    buckets = sequence_buckets(["MKVLAAGIVALLLAAGCSSK", "MSTNPKPQRKTKRNTNRRPQDVKFPGG"], tmp_path / "buckets", 4)
    build_families(buckets, tmp_path / "families.parquet", tmp_path / "vocab", FamilyParams())
    with pytest.raises(InputError, match=r"other parameters \(min_seq_id: 0.5 there, 0.9 here\)"):
        assign_families(buckets, tmp_path / "vocab", tmp_path / "assigned.parquet", FamilyParams(min_seq_id=0.9))
    assert not (tmp_path / "assigned.parquet").exists()


@needs_mmseqs
def test_single_sequence_and_x_are_families(tmp_path):
    protein = "MSKGEELFTGVVPILVELDGDVNGHKFSVSGEGEGDATYGKLTLKFICTTGKLPVPWPTLVTTFSYGVQCFSRYPDHMKQHDFFKSAMPEGYVQERT"
    build_families(
        sequence_buckets([protein], tmp_path / "one", 4),
        tmp_path / "one.parquet",
        tmp_path / "one_vocab",
        FamilyParams(),
    )
    (row,) = families_of(tmp_path / "one.parquet").values()
    assert row["family_id"] == 0 and row["representative"] == row["seq_hash"] and row["family_size"] == 1
    # NCBI translations hold X for ambiguous codons: such a sequence joins its family like any other.
    with_x = protein[:30] + "X" + protein[31:60] + "XX" + protein[62:]
    buckets = sequence_buckets([protein, protein, with_x], tmp_path / "x", 4)
    build_families(buckets, tmp_path / "x.parquet", tmp_path / "x_vocab", FamilyParams())
    rows = families_of(tmp_path / "x.parquet")
    assert {row["family_id"] for row in rows.values()} == {0}
    assert rows[seq_hash(protein)]["family_size"] == 3


@needs_mmseqs
def test_every_protein_letter_is_accepted(tmp_path):
    """The proteins stage stores only PROTEIN_LETTERS: the families job takes every one of them."""
    protein = "MSKGEELFTGVVPILVELDGDVNGHKFSVSGEGEGDATYGKLTLKFICTTGKLPVPWPTLVTTFSYGVQCFSRYPDHMKQHDFFKSAMPEGYVQERT"
    buckets = sequence_buckets([protein + PROTEIN_LETTERS], tmp_path / "buckets", 4)
    build_families(buckets, tmp_path / "families.parquet", tmp_path / "vocab", FamilyParams())
    (row,) = families_of(tmp_path / "families.parquet").values()
    assert row["family_id"] == 0


@needs_mmseqs
@pytest.mark.parametrize(
    ("sequence", "message"),
    [
        ("MKVLAA*GIVALL", "stop '\\*' at position 7"),
        ("MKVLAAgivall", "not upper case \\('g' at position 7\\)"),
        ("MKVLAA1GIVALL", "'1' at position 7, which is not one of bacflow's protein letters"),
        ("MKVLAAJGIVALL", "'J' at position 7, which is not one of bacflow's protein letters"),
        ("", "the sequence is empty"),
    ],
)
def test_malformed_sequences_fail_clearly_without_output(tmp_path, sequence, message):
    bucket = tmp_path / "unique" / "bucket=0000.parquet"
    buckets = write_raw_bucket(bucket, ["MSTNPKPQRKTKRNTNRRPQDVKFPGG", sequence])
    out = tmp_path / "families"
    with pytest.raises(InputError, match=f"{bucket}, seq_hash {seq_hash(sequence)}: .*{message}"):
        build_families(buckets, out / "families.parquet", out / "vocab", FamilyParams())
    assert not out.exists() or not any(out.iterdir())


@needs_mmseqs
def test_empty_corpus_and_shared_hashes_fail_clearly(tmp_path):
    empty = write_raw_bucket(tmp_path / "empty" / "bucket=0000.parquet", [])
    out = tmp_path / "out"
    with pytest.raises(InputError, match="no protein sequences to cluster"):
        build_families(empty, out / "families.parquet", out / "vocab", FamilyParams())
    buckets = sequence_buckets(["MKVLAAGIVALLLAAGCSSK"], tmp_path / "corpus", 4)
    build_families(buckets, tmp_path / "families.parquet", tmp_path / "vocab", FamilyParams())
    with pytest.raises(InputError, match="no protein sequences to assign"):
        assign_families(empty, tmp_path / "vocab", out / "assigned.parquet", FamilyParams())
    twice = [
        *write_raw_bucket(tmp_path / "a" / "bucket=0000.parquet", ["MKVLAAGIVALL"]),
        *write_raw_bucket(tmp_path / "b" / "bucket=0001.parquet", ["MKVLAAGIVALL"]),
    ]
    with pytest.raises(InputError, match="share a seq_hash"):
        build_families(twice, out / "families.parquet", out / "vocab", FamilyParams())
    assert not out.exists() or not any(out.iterdir())


def test_missing_mmseqs_is_one_clear_error(tmp_path, monkeypatch):
    buckets = sequence_buckets(["MKVLAAGIVALLLAAGCSSK"], tmp_path / "buckets", 4)
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    with pytest.raises(mmseqs.MmseqsError, match="no 'mmseqs' program on PATH.*make system-deps"):
        build_families(buckets, tmp_path / "out" / "families.parquet", tmp_path / "out" / "vocab", FamilyParams())
    assert not (tmp_path / "out").exists()


def test_family_qc_counts_labelled_proteins_per_genome(tmp_path):
    a, b, c = "MKVLAAGIVALLLAAGCSSK", "MSTNPKPQRKTKRNTNRRPQDVKFPGG", "MDEKTLLALAGLLLSGCAQQ"
    family_ids = sorted([(seq_hash(a), 0), (seq_hash(b), 1), (seq_hash(c), None)])
    families = pa.table(
        {
            "seq_hash": [hash_ for hash_, _ in family_ids],
            "family_id": pa.array([family for _, family in family_ids], pa.int32()),
        }
    )
    pq.write_table(families, tmp_path / "families.parquet")
    shard = pa.table({"genome_id": ["g1", "g1", "g1", "g2"], "seq_hash": [seq_hash(s) for s in (a, a, c, b)]})
    pq.write_table(shard, tmp_path / "part-0.parquet")
    pq.write_table(pa.table({"genome_id": ["g1", "quarantined", "g2"]}), tmp_path / "genomes.parquet")
    table = family_qc(
        [tmp_path / "part-0.parquet"],
        tmp_path / "genomes.parquet",
        tmp_path / "families.parquet",
        tmp_path / "qc.parquet",
    )
    assert table.schema == FAMILY_QC_SCHEMA
    assert pq.read_table(tmp_path / "qc.parquet").to_pylist() == [
        {"genome_id": "g1", "proteins": 3, "labelled": 2, "unlabelled": 1},
        {"genome_id": "quarantined", "proteins": 0, "labelled": 0, "unlabelled": 0},
        {"genome_id": "g2", "proteins": 1, "labelled": 1, "unlabelled": 0},
    ]
