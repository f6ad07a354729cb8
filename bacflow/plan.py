"""The run plan: everything the workflow's rules need, computed once from the config and the sample sheet.

`make_plan` checks the config and the sheet and works out the samples and their shards, the buckets, every
output folder, the settings each stage's jobs get, which ESM-2 and Bacformer models the run uses, and the
pretraining splits. The rules only read it (``rules/common.smk`` makes it), so what a run will do is plain,
tested Python, and no rule file depends on another's globals.

Nothing here imports PyTorch: a hub model id is resolved to a commit (and downloaded if it is not cached)
only when a job that needs it is planned, once (`RunPlan.esm_model`, `RunPlan.bacformer_model`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bacflow.bacformer.model import FOLDER_FILES, hidden_size, output_name, pretrain_model_folder, pretrain_run
from bacflow.bacformer.stage import BacformerSettings
from bacflow.core.errors import InputError
from bacflow.core.models import planned_model, resolve_model
from bacflow.core.samples import Sample, assign_shards, read_samples
from bacflow.core.schemas import check_config
from bacflow.embeddings.stage import EmbeddingSettings
from bacflow.embeddings.tiny import ESM2_GEOMETRIES
from bacflow.families.stage import VOCAB_FILES, FamilyParams, check_vocab
from bacflow.pretrain.data import SPLITS, assign_splits, required_splits, splits_drawn


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
    embeddings: Path  #: the stage's folder (gathered shards, bucket folders, QC)
    embedding_store: Path  #: the store's root: the run's own, or a folder shared by runs
    tiny_esm: Path
    embedding_settings: dict[str, Any]  #: the settings that can change a vector (the jobs' params)

    # bacformer
    bacformer_model_id: str  #: as configured; "pretrain" becomes "pretrain:<this config's run>"
    bacformer_pretrain_run: str | None
    bacformer_settings: BacformerSettings
    bacformer_name: str  #: the results folder's name
    tiny_bacformer: Path

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
        """The ESM-2 bucket jobs' folders."""
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
    def pretrain_data(self) -> Path:
        return self.pretrain_dir / "data"

    @property
    def pretrain_parts(self) -> dict[str, list[str]]:
        return {split: self.shard_files(self.pretrain_data / split / "part-{shard}.parquet") for split in SPLITS}

    def shard_members(self, shard: str) -> list[dict[str, Any]]:
        """The genomes of a shard as plain dicts (the proteins job's params: new members re-run it)."""
        # vars, not dataclasses.asdict (which deep-copies): called for every shard while planning.
        return [dict(vars(sample)) for sample in self.shards[shard]]

    def shard_genome_files(self, shard: str) -> list[str]:
        return [path for sample in self.shards[shard] for path in (sample.path, sample.gff) if path]

    def annotation_config(self) -> dict[str, Any]:
        """The config keys that change the proteins stage's output."""
        return {key: self.config[key] for key in ("annotation", "gene_calling", "strict")}

    def pretrain_members(self, shard: str) -> list[dict[str, Any]]:
        """A shard's genomes with kind and split (the corpus job's params: a change of either re-runs it)."""
        return [
            {"genome_id": sample.genome_id, "kind": sample.kind, "split": self.pretrain_splits[sample.genome_id]}
            for sample in self.shards[shard]
        ]

    @functools.cached_property
    def esm_model(self) -> tuple[str, str | None]:
        """(model, revision) for the bucket jobs: the tiny model's folder, a folder, or a hub id resolved to a
        commit (downloaded if need be), so that jobs load that commit from the cache and a missing model fails
        before any job runs. Worked out on first use: targets without embeddings never touch the hub."""
        if self.esm["tiny_model"]:
            return str(self.tiny_esm), None
        return planned_model(self.esm["model"], self.esm["revision"])

    @functools.cached_property
    def bacformer_model(self) -> tuple[str, str | None]:
        """(model, revision) for the Bacformer shard jobs: a folder, or a hub id resolved once, on first use."""
        if self.bacformer["tiny_model"]:
            return str(self.tiny_bacformer), None
        if self.bacformer_pretrain_run is not None:
            return str(pretrain_model_folder(self.outdir, self.bacformer_pretrain_run)), None
        return planned_model(
            self.bacformer_model_id, self.bacformer["revision"], setting="bacformer", files=FOLDER_FILES
        )

    def tiny_bacformer_width(self) -> int:
        """The tiny Bacformer's width is the ESM-2 vectors' size: its input layer maps them to its hidden size."""
        if self.esm["tiny_model"]:
            return ESM2_GEOMETRIES["tiny"]["hidden_size"]
        model, revision = self.esm_model
        return hidden_size(resolve_model(model, revision).path)


def make_plan(config: dict[str, Any]) -> RunPlan:
    """The plan of a run with `config` (checked, and its defaults filled in, here). Raises InputError with one
    line naming what is wrong: a config key, a sheet row, a vocabulary, a Bacformer model name."""
    check_config(config)
    outdir = Path(config["outdir"])
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
    embeddings = outdir / "embeddings"
    return RunPlan(
        config=config,
        outdir=outdir,
        samples=samples,
        shards=assign_shards(samples, config["shard_size"]),
        buckets=[f"{bucket:04d}" for bucket in range(config["buckets"])],
        family_params=family_params,
        family_vocab=families["vocab"],
        families=outdir / "families" / "families.parquet",
        embeddings=embeddings,
        # The store outlives runs when embedding_store names a shared folder; by default it is the run's own.
        embedding_store=Path(config["embedding_store"] or embeddings),
        tiny_esm=outdir / "models" / "esm2-tiny",
        embedding_settings=EmbeddingSettings.from_config(config["embeddings"]).output_params(),
        bacformer_model_id=model_id,
        bacformer_pretrain_run=pretrain_run(model_id),
        bacformer_settings=BacformerSettings.from_config(bacformer),
        bacformer_name=bacformer["name"] or output_name(model_id, bacformer["revision"], tiny=bacformer["tiny_model"]),
        tiny_bacformer=outdir / "models" / "bacformer-tiny",
        pretrain_dir=outdir / "pretrain" / pretrain["run"],
        pretrain_splits=splits,
        required_splits=required_splits(samples, splits, pretrain["test_fraction"]),
        splits_drawn=splits_drawn(samples),
    )
