import dataclasses
import os
from pathlib import Path

from bacflow.errors import InputError
from bacflow.samples import assign_shards, read_samples
from bacflow.schemas import check_config

try:
    check_config(config)
except InputError as error:
    raise WorkflowError(str(error)) from None

# Scripts import the bacflow package from this checkout, also inside per-rule conda envs
# (set, not read: no envvars directive needed).
os.environ.update(
    PYTHONPATH=os.pathsep.join(
        filter(None, [workflow.basedir, os.environ.get("PYTHONPATH")])
    )
)

OUTDIR = Path(config["outdir"])

try:
    SAMPLES = read_samples(config["samples"])
except InputError as error:
    raise WorkflowError(f"bad sample sheet: {error}") from None
SHARDS = assign_shards(SAMPLES, config["shard_size"])
BUCKETS = [f"{bucket:04d}" for bucket in range(config["buckets"])]


wildcard_constraints:
    shard=r"\d{5}",
    bucket=r"\d{4}",


def shard_members(wildcards):
    """The genomes of a shard as plain dicts; a change of membership re-runs the shard (params trigger)."""
    return [dataclasses.asdict(sample) for sample in SHARDS[wildcards.shard]]


def shard_genome_files(wildcards):
    return [
        path
        for sample in SHARDS[wildcards.shard]
        for path in (sample.path, sample.gff)
        if path
    ]


def annotation_config():
    """The config keys that change the proteins stage's output."""
    return {key: config[key] for key in ("annotation", "gene_calling", "strict")}


def print_quarantine_summary():
    summary = OUTDIR / "qc" / "summary.txt"
    if summary.exists():
        print(summary.read_text(), end="")


def gather_bucket_folders(wildcards):
    """The bucket folders, as inputs of a shard's gather job.

    Bucket jobs re-run for every new genome, and a gathered shard that is still current must not re-run
    with them: it depends on them by existence alone (`ancient`); a change of model or settings re-runs it
    through its params. But Snakemake never looks again at a job below an `ancient` input whose job
    re-runs, so a shard whose outputs are missing depends on the folders as usual.
    """
    folders = expand(EMBEDDINGS / "buckets" / "bucket={bucket}", bucket=BUCKETS)
    outputs = [
        EMBEDDINGS / folder / f"shard={wildcards.shard}.parquet"
        for folder in ("shards", "qc")
    ]
    return ancient(folders) if all(path.exists() for path in outputs) else folders
