"""Pretraining examples (bacflow.pretrain.masking) against the reference's transform (bacformer 0.2.0
``transform_sample`` and ``mask_prot_embs``, run in its own environment; https://github.com/macwiatrak/Bacformer)
and against that transform's counts and rules: sequence construction, truncation, masking counts for n = 1000 and
for genomes under 8 proteins, unlabelled proteins, dynamic masking, contig shuffling and the causal objective."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from bacflow.bacformer.modeling_bacformer import IGNORE_INDEX, SPECIAL_TOKENS
from bacflow.pretrain.masking import (
    ExampleParams,
    mask_proteins,
    pretraining_example,
    shuffled_contigs,
    training_tokens,
)

MASK, PROT, SEP, CLS, END = (SPECIAL_TOKENS[name] for name in ("MASK", "PROT_EMB", "SEP", "CLS", "END"))
PARAMS = ExampleParams()  # the reference trainer's: p 0.15, 6000 tokens, 1000 contigs, END label 50000


def example(n: int, seed: int = 0, contigs: np.ndarray | None = None, labels: np.ndarray | None = None, **params):
    contig_idx = np.zeros(n, np.int64) if contigs is None else contigs
    labels = np.arange(n, dtype=np.int64) % 50000 if labels is None else labels
    vectors = np.random.default_rng(seed).standard_normal((n, 8)).astype(np.float32)
    built = pretraining_example(vectors, contig_idx, labels, ExampleParams(**params), np.random.default_rng(seed))
    return {key: value[0].numpy() for key, value in built.items()}, vectors


def test_golden_sequence_of_the_reference():
    """The reference's sequence construction for contigs [0,0,0,1,1,2,2], family ids 10..16."""
    tokens = training_tokens(np.array([0, 0, 0, 1, 1, 2, 2]), np.arange(10, 17), PARAMS)
    assert tokens.kinds.tolist() == [2, 4, 4, 4, 3, 4, 4, 3, 4, 4, 3, 5]
    assert tokens.labels.tolist() == [-100, 10, 11, 12, -100, 13, 14, -100, 15, 16, -100, 50000]
    assert tokens.token_types.tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2]


def test_truncation_keeps_the_end_token_of_the_last_contig():
    tokens = training_tokens(np.array([0, 0, 0, 1, 1, 2, 2]), np.arange(7), ExampleParams(max_n_proteins=5))
    assert tokens.kinds.tolist() == [CLS, PROT, PROT, PROT, END]
    # END's token type is the genome's last contig (2) although truncation removed it, as in the reference.
    assert tokens.token_types.tolist() == [0, 0, 0, 0, 2]
    assert tokens.labels[-1] == PARAMS.end_label


def test_vectors_sit_at_protein_positions_and_specials_are_zero():
    built, vectors = example(20, contigs=np.repeat([0, 1], 10), objective="causal")
    proteins = built["special_tokens_mask"] == PROT
    assert np.array_equal(built["protein_embeddings"][proteins], vectors)
    assert not built["protein_embeddings"][~proteins].any()
    assert built["attention_mask"].tolist() == [1] * len(proteins)


def test_masking_counts_for_1000_proteins():
    """131 masked (int(0.15 * 1000 * 0.875)) and 18 unchanged draws (int(0.15 * 1000 * 0.125)), the unchanged
    ones drawn independently of the masked ones, so that 131 to 149 proteins are targets."""
    labelled_counts = set()
    for seed in range(20):
        built, _ = example(1000, seed)
        kinds, targets = built["special_tokens_mask"], built["labels"]
        masked = kinds == MASK
        assert masked.sum() == 131
        is_target = targets != IGNORE_INDEX
        assert is_target[masked].all(), "every masked protein is a target"
        unchanged = is_target & ~masked
        assert (kinds[unchanged] == PROT).all() and unchanged.sum() <= 18
        # Targets are the proteins' own labels (protein i has label i here; position 0 is CLS).
        positions = np.flatnonzero(is_target)
        assert (targets[positions] == positions - 1).all()
        assert targets[-1] == IGNORE_INDEX and kinds[-1] == END, "END is never a target under masking"
        labelled_counts.add(int(is_target.sum()))
    assert min(labelled_counts) >= 131 and max(labelled_counts) <= 149 and len(labelled_counts) > 1


@pytest.mark.parametrize("n", range(1, 8))
def test_genomes_under_8_proteins_get_no_target(n: int):
    built, _ = example(n)
    assert not (built["special_tokens_mask"] == MASK).any()
    assert (built["labels"] == IGNORE_INDEX).all()


