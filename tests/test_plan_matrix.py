"""Every config of the dry-run matrix (`.test/config-*/config.yaml`, each laid over config/config.yaml) plans
every named target: which encoder (tiny, hub id, local folder), which Bacformer (tiny, hub id, local folder,
this config's pretraining) of each family (base on ESM-2, Large on ESM-C), a frozen family vocabulary or not,
each annotation mode, and genomes of every kind. Planning runs the workflow's Python (model resolution, the
tiny Bacformer's width, vocabulary checks) and nothing else; a broken combination fails here in seconds instead
of on a cluster.

The configs name their inputs relative to the work folder that the `plan_inputs` fixture fills:
``config/samples.tsv`` (the default sheet: complete, draft and MAG FASTA genomes shipped with pyrodigal),
``annotated.tsv`` (GenBank and FASTA + GFF3 genomes of ../shared/data), ``models/esm2``, ``models/esmc``,
``models/bacformer`` and ``models/bacformer-large`` (tiny random models built here) and ``vocab`` (a vocabulary
built by bacflow's own clustering from real proteins).

Hub models: there is no network here, and the product never downloads weights in tests. The tiny models are
saved in a Hugging Face cache of this session, laid out as the hub client leaves a download (refs/main
naming a commit, snapshots/<commit>/ holding the files), under the published hub ids of both families (ESM-C at
the commit Bacformer Large pins), and every
Snakemake run gets that cache with HF_HUB_OFFLINE=1. The workflow's own planning code
(`bacflow.core.models.planned_model` through huggingface_hub's `snapshot_download`) then resolves each hub id
to that commit exactly as it resolves a real cached download, and a cache miss fails rather than fetches.
"""

from __future__ import annotations

import copy
import re
import shutil
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from snakemake.utils import update_config

from bacflow.bacformer.model import build_tiny_bacformer
from bacflow.bacformer.model_families import BASE, LARGE
from bacflow.embeddings.tiny import ESM2_GEOMETRIES, ESMC_GEOMETRIES, build_esm2, build_esmc
from bacflow.families import mmseqs
from bacflow.families.stage import FamilyParams, build_families
from bacflow.proteins.annotate import GenomeProteins
from bacflow.proteins.unique import sequence_buckets
from conftest import CT_114V1_FASTA, CT_114V1_PRODIGAL_GFF, PYRODIGAL_DATA, SHARED_DATA, SMALL_GENOME
from workflow_helpers import REPO, planned_jobs, snakemake, write_sheet

BASE_CONFIG = REPO / "config" / "config.yaml"
MATRIX = sorted((REPO / ".test").glob("config-*/config.yaml"))
TARGETS = ("proteins", "families", "embeddings", "bacformer", "pretrain", "all")
# Any 40 hex digits: the commit that the cache's refs/main names.
HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


@cache
def base_config() -> dict[str, Any]:
    return yaml.safe_load(BASE_CONFIG.read_text())


def merged_config(path: Path) -> dict[str, Any]:
    """The config a run of `path` sees: config/config.yaml with `path` laid over it, as Snakemake merges them."""
    config = copy.deepcopy(base_config())
    update_config(config, yaml.safe_load(path.read_text()))
    return config


def bacformer_family(config: dict[str, Any]) -> str:
    """base or large: the config's Bacformer (the fixture's Large folder is ``models/bacformer-large``)."""
    bacformer = config["bacformer"]
    if bacformer["tiny_model"]:
        return "large" if bacformer["tiny_model"] == "large" else "base"
    if bacformer["model"] == "pretrain":
        return "large" if config["pretrain"]["family"] == "large" else "base"
    return "large" if bacformer["model"] in (*LARGE.checkpoints, "models/bacformer-large") else "base"


def esm_mode(config: dict[str, Any]) -> str:
    if config["embeddings"]["tiny_model"]:
        return "tiny"
    return "folder" if config["embeddings"]["model"].startswith("models/") else "hub"


def bacformer_mode(config: dict[str, Any]) -> str:
    bacformer = config["bacformer"]
    if bacformer["tiny_model"]:
        return "tiny"
    if bacformer["model"] == "pretrain":
        return "pretrain"
    return "folder" if bacformer["model"].startswith("models/") else "hub"


