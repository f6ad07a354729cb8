"""Bacformer Large through the workflow, on two real C. trachomatis genomes (the 3-contig 114V1 draft and a complete
strain) with a tiny random ESM-C and a tiny random Bacformer Large:

- `snakemake bacformer pretrain` embeds the proteins with ESM-C (their own folder and store key), runs the Large
  shard jobs and pretrains a Large; the contextual vectors equal the reference's own Large input builder and
  forward on the same ESM-C vectors (bacformer 0.2.0 in its own environment);
- then the base family runs in the same outdir: proteins and families are shared (not re-run), each family keeps
  its vectors and results (the report names both, each with its encoder), and going back to Large has nothing to do.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from bacflow import report
from bacflow.bacformer.model import load_bacformer
from bacflow.embeddings.recipe import RECIPE
from bacformer_helpers import run_reference
from conftest import CT_114V1_FASTA, SHARED_DATA, needs_mmseqs, needs_shared
from workflow_helpers import planned_jobs, snakemake

pytestmark = [
    needs_shared,
    pytest.mark.slow,
    needs_mmseqs,
]
COMPLETE = SHARED_DATA / "genomes" / "Ctrachomatis_D-CS637-11_GCF_001183765.1.fna.gz"
LARGE = {
    "embeddings": {"tiny_model": True, "max_length": 256},
    "bacformer": {"tiny_model": "large"},
    "pretrain": {
        "run": "large",
        "model": {"num_hidden_layers": 2, "num_attention_heads": 2},
        "batch_size": 1,
        "gradient_accumulation_steps": 1,
        "max_steps": 4,
        "warmup": 1,
        "eval_steps": 2,
        "save_steps": 2,
        "logging_steps": 1,
        "dataloader_workers": 0,
        "gpus": 0,
    },
}


def config_file(workdir: Path, name: str, overrides: dict) -> str:
    config = {
        "samples": str(workdir / "samples.tsv"),
        "outdir": "results",
        "shard_size": 1,
        "buckets": 1,
        "threads": {"proteins": 1, "families": 2, "embeddings": 2, "bacformer": 2},
        "families": {"vocab_size": 500},
        **overrides,
    }
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("large")
    (workdir / "samples.tsv").write_text(
        f"genome_id\tpath\tkind\tsplit\nct114\t{CT_114V1_FASTA}\tdraft\tval\nctD\t{COMPLETE}\tcomplete\ttrain\n"
    )
    snakemake(workdir, "bacformer", "pretrain", "--configfile", config_file(workdir, "large", LARGE))
    return workdir


def shard_table(folder: Path) -> dict[str, np.ndarray]:
    """Vectors per genome of a folder of shards, in genome order."""
    table = pq.read_table(folder).sort_by([("genome_id", "ascending"), ("protein_index", "ascending")])
    vectors = np.stack(table.column("vector").to_numpy(zero_copy_only=False))
    genomes = np.array(table.column("genome_id").to_pylist())
    return {genome: vectors[genomes == genome] for genome in np.unique(genomes)}


def test_large_outputs_equal_the_references_builder_and_forward(workdir: Path, reference_python: Path):
    results = workdir / "results"
    esmc = results / "embeddings" / "esmc" / "shards"
    recipe = json.loads(pq.read_schema(esmc / "shard=00000.parquet").metadata[RECIPE.encode()])
    assert recipe["encoder"] == "esmc" and recipe["model"] == "local:esmc-tiny"
    proteins = pq.read_table(esmc).sort_by([("genome_id", "ascending"), ("protein_index", "ascending")])
    ours = shard_table(results / "bacformer" / "tiny-random-large" / "proteins")
    genomes = {
        row["genome_id"]: row
        for row in pq.read_table(results / "bacformer" / "tiny-random-large" / "genomes.parquet").to_pylist()
    }
    model = results / "models" / "bacformer-large-tiny"
    assert type(load_bacformer(model, torch.device("cpu"), torch.float32)).__name__ == "BacformerLargeModel"

    jobs = []
    for genome in ("ct114", "ctD"):
        mask = np.array(proteins.column("genome_id").to_pylist()) == genome
        vectors = np.stack(proteins.column("vector").to_numpy(zero_copy_only=False))[mask]
        contigs = np.array(proteins.column("contig_index").to_pylist())[mask]
        # The reference takes a genome as a list of contigs, each a list of protein vectors.
        genome_contigs = [list(vectors[contigs == contig]) for contig in np.unique(contigs)]
        jobs.append({"kind": "large_inputs", "name": genome, "genomes": [(genome_contigs, {"max_n_proteins": 6000})]})
    inputs = run_reference(reference_python, jobs, workdir)
    forward = [
        {
            "kind": "forward",
            "name": genome,
            "model": "BacformerLargeModel",
            "folder": str(model),
            "inputs": inputs[genome],
        }
        for genome in ("ct114", "ctD")
    ]
    reference = run_reference(reference_python, forward, workdir)
    assert genomes["ct114"]["contigs"] == 3
    for genome in ("ct114", "ctD"):
        expected = reference[genome]["outputs"][0]["last_hidden_state"][0].numpy()
        assert ours[genome].shape == expected.shape and genomes[genome]["proteins_embedded"] == len(expected)
        assert np.abs(ours[genome] - expected).max() <= 1e-4, genome
        assert np.abs(np.array(genomes[genome]["embedding"]) - expected.mean(0)).max() <= 1e-4, genome


def test_pretraining_trains_a_large_on_the_esmc_vectors(workdir: Path):
    folder = workdir / "results" / "pretrain" / "large" / "model"
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["BacformerLargeForMaskedGM"] and config["hidden_size"] == 128
    assert json.loads((folder / "bacflow_pretrain.json").read_text())["params"]["family"] == "large"
    assert type(load_bacformer(folder, torch.device("cpu"), torch.float32)).__name__ == "BacformerLargeModel"


def test_base_and_large_share_one_outdir(workdir: Path):
    results = workdir / "results"
    shared = [*results.glob("proteins/shard=*/part-0.parquet"), results / "families" / "families.parquet"]
    before = {path: path.stat().st_mtime_ns for path in shared}
    large_vectors = shard_table(results / "embeddings" / "esmc" / "shards")
    base = config_file(workdir, "base", {**LARGE, "bacformer": {"tiny_model": "base"}, "pretrain": {"run": "base"}})
    snakemake(workdir, "bacformer", "--configfile", base)
    assert {path: path.stat().st_mtime_ns for path in shared} == before  # proteins and families were reused
    base_vectors = shard_table(results / "embeddings" / "esm2" / "shards")
    assert {genome: v.shape[1] for genome, v in base_vectors.items()} == {"ct114": 48, "ctD": 48}
    assert all(
        np.array_equal(v, shard_table(results / "embeddings" / "esmc" / "shards")[g]) for g, v in large_vectors.items()
    )
    assert sorted(path.name for path in (results / "bacformer").iterdir()) == ["tiny-random", "tiny-random-large"]
    # The store holds both recipes, each under its own key.
    keys = [path for path in (results / "embeddings").iterdir() if path.name not in ("esm2", "esmc")]
    assert len(keys) == 2
    # The report's front page names both models, each with its encoder, and says plainly that all four are random.
    names = report.models_that_ran(results)
    assert [name.split(":")[0] for name in names] == ["``bacformer/tiny-random/``", "``bacformer/tiny-random-large/``"]
    assert "ESM-2 protein embeddings from local:esm2-tiny" in names[0]
    assert "ESM-C protein embeddings from local:esmc-tiny" in names[1]
    assert [name.count(report.RANDOM) for name in names] == [2, 2]
    # Back to Large: its outputs are current.
    large = str(workdir / "large.yaml")
    assert set(planned_jobs(workdir, "bacformer", "--configfile", large)) <= {"total"}
