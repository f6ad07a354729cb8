"""The ESM-2 embedder against the reference recipe (bacformer.pp's), on real proteins: tokens, vectors,
truncation, independence from the token budget, out-of-memory splitting, and the weight check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import EsmTokenizer

from bacflow.errors import InputError
from bacflow.esm_embed import Embedder, EsmTokens
from bacflow.esm_model import load_esm
from bacflow.tiny_models import build_esm2
from conftest import needs_shared
from esm_helpers import real_proteins, reference_vectors, tiny_esm  # noqa: F401 (fixture)

pytestmark = needs_shared
CPU = torch.device("cpu")


def embedder(model_path: Path, token_budget: int = 4096, pooling: str = "mean") -> Embedder:
    model, tokenizer = load_esm(model_path, CPU, torch.float32)
    return Embedder(model, tokenizer, pooling=pooling, max_length=1024, token_budget=token_budget)


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


def test_parity_with_the_reference_recipe(tiny_esm: Path):
    proteins = list(real_proteins())
    vectors, tokens, truncated = embedder(tiny_esm).embed(proteins)
    reference = reference_vectors(tiny_esm, proteins)
    assert np.abs(vectors - reference).max() <= 1e-5
    assert truncated.tolist() == [len(protein) > 1022 for protein in proteins]
    assert tokens.tolist() == [min(len(protein), 1022) + 2 for protein in proteins]


def test_parity_with_the_real_35m_geometry(tmp_path: Path):
    """Parity on facebook/esm2_t12_35M_UR50D's architecture (random weights), on the hard cases."""
    model = build_esm2(tmp_path / "esm2-35m", geometry="t12_35M")
    proteins = real_proteins()
    chosen = [next(p for p in proteins if len(p) > 1022), *[next(p for p in proteins if r in p) for r in "XUBZ"]]
    chosen += list(proteins[:3])
    vectors, _, _ = embedder(model).embed(chosen)
    assert np.abs(vectors - reference_vectors(model, chosen)).max() <= 1e-5


@pytest.mark.parametrize("budget", [1, 1500, 200_000])
def test_vectors_do_not_depend_on_the_token_budget(tiny_esm: Path, budget: int):
    proteins = list(real_proteins())
    baseline, _, _ = embedder(tiny_esm, token_budget=4096).embed(proteins)
    vectors, _, _ = embedder(tiny_esm, token_budget=budget).embed(proteins)
    assert np.abs(vectors - baseline).max() <= 1e-5


def test_batches_are_longest_first_under_the_budget(tiny_esm: Path):
    proteins = list(real_proteins())
    batches = list(embedder(tiny_esm, token_budget=5000).batches(proteins))
    assert sorted(np.concatenate([batch.positions for batch in batches]).tolist()) == list(range(len(proteins)))
    longest = [int(batch.tokens.max()) for batch in batches]
    assert longest == sorted(longest, reverse=True) and longest[0] == 1024
    assert all(len(batch.positions) * batch.tokens.max() <= 5000 or len(batch.positions) == 1 for batch in batches)


def test_mean_over_residues_leaves_out_bos_and_eos(tiny_esm: Path):
    proteins = list(real_proteins()[:20])
    model, tokenizer = load_esm(tiny_esm, CPU, torch.float32)
    vectors, _, _ = embedder(tiny_esm, pooling="mean_residues").embed(proteins)
    with torch.no_grad():
        for protein, vector in zip(proteins, vectors):
            hidden = model(**tokenizer(protein, return_tensors="pt")).last_hidden_state[0]
            assert np.abs(hidden[1:-1].mean(0).numpy() - vector).max() <= 1e-5


class OutOfMemoryAbove:
    """An EsmModel stand-in that raises CUDA's out-of-memory error for batches over `limit` tokens."""

    def __init__(self, model, limit: int):
        self.model, self.limit, self.failures = model, limit, 0
        self.config = model.config

    def parameters(self):
        return self.model.parameters()

    def __call__(self, input_ids, attention_mask):
        if input_ids.numel() > self.limit:
            self.failures += 1
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.model(input_ids=input_ids, attention_mask=attention_mask)


def test_out_of_memory_splits_the_batch_and_keeps_going(tiny_esm: Path):
    proteins = list(real_proteins())
    model, tokenizer = load_esm(tiny_esm, CPU, torch.float32)
    expected, _, _ = Embedder(model, tokenizer, pooling="mean", max_length=1024, token_budget=4096).embed(proteins)
    flaky = OutOfMemoryAbove(model, limit=2500)
    embedding = Embedder(flaky, tokenizer, pooling="mean", max_length=1024, token_budget=20_000)
    vectors, _, _ = embedding.embed(proteins)
    assert flaky.failures >= 1 and embedding.token_budget <= 2500
    assert np.abs(vectors - expected).max() <= 1e-5

    hopeless = Embedder(OutOfMemoryAbove(model, limit=100), tokenizer, pooling="mean", max_length=1024, token_budget=4096)
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
