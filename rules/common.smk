# The run plan (bacflow/plan.py): samples, shards, buckets, folders, settings and models, worked out once
# from the config and the sheet. Rule files read it; the functions below only adapt it to Snakemake.
import os

from bacflow.core.errors import InputError
from bacflow.plan import make_plan
from bacflow.report import models_that_ran

try:
    PLAN = make_plan(config)
except InputError as error:
    raise WorkflowError(str(error)) from None

# Scripts import the bacflow package from this checkout, also inside per-rule conda envs
# (set, not read: no envvars directive needed).
os.environ.update(
    PYTHONPATH=os.pathsep.join(
        filter(None, [workflow.basedir, os.environ.get("PYTHONPATH")])
    )
)

# The report's front page (report/workflow.rst) sees nothing of the workflow but `config`: it gets the models
# that made the results from there, read from their metadata when `snakemake --report` loads the workflow.
config["models_that_ran"] = models_that_ran(PLAN.outdir)


wildcard_constraints:
    shard=r"\d{5}",
    bucket=r"\d{4}",


def shard_members(wildcards):
    """A change of a shard's members, or of their files, re-runs it (params trigger)."""
    return PLAN.shard_members(wildcards.shard)


def print_quarantine_summary():
    summary = PLAN.outdir / "qc" / "summary.txt"
    if summary.exists():
        print(summary.read_text(), end="")


def planned_model(stage):
    """(model, revision) of the "esm" or "bacformer" jobs, worked out when a job that needs it is planned; a hub
    model that cannot be had fails planning in one line."""
    try:
        return getattr(PLAN, f"{stage}_model")
    except InputError as error:
        raise WorkflowError(str(error)) from None


def model_files(stage):
    """An input function of the stage's jobs: a model folder (tiny, pretrained or local) is an input, so a new
    model or new weights re-run them; a hub model, pinned to its commit, is none."""

    def files(wildcards):
        model, revision = planned_model(stage)
        return [] if revision else [model]

    return files


def gather_bucket_manifest(wildcards):
    """The bucket folders' manifest, as the input of a shard's gather job.

    Bucket jobs re-run for every new genome, and a gathered shard that is still current must not re-run
    with them: it depends on them by existence alone (`ancient`); a change of model or settings re-runs it
    through its params. But Snakemake never looks again at a job below an `ancient` input whose job
    re-runs, so a shard whose outputs are missing depends on the manifest as usual.
    """
    outputs = [
        PLAN.embeddings / folder / f"shard={wildcards.shard}.parquet"
        for folder in ("shards", "qc")
    ]
    manifest = PLAN.embedding_manifest
    return ancient(manifest) if all(path.exists() for path in outputs) else manifest
