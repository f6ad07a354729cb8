"""Pretraining examples: a genome's tokens as the reference's pretraining transform builds them, and the masking.

The reference (``bacformer==0.2.0``, ``modeling/data_reader.py``: ``transform_sample`` and ``mask_prot_embs``,
https://github.com/macwiatrak/Bacformer) builds one example per genome, and this module reproduces it:

- the sequence is CLS, the proteins in genome order with a separator (SEP, id 3) wherever the contig index
  changes and after the last protein, then END. Contig indices are capped at ``max_n_contigs - 1``. CLS and
  separators carry zero vectors and no target; a separator's token type is the contig it closes;
- truncation keeps the first ``max_n_proteins - 1`` tokens and appends END, whose token type is the genome's
  last contig index (even when truncation removed that contig) and whose label is ``end_label`` (the
  vocabulary size, the GM head's END class);
- masked objective: of the ``n`` protein tokens that survive truncation, ``int(p * n * 0.875)`` drawn without
  replacement become MASK (their vector is replaced by the learned MASK vector) and are targets, and
  ``int(p * n * 0.125)`` drawn independently of those (overlap allowed) are targets left unchanged. There is no
  random-replacement branch. Every other label, END's included, is -100. With p = 0.15 and n = 1000: 131
  masked and 18 unchanged draws; under 8 proteins nothing is a target. An unlabelled protein (label -100) can
  be masked but is never a target, because its label is copied as -100;
- causal objective: nothing is masked and every label is kept (proteins' families and END's), as the
  reference does with ``mgm_probability`` 0.

Bacformer Large (``special_tokens=False``; the reference ships no pretraining transform for it) takes the proteins
alone, as its inference builder lays them out: the first ``max_n_proteins``, contig indices capped at
``max_n_contigs - 1``, no CLS, separator or END (so no END target). The same draws choose targets, and the masked
ones are flagged in ``mlm_mask`` (the model replaces their vectors by its learned mask vector) instead of
becoming MASK tokens. Only the masked objective exists for Large.

What the reference leaves to the caller, decided here:

- the random draws come from a generator the caller seeds per (epoch, genome), not from numpy's global state,
  so an example is a pure function of its seed: the same in every data-loader worker, process and resumed
  run, and different in every epoch (dynamic masking);
- with ``shuffle_contigs`` (draft and MAG genomes, whose contig order carries no information) the contigs are
  put in a random order before the sequence is built, and renumbered 0, 1, ... in that order; a protein keeps
  its place within its contig. Complete genomes keep their order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from bacflow.bacformer.constants import IGNORE_INDEX, MAX_N_CONTIGS, MAX_N_PROTEINS, SPECIAL_TOKENS

#: Shares of the selected proteins that are masked and left unchanged (the reference's MASKING_STRATEGY).
MASK_SHARE = 0.875
KEEP_SHARE = 0.125


@dataclass(frozen=True)
class ExampleParams:
    """How a genome becomes a training example; defaults are the reference trainer's."""

    objective: Literal["masked", "causal"] = "masked"
    mgm_probability: float = 0.15
    max_n_proteins: int = MAX_N_PROTEINS  # tokens per genome, CLS, separators and END included
    max_n_contigs: int = MAX_N_CONTIGS
    end_label: int = 50000  # the vocabulary size: the GM head's END class
    sep_token_id: int = SPECIAL_TOKENS["SEP"]
    special_tokens: bool = True  # base Bacformer's layout; False: Bacformer Large's (proteins only)

    def __post_init__(self) -> None:
        if self.objective not in ("masked", "causal"):
            raise ValueError(f"objective must be 'masked' or 'causal', not {self.objective!r}")
        if self.objective == "causal" and not self.special_tokens:
            raise ValueError("Bacformer Large has only the masked objective (the reference has no causal Large)")
        if self.objective == "masked" and not 0 < self.mgm_probability <= 1:
            raise ValueError(f"the masked objective needs 0 < mgm_probability <= 1, got {self.mgm_probability}")
        if self.max_n_proteins < 3:
            raise ValueError(f"max_n_proteins must leave room for CLS, one token and END, got {self.max_n_proteins}")


@dataclass(frozen=True)
class TrainingTokens:
    """A genome's token sequence before masking, as the reference lays it out for training (its separators
    differ from the inference layout of `bacflow.bacformer.inputs.GenomeTokens`): for each token, the row of
    its protein vector (-1: special)."""

    protein_rows: np.ndarray  # (length,) int64 index into the genome's proteins, -1 at CLS, SEP, END
    kinds: np.ndarray  # (length,) int64 special_tokens_mask values
    token_types: np.ndarray  # (length,) int64 contig index
    labels: np.ndarray  # (length,) int64 family id, -100 where there is none, end_label at END


