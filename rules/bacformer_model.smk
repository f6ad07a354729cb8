"""The Bacformer model of this run: which one, its output name, and how shard jobs get it (rules in
bacformer.smk)."""

import dataclasses
import functools

from bacflow.bacformer.model import (
    FOLDER_FILES,
    hidden_size,
    output_name,
    pretrain_model_folder,
    pretrain_run,
)
from bacflow.bacformer.stage import BacformerSettings
from bacflow.core.errors import InputError
from bacflow.core.models import planned_model, resolve_model
from bacflow.embeddings.tiny import ESM2_GEOMETRIES

BACFORMER = config["bacformer"]
# "pretrain" alone names this config's pretraining run, whose model/ folder rule pretrain_train makes.
BACFORMER_MODEL = (
    f"pretrain:{config['pretrain']['run']}"
    if BACFORMER["model"] == "pretrain"
    else BACFORMER["model"]
)
TINY_BACFORMER = OUTDIR / "models" / "bacformer-tiny"
try:
    BACFORMER_SETTINGS = BacformerSettings.from_config(BACFORMER)
    BACFORMER_PRETRAIN_RUN = pretrain_run(BACFORMER_MODEL)
    BACFORMER_NAME = BACFORMER["name"] or output_name(
        BACFORMER_MODEL, BACFORMER["revision"], tiny=BACFORMER["tiny_model"]
    )
except InputError as error:
    raise WorkflowError(str(error)) from None
BACFORMER_DIR = OUTDIR / "bacformer" / BACFORMER_NAME


@functools.cache
def bacformer_model():
    """(model, revision) for the shard jobs: a folder, or a hub id resolved here, once, when a shard job is
    planned (downloaded if not cached), so that jobs load a fixed commit and a missing model fails early.
    """
    if BACFORMER["tiny_model"]:
        return str(TINY_BACFORMER), None
    if BACFORMER_PRETRAIN_RUN is not None:
        return str(pretrain_model_folder(OUTDIR, BACFORMER_PRETRAIN_RUN)), None
    try:
        return planned_model(
            BACFORMER_MODEL,
            BACFORMER["revision"],
            setting="bacformer",
            files=FOLDER_FILES,
        )
    except InputError as error:
        raise WorkflowError(str(error)) from None


def bacformer_model_files(wildcards):
    """A model folder is an input: a new tiny or pretrained model, or new weights, re-run the shards."""
    model, revision = bacformer_model()
    return [] if revision else [model]


def tiny_bacformer_width():
    """The tiny model's width is the ESM-2 vectors' size: its input layer maps them to its hidden size."""
    if ESM["tiny_model"]:
        return ESM2_GEOMETRIES["tiny"]["hidden_size"]
    model, revision = ESM_MODEL()
    return hidden_size(resolve_model(model, revision).path)
