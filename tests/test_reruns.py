"""What the workflow re-runs, keeps and removes when a cohort changes or a run is killed, on small genomes that
ship with pyrodigal and the demo's tiny models: appending a genome runs only the new shard's jobs, a setting
that cannot change outputs re-runs nothing, another plan's shards are removed from the dataset folders, a
shard of quarantined genomes flows through every stage, and the README's command resumes a killed run."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import PYRODIGAL_DATA
from workflow_helpers import REPO, SNAKEMAKE, planned_jobs, snakemake

GENOMES = [
    ("SRR492066", "SRR492066.fna.gz", "mag"),
    ("KK037166", "KK037166.fna.gz", "mag"),
    ("MIIJ01000039", "MIIJ01000039.fna.gz", "mag"),
    ("Cdiphtheriae_100kb", "GCF_001457455.1_NCTC11397_genomic_100kb.fna.gz", "draft"),
]


def write_sheet(path: Path, genomes: list[tuple[str, str, str]]) -> Path:
    rows = ["genome_id\tpath\tkind"] + [
        f"{genome_id}\t{PYRODIGAL_DATA / name}\t{kind}" for genome_id, name, kind in genomes
    ]
    path.write_text("\n".join(rows) + "\n")
    return path


def run_args(workdir: Path, sheet: Path, outdir: str, *config: str, configfiles: tuple[Path, ...] = ()) -> list[str]:
    return [
        *(
            "--configfile",
            str(REPO / "config" / "config.yaml"),
            str(REPO / "config" / "demo.yaml"),
            *map(str, configfiles),
        ),
        *("--config", f"samples={sheet}", f"outdir={workdir / outdir}", *config),
    ]


def digests(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.glob("shard=*.parquet"))}


def matrix(table) -> np.ndarray:
    column = table.column("vector").combine_chunks()
    return column.flatten().to_numpy().reshape(len(column), -1)


def assert_every_dataset_holds_the_shards_current_proteins(results: Path, genomes: list[tuple[str, str, str]]) -> None:
    """The QC lists the sheet's `genomes`, and each shard's vectors, Bacformer rows and genome rows are of the genomes
    its protein table holds now, in its order: no dataset keeps a removed genome, lists one twice, or holds another
    genome's vectors under a shard."""
    bacformer = results / "bacformer" / "tiny-random"
    qc = pq.read_table(results / "qc" / "genomes.parquet").column("genome_id").to_pylist()
    assert qc == [genome_id for genome_id, _, _ in genomes]
    shards = sorted(path.name.removeprefix("shard=") for path in (results / "proteins").iterdir())
    for shard in shards:
        proteins = pq.read_table(results / "proteins" / f"shard={shard}" / "part-0.parquet")
        ids = proteins.select(["genome_id", "protein_index"])
        vectors = pq.read_table(results / "embeddings" / "esm2" / "shards" / f"shard={shard}.parquet")
        assert vectors.select(["genome_id", "protein_index"]).equals(ids), shard
        assert vectors.column("seq_hash").equals(proteins.column("seq_hash")), shard
        contextual = pq.read_table(bacformer / "proteins" / f"shard={shard}" / "part-0.parquet")
        assert contextual.select(["genome_id", "protein_index"]).equals(ids), shard
        genome_rows = pq.read_table(bacformer / "genome_shards" / f"shard={shard}.parquet")
        assert genome_rows.column("genome_id").to_pylist() == list(dict.fromkeys(ids.column("genome_id").to_pylist()))
    for dataset in (results / "embeddings" / "esm2" / "shards", bacformer / "genome_shards"):
        assert sorted(path.name.split(".")[0].removeprefix("shard=") for path in dataset.iterdir()) == shards, dataset
    assert sorted(pq.read_table(bacformer / "genomes.parquet").column("genome_id").to_pylist()) == sorted(qc)
    assert pq.read_table(results / "qc" / "embeddings-esm2.parquet").column("genome_id").to_pylist() == qc


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> Path:
    """Three genomes, one per shard, through the bacformer target."""
    workdir = tmp_path_factory.mktemp("reruns")
    sheet = write_sheet(workdir / "three.tsv", GENOMES[:3])
    snakemake(workdir, *run_args(workdir, sheet, "results"), "--", "bacformer")
    # A copy for comparisons: tests below change the run's results.
    shutil.copytree(workdir / "results", workdir / "clean")
    return workdir


