"""The run plan (bacflow.plan) without Snakemake: shards, buckets, folders, model choice, splits and errors."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from bacflow.core.errors import InputError
from bacflow.plan import make_plan
from conftest import PYRODIGAL_DATA
from workflow_helpers import REPO

DEFAULTS = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
GENOMES = ["SRR492066.fna.gz", "KK037166.fna.gz", "MIIJ01000039.fna.gz"]


def config(tmp_path: Path, genomes: int = 5, **overrides) -> dict:
    """The default config with a sheet of `genomes` rows (the pyrodigal genomes, repeated) and `overrides`."""
    rows = ["genome_id\tpath\tkind"] + [f"g{i}\t{PYRODIGAL_DATA / GENOMES[i % 3]}\tmag" for i in range(genomes)]
    (tmp_path / "samples.tsv").write_text("\n".join(rows) + "\n")
    result = copy.deepcopy(DEFAULTS) | {"samples": str(tmp_path / "samples.tsv"), "outdir": "out"}
    for key, value in overrides.items():
        result[key] = result[key] | value if isinstance(value, dict) else value
    return result


def test_shards_buckets_and_folders(tmp_path: Path):
    plan = make_plan(config(tmp_path, genomes=5, shard_size=2, buckets=3))
    assert {shard: [s.genome_id for s in samples] for shard, samples in plan.shards.items()} == {
        "00000": ["g0", "g1"],
        "00001": ["g2", "g3"],
        "00002": ["g4"],
    }
    assert plan.buckets == ["0000", "0001", "0002"]
    assert plan.bucket_files == [f"out/unique/bucket=000{b}.parquet" for b in range(3)]
    assert plan.embedding_shards == [f"out/embeddings/shards/shard=0000{s}.parquet" for s in range(3)]
    assert plan.embedding_store == Path("out/embeddings") and plan.families == Path("out/families/families.parquet")
    assert plan.shard_members("00002")[0]["genome_id"] == "g4"
    assert plan.shard_genome_files("00001") == [str(PYRODIGAL_DATA / GENOMES[2]), str(PYRODIGAL_DATA / GENOMES[0])]
    assert plan.pretrain_parts["val"] == [f"out/pretrain/bacformer/data/val/part-0000{s}.parquet" for s in range(3)]
    # Defaults were filled in, and only settings that change vectors are the embedding jobs' params.
    assert plan.config["gene_calling"]["min_gene"] == 90
    assert "checkpoint_sequences" not in plan.embedding_settings and plan.embedding_settings["max_length"] == 1024


def test_models_tiny_folder_and_pretrain(tmp_path: Path):
    tiny = make_plan(config(tmp_path, embeddings={"tiny_model": True}, bacformer={"tiny_model": True}))
    assert tiny.esm_model == ("out/models/esm2-tiny", None)
    assert tiny.bacformer_model == ("out/models/bacformer-tiny", None)
    assert tiny.bacformer_name == "tiny-random" and tiny.bacformer_dir == Path("out/bacformer/tiny-random")
    assert tiny.tiny_bacformer_width() == 48  # the tiny ESM-2's vectors

    pretrained = make_plan(config(tmp_path, bacformer={"model": "pretrain"}, pretrain={"run": "mine"}))
    assert pretrained.bacformer_model_id == "pretrain:mine" and pretrained.bacformer_pretrain_run == "mine"
    assert pretrained.bacformer_model == ("out/pretrain/mine/model", None)


def test_hub_models_are_resolved_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    calls = []
    monkeypatch.setattr(
        "bacflow.plan.planned_model", lambda model, revision, **kw: calls.append(model) or (model, "c0ffee")
    )
    plan = make_plan(config(tmp_path))
    assert calls == []  # planning the proteins alone never touches the hub
    assert plan.esm_model == ("facebook/esm2_t12_35M_UR50D", "c0ffee") and plan.esm_model == plan.esm_model
    assert plan.bacformer_model == ("macwiatrak/bacformer-masked-complete-genomes", "c0ffee")
    assert calls == ["facebook/esm2_t12_35M_UR50D", "macwiatrak/bacformer-masked-complete-genomes"]  # once each


def test_splits_from_the_sheet_and_drawn(tmp_path: Path):
    drawn = make_plan(config(tmp_path, genomes=100))
    assert set(drawn.pretrain_splits.values()) == {"train", "val", "test"} and drawn.splits_drawn
    rows = ["genome_id\tpath\tkind\tsplit"] + [
        f"g{i}\t{PYRODIGAL_DATA / GENOMES[0]}\tmag\t{'train' if i else 'val'}" for i in range(4)
    ]
    (tmp_path / "named.tsv").write_text("\n".join(rows) + "\n")
    named = make_plan(config(tmp_path) | {"samples": str(tmp_path / "named.tsv")})
    assert named.pretrain_splits == {"g0": "val", "g1": "train", "g2": "train", "g3": "train"}
    assert not named.splits_drawn and named.required_splits == ["train", "val"]
    assert named.pretrain_members("00000")[0] == {"genome_id": "g0", "kind": "mag", "split": "val"}


def test_errors_are_one_line_naming_what_is_wrong(tmp_path: Path):
    with pytest.raises(InputError, match="bad sample sheet: .*missing.tsv"):
        make_plan(config(tmp_path) | {"samples": str(tmp_path / "missing.tsv")})
    with pytest.raises(InputError, match="shard_sizes"):
        make_plan(config(tmp_path) | {"shard_sizes": 3})
    with pytest.raises(InputError, match="vocab"):
        make_plan(config(tmp_path, families={"vocab": str(tmp_path / "no-vocabulary")}))
    with pytest.raises(InputError, match="bacformer.mode"):
        make_plan(config(tmp_path, bacformer={"mode": "sideways"}))
