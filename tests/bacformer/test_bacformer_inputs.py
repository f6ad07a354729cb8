"""bacflow.bacformer.inputs: golden examples of the reference's builder, parity with it, collate, windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bacflow.bacformer.constants import INFERENCE_SEP_TOKEN_ID, MAX_N_PROTEINS
from bacflow.bacformer.inputs import (
    collate_inputs,
    genome_tokens,
    large_genome_tokens,
    protein_embeddings_to_inputs,
    window_owners,
    window_spans,
)
from bacflow.bacformer.modeling_bacformer import SPECIAL_TOKENS, BacformerModel
from bacflow.bacformer.stage import BacformerSettings, embed_genomes, plan_genome
from bacformer_helpers import max_abs_diff, randomize, real_contig_sizes, run_reference, tiny_config
from conftest import needs_shared

#: Windowed outputs against single runs of the same window: fp32, the same tiny model.
WINDOW_TOLERANCE = 1e-5
PROT_EMB = SPECIAL_TOKENS["PROT_EMB"]


def embed_genome_windowed(
    model: BacformerModel, contigs: list, max_n_proteins: int = MAX_N_PROTEINS, overlap: int = 1000, batch_size: int = 1
) -> torch.Tensor:
    """One contextual vector per protein through the shard jobs' planner and model run (mode windowed),
    `batch_size` windows per forward pass."""
    settings = BacformerSettings(mode="windowed", max_n_proteins=max_n_proteins, window_overlap=overlap)
    plan = plan_genome(contigs, settings, INFERENCE_SEP_TOKEN_ID)
    (result,) = embed_genomes(model.eval(), [plan], token_budget=batch_size * max_n_proteins)
    assert result.embedded.all()
    return torch.from_numpy(result.vectors)


def genome(seed: int, contig_sizes: list[int], dim: int = 8) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [[rng.normal(size=dim).astype(np.float32) for _ in range(size)] for size in contig_sizes]


# ---------------------------------------------------------------------------------------------- builder


def test_two_contigs() -> None:
    contigs = genome(0, [3, 2])
    inputs = protein_embeddings_to_inputs(contigs)
    assert inputs["special_tokens_mask"].tolist() == [[2, 4, 4, 4, 2, 4, 4, 2, 5]]  # separators use id 2
    assert inputs["token_type_ids"].tolist() == [[0, 0, 0, 0, 0, 1, 1, 1, 1]]
    assert inputs["attention_mask"].tolist() == [[1] * 9] and inputs["attention_mask"].dtype == torch.int64
    assert inputs["special_tokens_mask"].dtype == inputs["token_type_ids"].dtype == torch.int64
    embeddings = inputs["protein_embeddings"][0]
    assert embeddings.shape == (9, 8) and embeddings.dtype == torch.float32
    proteins = [vector for contig in contigs for vector in contig]
    assert torch.equal(embeddings[[1, 2, 3, 5, 6]], torch.from_numpy(np.stack(proteins)))
    assert not embeddings[[0, 4, 7, 8]].any()  # zero vectors at special positions


def test_flat_list_is_one_contig_and_separator_id_is_a_switch() -> None:
    proteins = genome(1, [4])[0]
    inputs = protein_embeddings_to_inputs(proteins, sep_token_id=3)
    assert inputs["special_tokens_mask"].tolist() == [[2, 4, 4, 4, 4, 3, 5]]  # the README's 4 proteins: 7 tokens
    assert torch.equal(
        inputs["protein_embeddings"], protein_embeddings_to_inputs([proteins], sep_token_id=3)["protein_embeddings"]
    )


def test_truncation_keeps_the_last_contigs_token_type_for_end() -> None:
    inputs = protein_embeddings_to_inputs(genome(2, [3, 2]), max_n_proteins=5)
    assert inputs["special_tokens_mask"].tolist() == [[2, 4, 4, 4, 5]]
    assert inputs["token_type_ids"].tolist() == [[0, 0, 0, 0, 1]]  # contig 1 was cut away, END still says 1


def test_contig_cap_off_by_one() -> None:
    inputs = protein_embeddings_to_inputs(genome(3, [1] * 14), max_n_contigs=10)
    expected = [0] + [index for index in range(11) for _ in range(2)] + [9] * 6 + [9]
    assert inputs["token_type_ids"].tolist() == [expected]  # index 10 passes: the zero padding row


def test_collate_pads_with_the_references_values() -> None:
    short, long = protein_embeddings_to_inputs(genome(4, [2])), protein_embeddings_to_inputs(genome(5, [3, 1]))
    batch = collate_inputs([short, long])
    assert batch["special_tokens_mask"][0].tolist() == [2, 4, 4, 2, 5, 0, 0, 0]
    assert batch["token_type_ids"][0].tolist() == [0, 0, 0, 0, 0, 1000, 1000, 1000]
    assert batch["attention_mask"].dtype == torch.float32
    assert batch["attention_mask"][0].tolist() == [1, 1, 1, 1, 1, 0, 0, 0]
    assert not batch["protein_embeddings"][0, 5:].any()
    assert torch.equal(batch["protein_embeddings"][1], long["protein_embeddings"][0])
    assert "labels" not in batch
    labelled = collate_inputs(
        [{**short, "labels": torch.tensor([[-100, 7, 8, -100, -100]])}, {**long, "labels": torch.full((1, 8), 3)}]
    )
    assert labelled["labels"][0].tolist() == [-100, 7, 8, -100, -100, -100, -100, -100]


# ---------------------------------------------------------------------------------------------- parity


#: Genomes for the builder parity: (contig sizes, keyword arguments of both builders).
PARITY_GENOMES = [
    ([4], {"flat": True}),
    ([3, 2], {}),
    ([3, 2], {"max_n_proteins": 5}),
    ([1] * 14, {"max_n_contigs": 10}),
    ([3, 0, 2, 5, 1, 0, 4, 2, 1, 3, 2, 1, 1, 2, 3], {"max_n_contigs": 10, "max_n_proteins": 30}),
    ([40, 25, 7], {"max_n_proteins": 50, "sep_token_id": 3}),
    ([120, 60], {"max_n_proteins": 6000}),
]


def test_builder_and_collate_match_the_reference(reference_python: Path, tmp_path: Path) -> None:
    genomes = []
    for seed, (sizes, kwargs) in enumerate(PARITY_GENOMES):
        contigs = genome(10 + seed, sizes, dim=16)
        kwargs = dict(kwargs)
        genomes.append((contigs[0] if kwargs.pop("flat", False) else contigs, kwargs))
    job = {"kind": "inputs", "name": "inputs", "genomes": genomes, "max_n_contigs": 1000}
    theirs = run_reference(reference_python, [job], tmp_path)["inputs"]
    ours = [protein_embeddings_to_inputs(contigs, **kwargs) for contigs, kwargs in genomes]
    for index, (mine, reference) in enumerate(zip(ours, theirs["built"], strict=True)):
        assert mine.keys() == reference.keys()
        for key in mine:
            assert mine[key].dtype == reference[key].dtype and torch.equal(mine[key], reference[key]), (index, key)
    collated = collate_inputs(ours)
    assert collated.keys() == theirs["collated"].keys() - {"labels"}  # the reference adds an empty `labels`
    for key in collated:
        assert collated[key].dtype == theirs["collated"][key].dtype and torch.equal(
            collated[key], theirs["collated"][key]
        ), key


# ---------------------------------------------------------------------------------------------- Large


def test_large_inputs_have_no_special_tokens_and_cap_contig_ids() -> None:
    contigs = genome(6, [3, 2, 1, 2])
    inputs = protein_embeddings_to_inputs(contigs, max_n_contigs=3, bacformer_model_type="large")
    assert inputs.keys() == {"protein_embeddings", "contig_ids", "attention_mask"}
    assert inputs["contig_ids"].tolist() == [[0, 0, 0, 1, 1, 2, 2, 2]]  # contig 3 shares the last id, 2
    assert inputs["attention_mask"].tolist() == [[1] * 8] and inputs["contig_ids"].dtype == torch.int64
    proteins = [vector for contig in contigs for vector in contig]
    assert torch.equal(inputs["protein_embeddings"][0], torch.from_numpy(np.stack(proteins)))
    cut = protein_embeddings_to_inputs(contigs, max_n_proteins=4, bacformer_model_type="large")
    assert cut["contig_ids"].tolist() == [[0, 0, 0, 1]] and cut["protein_embeddings"].shape == (1, 4, 8)
    # A genome given as arrays per contig (how shard jobs hold it) gives the same tokens as lists of vectors.
    arrays = large_genome_tokens([np.stack(contig) for contig in contigs], max_n_contigs=3)
    assert np.array_equal(arrays.token_types, inputs["contig_ids"][0].numpy())


@needs_shared
def test_large_builder_matches_the_reference_on_a_real_genome(reference_python: Path, tmp_path: Path) -> None:
    contigs = genome(0, real_contig_sizes(), dim=16)  # the real genome's contigs, random vectors
    n = sum(len(contig) for contig in contigs)
    assert (len(contigs), n) == (89, 3145)
    spread = [20 * index for index, contig in enumerate(contigs) for _ in contig]  # ids up to 1,760: capped at 999
    cases = [
        (contigs, {"max_n_proteins": 9000}),
        (contigs, {"max_n_proteins": 9000, "max_n_contigs": 10}),
        (contigs, {"max_n_proteins": 1000}),
        (contigs, {"max_n_proteins": 6000, "contig_ids": spread}),
        (contigs[0], {"max_n_proteins": 9000}),  # a flat list of proteins: one contig
    ]
    job = {"kind": "large_inputs", "name": "large", "genomes": cases}
    theirs = run_reference(reference_python, [job], tmp_path)["large"]
    for index, ((proteins, kwargs), reference) in enumerate(zip(cases, theirs, strict=True)):
        mine = protein_embeddings_to_inputs(proteins, bacformer_model_type="large", **kwargs)
        assert mine.keys() == reference.keys()
        for key in mine:
            assert mine[key].dtype == reference[key].dtype and torch.equal(mine[key], reference[key]), (index, key)
    lengths = [reference["contig_ids"].shape[1] for reference in theirs]
    assert lengths == [n, n, 1000, n, len(contigs[0])]
    assert theirs[1]["contig_ids"].max() == 9 and theirs[3]["contig_ids"].max() == 999


# ---------------------------------------------------------------------------------------------- windows


@pytest.mark.parametrize(
    ("n_tokens", "window", "overlap"), [(10, 10, 3), (11, 10, 3), (100, 10, 0), (1000, 37, 12), (5, 40, 10)]
)
def test_windows_cover_the_genome_and_keep_each_protein_away_from_cuts(
    n_tokens: int, window: int, overlap: int
) -> None:
    spans = window_spans(n_tokens, window, overlap)
    assert spans[0][0] == 0 and spans[-1][1] == n_tokens
    assert all(stop - start == min(window, n_tokens) for start, stop in spans)
    assert all(next_start <= stop - overlap for (_, stop), (next_start, _) in zip(spans, spans[1:], strict=False))
    owners = window_owners(n_tokens, spans)
    for position, owner in enumerate(owners):
        start, stop = spans[owner]
        assert start <= position < stop
        if start > 0:
            assert position - start >= overlap // 2
        if stop < n_tokens:
            assert stop - 1 - position >= overlap // 2


def test_windowed_embedding_of_a_long_genome() -> None:
    model = randomize(BacformerModel(tiny_config()), seed=0)
    contigs = genome(20, [70, 45, 30], dim=32)  # 145 proteins, 150 tokens with CLS, separators and END
    limit, overlap = 40, 12
    n_proteins = sum(len(contig) for contig in contigs)
    vectors = embed_genome_windowed(model, contigs, max_n_proteins=limit, overlap=overlap)
    assert vectors.shape == (n_proteins, 32) and torch.isfinite(vectors).all()
    assert torch.equal(
        vectors, embed_genome_windowed(model, contigs, max_n_proteins=limit, overlap=overlap, batch_size=3)
    )

    # Proteins taken from the first window match the truncated run (the first window is the truncated input).
    truncated = protein_embeddings_to_inputs(contigs, max_n_proteins=limit)
    with torch.no_grad():
        hidden = model(**truncated)[0][0]
    truncated_proteins = hidden[truncated["special_tokens_mask"][0] == PROT_EMB]
    tokens = genome_tokens(contigs)
    spans = window_spans(len(tokens), limit - 2, overlap)
    owners = window_owners(len(tokens), spans)[tokens.kinds == PROT_EMB]
    first = np.flatnonzero(owners == 0)
    assert len(first) > 0 and max_abs_diff(vectors[first], truncated_proteins[first]) <= WINDOW_TOLERANCE

    # Every protein matches a run of its window built by hand from the untruncated input.
    full = protein_embeddings_to_inputs(contigs, max_n_proteins=10**6)
    positions = np.flatnonzero(full["special_tokens_mask"][0] == PROT_EMB)  # body token = position - 1
    for index, (start, stop) in enumerate(spans):
        rows = [0, *range(1 + start, 1 + stop), len(tokens) + 1]  # CLS, the window's tokens, END
        window = {key: value[:, rows] for key, value in full.items()}
        with torch.no_grad():
            hidden = model(**window)[0][0]
        mine = np.flatnonzero(owners == index)
        assert max_abs_diff(vectors[mine], hidden[positions[mine] - start]) <= WINDOW_TOLERANCE


def test_windowed_embedding_of_a_genome_that_fits_is_the_plain_run() -> None:
    model = randomize(BacformerModel(tiny_config()), seed=1)
    contigs = genome(21, [10, 5], dim=32)
    inputs = protein_embeddings_to_inputs(contigs)
    with torch.no_grad():
        hidden = model(**inputs)[0][0]
    expected = hidden[inputs["special_tokens_mask"][0] == PROT_EMB]
    assert torch.equal(embed_genome_windowed(model, contigs), expected)