@pytest.mark.slow
def test_appending_a_genome_runs_only_the_new_shards_jobs_and_stale_shards_are_removed(first_run: Path):
    workdir, results = first_run, first_run / "results"
    before = digests(results / "embeddings" / "esm2" / "shards")
    assert len(before) == 3

    # A setting that changes no vector re-runs nothing.
    (workdir / "checkpoint.yaml").write_text(yaml.safe_dump({"embeddings": {"checkpoint_sequences": 7}}))
    three = workdir / "three.tsv"
    assert planned_jobs(workdir, *run_args(workdir, three, "results"), "--", "bacformer") == {}
    checkpoint = run_args(workdir, three, "results", configfiles=(workdir / "checkpoint.yaml",))
    assert planned_jobs(workdir, *checkpoint, "--", "bacformer") == {}
    # Another bucket count re-partitions the distinct sequences: bucket jobs only, no job per shard (each shard's
    # sequences are sorted by hash, and a bucket is a slice of the hash space).
    jobs = planned_jobs(workdir, *run_args(workdir, three, "results", "buckets=3"), "--", "bacformer")
    assert jobs == {"unique_bucket": 3, "embed_bucket": 3, "embed_index": 1, "total": 7}, jobs
    # Fewer buckets: the bucket folders hold the new count's buckets alone, and no shard is gathered again.
    one_bucket = run_args(workdir, three, "results", "buckets=1")
    assert planned_jobs(workdir, *one_bucket, "--", "bacformer") == {
        "unique_bucket": 1,
        "embed_bucket": 1,
        "embed_index": 1,
        "total": 3,
    }
    snakemake(workdir, *one_bucket, "--", "bacformer")
    assert [path.name for path in (results / "unique").glob("bucket=*")] == ["bucket=0000.parquet"]
    assert [path.name for path in (results / "embeddings" / "esm2" / "buckets").glob("bucket=*")] == ["bucket=0000"]
    distinct = set(pq.read_table(results / "proteins").column("seq_hash").to_pylist())
    assert pq.read_table(results / "unique" / "bucket=0000.parquet").num_rows == len(distinct)
    assert digests(results / "embeddings" / "esm2" / "shards") == before

    # Appending a genome: every bucket job runs (each embeds only the new sequences), but only the new
    # shard is gathered and embedded by Bacformer.
    four = write_sheet(workdir / "four.tsv", GENOMES)
    jobs = planned_jobs(workdir, *run_args(workdir, four, "results"), "--", "bacformer")
    assert jobs["embed_gather"] == 1 and jobs["bacformer_shard"] == 1 and jobs["proteins_shard"] == 1, jobs
    snakemake(workdir, *run_args(workdir, four, "results"), "--", "bacformer")
    after = digests(results / "embeddings" / "esm2" / "shards")
    assert {name: after[name] for name in before} == before and len(after) == 4
    # Bucket folders keep no rows once the shards have read theirs.
    assert not list((results / "embeddings" / "esm2" / "buckets").glob("*/shard=*"))
    assert len(list((results / "embeddings" / "esm2" / "buckets").glob("*/bucket.json"))) == 2

    # Another shard size: the dataset folders hold exactly the new plan's shards.
    snakemake(workdir, *run_args(workdir, four, "results", "shard_size=2"), "--", "bacformer")
    qc = pq.read_table(results / "qc" / "genomes.parquet")
    proteins = pq.read_table(results / "proteins")
    assert proteins.num_rows == sum(qc.column("proteins").to_pylist())
    assert sorted(set(proteins.column("genome_id").to_pylist())) == sorted(genome[0] for genome in GENOMES)
    assert pq.read_table(results / "embeddings" / "esm2" / "shards").num_rows == proteins.num_rows
    bacformer = results / "bacformer" / "tiny-random"
    assert pq.read_table(bacformer / "proteins").num_rows == proteins.num_rows
    assert pq.read_table(bacformer / "genome_shards").num_rows == len(GENOMES)
    assert sorted(path.name for path in (results / "proteins").iterdir()) == ["shard=00000", "shard=00001"]

    # Removing the first genome moves every other one to another shard. Protein shards rewritten by a run that
    # gathers no vectors (`proteins`) are gathered and embedded again by the next run.
    last_three = write_sheet(workdir / "last_three.tsv", GENOMES[1:])
    snakemake(workdir, *run_args(workdir, last_three, "results", "shard_size=2"), "--", "proteins")
    snakemake(workdir, *run_args(workdir, last_three, "results", "shard_size=2"), "--", "bacformer")
    assert_every_dataset_holds_the_shards_current_proteins(results, GENOMES[1:])


