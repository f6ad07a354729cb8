"""The `embeddings` target of the workflow on real genomes with a tiny ESM-2: outputs in genome order,
QC, deduplication across a repeated genome, a store shared by two runs, GPU tagging, and the offline
error for a hub model that is not cached."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import yaml

from bacflow.core.tables import read_metadata
from bacflow.embeddings.tiny import build_esm2
from conftest import PYRODIGAL_DATA, SHARED_DATA, needs_shared
from workflow_helpers import REPO, SNAKEMAKE, snakemake, workflow_rules, write_sheet

pytestmark = needs_shared
CT_D_GBFF = SHARED_DATA / "genomes" / "Ctrachomatis_D-CS637-11_GCF_001183765.1.gbff.gz"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A sheet with one genome listed twice (a repeated genome) and a small MAG contig; a tiny ESM-2 in a
    local folder; a config with a store outside the results folder."""
    workdir = tmp_path_factory.mktemp("embeddings")
    rows = [
        ("Ct_D", str(CT_D_GBFF), "11", "complete"),
        ("Ct_D_again", str(CT_D_GBFF), "11", "complete"),
        ("SRR492066", str(PYRODIGAL_DATA / "SRR492066.fna.gz"), "11", "mag"),
    ]
    write_sheet(workdir / "samples.tsv", rows)
    model = build_esm2(workdir / "esm2-tiny")
    # One torch thread per bucket job: two jobs share the 2 cores (see esm_helpers on oversubscription).
    config = {
        "embeddings": {"model": str(model)},
        "embedding_store": str(workdir / "store"),
        "threads": {"embeddings": 1},
    }
    (workdir / "esm.yaml").write_text(yaml.safe_dump(config))
    return workdir


def run_args(workdir: Path, outdir: str, target: str = "embeddings") -> list[str]:
    return [
        target,
        *("--configfile", str(REPO / "config" / "config.yaml"), str(workdir / "esm.yaml")),
        *("--config", f"samples={workdir / 'samples.tsv'}", f"outdir={outdir}", "shard_size=2", "buckets=2"),
    ]


@pytest.fixture(scope="module")
def first_run(workdir: Path) -> Path:
    snakemake(workdir, *run_args(workdir, "first"))
    return workdir / "first"


def test_embeddings_end_to_end(workdir: Path, first_run: Path):
    proteins = ds.dataset(first_run / "proteins", format="parquet", partitioning="hive").to_table()
    for shard in ("00000", "00001"):
        vectors = pq.read_table(first_run / f"embeddings/esm2/shards/shard={shard}.parquet")
        source = pq.read_table(first_run / f"proteins/shard={shard}/part-0.parquet")
        assert vectors.select(["genome_id", "contig_index", "protein_index", "seq_hash"]).equals(
            source.select(["genome_id", "contig_index", "protein_index", "seq_hash"])
        )
        assert vectors.schema.field("vector").type.list_size == 48
        metadata = read_metadata(first_run / f"embeddings/esm2/shards/shard={shard}.parquet")
        assert metadata["bacflow.embedding_recipe_key"].startswith("local-")

    # Every distinct sequence of the cohort is in the store exactly once; the repeated genome added none.
    distinct = len(set(proteins.column("seq_hash").to_pylist()))
    assert distinct < proteins.num_rows
    store = pq.read_table(next((workdir / "store").glob("local-*/parts")))
    assert store.num_rows == distinct == len(set(store.column("seq_hash").to_pylist()))

    qc = pq.read_table(first_run / "qc/embeddings-esm2.parquet").to_pandas().set_index("genome_id")
    assert sorted(qc.index) == ["Ct_D", "Ct_D_again", "SRR492066"]
    assert qc.loc["Ct_D", "proteins"] == 914 and qc.loc["Ct_D", "truncated_proteins"] == 18
    assert (qc.sequences_reused == 0).all() and (qc.sequences_embedded == qc.distinct_sequences).all()

    for log in ("embed_bucket/0000", "embed_bucket/0001", "embed_gather/00000", "embed_qc"):
        log = f"embeddings/esm2/{log}"  # the encoder's own, beside another encoder's in the same outdir
        assert (first_run / "logs" / f"{log}.log").exists() and (first_run / "benchmarks" / f"{log}.tsv").exists()
    assert not list((first_run / "embeddings/esm2/buckets").glob("*/shard=*"))  # rows deleted once gathered
    assert "Nothing to be done" in snakemake(workdir, "--dry-run", *run_args(workdir, "first")).stdout


def test_a_second_run_sharing_the_store_embeds_nothing(workdir: Path, first_run: Path):
    parts = sorted((workdir / "store").glob("*/parts/*.parquet"))
    snakemake(workdir, *run_args(workdir, "second"))
    qc = pq.read_table(workdir / "second/qc/embeddings-esm2.parquet").to_pandas()
    assert (qc.sequences_embedded == 0).all() and (qc.sequences_reused == qc.distinct_sequences).all()
    assert sorted((workdir / "store").glob("*/parts/*.parquet")) == parts
    for shard in ("00000", "00001"):
        path = f"embeddings/esm2/shards/shard={shard}.parquet"
        assert pq.read_table(workdir / "second" / path).equals(pq.read_table(first_run / path))


def test_bucket_jobs_are_gpu_jobs(workdir: Path):
    rules = workflow_rules(workdir, f"samples={workdir / 'samples.tsv'}")
    assert rules["embed_bucket"]["gpu"]
    assert not any(rules[name]["gpu"] for name in ("embed_gather", "embed_qc"))


def test_uncached_hub_model_without_network_fails_before_any_job(workdir: Path, tmp_path: Path):
    (tmp_path / "hub.yaml").write_text(yaml.safe_dump({"embeddings": {"model": "facebook/esm2_t12_35M_UR50D"}}))
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}

    def dry_run(target: str) -> subprocess.CompletedProcess:
        args = run_args(workdir, str(tmp_path / "results"), target)
        args[args.index(str(workdir / "esm.yaml"))] = str(tmp_path / "hub.yaml")
        command = [*SNAKEMAKE, "--directory", str(workdir), "--dry-run", *args]
        return subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env)

    failed = dry_run("embeddings")
    assert failed.returncode != 0
    output = failed.stdout + failed.stderr
    assert "facebook/esm2_t12_35M_UR50D" in output and "local folder" in output and "HF_HUB_OFFLINE" in output
    # Targets that need no embeddings never look for the model.
    assert dry_run("proteins").returncode == 0