def expected_rules(config: dict[str, Any], target: str) -> set[str]:
    """The rules a dry run of `target` plans from scratch under `config`: exactly these, none missing or more."""
    unique = {"proteins_shard", "unique_index", "unique_bucket"}
    families = unique | {"families_assign" if config["families"]["vocab"] else "families_cluster"}
    vectors = unique | {"embed_bucket", "embed_index", "embed_gather"}
    if esm_mode(config) == "tiny":
        vectors |= {"esm_tiny_model"}
    pretrain = vectors | families | {"pretrain_corpus_shard", "pretrain_corpus", "pretrain_train"}
    model = {"tiny": {"bacformer_tiny_model"}, "pretrain": pretrain}.get(bacformer_mode(config), set())
    bacformer = vectors | model | {"bacformer_shard", "bacformer_genomes"}
    # qc_genomes: the genome QC table, which the stage targets list (its job also clears other plans' shards).
    plans = {
        "proteins": {"proteins_shard", "qc_genomes", "proteins"},
        "families": families | {"qc_genomes", "families_qc", "families"},
        "embeddings": vectors | {"qc_genomes", "embed_qc", "embeddings"},
        "bacformer": bacformer | {"qc_genomes", "embed_qc", "bacformer"},
        "pretrain": pretrain | {"pretrain"},
    }
    if target == "all":
        # `all` lists the stage targets' inputs, not the target rules themselves.
        stages = [plans[name] - {name} for name in ("proteins", "families", "embeddings", "bacformer")]
        return set().union(*stages, {"report_genomes", "report_families", "report_projection", "all"})
    return plans[target]


def cache_hub_model(cache: Path, hub_id: str, folder: Path, commit: str = HUB_COMMIT) -> None:
    """`folder` in the hub cache `cache` as huggingface_hub leaves a download of `hub_id` at `commit` (main)."""
    repo = cache / f"models--{hub_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(folder, repo / "snapshots" / commit)


def write_annotated_sheet(path: Path) -> None:
    """Genomes that carry their own CDS, one of each kind: GenBank (complete, MAG), FASTA with a GFF3 (draft)."""
    rows = [
        ("Ct_D-UW-3-CX", SHARED_DATA / "cohort" / "Ctrachomatis_D-UW-3-CX_NC_000117.1.gbff.gz", "", "complete"),
        ("Ct_114V1", CT_114V1_FASTA, CT_114V1_PRODIGAL_GFF, "draft"),
        ("Paracoccus_MAG", SHARED_DATA / "drafts" / "Paracoccus_sp_SCN68-21_MAG_MEES01.gbff.gz", "", "mag"),
    ]
    lines = ["genome_id\tpath\tgff\tgenetic_code\tkind"]
    lines += [f"{name}\t{fasta}\t{gff}\t11\t{kind}" for name, fasta, gff, kind in rows]
    path.write_text("\n".join(lines) + "\n")


def build_vocab(folder: Path, proteins: GenomeProteins, work: Path) -> None:
    """A frozen vocabulary made the way the `families` target makes one, from one real genome's proteins, with
    the families parameters of config/config.yaml (a vocabulary of other parameters is refused)."""
    buckets = sequence_buckets(proteins.columns["sequence"], work / "buckets", 2)
    build_families(buckets, work / "families.parquet", folder, FamilyParams.from_config(base_config()["families"]))