def test_8_proteins_get_one_masked_target():
    built, _ = example(8)
    assert (built["special_tokens_mask"] == MASK).sum() == 1
    assert (built["labels"] != IGNORE_INDEX).sum() == 1


def test_unlabelled_proteins_are_never_targets():
    labels = np.where(np.arange(1000) % 3 == 0, np.arange(1000), IGNORE_INDEX)
    for seed in range(5):
        built, _ = example(1000, seed, labels=labels)
        kinds, targets = built["special_tokens_mask"], built["labels"]
        # Unlabelled proteins are drawn and masked like the others (the counts are over all proteins), but
        # their target stays -100.
        assert (kinds == MASK).sum() == 131
        protein_labels = np.concatenate([[IGNORE_INDEX], labels, [IGNORE_INDEX, IGNORE_INDEX]])
        assert (targets[targets != IGNORE_INDEX] == protein_labels[targets != IGNORE_INDEX]).all()
        assert not ((targets != IGNORE_INDEX) & (protein_labels == IGNORE_INDEX)).any()


def test_masking_is_a_function_of_its_seed():
    first, _ = example(500, seed=1)
    again, _ = example(500, seed=1)
    other, _ = example(500, seed=2)
    assert np.array_equal(first["special_tokens_mask"], again["special_tokens_mask"])
    assert not np.array_equal(first["special_tokens_mask"], other["special_tokens_mask"])


def test_causal_objective_keeps_every_label_and_masks_nothing():
    built, _ = example(100, contigs=np.repeat([0, 1], 50), objective="causal")
    kinds, labels = built["special_tokens_mask"], built["labels"]
    assert not (kinds == MASK).any()
    assert labels[-1] == PARAMS.end_label
    assert (labels[kinds == PROT] == np.arange(100)).all()
    assert (labels[(kinds == SEP) | (kinds == CLS)] == IGNORE_INDEX).all()


def test_mask_proteins_leaves_its_inputs_alone():
    kinds = np.array([CLS] + [PROT] * 100 + [SEP, END])
    labels = np.arange(len(kinds))
    new_kinds, _ = mask_proteins(kinds, labels, 0.15, np.random.default_rng(0))
    assert (kinds != MASK).all() and (new_kinds == MASK).sum() == 13


def test_contig_shuffle_moves_whole_contigs_and_renumbers_them():
    contig_idx = np.repeat(np.arange(6), [3, 1, 4, 2, 5, 1])
    orders = set()
    for seed in range(10):
        order, new_contig = shuffled_contigs(contig_idx, np.random.default_rng(seed))
        assert sorted(order.tolist()) == list(range(len(contig_idx)))
        assert (np.diff(new_contig) >= 0).all() and new_contig.max() == 5, "contigs renumbered 0..5 in order"
        for contig in range(6):
            members = order[new_contig == contig]
            assert len(set(contig_idx[members])) == 1, "a contig stays whole"
            assert (np.diff(members) == 1).all(), "proteins keep their order within a contig"
        orders.add(tuple(order))
    assert len(orders) > 5


def test_complete_genomes_keep_their_contig_order():
    contigs = np.repeat([0, 1, 2], 10)
    vectors = np.arange(30, dtype=np.float32)[:, None]
    for seed in range(3):
        built = pretraining_example(vectors, contigs, np.arange(30), PARAMS, np.random.default_rng(seed))
        proteins = torch.isin(built["special_tokens_mask"][0], torch.tensor([PROT, MASK]))
        assert built["protein_embeddings"][0, proteins, 0].int().tolist() == list(range(30))
        assert built["token_type_ids"][0, proteins].tolist() == contigs.tolist()


def test_drafts_get_a_new_contig_order_per_draw():
    contigs = np.repeat(np.arange(5), 4)
    vectors = np.arange(20, dtype=np.float32)[:, None]
    firsts = set()
    for seed in range(10):
        built = pretraining_example(
            vectors, contigs, np.arange(20), PARAMS, np.random.default_rng(seed), shuffle_contigs=True
        )
        proteins = torch.isin(built["special_tokens_mask"][0], torch.tensor([PROT, MASK]))
        order = built["protein_embeddings"][0, proteins, 0].int().tolist()
        assert sorted(order) == list(range(20))
        firsts.add(order[0])
        # Token types are the new contig positions: 0..4 in sequence order.
        types = built["token_type_ids"][0, proteins].tolist()
        assert types == sorted(types) and set(types) == set(range(5))
    assert len(firsts) > 2


# --- the reference itself ---------------------------------------------------------------------------

