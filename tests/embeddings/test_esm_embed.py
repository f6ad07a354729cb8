"""The ESM-2 embedder against the reference recipe (bacformer.pp's), on real proteins: tokens, vectors,
truncation, independence from the token budget, out-of-memory splitting, and the weight check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import EsmTokenizer

from bacflow.core.errors import InputError
from bacflow.core.seqhash import PROTEIN_LETTERS
from bacflow.embeddings.embedder import EmbeddedBatch, Embedder, EsmTokens
from bacflow.embeddings.esm_encoder import EsmEncoder
from bacflow.embeddings.esm_model import load_esm
from bacflow.embeddings.tiny import build_esm2
from conftest import needs_shared
from esm_helpers import real_proteins, reference_vectors

pytestmark = needs_shared
CPU = torch.device("cpu")


def embedder(model_path: Path, token_budget: int = 4096, pooling: str = "mean") -> Embedder:
    model, tokenizer = load_esm(model_path, CPU, torch.float32)
    return Embedder(EsmEncoder(model), tokenizer, pooling=pooling, max_length=1024, token_budget=token_budget)


def test_real_proteins_cover_the_hard_cases():
    proteins = real_proteins()
    assert len(proteins) >= 200
    assert sum(len(protein) > 1022 for protein in proteins) >= 20
    for residue in "XUBZ":
        assert any(residue in protein for protein in proteins), residue


def test_tokens_are_the_esm_tokenizers(tiny_esm: Path):
    tokenizer = EsmTokenizer.from_pretrained(tiny_esm)
    tokens = EsmTokens(tokenizer, max_length=1024)
    # Real proteins, then characters outside the vocabulary: single, in runs, at the ends, and non-ASCII.
    odd = ["AJJA", "JMKJ", "A*B*C", "*", "MK<UNK>A", "MKÄA", "ACDEFGHIKLMNPQRSTVWYXBUZO.-"]
    for sequence in list(real_proteins()) + odd:
        expected = tokenizer(sequence, add_special_tokens=True, truncation=True, max_length=1024)["input_ids"]
        ids, count, truncated = tokens.encode([sequence])
        assert ids[0].tolist() == expected, sequence
        assert count[0] == len(expected) and truncated[0] == (len(expected) == 1024 and len(sequence) > 1022)


def test_every_protein_letter_is_its_own_token(tiny_esm: Path):
    """The proteins stage stores only PROTEIN_LETTERS: none of them becomes <unk>, as J (left out) would."""
    tokens = EsmTokens(EsmTokenizer.from_pretrained(tiny_esm), max_length=1024)
    ids = tokens.residue_ids(PROTEIN_LETTERS)
    assert len(set(ids.tolist())) == len(PROTEIN_LETTERS) and tokens.unk not in ids
    assert tokens.residue_ids("J").tolist() == [tokens.unk]


@pytest.fixture(scope="module")
def baseline(tiny_esm: Path) -> tuple[list[EmbeddedBatch], np.ndarray]:
    """The tiny model's batches (budget 4,096) and vectors, in input order, of every real protein."""
    batches = list(embedder(tiny_esm).batches(real_proteins()))
    vectors = np.zeros((len(real_proteins()), 48), dtype=np.float32)
    for batch in batches:
        vectors[batch.positions] = batch.vectors.numpy()
    return batches, vectors


def test_parity_with_the_reference_recipe(tiny_esm: Path, baseline):
    proteins = list(real_proteins())
    assert np.abs(baseline[1] - reference_vectors(tiny_esm, proteins)).max() <= 1e-5
    for batch in baseline[0]:
        assert batch.truncated.tolist() == [len(proteins[i]) > 1022 for i in batch.positions]
        assert batch.tokens.tolist() == [min(len(proteins[i]), 1022) + 2 for i in batch.positions]


def test_embed_returns_the_batches_in_input_order(tiny_esm: Path, baseline):
    proteins = list(real_proteins())[140:180]  # short and long ones
    vectors, tokens, truncated = embedder(tiny_esm).embed(proteins)
    assert np.abs(vectors - baseline[1][140:180]).max() <= 1e-5
    assert truncated.tolist() == [len(protein) > 1022 for protein in proteins]
    assert tokens.tolist() == [min(len(protein), 1022) + 2 for protein in proteins]


def test_parity_with_the_real_35m_geometry(tmp_path: Path):
    """Parity on facebook/esm2_t12_35M_UR50D's architecture (random weights), on the hard cases: a protein
    over 1,022 aa, and the shortest ones with X, U, B and Z. (The reference gets the long one in a batch of
    its own, so as not to pad the others to 1,024 tokens: this model is slow on 2 CPU cores.)"""
    model = build_esm2(tmp_path / "esm2-35m", geometry="t12_35M")
    proteins = real_proteins()
    long = min((p for p in proteins if len(p) > 1022), key=len)
    rare = list(dict.fromkeys(min((p for p in proteins if r in p), key=len) for r in "XUBZ"))
    vectors, _, truncated = embedder(model).embed([long, *rare])
    reference = np.concatenate([reference_vectors(model, [long]), reference_vectors(model, rare)])
    assert truncated.tolist() == [True] + [False] * len(rare)
    assert np.abs(vectors - reference).max() <= 1e-5