def test_a_changed_or_replaced_genome_file_reruns_its_shard_alone(tmp_path: Path):
    """Genome files are no Snakemake inputs (planning a million would cost minutes): the proteins job's params
    hold each file's size and mtime, so touching or replacing a file re-runs its shard and no other."""
    for _, name, _ in GENOMES[:3]:
        shutil.copy(PYRODIGAL_DATA / name, tmp_path / name)
    sheet = tmp_path / "three.tsv"
    sheet.write_text("genome_id\tpath\tkind\n" + "".join(f"{gid}\t{name}\tmag\n" for gid, name, _ in GENOMES[:3]))
    args = ["--config", f"samples={sheet}", "outdir=results", "shard_size=1", "--", "proteins"]
    snakemake(tmp_path, *args)
    shards = [tmp_path / "results" / "proteins" / f"shard=0000{shard}" / "part-0.parquet" for shard in range(3)]
    written = [path.stat().st_mtime_ns for path in shards]
    assert planned_jobs(tmp_path, *args) == {}

    # Touched (a new mtime, same bytes): its shard re-runs, with the same proteins.
    touched = tmp_path / GENOMES[1][1]
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    assert planned_jobs(tmp_path, *args).get("proteins_shard") == 1
    before = pq.read_table(shards[1])
    snakemake(tmp_path, *args)
    assert pq.read_table(shards[1]).equals(before)
    assert [path.stat().st_mtime_ns for path in shards[::2]] == written[::2]

    # Replaced by another genome, its mtime set back to before the outputs (an mtime input trigger would
    # miss it): its shard re-runs and gets the new genome's proteins; nothing else changes or is lost.
    replaced = tmp_path / GENOMES[0][1]
    shutil.copy(tmp_path / GENOMES[2][1], replaced)
    os.utime(replaced, ns=(written[0] - 10**9, written[0] - 10**9))
    assert planned_jobs(tmp_path, *args).get("proteins_shard") == 1
    snakemake(tmp_path, *args)
    assert pq.read_table(shards[0]).column("sequence").equals(pq.read_table(shards[2]).column("sequence"))
    assert shards[2].stat().st_mtime_ns == written[2] and pq.read_table(shards[1]).equals(before)
    qc = pq.read_table(tmp_path / "results" / "qc" / "genomes.parquet")
    assert sorted(qc.column("genome_id").to_pylist()) == sorted(genome[0] for genome in GENOMES[:3])
    assert planned_jobs(tmp_path, *args) == {}

    # A file gone fails planning, naming its row.
    touched.unlink()
    result = snakemake(tmp_path, "--dry-run", *args, check=False)
    assert (
        result.returncode != 0
        and "line 3 (genome_id 'KK037166'), column 'path': file not found" in result.stdout + result.stderr
    )