_REFERENCE = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from bacformer.modeling.config import SPECIAL_TOKENS_DICT
    from bacformer.modeling.data_reader import transform_sample

    genomes = json.load(open(sys.argv[1]))
    out = []
    for genome in genomes:
        sample = {
            "protein_embeddings": [np.zeros(4, np.float32)] * len(genome["contig_idx"]),
            "contig_idx": genome["contig_idx"],
            "prot_cluster_id": genome["labels"],
        }
        results = []
        for seed in range(genome["draws"]):
            np.random.seed(seed)
            built = transform_sample(
                genome["p"], SPECIAL_TOKENS_DICT, genome["max_n_proteins"], genome["max_n_contigs"], 50000,
                "protein_embeddings", "prot_cluster_id", dict(sample),
            )
            keys = ("special_tokens_mask", "labels", "token_type_ids")
            results.append({key: np.asarray(built[key]).tolist() for key in keys})
        out.append(results)
    json.dump(out, open(sys.argv[2], "w"))
    """
)


def reference_examples(python: Path, genomes: list[dict], workdir: Path) -> list[list[dict]]:
    request, response, script = workdir / "genomes.json", workdir / "built.json", workdir / "transform.py"
    request.write_text(json.dumps(genomes))
    script.write_text(_REFERENCE)
    result = subprocess.run([str(python), str(script), str(request), str(response)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(response.read_text())


def test_sequences_and_masking_match_the_reference(reference_python: Path, tmp_path: Path):
    rng = np.random.default_rng(0)
    genomes = []
    for n, n_contigs, max_tokens, max_contigs in [
        (1000, 1, 6000, 1000),
        (1000, 40, 6000, 1000),
        (1000, 40, 300, 1000),  # truncated
        (60, 30, 6000, 10),  # contig cap
        *((n, 1, 6000, 1000) for n in range(1, 10)),
    ]:
        contig_idx = np.sort(rng.integers(0, n_contigs, n))
        contig_idx = np.unique(contig_idx, return_inverse=True)[1]
        labels = np.where(rng.random(n) < 0.8, rng.integers(0, 50000, n), IGNORE_INDEX)
        genomes.append(
            {
                "contig_idx": contig_idx.tolist(),
                "labels": labels.tolist(),
                "max_n_proteins": max_tokens,
                "max_n_contigs": max_contigs,
                "p": 0.15,
                "draws": 5,
            }
        )
    genomes += [{**genome, "p": 0.0, "draws": 1} for genome in genomes]
    theirs = reference_examples(reference_python, genomes, tmp_path)
    for genome, draws in zip(genomes, theirs, strict=False):
        params = ExampleParams(
            objective="masked" if genome["p"] else "causal",
            max_n_proteins=genome["max_n_proteins"],
            max_n_contigs=genome["max_n_contigs"],
        )
        tokens = training_tokens(np.array(genome["contig_idx"]), np.array(genome["labels"]), params)
        for reference in draws:
            assert reference["token_type_ids"] == tokens.token_types.tolist()
            if not genome["p"]:  # no randomness: the sequences are identical
                assert reference["special_tokens_mask"] == tokens.kinds.tolist()
                assert reference["labels"] == tokens.labels.tolist()
                continue
            built = pretraining_example(
                np.zeros((len(genome["labels"]), 4), np.float32),
                np.array(genome["contig_idx"]),
                np.array(genome["labels"]),
                params,
                np.random.default_rng(len(draws)),
            )
            ours_kinds, ours_labels = built["special_tokens_mask"][0].numpy(), built["labels"][0].numpy()
            ref_kinds, ref_labels = np.array(reference["special_tokens_mask"]), np.array(reference["labels"])
            # Draws differ (other random streams); counts and rules must not.
            assert (ours_kinds == MASK).sum() == (ref_kinds == MASK).sum()
            assert np.array_equal(
                np.where(ours_kinds == MASK, PROT, ours_kinds), np.where(ref_kinds == MASK, PROT, ref_kinds)
            )
            for kinds, labels in ((ours_kinds, ours_labels), (ref_kinds, ref_labels)):
                targets = labels != IGNORE_INDEX
                assert np.isin(kinds[targets], [MASK, PROT]).all() and (kinds[-1] == END)
                n_keep = int(0.15 * (np.isin(kinds, [MASK, PROT])).sum() * 0.125)
                assert (kinds == MASK)[targets].sum() <= targets.sum() <= (kinds == MASK).sum() + n_keep
                assert np.array_equal(labels[targets], tokens.labels[targets])
