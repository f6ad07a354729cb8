"""The run plan: everything the workflow's rules need, computed once from the config and the sample sheet.

`make_plan` checks the config and the sheet and works out the samples and their shards, the buckets, every
output folder, the settings each stage's jobs get, which protein encoder (ESM-2 or ESM-C) and Bacformer (base or
Large) the run uses, and the pretraining splits. The rules only read it (``rules/common.smk`` makes it), so
what a run will do is plain, tested Python, and no rule file depends on another's globals.

Nothing here imports PyTorch: a hub model id is resolved to a commit (and downloaded if it is not cached)
only when a job that needs it is planned, once (`RunPlan.esm_model`, `RunPlan.bacformer_model`).

Model families are data (`bacflow.bacformer.model_families`): the Bacformer model decides which protein encoder
its vectors come from (``embeddings.model: auto``), and a model fed another encoder's vectors is refused while
the run is planned. Each encoder has its own folder under ``embeddings/`` and each Bacformer model its own under
``bacformer/``, so runs of both families share one outdir, its proteins and its families.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bacflow.bacformer.model import (
    FOLDER_FILES,
    PRETRAIN_DESCRIPTION,
    hidden_size,
    output_name,
    pretrain_model_folder,
    pretrain_run,
)
from bacflow.bacformer.model_families import (
    BASE,
    LARGE,
    ModelFamily,
    family_named,
    family_of,
    family_of_encoder,
    published_family,
)
from bacflow.bacformer.stage import BacformerSettings
from bacflow.core.errors import InputError
from bacflow.core.freshness import identity
from bacflow.core.models import planned_model, resolve_model
from bacflow.core.samples import Sample, assign_shards, read_samples
from bacflow.core.schemas import check_config
from bacflow.embeddings.encoders import ENCODER_NAMES, encoder_family, hub_encoder_family
from bacflow.embeddings.stage import EmbeddingSettings
from bacflow.embeddings.tiny import ESM2_GEOMETRIES, ESMC_GEOMETRIES
from bacflow.families.stage import VOCAB_FILES, FamilyParams, check_vocab
from bacflow.pretrain.data import SPLITS, assign_splits, required_splits, splits_drawn
from bacflow.pretrain.runs import run_family

#: The widths of the tiny encoders' vectors (and so of the tiny Bacformers built on them).
TINY_WIDTHS = {"esm2": ESM2_GEOMETRIES["tiny"]["hidden_size"], "esmc": ESMC_GEOMETRIES["tiny"]["hidden_size"]}


@dataclass(frozen=True)
class JobLogs:
    """Where some jobs write their logs and Snakemake benchmarks: one folder, at the same path under ``logs/`` and
    under ``benchmarks/``."""

    outdir: Path
    folder: Path  #: relative to ``logs/`` and ``benchmarks/``

    def log(self, job: str) -> Path:
        return self.outdir / "logs" / self.folder / f"{job}.log"

    def benchmark(self, job: str) -> Path:
        return self.outdir / "benchmarks" / self.folder / f"{job}.tsv"


@dataclass(frozen=True)
class RunPlan:
    """What one run does. Paths are as the config gives them (relative to Snakemake's working directory)."""

    config: Mapping[str, Any] = field(repr=False)
    outdir: Path
    samples: list[Sample] = field(repr=False)
    shards: dict[str, list[Sample]] = field(repr=False)  #: shard id ("00000") -> its genomes, in sheet order
    buckets: list[str]  #: bucket ids ("0000")

    # families
    family_params: FamilyParams
    family_vocab: str | None  #: a frozen vocabulary to assign to, or None: cluster this cohort
    families: Path

    # embeddings
    embedding_store: Path  #: the store's root: the run's own, or a folder shared by runs
    embedding_settings: dict[str, Any]  #: the settings that can change a vector (the jobs' params)

    # bacformer
    bacformer_model_id: str  #: as configured; "pretrain" becomes "pretrain:<this config's run>"
    bacformer_pretrain_run: str | None
    bacformer_settings: BacformerSettings

    # pretraining
    pretrain_dir: Path
    pretrain_splits: dict[str, str] = field(repr=False)  #: genome id -> train, val or test
    required_splits: list[str]
    splits_drawn: bool

    @property
    def esm(self) -> Mapping[str, Any]:
        return self.config["embeddings"]

    @property
    def bacformer(self) -> Mapping[str, Any]:
        return self.config["bacformer"]

    @property
    def pretrain(self) -> Mapping[str, Any]:
        return self.config["pretrain"]

    # Logs and benchmarks. Jobs whose outputs belong to one encoder, Bacformer model, tiny model or pretraining run log
    # at their output folder's path under logs/ (and benchmarks/), so runs that share an outdir (base and Large,
    # several pretraining runs) never overwrite each other's logs; the cohort's own jobs log in logs/ itself.

    @property
    def logs(self) -> JobLogs:
        """The jobs of the cohort, whatever the models: proteins, distinct sequences, families, their figure."""
        return JobLogs(self.outdir, Path())

    def _logs_of(self, folder: Path) -> JobLogs:
        return JobLogs(self.outdir, folder.relative_to(self.outdir))

    @property
    def embedding_logs(self) -> JobLogs:
        return self._logs_of(self.embeddings)

    @property
    def tiny_esm_logs(self) -> JobLogs:
        return self._logs_of(self.tiny_esm)

    @property
    def tiny_bacformer_logs(self) -> JobLogs:
        return self._logs_of(self.tiny_bacformer)

    @property
    def bacformer_logs(self) -> JobLogs:
        return self._logs_of(self.bacformer_dir)

    @property
    def pretrain_logs(self) -> JobLogs:
        return self._logs_of(self.pretrain_dir)

    @property
    def report_logs(self) -> JobLogs:
        return self._logs_of(self.bacformer_report)

    def shard_files(self, template: Path) -> list[str]:
        """`template` (with ``{shard}``) filled in for every shard, as Snakemake's expand does."""
        return [str(template).format(shard=shard) for shard in self.shards]

    @property
    def bucket_files(self) -> list[str]:
        return [str(self.outdir / "unique" / f"bucket={bucket}.parquet") for bucket in self.buckets]

    @property
    def unique_manifest(self) -> Path:
        """Lists every shard's distinct-sequence table: the one input that stands for them all in each bucket
        job (see `bacflow.core.manifest`), so that the DAG has shards + buckets edges, not their product."""
        return self.outdir / "unique" / "shards.json"

    @property
    def vocab_files(self) -> list[str]:
        """The frozen vocabulary's files (inputs of the assignment job); none when this cohort is clustered."""
        return [str(Path(self.family_vocab) / name) for name in VOCAB_FILES] if self.family_vocab else []

    @property
    def embedding_shards(self) -> list[str]:
        return self.shard_files(self.embeddings / "shards" / "shard={shard}.parquet")

    @property
    def embedding_buckets(self) -> list[str]:
        """The bucket jobs' folders (of this run's encoder)."""
        return [str(self.embeddings / "buckets" / f"bucket={bucket}") for bucket in self.buckets]

    @property
    def embedding_manifest(self) -> Path:
        """Lists the bucket folders: the one input that stands for them all in each gather job."""
        return self.embeddings / "buckets.json"

    @property
    def bacformer_params(self) -> dict[str, Any]:
        """The Bacformer settings as the shard jobs' params."""
        return dataclasses.asdict(self.bacformer_settings)

    @property
    def bacformer_dir(self) -> Path:
        return self.outdir / "bacformer" / self.bacformer_name

    @property
    def bacformer_report(self) -> Path:
        """The report's figures of this run's Bacformer results: one folder per model, as the results have, so that a
        run of one model leaves the other's figures current (Snakemake re-runs a job whose inputs changed)."""
        return self.outdir / "report" / self.bacformer_name

    @property
    def pretrain_data(self) -> Path:
        return self.pretrain_dir / "data"

    @property
    def pretrain_model(self) -> Path:
        return self.pretrain_dir / "model"

    @property
    def pretrain_model_file(self) -> Path:
        """The file of the model folder that stands for the folder as the training job's output and as an input of
        the jobs that use the model (rules/pretrain.smk says why not the folder)."""
        return self.pretrain_model / PRETRAIN_DESCRIPTION

    @property
    def pretrain_parts(self) -> dict[str, list[str]]:
        return {split: self.shard_files(self.pretrain_data / split / "part-{shard}.parquet") for split in SPLITS}

    # Identities (bacflow.core.freshness): what decides a job's output besides its input files, as a hash that the
    # job records and the plan compares. No paths: outputs do not depend on where the outdir is.

    @property
    def shards_identity(self) -> str:
        """The plan's shards, for the jobs that gather a table from every shard."""
        return identity(list(self.shards))

    @functools.cached_property
    def embedding_identity(self) -> str:
        """What decides a shard's gathered vectors besides its proteins: the encoder and the settings."""
        return identity({"model": model_label(*self.esm_model), "settings": self.embedding_settings})

    @functools.cached_property
    def bacformer_identity(self) -> str:
        """What decides a shard's Bacformer outputs besides its proteins and vectors."""
        model = model_label(*self.bacformer_model)
        return identity({"model": model, "name": self.bacformer_name, "settings": self.bacformer_params})

    def pretrain_members_identity(self, shard: str) -> str:
        return identity(self.pretrain_members(shard))

    def shard_members(self, shard: str) -> tuple[Sample, ...]:
        """The genomes of a shard: the proteins job's params, so that new members, or a member's file changed or
        replaced (its `Sample.stamp`), re-run it (Snakemake compares their repr). The files are not the job's
        inputs: Snakemake would make, keep and stat an object for each (see docs/scale.md, Planning)."""
        return tuple(self.shards[shard])

    def annotation_config(self) -> dict[str, Any]:
        """The config keys that change the proteins stage's output."""
        return {key: self.config[key] for key in ("annotation", "gene_calling", "strict")}

    def pretrain_members(self, shard: str) -> list[dict[str, Any]]:
        """A shard's genomes with kind and split (the corpus job's params: a change of either re-runs it)."""
        return [
            {"genome_id": sample.genome_id, "kind": sample.kind, "split": self.pretrain_splits[sample.genome_id]}
            for sample in self.shards[shard]
        ]

    # Which models: the Bacformer's family decides the encoder of the vectors (embeddings.model: auto), and a model
    # is never fed another encoder's vectors. Worked out on first use, once: only hub ids that are neither
    # published checkpoints nor well-known encoders need their config.json (from the cache, or downloaded).

    @functools.cached_property
    def bacformer_family(self) -> ModelFamily:
        """The family of the configured Bacformer: the tiny model's setting, this config's pretraining, a published
        checkpoint's, or what the checkpoint's config.json says."""
        tiny = self.bacformer["tiny_model"]
        if tiny:
            return LARGE if tiny == "large" else BASE
        if self._bacformer_is_this_pretraining:
            return self.pretrain_family
        if (family := published_family(self.bacformer_model_id)) is not None:
            return family
        return family_of(self._bacformer_folder)

    @property
    def _bacformer_is_this_pretraining(self) -> bool:
        return not self.bacformer["tiny_model"] and self.bacformer_pretrain_run == self.pretrain["run"]

    @functools.cached_property
    def encoder(self) -> str:
        """The encoder of this run's protein vectors, "esm2" or "esmc": the one the Bacformer model needs (model auto,
        or a tiny model), else the configured model's."""
        model = self.esm["model"]
        if model == "auto" or self.esm["tiny_model"]:
            return self.bacformer_family.encoder
        return hub_encoder_family(model) or encoder_family(model_folder(*self.esm_model))

    @functools.cached_property
    def esm_model(self) -> tuple[str, str | None]:
        """(model, revision) for the bucket jobs: the tiny model's folder, a folder, or a hub id resolved to a
        commit (downloaded if need be), so that jobs load that commit from the cache and a missing model fails
        before any job runs. Worked out on first use: targets without embeddings never touch the hub."""
        if self.esm["tiny_model"]:
            return str(self.tiny_esm), None
        model, revision = self.esm["model"], self.esm["revision"]
        if model == "auto":
            family = self.bacformer_family
            model, revision = family.embedding_model, revision or family.embedding_revision
        return planned_model(model, revision)

    @functools.cached_property
    def _bacformer_source(self) -> tuple[str, str | None]:
        if self.bacformer["tiny_model"]:
            return str(self.tiny_bacformer), None
        if self.bacformer_pretrain_run is not None:
            return str(pretrain_model_folder(self.outdir, self.bacformer_pretrain_run)), None
        return planned_model(
            self.bacformer_model_id, self.bacformer["revision"], setting="bacformer", files=FOLDER_FILES
        )

    @property
    def _bacformer_folder(self) -> Path:
        return model_folder(*self._bacformer_source, setting="bacformer", files=FOLDER_FILES)

    @functools.cached_property
    def bacformer_model(self) -> tuple[str, str | None]:
        """(model, revision) for the Bacformer shard jobs: a folder, or a hub id resolved once, on first use; a model
        that cannot take this run's vectors (another encoder's, or another width) fails here, naming both."""
        self._check_takes_vectors(self.bacformer_family, self._bacformer_described)
        if self._bacformer_is_this_pretraining:
            self._check_pretrain_run(f"bacformer.model {self.bacformer_model_id}")
        if not (self.bacformer["tiny_model"] or self._bacformer_is_this_pretraining):
            width, vectors = hidden_size(self._bacformer_folder), self.vector_width
            if width != vectors:
                raise InputError(
                    f"bacformer.model {self.bacformer_model_id} takes {width}-wide protein vectors, but embeddings "
                    f"model {self.esm_model[0]} gives {vectors}-wide ones: set embeddings.model: auto"
                )
        return self._bacformer_source

    @property
    def _bacformer_described(self) -> str:
        """The Bacformer that runs, as messages name it: the tiny model, not the hub id left in bacformer.model."""
        family = self.bacformer_family
        if self.bacformer["tiny_model"]:
            return f"the tiny {family.title} (bacformer.tiny_model: {str(self.bacformer['tiny_model']).lower()})"
        return f"bacformer.model {self.bacformer_model_id} (a {family.title})"

    def _check_takes_vectors(self, family: ModelFamily, model: str) -> None:
        """Refuse `model` (as messages name it), of `family`, unless this run's vectors are its encoder's."""
        if family.encoder == self.encoder:
            return
        encoder = ENCODER_NAMES[family.encoder]
        if self.esm["tiny_model"] or self.esm["model"] == "auto":
            # The vectors are those the Bacformer takes, so the model refused is pretraining's: the Bacformer stage can
            # run the model pretraining trains instead, whose vectors then follow it.
            setting = "embeddings.tiny_model" if self.esm["tiny_model"] else "embeddings.model auto"
            given = f"{setting}, the encoder of {self._bacformer_described}"
            fix = f"bacformer.model to pretrain or to a {family.title}"
        else:
            given, fix = f"embeddings.model {self.esm['model']}", f"embeddings.model to auto or to an {encoder} model"
        raise InputError(
            f"{model} takes {encoder} vectors ({family.embedding_model}), but this run's vectors are "
            f"{ENCODER_NAMES[self.encoder]}, from {given}: set {fix}"
        )

    def _check_pretrain_run(self, what: str) -> None:
        """Refuse to train this config's pretraining run as another family than the one it already holds (in its model
        or checkpoints): its corpus would be rebuilt from the other encoder's vectors, and training then fail to resume
        from the run's checkpoints."""
        found, family = run_family(self.pretrain_dir), self.pretrain_family
        if found is None or found[0] is family:
            return
        existing, source = found
        raise InputError(
            f"{what}: pretraining run '{self.pretrain['run']}' ({source}) is a Bacformer {existing.name}, which takes "
            f"{existing.encoder} vectors, but this run's vectors are {self.encoder}, for a Bacformer {family.name} "
            f"(pretrain.family {self.pretrain['family']}): set pretrain.family to {existing.name} and embeddings.model "
            f"to auto or an {existing.encoder} model, or name another pretrain.run"
        )

    @property
    def vector_width(self) -> int:
        """The width of this run's protein vectors."""
        if self.esm["tiny_model"]:
            return TINY_WIDTHS[self.encoder]
        return hidden_size(model_folder(*self.esm_model))

    @property
    def tiny_esm(self) -> Path:
        return self.outdir / "models" / f"{self.encoder}-tiny"

    @property
    def tiny_bacformer(self) -> Path:
        return self.outdir / "models" / f"bacformer-{self.bacformer_family.name}-tiny"

    @property
    def embeddings(self) -> Path:
        """The folder of this run's encoder (gathered shards, bucket folders, per-shard QC): one per encoder, so runs
        of both Bacformer families share an outdir."""
        return self.outdir / "embeddings" / self.encoder

    @property
    def embedding_qc(self) -> Path:
        return self.outdir / "qc" / f"embeddings-{self.encoder}.parquet"

    @functools.cached_property
    def bacformer_name(self) -> str:
        """The results folder's name under ``bacformer/``."""
        tiny = self.bacformer_family.name if self.bacformer["tiny_model"] else None
        return self.bacformer["name"] or output_name(self.bacformer_model_id, self.bacformer["revision"], tiny=tiny)

    @functools.cached_property
    def pretrain_family(self) -> ModelFamily:
        """The family pretraining trains: pretrain.family, else init_from's, else the one that takes this run's
        vectors (base where the run's vectors are themselves chosen for the model being pretrained)."""
        setting, init_from = self.pretrain["family"], self.pretrain["init_from"]
        if setting != "auto":
            return family_named(setting)
        if init_from:
            return published_family(init_from) or family_of(
                model_folder(*planned_model(init_from, setting="pretrain.init_from", files=FOLDER_FILES))
            )
        if self._bacformer_is_this_pretraining and (self.esm["model"] == "auto" or self.esm["tiny_model"]):
            return BASE
        return family_of_encoder(self.encoder)

    @functools.cached_property
    def pretrain_params(self) -> dict[str, Any]:
        """The pretraining block as the training job's params: its family worked out, and a new model's geometry
        the family's published one where the config leaves it out."""
        family, setting, init_from = self.pretrain_family, self.pretrain["family"], self.pretrain["init_from"]
        chosen = f"auto: pretrain.init_from {init_from}'s" if setting == "auto" and init_from else setting
        self._check_takes_vectors(family, f"the {family.title} that pretraining trains (pretrain.family {chosen})")
        self._check_pretrain_run("pretrain.run")
        return {
            **self.pretrain,
            "family": family.name,
            "model": {**family.training_geometry, **self.pretrain["model"]},
        }


def model_label(model: str, revision: str | None) -> str:
    """A planned model as identities name it: a hub id at its commit, or a folder by its name alone (its files are
    the jobs' inputs, so a change of them re-runs the jobs by their times)."""
    return f"{model}@{revision}" if revision else f"local:{Path(model).name}"


def model_folder(model: str, revision: str | None, **where: str) -> Path:
    """The folder of a planned model (`planned_model`'s (model, revision)): the folder itself, or the hub
    commit's snapshot in the cache. `where`: `resolve_model`'s setting and files, for its messages."""
    return Path(model) if revision is None else Path(resolve_model(model, revision, **where).path)


def _folder_setting(key: str, value: str) -> Path:
    """The folder that config key `key` names, refused where it, or the nearest of its parents that exists, is not a
    folder: otherwise every job writing there would fail, each with a traceback."""
    path = Path(value)
    existing = next((part for part in (path, *path.parents) if part.exists()), None)
    if existing is not None and not existing.is_dir():
        made = "" if existing == path else f" cannot be made: {existing}"
        raise InputError(f"config key '{key}': {path}{made} is a file, not a folder")
    return path


def make_plan(config: dict[str, Any]) -> RunPlan:
    """The plan of a run with `config` (checked, and its defaults filled in, here). Raises InputError with one
    line naming what is wrong: a config key, a sheet row, a vocabulary, a Bacformer model name."""
    check_config(config)
    outdir = _folder_setting("outdir", config["outdir"])
    # The store outlives runs when embedding_store names a shared folder; by default it is the run's own.
    shared = config["embedding_store"]
    store = _folder_setting("embedding_store", shared) if shared else outdir / "embeddings"
    try:
        samples = read_samples(config["samples"])
    except InputError as error:
        raise InputError(f"bad sample sheet: {error}") from None
    families = config["families"]
    family_params = FamilyParams.from_config(families)
    if families["vocab"]:  # a missing vocabulary, or one built with other parameters, fails before any job runs
        check_vocab(families["vocab"], family_params)
    bacformer = config["bacformer"]
    # "pretrain" alone names this config's pretraining run, whose model/ folder the pretraining rule makes.
    model_id = f"pretrain:{config['pretrain']['run']}" if bacformer["model"] == "pretrain" else bacformer["model"]
    pretrain = config["pretrain"]
    # Splits come from the whole sheet (a group's split may be named on any of its rows), so they are worked
    # out here, before any job, and handed to each shard job as parameters.
    splits = assign_splits(samples, pretrain["val_fraction"], pretrain["test_fraction"], pretrain["split_seed"])
    return RunPlan(
        config=config,
        outdir=outdir,
        samples=samples,
        shards=assign_shards(samples, config["shard_size"]),
        buckets=[f"{bucket:04d}" for bucket in range(config["buckets"])],
        family_params=family_params,
        family_vocab=families["vocab"],
        families=outdir / "families" / "families.parquet",
        embedding_store=store,
        embedding_settings=EmbeddingSettings.from_config(config["embeddings"]).output_params(),
        bacformer_model_id=model_id,
        bacformer_pretrain_run=pretrain_run(model_id),
        bacformer_settings=BacformerSettings.from_config(bacformer),
        pretrain_dir=outdir / "pretrain" / pretrain["run"],
        pretrain_splits=splits,
        required_splits=required_splits(samples, splits, pretrain["test_fraction"]),
        splits_drawn=splits_drawn(samples),
    )
