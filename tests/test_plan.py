"""The run plan (bacflow.plan) without Snakemake: shards, buckets, folders, model choice, splits and errors."""

from __future__ import annotations

import copy
import json
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
    assert plan.embedding_shards == [f"out/embeddings/esm2/shards/shard=0000{s}.parquet" for s in range(3)]
    assert plan.embedding_store == Path("out/embeddings") and plan.families == Path("out/families/families.parquet")
    # Each member carries its file's size and mtime, so that a changed file re-runs its shard (params trigger).
    (member,) = plan.shard_members("00002")
    assert member.genome_id == "g4"
    genome = PYRODIGAL_DATA / GENOMES[4 % 3]
    assert member.path == str(genome) and member.stamp == (genome.stat().st_size, genome.stat().st_mtime_ns)
    assert plan.pretrain_parts["val"] == [f"out/pretrain/bacformer/data/val/part-0000{s}.parquet" for s in range(3)]
    # Defaults were filled in, and only settings that change vectors are the embedding jobs' params.
    assert plan.config["gene_calling"]["min_gene"] == 90
    assert "checkpoint_sequences" not in plan.embedding_settings and plan.embedding_settings["max_length"] == 1024


def test_models_tiny_folder_and_pretrain(tmp_path: Path):
    tiny = make_plan(config(tmp_path, embeddings={"tiny_model": True}, bacformer={"tiny_model": True}))
    assert tiny.esm_model == ("out/models/esm2-tiny", None)
    assert tiny.bacformer_model == ("out/models/bacformer-base-tiny", None)
    assert tiny.bacformer_name == "tiny-random" and tiny.bacformer_dir == Path("out/bacformer/tiny-random")
    assert tiny.vector_width == 48  # the tiny ESM-2's, which the tiny Bacformer is built to take

    pretrained = make_plan(config(tmp_path, bacformer={"model": "pretrain"}, pretrain={"run": "mine"}))
    assert pretrained.bacformer_model_id == "pretrain:mine" and pretrained.bacformer_pretrain_run == "mine"
    assert pretrained.bacformer_model == ("out/pretrain/mine/model", None)


def fake_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, configs: dict[str, dict]) -> list[str]:
    """Hub ids resolve to commit c0ffee, and their snapshots hold the config.json in `configs` (by model id);
    returns the models resolved, in order."""
    calls: list[str] = []

    def planned(model: str, revision: str | None = None, **where: str) -> tuple[str, str | None]:
        if Path(model).is_dir():
            return model, None
        calls.append(model)
        return model, "c0ffee"

    monkeypatch.setattr("bacflow.plan.planned_model", planned)

    def snapshot(model: str, revision: str | None, **where: str) -> Path:
        if revision is None:
            return Path(model)
        folder = tmp_path / "hub" / model
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(configs[model]))
        return folder

    monkeypatch.setattr("bacflow.plan.model_folder", snapshot)
    return calls


ESM2_35M = {"model_type": "esm", "hidden_size": 480}
BASE_CHECKPOINT = {"model_type": "bacformer", "architectures": ["BacformerForMaskedGM"], "hidden_size": 480}
LARGE_CHECKPOINT = {"model_type": "bacformer", "architectures": ["BacformerLargeForMaskedGM"], "hidden_size": 960}
ESMC_300M = {"model_type": "ESMplusplus", "hidden_size": 960}


