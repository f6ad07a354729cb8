"""The `families` target on the real C. trachomatis cohort: clustering with a vocabulary, per-genome QC,
assignment of new genomes to the frozen vocabulary, and a bad vocabulary refused before any job."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import yaml

from bacflow.core.tables import read_metadata
from conftest import SHARED_DATA, needs_mmseqs, needs_shared
from workflow_helpers import planned_jobs, snakemake, write_sheet

COHORT = SHARED_DATA / "cohort"
# Three strains make the vocabulary (their GenBank CDS); two more strains, one strain of the three, and
# two genomes of other phyla (gene-called FASTA) are assigned to it.
VOCAB_GENOMES = [
    ("Ct_E-150", "Ctrachomatis_E-150_GCF_000092665.1.gbff.gz"),
    ("Ct_G-9768", "Ctrachomatis_G-9768_GCF_000092685.1.gbff.gz"),
    ("Ct_L2c", "Ctrachomatis_L2c_GCF_000220105.1.gbff.gz"),
]
NEW_STRAINS = [
    ("Ct_Sweden2", "Ctrachomatis_Sweden2_GCF_000210495.1.gbff.gz"),
    ("Ct_A-5291", "Ctrachomatis_A-5291_GCF_000318545.1.gbff.gz"),
]
OTHER_PHYLA = [
    ("Saureus_COL", "Saureus_COL_NC_002951.2.fna.gz"),
    ("Hpylori_SJM180", "Hpylori_SJM180_NC_014560.1.fna.gz"),
]
# Fewer than the ~1,000 clusters of three strains, so that strain-specific clusters stay unlabelled.
VOCAB_SIZE = 700

pytestmark = [
    needs_shared,
    needs_mmseqs,
]


def setup_run(workdir: Path, genomes: list[tuple[str, str]], **families) -> list[str]:
    """A sheet and a config file in `workdir`; returns the Snakemake arguments that use them."""
    workdir.mkdir(parents=True, exist_ok=True)
    write_sheet(workdir / "samples.tsv", [(name, str(COHORT / file), "11", "complete") for name, file in genomes])
    config = {
        "samples": str(workdir / "samples.tsv"),
        "outdir": "results",
        "shard_size": 2,
        "threads": {"families": 2},
        "families": {"vocab_size": VOCAB_SIZE, **families},
    }
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    return ["--configfile", str(workdir / "config.yaml")]


def proteins_with_families(results: Path) -> pd.DataFrame:
    proteins = ds.dataset(results / "proteins", format="parquet", partitioning="hive").to_table(
        columns=["genome_id", "seq_hash"]
    )
    families = pq.read_table(results / "families" / "families.parquet").to_pandas()
    table = proteins.to_pandas().merge(families, on="seq_hash", how="left", validate="many_to_one")
    assert table.representative.notna().any()
    return table


@pytest.fixture(scope="module")
def vocab_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("vocab_run")
    snakemake(workdir, "families", *setup_run(workdir, VOCAB_GENOMES))
    return workdir


def test_families_span_strains_and_ids_follow_size(vocab_run: Path):
    results = vocab_run / "results"
    table = proteins_with_families(results)
    assert len(table) == table.seq_hash.notna().sum() and table.family_size.notna().all()

    # Identical sequences share one row, hence one family (about 400 are in two or three strains).
    genomes_per_sequence = table.groupby("seq_hash").genome_id.nunique()
    assert (genomes_per_sequence >= 2).sum() > 300
    # The same gene in different strains, with different sequences, lands in one family: 768 of the
    # 919 clusters hold two or more sequences found in all three strains.
    per_family = table.groupby("representative").agg(
        genomes=("genome_id", "nunique"), sequences=("seq_hash", "nunique")
    )
    assert ((per_family.genomes == 3) & (per_family.sequences >= 2)).sum() > 700
    labelled = table[table.family_id.notna()]
    assert (labelled.groupby("family_id").genome_id.nunique() == 3).all()

    ids = pq.read_table(results / "families" / "vocab" / "ids.parquet").to_pandas()
    assert ids.family_id.tolist() == list(range(VOCAB_SIZE))
    assert ids.family_size.is_monotonic_decreasing
    assert sorted(labelled.family_id.unique().astype(int)) == list(range(VOCAB_SIZE))
    assert table.family_id.isna().any(), "clusters beyond the vocabulary are unlabelled"

    qc = pq.read_table(results / "qc" / "families.parquet").to_pandas().set_index("genome_id")
    genomes = pq.read_table(results / "qc" / "genomes.parquet").to_pandas().set_index("genome_id")
    assert list(qc.index) == list(genomes.index)
    assert (qc.proteins == genomes.proteins).all() and (qc.labelled + qc.unlabelled == qc.proteins).all()
    assert (qc.labelled / qc.proteins > 0.7).all() and qc.unlabelled.sum() > 0
    assert qc.labelled.to_dict() == labelled.groupby("genome_id").size().to_dict()

    metadata = read_metadata(results / "families" / "families.parquet")
    assert "mmseqs" in metadata["bacflow.tool_versions"] and '"vocab_size":700' in metadata["bacflow.params"]
    for name in ("logs/families_cluster.log", "benchmarks/families_cluster.tsv", "logs/families_qc.log"):
        assert (results / name).exists(), name
    assert (
        "Nothing to be done"
        in snakemake(vocab_run, "families", "--dry-run", "--configfile", str(vocab_run / "config.yaml")).stdout
    )

    # Reproducible: clustering again gives the same bytes.
    before = (results / "families" / "families.parquet").read_bytes()
    snakemake(vocab_run, "families", "--forcerun", "families_cluster", "--configfile", str(vocab_run / "config.yaml"))
    assert (results / "families" / "families.parquet").read_bytes() == before


def test_new_genomes_are_assigned_to_the_frozen_vocabulary(vocab_run: Path, tmp_path: Path):
    vocab = vocab_run / "results" / "families" / "vocab"
    args = setup_run(tmp_path, VOCAB_GENOMES[:1] + NEW_STRAINS + OTHER_PHYLA, vocab=str(vocab))
    jobs = planned_jobs(tmp_path, "families", *args)
    assert jobs.get("families_assign") == 1 and "families_cluster" not in jobs
    snakemake(tmp_path, "families", *args)
    results = tmp_path / "results"
    assert not (results / "families" / "vocab").exists()

    # Every sequence of the vocabulary's corpus keeps its family there, labelled or not.
    members = pq.read_table(vocab / "members.parquet").to_pandas().set_index("seq_hash").family_id
    assigned = pq.read_table(results / "families" / "families.parquet").to_pandas().set_index("seq_hash").family_id
    shared = assigned.index.intersection(members.index)
    assert len(shared) > 1000
    assert assigned[shared].fillna(-100).astype(int).equals(members[shared].fillna(-100).astype(int))

    qc = pq.read_table(results / "qc" / "families.parquet").to_pandas().set_index("genome_id")
    share = qc.labelled / qc.proteins
    assert share["Ct_E-150"] > 0.7
    for strain, _ in NEW_STRAINS:
        assert share[strain] > share["Ct_E-150"] - 0.05, share
    for genome, _ in OTHER_PHYLA:
        assert qc.proteins[genome] > 1000 and share[genome] < 0.1, share
    assert read_metadata(results / "families" / "families.parquet")["bacflow.stage"] == "families_assign"


def test_bad_vocab_fails_before_any_job(vocab_run: Path, tmp_path: Path):
    missing = snakemake(
        tmp_path, "families", *setup_run(tmp_path, VOCAB_GENOMES[:1], vocab=str(tmp_path / "nope")), check=False
    )
    assert missing.returncode != 0 and f"families.vocab: {tmp_path / 'nope'} does not exist" in missing.stderr
    vocab = vocab_run / "results" / "families" / "vocab"
    other = snakemake(
        tmp_path, "families", *setup_run(tmp_path, VOCAB_GENOMES[:1], vocab=str(vocab), min_seq_id=0.6), check=False
    )
    assert other.returncode != 0
    assert "was built with other parameters (min_seq_id: 0.5 there, 0.6 here)" in other.stderr
    assert not (tmp_path / "results").exists()
