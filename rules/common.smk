# The run plan (bacflow/plan.py): samples, shards, buckets, folders, settings and models, worked out once
# from the config and the sheet. Rule files read it; the functions below only adapt it to Snakemake.
import os
from pathlib import Path

from bacflow.core.errors import InputError
from bacflow.core.freshness import is_current
from bacflow.plan import make_plan
from bacflow.report import models_that_ran


def refusal(error):
    """How planning stops on a setting the plan refuses: with its one line. Snakemake prints any exception from a
    rule file, input function or params under their traceback; SystemExit is the one it lets through, and Python
    prints its message alone (status 1; a lock taken is released on the way out)."""
    return SystemExit(f"bacflow: {error}")


class OneLinePlan:
    """The run plan, as the rule files read it. What it refuses, at once or when a job that needs a model is
    planned (`RunPlan.bacformer_model`, `RunPlan.pretrain_params`...), is one line (`refusal`).
    """

    def __init__(self, plan):
        self._plan = plan

    def __getattr__(self, name):
        try:
            return getattr(self._plan, name)
        except InputError as error:
            raise refusal(error) from None


try:
    PLAN = OneLinePlan(make_plan(config))
except InputError as error:
    raise refusal(error) from None

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
    """(model, revision) of the "esm" or "bacformer" jobs, worked out when a job that needs it is planned: a hub
    model is resolved to its commit; one that cannot be had, or cannot take the run's vectors, fails planning in
    one line (OneLinePlan)."""
    return getattr(PLAN, f"{stage}_model")


def model_files(stage):
    """An input function of the stage's jobs: a model folder (tiny, pretrained or local) is an input, so a new
    model or new weights re-run them; a hub model, pinned to its commit, is none. This config's pretrained model
    is the file of it that the training job declares."""

    def files(wildcards):
        model, revision = planned_model(stage)
        if revision:
            return []
        return [
            PLAN.pretrain_model_file if Path(model) == PLAN.pretrain_model else model
        ]

    return files


def after_buckets(outputs, inputs, identity=None):
    """An input function for the jobs at and below the gathers: the bucket folders' manifest, `ancient` while the
    job is current by `is_current` (its `outputs` and `inputs`, path templates or a function of the wildcards for
    `inputs`, filled in; `identity` a function of the wildcards), so that bucket jobs re-run for new genomes leave
    current shards alone while an out-of-date one re-runs with them (bacflow/core/freshness.py says why).
    """

    def manifest(wildcards):
        fill = lambda paths: [str(path).format(**wildcards) for path in paths]
        listed = inputs(wildcards) if callable(inputs) else inputs
        job = identity(wildcards) if identity else None
        current = is_current(fill(outputs), fill(listed), job)
        return ancient(PLAN.embedding_manifest) if current else PLAN.embedding_manifest

    return manifest