def test_hub_models_are_resolved_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    calls = fake_hub(
        tmp_path,
        monkeypatch,
        {"facebook/esm2_t12_35M_UR50D": ESM2_35M, "macwiatrak/bacformer-masked-complete-genomes": BASE_CHECKPOINT},
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


@pytest.mark.parametrize("key", ["outdir", "embedding_store"])
def test_a_folder_setting_that_names_a_file_is_refused(tmp_path: Path, key: str):
    """Jobs would fail creating folders under it; planning says so first, in one line."""
    file = tmp_path / "taken"
    file.write_text("a file where a folder is meant")
    for value, message in (
        (file, f"config key '{key}': {file} is a file, not a folder"),
        (file / "results", f"config key '{key}': {file / 'results'} cannot be made: {file} is a file, not a folder"),
    ):
        with pytest.raises(InputError) as raised:
            make_plan(config(tmp_path) | {key: str(value)})
        assert str(raised.value) == message


def test_the_bacformer_family_chooses_the_encoder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    large_id = "macwiatrak/bacformer-large-masked-MAG"
    calls = fake_hub(tmp_path, monkeypatch, {large_id: LARGE_CHECKPOINT, "Synthyra/ESMplusplus_small": ESMC_300M})
    large = make_plan(config(tmp_path, bacformer={"model": large_id}))
    # A published checkpoint's family is known without the hub; its encoder's folder holds this run's vectors.
    assert large.bacformer_family.name == "large" and large.encoder == "esmc" and calls == []
    assert large.embedding_shards[0] == "out/embeddings/esmc/shards/shard=00000.parquet"
    assert large.embedding_qc == Path("out/qc/embeddings-esmc.parquet")
    assert large.bacformer_dir == Path("out/bacformer/macwiatrak--bacformer-large-masked-MAG")
    # ESM-C at the commit Bacformer Large was trained on (an explicit embeddings.revision would win).
    assert large.esm_model == ("Synthyra/ESMplusplus_small", "c0ffee")
    assert large.bacformer_model == (large_id, "c0ffee") and large.vector_width == 960
    assert large.embedding_store == Path("out/embeddings")  # one store for both encoders, a key per recipe

    tiny = make_plan(config(tmp_path, embeddings={"tiny_model": True}, bacformer={"tiny_model": "large"}))
    assert (tiny.encoder, tiny.esm_model, tiny.vector_width) == ("esmc", ("out/models/esmc-tiny", None), 128)
    assert (
        tiny.bacformer_model == ("out/models/bacformer-large-tiny", None) and tiny.bacformer_name == "tiny-random-large"
    )


def test_a_bacformer_fed_another_encoders_vectors_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    fake_hub(
        tmp_path,
        monkeypatch,
        {
            "facebook/esm2_t12_35M_UR50D": ESM2_35M,
            "facebook/esm2_t33_650M_UR50D": {"model_type": "esm", "hidden_size": 1280},
            "Synthyra/ESMplusplus_small": ESMC_300M,
            "macwiatrak/bacformer-large-masked-MAG": LARGE_CHECKPOINT,
            "macwiatrak/bacformer-masked-MAG": BASE_CHECKPOINT,
            "macwiatrak/bacformer-masked-complete-genomes": BASE_CHECKPOINT,
        },
    )
    esm2_into_large = make_plan(
        config(
            tmp_path,
            embeddings={"model": "facebook/esm2_t12_35M_UR50D"},
            bacformer={"model": "macwiatrak/bacformer-large-masked-MAG"},
        )
    )
    assert esm2_into_large.encoder == "esm2"  # the embeddings stage alone may run
    with pytest.raises(InputError, match=r"bacformer-large-masked-MAG \(a Bacformer Large\) takes ESM-C .*ESM-2"):
        _ = esm2_into_large.bacformer_model
    esmc_into_base = make_plan(
        config(
            tmp_path,
            embeddings={"model": "Synthyra/ESMplusplus_small"},
            bacformer={"model": "macwiatrak/bacformer-masked-MAG"},
        )
    )
    with pytest.raises(InputError, match=r"Bacformer base\) takes ESM-2 .* vectors are ESM-C"):
        _ = esmc_into_base.bacformer_model
    wider = make_plan(config(tmp_path, embeddings={"model": "facebook/esm2_t33_650M_UR50D"}))
    with pytest.raises(InputError, match="takes 480-wide protein vectors, but .*esm2_t33_650M_UR50D gives 1280-wide"):
        _ = wider.bacformer_model
    # A checkpoint whose config.json names no known family is no Bacformer.
    folder = tmp_path / "not-bacformer"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(ESM2_35M))
    with pytest.raises(InputError, match="model_type 'esm', not 'bacformer'"):
        _ = make_plan(config(tmp_path, bacformer={"model": str(folder)})).encoder