@pytest.fixture(scope="session")
def plan_inputs(tmp_path_factory, annotated: Callable[..., GenomeProteins]) -> tuple[Path, dict[str, str]]:
    """(the work folder every matrix config runs in, {input it lacks: why}). Inputs that need what this machine
    may not have (../shared/data, MMseqs2) are left out; configs that name them skip."""
    workdir = tmp_path_factory.mktemp("plan-matrix")
    (workdir / "config").mkdir()
    write_sheet(
        workdir / "config" / "samples.tsv",
        [
            ("NCTC11397", str(PYRODIGAL_DATA / "GCF_001457455.1_NCTC11397_genomic.fna.gz"), "11", "complete"),
            ("MIIJ01000039", str(PYRODIGAL_DATA / "MIIJ01000039.fna.gz"), "11", "draft"),
            ("SRR492066", str(SMALL_GENOME), "11", "mag"),
        ],
    )
    esm2 = build_esm2(workdir / "models" / "esm2")
    esmc = build_esmc(workdir / "models" / "esmc")
    bacformer = build_tiny_bacformer(workdir / "models" / "bacformer", ESM2_GEOMETRIES["tiny"]["hidden_size"])
    large = build_tiny_bacformer(
        workdir / "models" / "bacformer-large", ESMC_GEOMETRIES["tiny"]["hidden_size"], family="large"
    )
    hub = workdir / "hf" / "hub"
    cache_hub_model(hub, BASE.embedding_model, esm2)
    cache_hub_model(hub, LARGE.embedding_model, esmc, commit=LARGE.embedding_revision)
    for family, model in ((BASE, bacformer), (LARGE, large)):
        for hub_id in family.checkpoints:
            cache_hub_model(hub, hub_id, model)
    missing = {}
    if SHARED_DATA.is_dir():
        write_annotated_sheet(workdir / "annotated.tsv")
    else:
        missing["annotated.tsv"] = f"the shared genomes are absent ({SHARED_DATA})"
    if shutil.which(mmseqs.PROGRAM):
        build_vocab(workdir / "vocab", annotated(SMALL_GENOME, kind="mag"), tmp_path_factory.mktemp("vocab-work"))
    else:
        missing["vocab"] = "MMseqs2 is not installed (`make system-deps` installs it)"
    return workdir, missing


def test_the_matrix_covers_every_choice():
    """Each model source, vocabulary choice, annotation mode and sheet appears in at least one config."""
    configs = [merged_config(path) for path in MATRIX]
    assert {esm_mode(config) for config in configs} == {"tiny", "hub", "folder"}
    assert {bacformer_mode(config) for config in configs} == {"tiny", "hub", "folder", "pretrain"}
    # Each family from each kind of source.
    families = {(bacformer_family(config), bacformer_mode(config)) for config in configs}
    assert families >= {
        (family, mode) for family in ("base", "large") for mode in ("tiny", "hub", "folder", "pretrain")
    }
    assert {bool(config["families"]["vocab"]) for config in configs} == {True, False}
    assert {config["annotation"] for config in configs} == {"call", "file", "auto"}
    assert {config["samples"] for config in configs} == {"config/samples.tsv", "annotated.tsv"}
    # A tiny Bacformer takes its width from the vectors, whatever their source.
    tiny = {esm_mode(config) for config in configs if bacformer_mode(config) == "tiny"}
    assert tiny == {"tiny", "hub", "folder"}


def dag_rules(dot: str, target: str) -> set[str]:
    """The rules of the jobs that the `target` job needs, itself included, read from `snakemake --dag dot`."""
    labels = {node: label for node, label in re.findall(r'^\s*(\d+)\[label = "(\w+)', dot, re.MULTILINE)}
    needs: dict[str, set[str]] = {}
    for source, sink in re.findall(r"^\s*(\d+) -> (\d+)", dot, re.MULTILINE):
        needs.setdefault(sink, set()).add(source)
    (node,) = [node for node, label in labels.items() if label == target]
    seen, todo = set(), [node]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(needs.get(current, ()))
    return {labels[node] for node in seen}


@pytest.mark.parametrize("path", MATRIX, ids=[path.parent.name.removeprefix("config-") for path in MATRIX])
def test_every_target_plans(path: Path, plan_inputs: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch):
    workdir, missing = plan_inputs
    config = merged_config(path)
    for name in (config["samples"], config["families"]["vocab"]):
        if name in missing:
            pytest.skip(f"{name}: {missing[name]}")
    # The session's hub cache, and no network: a hub id not in it fails planning rather than downloads.
    monkeypatch.setenv("HF_HOME", str(workdir / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(workdir / "hf" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # One call per kind of run for all six targets: a Snakemake start costs seconds, and a target whose
    # planning fails fails the call. The dry run plans every job (inputs, params, resources); the job graph
    # says which rules each target needs.
    configfiles = ("--configfile", str(BASE_CONFIG), str(path))
    planned = planned_jobs(workdir, *configfiles, "--", *TARGETS)
    assert set(planned) - {"total"} == set().union(*(expected_rules(config, target) for target in TARGETS))
    dot = snakemake(workdir, *configfiles, "--dag", "dot", "--", *TARGETS).stdout
    for target in TARGETS:
        assert dag_rules(dot, target) == expected_rules(config, target), target