def shuffled_contigs(contig_idx: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random contig order: (protein order, new contig index of each protein in that order).

    Contigs are renumbered 0, 1, ... in their new order; proteins keep their order within a contig.
    """
    _, contig_of = np.unique(contig_idx, return_inverse=True)
    new_position = rng.permutation(contig_of.max() + 1 if len(contig_of) else 0)
    new_contig = new_position[contig_of]
    order = np.argsort(new_contig, kind="stable")
    return order, new_contig[order]


def training_tokens(contig_idx: np.ndarray, labels: np.ndarray, params: ExampleParams) -> TrainingTokens:
    """The reference's ``transform_sample`` sequence (CLS, proteins and separators, END), before masking."""
    n = len(contig_idx)
    capped = np.minimum(np.asarray(contig_idx, np.int64), params.max_n_contigs - 1)
    # A separator precedes protein i when its contig differs from the running one, which starts at 0.
    running = np.zeros_like(capped)
    running[1:] = capped[:-1]
    sep_before = capped != running
    protein_positions = 1 + np.arange(n) + np.cumsum(sep_before)
    length = 1 + n + int(sep_before.sum()) + 1  # CLS, proteins, inner separators, last separator
    last_contig = int(capped[-1]) if n else 0

    protein_rows = np.full(length, -1, np.int64)
    kinds = np.full(length, params.sep_token_id, np.int64)
    token_types = np.empty(length, np.int64)
    token_labels = np.full(length, IGNORE_INDEX, np.int64)
    kinds[0], token_types[0] = SPECIAL_TOKENS["CLS"], 0
    protein_rows[protein_positions] = np.arange(n)
    kinds[protein_positions] = SPECIAL_TOKENS["PROT_EMB"]
    token_types[protein_positions] = capped
    token_labels[protein_positions] = labels
    token_types[protein_positions[sep_before] - 1] = running[sep_before]
    token_types[-1] = last_contig

    keep = params.max_n_proteins - 1
    return TrainingTokens(
        protein_rows=np.append(protein_rows[:keep], -1),
        kinds=np.append(kinds[:keep], SPECIAL_TOKENS["END"]),
        token_types=np.append(token_types[:keep], last_contig),
        labels=np.append(token_labels[:keep], params.end_label),
    )


def mask_proteins(
    kinds: np.ndarray, labels: np.ndarray, probability: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The reference's ``mask_prot_embs``: (kinds with MASK at the masked proteins, targets).

    Targets are the labels of the masked proteins and of the unchanged draws, -100 elsewhere.
    """
    proteins = np.flatnonzero(kinds == SPECIAL_TOKENS["PROT_EMB"])
    # Left-to-right float products, as the reference computes them: the counts must be its counts.
    n_mask = int(probability * len(proteins) * MASK_SHARE)
    n_keep = int(probability * len(proteins) * KEEP_SHARE)
    masked = rng.choice(proteins, n_mask, replace=False)
    kept = rng.choice(proteins, n_keep, replace=False)
    kinds = kinds.copy()
    kinds[masked] = SPECIAL_TOKENS["MASK"]
    targets = np.full_like(labels, IGNORE_INDEX)
    targets[masked] = labels[masked]
    targets[kept] = labels[kept]
    return kinds, targets


def pretraining_example(
    protein_embeddings: np.ndarray,
    contig_idx: np.ndarray,
    labels: np.ndarray,
    params: ExampleParams,
    rng: np.random.Generator,
    shuffle_contigs: bool = False,
) -> dict[str, torch.Tensor]:
    """One genome's model inputs with a batch dimension of 1 (``bacflow.bacformer.inputs.collate_inputs`` pads
    them into batches). Protein vectors keep their dtype; the model casts them."""
    if shuffle_contigs:
        order, contig_idx = shuffled_contigs(contig_idx, rng)
        protein_embeddings, labels = protein_embeddings[order], labels[order]
    if not params.special_tokens:
        return large_example(protein_embeddings, contig_idx, labels, params, rng)
    tokens = training_tokens(contig_idx, labels, params)
    kinds, targets = tokens.kinds, tokens.labels
    if params.objective == "masked":
        kinds, targets = mask_proteins(kinds, targets, params.mgm_probability, rng)
    vectors = np.zeros((len(kinds), protein_embeddings.shape[1]), protein_embeddings.dtype)
    is_protein = tokens.protein_rows >= 0
    vectors[is_protein] = protein_embeddings[tokens.protein_rows[is_protein]]
    return {
        "protein_embeddings": torch.from_numpy(vectors)[None],
        "special_tokens_mask": torch.from_numpy(kinds)[None],
        "token_type_ids": torch.from_numpy(tokens.token_types)[None],
        "labels": torch.from_numpy(targets)[None],
        "attention_mask": torch.ones(1, len(kinds), dtype=torch.int64),
    }


def large_example(
    protein_embeddings: np.ndarray,
    contig_idx: np.ndarray,
    labels: np.ndarray,
    params: ExampleParams,
    rng: np.random.Generator,
) -> dict[str, torch.Tensor]:
    """A genome's Bacformer Large inputs (batch of 1): the first ``max_n_proteins`` proteins, masked by `mlm_mask`."""
    keep = params.max_n_proteins
    kinds = np.full(min(len(labels), keep), SPECIAL_TOKENS["PROT_EMB"], np.int64)
    kinds, targets = mask_proteins(kinds, np.asarray(labels[:keep], np.int64), params.mgm_probability, rng)
    contig_ids = np.minimum(np.asarray(contig_idx[:keep], np.int64), params.max_n_contigs - 1)
    return {
        "protein_embeddings": torch.from_numpy(np.ascontiguousarray(protein_embeddings[:keep]))[None],
        "contig_ids": torch.from_numpy(contig_ids)[None],
        "mlm_mask": torch.from_numpy(kinds == SPECIAL_TOKENS["MASK"])[None],
        "labels": torch.from_numpy(targets)[None],
        "attention_mask": torch.ones(1, len(kinds), dtype=torch.int64),
    }