def test_a_refusal_names_the_model_that_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The tiny Large runs, not the hub id left in bacformer.model; pretraining's model is the one it trains."""
    fake_hub(tmp_path, monkeypatch, {"facebook/esm2_t12_35M_UR50D": ESM2_35M})
    esm2 = {"model": "facebook/esm2_t12_35M_UR50D"}
    with pytest.raises(InputError) as raised:
        _ = make_plan(config(tmp_path, embeddings=esm2, bacformer={"tiny_model": "large"})).bacformer_model
    assert str(raised.value) == (
        "the tiny Bacformer Large (bacformer.tiny_model: large) takes ESM-C vectors (Synthyra/ESMplusplus_small), "
        "but this run's vectors are ESM-2, from embeddings.model facebook/esm2_t12_35M_UR50D: "
        "set embeddings.model to auto or to an ESM-C model"
    )
    with pytest.raises(InputError) as raised:
        _ = make_plan(config(tmp_path, pretrain={"family": "large"})).pretrain_params
    assert str(raised.value) == (
        "the Bacformer Large that pretraining trains (pretrain.family large) takes ESM-C vectors "
        "(Synthyra/ESMplusplus_small), but this run's vectors are ESM-2, from embeddings.model auto, the encoder of "
        "bacformer.model macwiatrak/bacformer-masked-complete-genomes (a Bacformer base): "
        "set bacformer.model to pretrain or to a Bacformer Large"
    )
    tiny = {"tiny_model": True}
    folder = tmp_path / "large-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LARGE_CHECKPOINT))
    with pytest.raises(InputError) as raised:
        _ = make_plan(
            config(tmp_path, embeddings=tiny, bacformer=tiny, pretrain={"init_from": str(folder)})
        ).pretrain_params
    assert str(raised.value).startswith(
        f"the Bacformer Large that pretraining trains (pretrain.family auto: pretrain.init_from {folder}'s) takes "
    )
    assert str(raised.value).endswith(
        "but this run's vectors are ESM-2, from embeddings.tiny_model, the encoder of the tiny Bacformer base "
        "(bacformer.tiny_model: true): set bacformer.model to pretrain or to a Bacformer Large"
    )


def test_pretraining_either_family(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    fake_hub(tmp_path, monkeypatch, {})
    # By default pretraining trains the family that takes this run's vectors, at its published geometry.
    base = make_plan(config(tmp_path)).pretrain_params
    assert base["family"] == "base" and base["model"]["num_hidden_layers"] == 12
    # Pretraining Large, and embedding with what it needs, when the Bacformer stage runs the pretrained model.
    large = make_plan(
        config(
            tmp_path, bacformer={"model": "pretrain"}, pretrain={"family": "large", "model": {"num_hidden_layers": 2}}
        )
    )
    assert large.encoder == "esmc" and large.bacformer_family.name == "large"
    assert large.pretrain_params["model"] == {
        "num_hidden_layers": 2,
        "num_attention_heads": 15,
        "hidden_dropout_prob": 0.1,
        "final_layer_dropout_prob": 0.1,
    }
    # A Large to pretrain while the run's vectors are ESM-2 (for the base model in bacformer.model) is refused.
    with pytest.raises(InputError, match=r"pretrain.family large\) takes ESM-C vectors .* vectors are ESM-2"):
        _ = make_plan(config(tmp_path, pretrain={"family": "large"})).pretrain_params
    # Continued pretraining follows init_from's family.
    folder = tmp_path / "large-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LARGE_CHECKPOINT))
    continued = make_plan(
        config(
            tmp_path,
            embeddings={"tiny_model": True},
            bacformer={"model": "pretrain"},
            pretrain={"init_from": str(folder)},
        )
    )
    assert continued.pretrain_family.name == "large" and continued.encoder == "esmc"
