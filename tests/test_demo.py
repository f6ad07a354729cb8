"""The demo (config/demo.yaml) end to end: proteins, families, ESM-2 and Bacformer embeddings with tiny random
models built offline, and the HTML report; and the error for a hub model that cannot be had."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from bacflow.bacformer.model import build_tiny_bacformer, output_name
from bacflow.core.tables import read_metadata
from bacflow.demo import write_demo_sheet
from conftest import SMALL_GENOME
from workflow_helpers import REPO, SNAKEMAKE, snakemake, write_sheet

# Fewer ESM-2 bucket jobs than the demo's 16 (each loads PyTorch); the bucket count changes no vector.
BUCKETS = 2


def demo_args(workdir: Path, *extra: str) -> list[str]:
    return [
        *("--configfile", str(REPO / "config" / "config.yaml"), str(REPO / "config" / "demo.yaml")),
        *("--config", f"samples={workdir / 'samples.tsv'}", f"outdir={workdir / 'results'}", f"buckets={BUCKETS}"),
        *extra,
    ]


def vectors(table) -> np.ndarray:
    column = table.column(table.schema.names[-1]).combine_chunks()
    return column.flatten().to_numpy().reshape(len(column), -1)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """The demo's workdir after `snakemake all`: the tests below add their own targets and folders to it."""
    workdir = tmp_path_factory.mktemp("demo")
    write_demo_sheet(workdir / "samples.tsv")
    snakemake(workdir, "all", *demo_args(workdir))
    return workdir


@pytest.mark.slow
def test_demo_end_to_end_with_report_and_stable_reruns(demo: Path):
    results = demo / "results"
    bacformer = results / "bacformer" / "tiny-random"
    proteins = ds.dataset(results / "proteins", format="parquet", partitioning="hive").to_table()
    qc = pq.read_table(results / "qc" / "genomes.parquet")

    genomes = pq.read_table(bacformer / "genomes.parquet")
    assert sorted(genomes.column("genome_id").to_pylist()) == sorted(qc.column("genome_id").to_pylist())
    assert genomes.column("proteins").to_pylist() == qc.column("proteins").to_pylist()
    assert set(genomes.column("mode").to_pylist()) == {"whole"}  # both demo genomes fit 6000 tokens
    assert np.isfinite(vectors(genomes)).all() and vectors(genomes).shape == (2, 48)

    contextual = pq.read_table(bacformer / "proteins").drop_columns(["shard"])  # the Hive dataset, all shards
    keys = ["genome_id", "protein_index"]
    assert contextual.select(keys).equals(proteins.select(keys).cast(contextual.select(keys).schema))
    assert contextual.column("protein_id").equals(proteins.column("protein_id"))
    assert np.isfinite(vectors(contextual)).all()

    # The report: the figures and the QC table, in one HTML file.
    report = demo / "report.html"
    snakemake(demo, "--report", str(report), *demo_args(demo))
    page = report.read_text()
    for name in ("proteins_per_genome.png", "qc_flags.html", "family_sizes.png", "genome_projection.png"):
        assert name in page

    # Rerunning the Bacformer jobs gives the same tables.
    snakemake(demo, "bacformer", "--forcerun", "bacformer_shard", *demo_args(demo))
    assert pq.read_table(bacformer / "genomes.parquet").equals(genomes)
    assert pq.read_table(bacformer / "proteins").drop_columns(["shard"]).equals(contextual)

    # A limit below the larger genome's 2,343 proteins: it is windowed (3 windows of 998 tokens overlapping by
    # 200 or more), and every protein still gets a vector. Results go to their own folder (bacformer.name).
    windowed = demo / "windowed.yaml"
    windowed.write_text("bacformer:\n  name: windowed\n  max_n_proteins: 1000\n  window_overlap: 200\n")
    args = demo_args(demo)
    args.insert(args.index("--config"), str(windowed))
    snakemake(demo, "bacformer", *args)
    table = pq.read_table(results / "bacformer" / "windowed" / "genomes.parquet")
    rows = {row["genome_id"]: row for row in table.to_pylist()}
    assert rows["Cdiphtheriae_NCTC11397"]["mode"] == "windowed" and rows["Cdiphtheriae_NCTC11397"]["windows"] == 3
    assert rows["SRR492066_contig"]["mode"] == "whole"
    long = pq.read_table(results / "bacformer" / "windowed" / "proteins").drop_columns(["shard"])
    assert long.select(keys).equals(contextual.select(keys)) and np.isfinite(vectors(long)).all()


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path]:
    """The demo's workflow (every target, tiny models) on one small genome, run from scratch in two folders."""
    workdirs = []
    for name in ("a", "b"):
        workdir = tmp_path_factory.mktemp(name)
        write_sheet(workdir / "samples.tsv", [("SRR492066_contig", str(SMALL_GENOME), "11", "mag")])
        snakemake(workdir, "all", *demo_args(workdir))
        workdirs.append(workdir)
    return workdirs[0], workdirs[1]


@pytest.mark.slow
def test_outputs_do_not_depend_on_the_output_folder(two_runs: tuple[Path, Path]):
    """Every output but logs and benchmarks (which name paths and times) is the same bytes in both runs: model
    folders are known by their checksum, never by their path."""
    first, second = (workdir / "results" for workdir in two_runs)

    def outputs(results: Path) -> set[Path]:
        return {
            path.relative_to(results)
            for path in results.rglob("*")
            if path.is_file() and path.relative_to(results).parts[0] not in ("logs", "benchmarks")
        }

    assert outputs(first) == outputs(second)
    different = sorted(
        str(path) for path in outputs(first) if (first / path).read_bytes() != (second / path).read_bytes()
    )
    metadata = [
        f"{path}: {key} differs"
        for path in different
        if path.endswith(".parquet")
        for key, value in read_metadata(first / path).items()
        if value != read_metadata(second / path).get(key)
    ]
    assert not different, "\n".join(different + metadata)