@pytest.mark.slow
def test_a_shard_of_quarantined_genomes_flows_through_every_stage(tmp_path: Path):
    """With one genome per shard, each bad genome makes a shard without proteins: it still gets vectors,
    Bacformer outputs and QC with the run's model and recipe, and the summary names the genomes."""
    (tmp_path / "empty_record.fna").write_text(">contig_1\n")
    (tmp_path / "not_dna.fna").write_text("this is not a genome\n")
    sheet = write_sheet(tmp_path / "samples.tsv", GENOMES[:1])
    with sheet.open("a") as handle:
        handle.write(
            f"empty_record\t{tmp_path / 'empty_record.fna'}\tdraft\nnot_dna\t{tmp_path / 'not_dna.fna'}\tdraft\n"
        )
    result = snakemake(tmp_path, *run_args(tmp_path, sheet, "results"), "--", "bacformer")
    assert "2 quarantined" in result.stdout and "empty_record" in result.stdout and "not_dna" in result.stdout

    results = tmp_path / "results"
    genomes = pq.read_table(results / "bacformer" / "tiny-random" / "genomes.parquet")
    assert genomes.column("genome_id").to_pylist() == ["SRR492066"]
    empty = pq.read_table(results / "embeddings" / "esm2" / "shards" / "shard=00002.parquet")
    full = pq.read_table(results / "embeddings" / "esm2" / "shards" / "shard=00000.parquet")
    assert empty.num_rows == 0 and empty.schema.equals(full.schema, check_metadata=False)
    keys = ("bacflow.embedding_recipe_key", "bacflow.embedding_recipe")
    assert all(empty.schema.metadata[key.encode()] == full.schema.metadata[key.encode()] for key in keys)

    # A run that fails later still prints the summary, with the genome ids: a base Bacformer as wide as the
    # tiny ESM-2's vectors plans, and its job fails on the weights.
    broken = tmp_path / "broken-bacformer"
    broken.mkdir()
    config = {"model_type": "bacformer", "architectures": ["BacformerForMaskedGM"], "hidden_size": 48}
    (broken / "config.json").write_text(json.dumps(config))
    (broken / "model.safetensors").write_bytes(b"not weights")
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump({"bacformer": {"model": str(broken), "tiny_model": False}}))
    args = run_args(tmp_path, sheet, "results", configfiles=(tmp_path / "broken.yaml",))
    failed = snakemake(tmp_path, *args, "--", "bacformer", check=False)
    assert failed.returncode != 0
    assert "2 quarantined" in failed.stdout + failed.stderr and "not_dna" in failed.stdout + failed.stderr


@pytest.mark.slow
def test_the_readme_command_resumes_a_killed_run(first_run: Path, tmp_path: Path):
    """kill -9 of Snakemake and its jobs in the middle of the embeddings, then `snakemake --unlock` and the
    same command with --rerun-incomplete (README, Running it): the results equal those of an unbroken run. Killed
    again after a change of shard size, once the new protein shards are written: the resumed run re-makes every
    table below them."""
    sheet = first_run / "three.tsv"
    command = [*SNAKEMAKE, "--directory", str(tmp_path), "--cores", "2", *run_args(tmp_path, sheet, "results")]
    run = subprocess.Popen(
        [*command, "--", "bacformer"],
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not list((tmp_path / "results" / "embeddings").glob("*/parts/*.parquet")) and time.monotonic() < deadline:
        assert run.poll() is None, "the run ended before it could be killed"
        time.sleep(0.1)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()

    # Snakemake refuses a plain rerun: the lock, or the outputs of jobs cut off, are still there.
    refused = subprocess.run([*command, "--", "bacformer"], cwd=REPO, capture_output=True, text=True)
    assert refused.returncode != 0 and re.search(r"--unlock|--rerun-incomplete", refused.stdout + refused.stderr)
    for extra in (["--unlock"], ["--rerun-incomplete"]):
        resumed = subprocess.run([*command, *extra, "--", "bacformer"], cwd=REPO, capture_output=True, text=True)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr

    for folder in ("embeddings/esm2/shards", "bacformer/tiny-random/proteins"):
        mine, clean = pq.read_table(tmp_path / "results" / folder), pq.read_table(first_run / "clean" / folder)
        names = [name for name in clean.schema.names if name != "vector"]
        assert mine.select(names).equals(clean.select(names))
        assert np.abs(matrix(mine) - matrix(clean)).max() <= 1e-5
    assert pc.all(pc.is_valid(pq.read_table(tmp_path / "results" / "proteins").column("sequence"))).as_py()

    # `command` ends with its --config entries: one more sets the shard size.
    manifest = tmp_path / "results" / "unique" / "shards.json"
    written = manifest.stat().st_mtime_ns
    run = subprocess.Popen(
        [*command, "shard_size=2", "--", "bacformer"],
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    # Snakemake deletes a job's outputs before it runs it: wait for the new manifest.
    while not (manifest.exists() and manifest.stat().st_mtime_ns != written) and time.monotonic() < deadline:
        assert run.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    for extra in (["--unlock"], ["--rerun-incomplete"]):
        resumed = subprocess.run(
            [*command, "shard_size=2", *extra, "--", "bacformer"], cwd=REPO, capture_output=True, text=True
        )
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert_every_dataset_holds_the_shards_current_proteins(tmp_path / "results", GENOMES[:3])