@pytest.mark.parametrize("budget", [1, 1500, 200_000])
def test_vectors_do_not_depend_on_the_token_budget(tiny_esm: Path, baseline, budget: int):
    # The extremes (one protein per batch; all in one batch padded to 1,024 tokens) are slow: every third
    # protein for them (long ones and rare residues included).
    chosen = np.arange(len(real_proteins()))[:: 1 if budget == 1500 else 3]
    vectors, _, _ = embedder(tiny_esm, token_budget=budget).embed([real_proteins()[i] for i in chosen])
    assert np.abs(vectors - baseline[1][chosen]).max() <= 1e-5


def test_batches_are_longest_first_under_the_budget(baseline):
    batches = baseline[0]
    assert sorted(np.concatenate([batch.positions for batch in batches]).tolist()) == list(range(len(real_proteins())))
    longest = [int(batch.tokens.max()) for batch in batches]
    assert longest == sorted(longest, reverse=True) and longest[0] == 1024
    assert all(len(batch.positions) * batch.tokens.max() <= 4096 or len(batch.positions) == 1 for batch in batches)
    assert len(batches[-1].positions) > 4  # short proteins do share batches


def test_cpu_runs_float32_under_inference_mode(tiny_esm: Path, baseline):
    assert embedder(tiny_esm).encoder.dtype == torch.float32
    assert all(batch.vectors.is_inference() and batch.vectors.dtype == torch.float32 for batch in baseline[0])


def test_bfloat16_as_on_a_gpu_stays_near_float32(tiny_esm: Path, baseline):
    """The GPU's compute dtype, run on the CPU: float32 vectors within bfloat16 rounding of float32's."""
    model, tokenizer = load_esm(tiny_esm, CPU, torch.bfloat16)
    assert model.dtype == torch.bfloat16
    chosen = list(range(140, 180))
    vectors, _, _ = Embedder(EsmEncoder(model), tokenizer, pooling="mean", max_length=1024, token_budget=4096).embed(
        [real_proteins()[i] for i in chosen]
    )
    assert vectors.dtype == np.float32 and np.abs(vectors - baseline[1][chosen]).max() <= 0.1


def test_mean_over_residues_leaves_out_bos_and_eos(tiny_esm: Path):
    proteins = list(real_proteins()[:20])
    model, tokenizer = load_esm(tiny_esm, CPU, torch.float32)
    vectors, _, _ = embedder(tiny_esm, pooling="mean_residues").embed(proteins)
    with torch.no_grad():
        for protein, vector in zip(proteins, vectors, strict=False):
            hidden = model(**tokenizer(protein, return_tensors="pt")).last_hidden_state[0]
            assert np.abs(hidden[1:-1].mean(0).numpy() - vector).max() <= 1e-5


class OutOfMemoryAbove:
    """An encoder stand-in that raises CUDA's out-of-memory error for batches over `limit` tokens."""

    def __init__(self, encoder: EsmEncoder, limit: int):
        self.encoder, self.limit, self.failures = encoder, limit, 0
        self.device, self.hidden_size = encoder.device, encoder.hidden_size

    def __call__(self, input_ids, real):
        if input_ids.numel() > self.limit:
            self.failures += 1
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.encoder(input_ids, real)


def test_out_of_memory_splits_the_batch_and_keeps_going(tiny_esm: Path, baseline):
    proteins = list(real_proteins())
    model, tokenizer = load_esm(tiny_esm, CPU, torch.float32)
    flaky = OutOfMemoryAbove(EsmEncoder(model), limit=2500)
    embedding = Embedder(flaky, tokenizer, pooling="mean", max_length=1024, token_budget=20_000)
    vectors, _, _ = embedding.embed(proteins)
    assert flaky.failures >= 1 and embedding.token_budget <= 2500
    assert np.abs(vectors - baseline[1]).max() <= 1e-5

    hopeless = Embedder(
        OutOfMemoryAbove(EsmEncoder(model), limit=100), tokenizer, pooling="mean", max_length=1024, token_budget=4096
    )
    with pytest.raises(RuntimeError, match="does not fit in GPU memory"):
        hopeless.embed(proteins[:3])


def test_broken_weights_fail_the_probe(tmp_path: Path):
    model = build_esm2(tmp_path / "broken")
    weights = load_file(model / "model.safetensors")
    name = next(key for key in weights if "intermediate.dense.weight" in key)
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(InputError, match="NaN or infinite"):
        embedder(model).check_probe(str(model))


def test_empty_sequences_are_refused(tiny_esm: Path):
    with pytest.raises(InputError, match="empty protein"):
        embedder(tiny_esm).embed(["MKV", "*"])