@pytest.mark.slow
def test_the_report_names_the_models_that_ran(two_runs: tuple[Path, Path]):
    """The demo runs tiny random models: the report's front page names them (from the outputs), not the
    configured hub models that did not run."""
    workdir = two_runs[0]
    report = workdir / "report.html"
    snakemake(workdir, "--report", str(report), *demo_args(workdir))
    front_page = json.loads(re.search(r"var workflow_desc = (\".*\");", report.read_text())[1])
    shard = workdir / "results" / "embeddings" / "esm2" / "shards" / "shard=00000.parquet"
    recipe = json.loads(read_metadata(shard)["bacflow.embedding_recipe"])
    assert "facebook/esm2_t12_35M_UR50D" not in front_page and "macwiatrak/" not in front_page
    assert "local:esm2-tiny" in front_page and recipe["revision"] in front_page
    assert "local:bacformer-base-tiny" in front_page and "randomly initialised" in front_page


@pytest.mark.slow
def test_demo_pretraining_is_small(demo: Path):
    """`snakemake pretrain` after the demo (as the README says) trains a small model for a few steps (not the
    reference's 12 layers for 10 epochs), with the sheet's splits (train, val; no test), and its data loaders fit
    in the job's threads: on 2 cores the trainer and one worker, not the 8 workers configured."""
    snakemake(demo, "pretrain", *demo_args(demo))
    run = demo / "results" / "pretrain" / "bacformer"
    with open(run / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert any(row["loss"] for row in rows) and any(row["eval_loss"] for row in rows)
    model = json.loads((run / "model" / "config.json").read_text())
    assert model["num_hidden_layers"] == 2
    assert json.loads((run / "run.json").read_text())["params"]["dataloader_workers"] == 1


def test_a_hub_model_that_is_not_cached_fails_before_any_job(tmp_path: Path):
    write_demo_sheet(tmp_path / "samples.tsv")
    hub_model = tmp_path / "hub_model.yaml"
    hub_model.write_text("bacformer:\n  model: macwiatrak/bacformer-masked-MAG\n  tiny_model: false\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    args = demo_args(tmp_path)
    args.insert(args.index("--config"), str(hub_model))  # a third config file, after the demo's
    result = subprocess.run(
        [*SNAKEMAKE, *("--directory", str(tmp_path), "--dry-run", "bacformer"), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "bacformer.model 'macwiatrak/bacformer-masked-MAG' is not in the Hugging Face cache" in output
    assert "set bacformer.model to a local folder" in output


def test_model_sources_plan_their_jobs_and_name_their_results(tmp_path: Path):
    """`pretrain` trains this config's run first and reads its model/ folder; a local folder is used as is."""
    write_demo_sheet(tmp_path / "samples.tsv")
    folder = build_tiny_bacformer(tmp_path / "my model", 48)
    for model, name, jobs in (
        ("pretrain", "pretrain-bacformer", {"pretrain_train": 1, "bacformer_shard": 2, "bacformer_tiny_model": 0}),
        (str(folder), output_name(str(folder)), {"pretrain_train": 0, "bacformer_shard": 2, "bacformer_tiny_model": 0}),
    ):
        settings = tmp_path / "model.yaml"
        settings.write_text(f"bacformer:\n  model: {model!r}\n  tiny_model: false\n")
        args = demo_args(tmp_path)
        args.insert(args.index("--config"), str(settings))  # a third config file, after the demo's
        output = snakemake(tmp_path, "--dry-run", "bacformer", *args).stdout
        planned = {rule: int(count) for rule, count in re.findall(r"^(\w+)\s+(\d+)$", output, re.MULTILINE)}
        assert {rule: planned.get(rule, 0) for rule in jobs} == jobs, planned
        assert f"results/bacformer/{name}/genomes.parquet" in output


def test_the_large_demo_overlay_plans_esmc_and_bacformer_large_beside_the_base_demo(tmp_path: Path):
    """`--configfile config/demo.yaml config/demo-large.yaml` (the README's Large demo) plans every target with the
    tiny ESM-C and tiny Bacformer Large, in the base demo's outdir but in folders of their own."""
    write_demo_sheet(tmp_path / "samples.tsv")
    args = demo_args(tmp_path)
    args.insert(args.index("--config"), str(REPO / "config" / "demo-large.yaml"))
    output = snakemake(tmp_path, "--dry-run", "all", "pretrain", *args).stdout
    planned = {rule: int(count) for rule, count in re.findall(r"^(\w+)\s+(\d+)$", output, re.MULTILINE)}
    assert planned["esm_tiny_model"] == planned["bacformer_tiny_model"] == planned["pretrain_train"] == 1
    for path in (
        "results/models/esmc-tiny",
        "results/models/bacformer-large-tiny",
        "results/embeddings/esmc/shards/shard=00000.parquet",
        "results/bacformer/tiny-random-large/genomes.parquet",
        "results/pretrain/bacformer-large/model",
    ):
        assert path in output, path
    assert "esm2" not in output and "tiny-random/" not in output
