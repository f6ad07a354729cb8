"""The bacformer stage: windows and truncation, batching, genome pooling, shard files, model sources."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from bacflow.bacformer.inputs import protein_embeddings_to_inputs
from bacflow.bacformer.model import (
    FOLDER_FILES,
    build_tiny_bacformer,
    load_bacformer,
    output_name,
    pretrain_run,
    separator_id,
)
from bacflow.bacformer.modeling_bacformer import BacformerModel
from bacflow.bacformer.modeling_bacformer_large import BacformerLargeModel
from bacflow.bacformer.stage import BacformerSettings, bacformer_shard, embed_genomes, plan_genome
from bacflow.bacformer.tables import MODEL_KEY, gather_genomes, model_identity
from bacflow.core.errors import InputError
from bacflow.core.freshness import CONTENT_KEY, content_id, lineage
from bacflow.core.models import resolve_model
from bacflow.core.tables import write_parquet
from bacflow.embeddings.recipe import RECIPE
from bacflow.embeddings.store import vector_array
from bacformer_helpers import max_abs_diff, randomize, real_contig_sizes, run_reference, tiny_config
from conftest import needs_shared

#: fp32 outputs of the same inputs through differently padded batches (padded keys are masked).
TOLERANCE = 1e-5
DIM = 32  # tiny_config's hidden size
LIMIT, OVERLAP = 40, 12  # windows of 38 tokens between CLS and END


@pytest.fixture(scope="module")
def model() -> BacformerModel:
    return randomize(BacformerModel(tiny_config()), seed=0)


def genome(seed: int, contig_sizes: list[int]) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(size, DIM)).astype(np.float32) for size in contig_sizes]


def settings(**overrides) -> BacformerSettings:
    return BacformerSettings(**{"max_n_proteins": LIMIT, "window_overlap": OVERLAP, **overrides})


def run(model: BacformerModel, genomes: list[list[np.ndarray]], budget: int = 1, **overrides):
    plans = [plan_genome(contigs, settings(**overrides), 2) for contigs in genomes]
    pooling = overrides.get("genome_pooling", "proteins")
    return plans, embed_genomes(model, plans, genome_pooling=pooling, token_budget=budget)


# ------------------------------------------------------------------------------------ windows, truncation


def test_windowed_long_genome_gives_every_protein_a_vector_matching_truncation_away_from_edges(model):
    contigs = genome(1, [70, 45, 30])  # 145 proteins, 148 tokens between CLS and END: 5 windows
    n = 145
    (plan,), (windowed,) = run(model, [contigs], mode="windowed")
    (cut_plan,), (truncated,) = run(model, [contigs], mode="truncate")
    assert plan.mode == "windowed" and len(plan.spans) > 1 and cut_plan.mode == "truncated"
    assert windowed.embedded.all() and np.isfinite(windowed.vectors).all() and windowed.vectors.shape == (n, DIM)
    # Truncation keeps the first 38 tokens (all proteins of contig 0) and leaves the rest without a vector.
    assert truncated.embedded.tolist() == [True] * (LIMIT - 2) + [False] * (n - LIMIT + 2)
    assert np.isnan(truncated.vectors[~truncated.embedded]).all()
    # The first window is the truncated input: the proteins that take its vectors, the ones far from its cut
    # (at least half the overlap; the next window is closer to its own edge beyond), match the truncated run.
    far = plan.owners[plan.protein_positions] == 0
    assert far.sum() > 20 and (plan.spans[0][1] - 1 - plan.protein_positions[far]).min() >= OVERLAP // 2
    assert np.abs(windowed.vectors[far] - truncated.vectors[far]).max() <= TOLERANCE
    # Batched or not, the windows give the same vectors (each window against a hand-built run of it:
    # tests/bacformer/test_bacformer_inputs.py).
    one_at_a_time = run(model, [contigs], budget=1, mode="windowed")[1][0]
    all_at_once = run(model, [contigs], budget=10**6, mode="windowed")[1][0]
    assert max_abs_diff(torch.from_numpy(one_at_a_time.vectors), torch.from_numpy(all_at_once.vectors)) <= TOLERANCE


def test_genomes_that_fit_are_the_same_in_both_modes_and_are_the_references_input(model):
    contigs = genome(2, [10, 5])
    inputs = protein_embeddings_to_inputs(contigs, max_n_proteins=LIMIT)
    with torch.no_grad():
        hidden = model(**inputs, return_dict=True).last_hidden_state[0]
    expected = hidden[inputs["special_tokens_mask"][0] == 4].numpy()
    for mode in ("windowed", "truncate"):
        (plan,), (result,) = run(model, [contigs], mode=mode)
        assert plan.mode == "whole" and np.array_equal(result.vectors, expected)
        assert np.allclose(result.embedding, expected.mean(0), atol=1e-6)
        (_,), (reference_pooling,) = run(model, [contigs], mode=mode, genome_pooling="all_positions")
        assert np.allclose(reference_pooling.embedding, hidden.mean(0).numpy(), atol=1e-6)  # CLS, SEP, END too


def test_batches_of_several_genomes_equal_one_genome_at_a_time(model):
    genomes = [genome(3, [50, 20]), genome(4, [5]), genome(5, [12, 1, 9]), genome(6, [37]), genome(7, [2, 2])]
    for pooling in ("proteins", "all_positions"):
        _, alone = run(model, genomes, budget=1, genome_pooling=pooling)
        _, batched = run(model, genomes, budget=200, genome_pooling=pooling)  # up to 5 pieces per pass
        for one, many in zip(alone, batched, strict=False):
            assert np.abs(one.vectors - many.vectors).max() <= TOLERANCE
            assert np.abs(one.embedding - many.embedding).max() <= TOLERANCE


def test_a_bfloat16_model_runs_batched_and_gives_float32_vectors_near_the_float32_ones(model):
    # What a GPU job runs (dtype auto: bfloat16), here on the CPU: inputs cast to the model's dtype, outputs
    # back to float32 for the tables.
    genomes = [genome(13, [30, 8]), genome(14, [11])]
    _, exact = run(model, genomes)
    half = copy.deepcopy(model).to(torch.bfloat16)
    plans = [plan_genome(contigs, settings(), 2) for contigs in genomes]
    for one, low in zip(exact, embed_genomes(half, plans, token_budget=10**6), strict=False):
        assert low.vectors.dtype == np.float32 and np.isfinite(low.vectors).all()
        assert np.abs(low.vectors - one.vectors).max() < 0.1  # post-LN vectors of unit scale, 8-bit mantissas


def test_settings_are_checked():
    with pytest.raises(InputError, match="window_overlap"):
        BacformerSettings(max_n_proteins=40, window_overlap=38)
    BacformerSettings(max_n_proteins=40, window_overlap=38, mode="truncate")  # no windows: no overlap
    with pytest.raises(InputError, match="mode"):
        BacformerSettings(mode="sliding")


# ----------------------------------------------------------------------------------------- model sources


def test_output_names(tmp_path: Path):
    assert output_name("macwiatrak/bacformer-masked-MAG") == "macwiatrak--bacformer-masked-MAG"
    assert output_name("macwiatrak/bacformer-masked-MAG", "v1/x") == "macwiatrak--bacformer-masked-MAG--v1_x"
    assert output_name("pretrain:run-1") == "pretrain-run-1"
    assert output_name("anything", tiny="base") == "tiny-random"
    assert output_name("anything", tiny="large") == "tiny-random-large"
    first, second = tmp_path / "a" / "my model", tmp_path / "b" / "my model"
    first.mkdir(parents=True)
    second.mkdir(parents=True)
    assert output_name(str(first)).startswith("local-my_model-") and output_name(str(first)) != output_name(str(second))
    with pytest.raises(InputError, match="run name"):
        pretrain_run("pretrain:../x")


def test_separator_auto_is_2_unless_bacflow_pretrained_the_model_with_another(tmp_path: Path):
    assert separator_id("auto", tmp_path) == 2
    (tmp_path / "bacflow_pretrain.json").write_text(json.dumps({"separator_token_id": 3}))
    assert separator_id("auto", tmp_path) == 3
    assert separator_id(2, tmp_path) == 2


def test_a_hub_model_that_is_not_cached_offline_says_how_to_use_a_folder(tmp_path: Path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(InputError) as error:
        resolve_model("macwiatrak/bacformer-masked-MAG", setting="bacformer", files=FOLDER_FILES)
    message = str(error.value)
    assert "bacformer.model" in message and "local folder" in message and "hf download" in message
    assert "vocab.txt" not in message and "embeddings.model" not in message


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    return build_tiny_bacformer(tmp_path_factory.mktemp("model") / "bacformer", DIM)


def test_tiny_model_loads_as_an_encoder_and_wrong_folders_are_refused(tiny_folder: Path, tmp_path: Path):
    model = load_bacformer(tiny_folder, torch.device("cpu"), torch.float32)
    assert isinstance(model, BacformerModel) and not model.training and model.config.hidden_size == DIM
    broken = tmp_path / "broken"
    broken.mkdir()
    config = json.loads((tiny_folder / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "hidden_size": 2 * DIM}))
    (broken / "model.safetensors").write_bytes((tiny_folder / "model.safetensors").read_bytes())
    with pytest.raises(InputError, match="do not load|wrong shape"):
        load_bacformer(broken, torch.device("cpu"), torch.float32)
    (broken / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(InputError, match="not Bacformer"):
        load_bacformer(broken, torch.device("cpu"), torch.float32)


# ------------------------------------------------------------------------------------------- shard files


def write_shard(folder: Path, genomes: dict[str, list[np.ndarray]], contig_gap: bool = True) -> tuple[Path, Path]:
    """An embeddings shard and its protein table; a genome's second contig gets index 2 (contig 1 had no
    proteins), as the protein table numbers contigs in file order."""
    rows = []
    for genome_id, contigs in genomes.items():
        index = 0
        for contig, vectors in enumerate(contigs):
            number = contig + 1 if contig_gap and contig else contig
            for vector in vectors:
                rows.append((genome_id, number, index, f"{genome_id}_p{index}", f"{genome_id}_c{number}", vector))
                index += 1
    genome_ids, contig_index, protein_index, protein_ids, contig_ids, vectors = zip(*rows, strict=False)
    vectors_path, proteins_path = folder / "vectors.parquet", folder / "proteins.parquet"
    proteins = pa.table(
        {
            "genome_id": genome_ids,
            "contig_id": contig_ids,
            "contig_index": pa.array(contig_index, pa.int32()),
            "protein_index": pa.array(protein_index, pa.int32()),
            "protein_id": protein_ids,
        }
    )
    # With their lineage, as the proteins and gather jobs write them (bacflow.core.freshness).
    write_parquet(proteins, proteins_path, {CONTENT_KEY: content_id(proteins)})
    write_parquet(
        pa.table(
            {
                "genome_id": genome_ids,
                "contig_index": pa.array(contig_index, pa.int32()),
                "protein_index": pa.array(protein_index, pa.int32()),
                "seq_hash": ["0" * 32] * len(rows),
                "vector": vector_array(np.stack(vectors), "float32"),
            }
        ),
        vectors_path,
        lineage(proteins_path, None),
    )
    return vectors_path, proteins_path


def shard_job(model: Path, inputs: tuple[Path, Path], out: Path, name: str = "tiny", **overrides) -> dict:
    """The shard job on `inputs` (vectors, proteins), writing out/proteins.parquet and out/genomes.parquet."""
    return bacformer_shard(
        *inputs,
        out / "proteins.parquet",
        out / "genomes.parquet",
        shard="00000",
        model=str(model),
        revision=None,
        name=name,
        settings=settings(**overrides),
    )


def test_shard_job_writes_every_protein_and_genome_and_reruns_identically(tiny_folder: Path, tmp_path, monkeypatch):
    # As on the fake-GPU test cluster: a GPU is named but none is usable, so the job runs on the CPU.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    genomes = {"long": genome(9, [70, 40]), "short": genome(10, [6, 3]), "one": genome(11, [1])}
    vectors_path, proteins_path = write_shard(tmp_path, genomes)
    outputs = {}
    for run_name, mode in (("a", "windowed"), ("b", "windowed"), ("t", "truncate")):
        out = tmp_path / run_name
        counts = shard_job(tiny_folder, (vectors_path, proteins_path), out, mode=mode)
        outputs[run_name] = (pq.read_table(out / "proteins.parquet"), pq.read_table(out / "genomes.parquet"))
        assert counts["genomes"] == 3 and counts["proteins"] == 120
    proteins, genome_rows = outputs["a"]
    assert proteins.num_rows == 120 and proteins.column_names == [
        "genome_id",
        "protein_index",
        "protein_id",
        "contig",
        "contig_index",
        "vector",
    ]
    assert proteins.column("contig").to_pylist()[:71] == ["long_c0"] * 70 + ["long_c2"]
    assert np.isfinite(np.stack(proteins.column("vector").to_numpy(zero_copy_only=False))).all()
    rows = {row["genome_id"]: row for row in genome_rows.to_pylist()}
    assert rows["long"]["mode"] == "windowed" and rows["long"]["windows"] > 1 and rows["long"]["contigs"] == 2
    assert rows["short"]["mode"] == "whole" and rows["short"]["tokens"] == 1 + 9 + 2 + 1
    assert all(row["proteins_embedded"] == row["proteins"] and row["proteins_cut"] == 0 for row in rows.values())
    identity = model_identity(tmp_path / "a" / "genomes.parquet")
    assert identity["name"] == "tiny" and identity["random_init"] and identity["sep_token_id"] == 2
    assert pq.read_schema(tmp_path / "a" / "genomes.parquet").metadata[b"bacflow.bacformer_device"] == b"cpu (cpu)"
    # Reruns give the same tables.
    assert outputs["b"][0].equals(proteins) and outputs["b"][1].equals(genome_rows)
    # Truncation: the long genome keeps its first 38 proteins; the others are whole.
    truncated_proteins, truncated_genomes = outputs["t"]
    cut = {row["genome_id"]: row for row in truncated_genomes.to_pylist()}["long"]
    assert cut["mode"] == "truncated" and cut["proteins_embedded"] == LIMIT - 2 and cut["proteins_cut"] == 110 - 38
    assert truncated_proteins.num_rows == 120 - cut["proteins_cut"]

    # The cohort table: the shards' rows in order, the model in its metadata; shards of two models are refused.
    count = gather_genomes(
        [tmp_path / "a" / "genomes.parquet", tmp_path / "t" / "genomes.parquet"], tmp_path / "g.parquet"
    )
    metadata = pq.read_schema(tmp_path / "g.parquet").metadata
    assert count == 6 and MODEL_KEY.encode() in metadata
    # It carries the versions and parameters that computed its rows, the shard jobs'.
    assert "torch" in json.loads(metadata[b"bacflow.tool_versions"])
    assert json.loads(metadata[b"bacflow.params"])["mode"] == "windowed"


def test_shards_of_different_models_are_not_gathered(tiny_folder: Path, tmp_path: Path):
    vectors_path, proteins_path = write_shard(tmp_path, {"g": genome(12, [4])})
    paths = []
    for name in ("x", "y"):
        shard_job(tiny_folder, (vectors_path, proteins_path), tmp_path / name, name)
        paths.append(tmp_path / name / "genomes.parquet")
    with pytest.raises(InputError, match="different models"):
        gather_genomes(paths, tmp_path / "all.parquet")


def test_vectors_of_another_width_are_refused(tiny_folder: Path, tmp_path: Path):
    rng = np.random.default_rng(0)
    vectors_path, proteins_path = write_shard(tmp_path, {"g": [rng.normal(size=(3, 16)).astype(np.float32)]})
    with pytest.raises(InputError, match="size 16.*hidden size 32"):
        shard_job(tiny_folder, (vectors_path, proteins_path), tmp_path / "out")
    assert not list((tmp_path / "out").glob("**/*"))  # no file, not even a temporary one
    pq.write_table(pq.read_table(vectors_path).drop_columns(["vector"]), vectors_path)
    with pytest.raises(InputError, match="vectors.parquet has no column 'vector'"):
        shard_job(tiny_folder, (vectors_path, proteins_path), tmp_path / "out")


def test_vectors_gathered_from_other_proteins_are_refused(tiny_folder: Path, tmp_path: Path):
    """Vectors never attach to another genome's proteins: a protein shard rewritten after its vectors were gathered
    (an earlier run cut off) fails the job, naming both files, and writes nothing."""
    vectors_path, proteins_path = write_shard(tmp_path, {"g": genome(17, [4])})
    write_shard(tmp_path / "other", {"h": genome(18, [4])})
    (tmp_path / "other" / "proteins.parquet").replace(proteins_path)
    with pytest.raises(InputError, match=r"vectors\.parquet was made from other proteins than .*proteins\.parquet"):
        shard_job(tiny_folder, (vectors_path, proteins_path), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_nan_input_vector_is_refused_naming_the_genome_and_protein(tiny_folder: Path, tmp_path: Path):
    contigs = genome(15, [5])
    contigs[0][3, 7] = np.nan
    vectors_path, proteins_path = write_shard(tmp_path, {"fine": genome(16, [4]), "broken": contigs})
    with pytest.raises(InputError, match=r"vectors.parquet: genome broken has 1 protein vectors.*protein_index 3"):
        shard_job(tiny_folder, (vectors_path, proteins_path), tmp_path / "out")
    assert not list((tmp_path / "out").glob("**/*"))  # no file, not even a temporary one


# ------------------------------------------------------------------------------------------ Bacformer Large


@pytest.fixture(scope="module")
def large_folder(tmp_path_factory) -> Path:
    return build_tiny_bacformer(tmp_path_factory.mktemp("large") / "bacformer-large", DIM, family="large")


def run_large(model, genomes: list[list[np.ndarray]], budget: int = 1, **overrides):
    plans = [plan_genome(contigs, settings(**overrides), 2, special_tokens=False) for contigs in genomes]
    return plans, embed_genomes(model, plans, token_budget=budget)


def test_large_genomes_run_as_proteins_only_in_every_mode(large_folder: Path):
    model = load_bacformer(large_folder, torch.device("cpu"), torch.float32)
    assert isinstance(model, BacformerLargeModel) and not model.training
    # A genome that fits: one piece, exactly the reference builder's input.
    contigs = genome(2, [10, 5])
    with torch.no_grad():
        hidden = model(**protein_embeddings_to_inputs(contigs, bacformer_model_type="large"))[0][0]
    (plan,), (result,) = run_large(model, [contigs])
    assert plan.mode == "whole" and plan.n_tokens == 15 and np.array_equal(result.vectors, hidden.numpy())
    assert np.allclose(result.embedding, hidden.mean(0).numpy(), atol=1e-6)  # the README's genome embedding
    # A long one: windows of LIMIT proteins (no CLS or END), every protein from a run of its own window.
    contigs = genome(1, [70, 45, 30])
    (plan,), (windowed,) = run_large(model, [contigs], mode="windowed")
    assert plan.mode == "windowed" and all(stop - start == LIMIT for start, stop in plan.spans)
    assert windowed.embedded.all()
    for index in range(len(plan.spans)):
        with torch.no_grad():
            window = model(**plan.piece_inputs(index, torch.float32))[0][0].numpy()
        start = plan.spans[index][0]
        mine = np.flatnonzero(plan.owners == index)
        assert np.abs(windowed.vectors[mine] - window[mine - start]).max() <= TOLERANCE
    batched = run_large(model, [contigs], budget=10**6, mode="windowed")[1][0]
    assert np.abs(batched.vectors - windowed.vectors).max() <= TOLERANCE
    (cut_plan,), (truncated,) = run_large(model, [contigs], mode="truncate")
    assert cut_plan.mode == "truncated" and truncated.embedded.tolist() == [True] * LIMIT + [False] * (145 - LIMIT)


@needs_shared
def test_large_shard_job_matches_the_reference_forward_on_a_real_genome(
    large_folder: Path, reference_python: Path, tmp_path: Path
):
    sizes = real_contig_sizes()
    contigs = genome(20, sizes)
    vectors_path, proteins_path = write_shard(tmp_path, {"efaecalis": contigs})
    cases = {"whole": {"max_n_proteins": 4000}, "truncate": {"max_n_proteins": 1000, "mode": "truncate"}}
    jobs, tables = [], {}
    for case, overrides in cases.items():
        shard_job(large_folder, (vectors_path, proteins_path), tmp_path / case, **overrides)
        tables[case] = (
            pq.read_table(tmp_path / case / "proteins.parquet"),
            pq.read_table(tmp_path / case / "genomes.parquet"),
        )
        inputs = protein_embeddings_to_inputs(
            contigs, max_n_proteins=overrides["max_n_proteins"], bacformer_model_type="large"
        )
        jobs.append(
            dict(kind="forward", name=case, model="BacformerLargeModel", folder=str(large_folder), inputs=[inputs])
        )
    reference = run_reference(reference_python, jobs, tmp_path)
    for case in cases:
        proteins, genomes = tables[case]
        expected = reference[case]["outputs"][0]["last_hidden_state"][0].numpy()
        vectors = np.stack(proteins.column("vector").to_numpy(zero_copy_only=False))
        row = genomes.to_pylist()[0]
        assert vectors.shape == expected.shape == (row["proteins_embedded"], DIM)
        assert row["tokens"] == sum(sizes) == row["proteins"] and row["contigs"] == len(sizes)
        assert np.abs(vectors - expected).max() <= 1e-4, case
        assert np.abs(np.array(row["embedding"]) - expected.mean(0)).max() <= 1e-4, case
    assert tables["truncate"][1].to_pylist()[0]["proteins_cut"] == sum(sizes) - 1000


def test_vectors_of_the_other_familys_width_or_recipe_are_refused(large_folder: Path, tmp_path: Path):
    base = build_tiny_bacformer(tmp_path / "base-480", 480)
    large = build_tiny_bacformer(tmp_path / "large-960", 960, family="large")
    for folder, width, message in (
        (large, 480, r"size 480 \(the width of Bacformer base's vectors\).*Bacformer large, which takes esmc"),
        (base, 960, r"size 960 \(the width of Bacformer large's vectors\).*Bacformer base, which takes esm2"),
    ):
        shard = tmp_path / f"w{width}"
        shard.mkdir()
        inputs = write_shard(shard, {"g": [np.random.default_rng(0).normal(size=(3, width)).astype(np.float32)]})
        with pytest.raises(InputError, match=message):
            shard_job(folder, inputs, shard / "out")
    # Vectors of the right width from the other family's recipe (here: ESM-2's, by its hub id).
    vectors_path, proteins_path = write_shard(tmp_path, {"g": genome(3, [4])})
    table = pq.read_table(vectors_path)
    recipe = json.dumps({"model": "facebook/esm2_t12_35M_UR50D"})
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, RECIPE.encode(): recipe}), vectors_path)
    with pytest.raises(InputError, match=r"esm2 protein vectors \(facebook/esm2_t12_35M_UR50D\).*takes esmc"):
        shard_job(large_folder, (vectors_path, proteins_path), tmp_path / "out")


def test_a_large_checkpoint_with_missing_weights_is_refused_naming_them(large_folder: Path, tmp_path: Path):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken-large"
    broken.mkdir()
    (broken / "config.json").write_text((large_folder / "config.json").read_text())
    weights = load_file(large_folder / "model.safetensors")
    del weights["bacformer.encoder.layers.1.ffn.1.weight"]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(InputError, match=r"broken-large: 1 encoder weights missing.*layers\.1\.ffn\.1\.weight.*large"):
        load_bacformer(broken, torch.device("cpu"), torch.float32)
