"""Bacformer inputs from per-protein ESM-2 vectors: the reference's builder and collate, and windows for long genomes.

`protein_embeddings_to_inputs` reproduces the reference's function of that name (``bacformer==0.2.0``,
``pp/embed_prot_seqs.py``) tensor for tensor, quirks included, because the published checkpoints were run
on exactly these inputs:

- the sequence is CLS, then each contig's proteins followed by a separator (after every contig, the last
  included), then END; special positions hold zero vectors; ``token_type_ids`` hold the contig index;
- the separator's id defaults to 2 (CLS's id), as the reference's inference helpers use, although the
  pretraining transform used SEP (3) (reference issue #27); ``sep_token_id`` switches it;
- contig indices are capped at ``max_n_contigs - 1`` only when *greater than* ``max_n_contigs``, so index
  ``max_n_contigs`` itself reaches the token-type padding row (a zero vector);
- truncation keeps the first ``max_n_proteins - 1`` tokens (CLS and separators count) and appends END,
  whose token type is the genome's last contig index even when truncation removed that contig.

`collate_inputs` right-pads such inputs into a batch with the reference's padding values.

Bacformer Large has no special tokens: `large_genome_tokens` and `large_window_inputs` build its inputs as the
reference's builder does with ``bacformer_model_type="large"`` (`protein_embeddings_to_inputs` takes that
switch too): the proteins of all contigs in order, ``contig_ids`` the contig index (or the given ids) capped at
``max_n_contigs - 1``, cut after ``max_n_proteins`` proteins.

Genomes longer than the limit lose their tail to truncation. `window_spans` and `window_owners` instead cut
the genome into overlapping windows, which `bacflow.bacformer.stage` runs the model over, each built as the
reference builds a truncated genome (CLS, a run of the genome's tokens, END); every protein takes exactly one
contextual vector: the one from the window where the protein is farthest from a cut (a window edge inside
the genome). The first window is the truncated input,
and a genome that fits is a single window equal to the plain input.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch.nn.utils.rnn import pad_sequence

from bacflow.bacformer.constants import (
    IGNORE_INDEX,
    INFERENCE_SEP_TOKEN_ID,
    MAX_N_CONTIGS,
    MAX_N_PROTEINS,
    SPECIAL_TOKENS,
)


@dataclass(frozen=True)
class GenomeTokens:
    """A genome's tokens between CLS and END (proteins and separators), before any truncation."""

    embeddings: np.ndarray  # (n, dim) float32; zero rows at separators
    kinds: np.ndarray  # (n,) int64 special_tokens_mask values: PROT_EMB, or the separator id
    token_types: np.ndarray  # (n,) int64 contig index, capped as the reference caps it
    end_token_type: int  # the token type END gets: the last contig's (capped) index

    def __len__(self) -> int:
        return len(self.kinds)


def as_contigs(protein_embeddings: Sequence[ArrayLike]) -> list[np.ndarray]:
    """A genome given as contigs (each a sequence of protein vectors) or as one flat sequence of protein vectors
    (one contig), as the reference's builders accept it: float32 (proteins, width) arrays, one per contig."""
    if len(protein_embeddings) == 0:
        raise ValueError("a genome needs at least one contig")
    first = np.asarray(protein_embeddings[0], dtype=np.float32)
    if first.ndim == 1 and first.size > 0:  # a flat sequence of protein vectors: one contig
        protein_embeddings = [protein_embeddings]
    contigs = [np.asarray(contig, dtype=np.float32) for contig in protein_embeddings]
    dims = {contig.shape[-1] for contig in contigs if contig.size > 0}
    if len(dims) != 1:
        raise ValueError(f"protein vectors must all have one size, got sizes {sorted(dims)} (none: no proteins)")
    (dim,) = dims
    return [contig.reshape(-1, dim) for contig in contigs]


def genome_tokens(
    protein_embeddings: Sequence[ArrayLike],
    max_n_contigs: int = MAX_N_CONTIGS,
    sep_token_id: int = INFERENCE_SEP_TOKEN_ID,
) -> GenomeTokens:
    """Tokens of a genome given as contigs (each a sequence of protein vectors) in order, or as one flat
    sequence of protein vectors (one contig), as the reference's builder accepts them."""
    contigs = as_contigs(protein_embeddings)
    dim = contigs[0].shape[1]
    embeddings, kinds, token_types = [], [], []
    for index, contig in enumerate(contigs):  # an empty contig still gets its separator
        # The reference's off-by-one cap, kept: index max_n_contigs passes unchanged.
        contig_type = max_n_contigs - 1 if index > max_n_contigs else index
        embeddings += [contig, np.zeros((1, dim), np.float32)]
        kinds += [SPECIAL_TOKENS["PROT_EMB"]] * len(contig) + [sep_token_id]
        token_types += [contig_type] * (len(contig) + 1)
    return GenomeTokens(
        np.concatenate(embeddings), np.array(kinds, np.int64), np.array(token_types, np.int64), contig_type
    )


def large_genome_tokens(
    protein_embeddings: Sequence[ArrayLike],
    max_n_contigs: int = MAX_N_CONTIGS,
    contig_ids: Sequence[int] | None = None,
) -> GenomeTokens:
    """Bacformer Large's tokens of a genome (contigs of protein vectors, or one flat sequence): one per protein.

    ``contig_ids``: each protein's contig id (default: the index of its contig in the list, as the reference
    numbers them). Ids are capped at ``max_n_contigs - 1``; ``end_token_type`` is unused (there is no END).
    """
    contigs = as_contigs(protein_embeddings)
    if contig_ids is None:
        ids = np.concatenate([np.full(len(contig), index, np.int64) for index, contig in enumerate(contigs)])
    else:
        ids = np.asarray(contig_ids, np.int64)
    embeddings = np.concatenate(contigs)
    if len(ids) != len(embeddings):
        raise ValueError(f"{len(ids)} contig ids for {len(embeddings)} proteins")
    kinds = np.full(len(embeddings), SPECIAL_TOKENS["PROT_EMB"], np.int64)
    return GenomeTokens(embeddings, kinds, np.minimum(ids, max_n_contigs - 1), -1)


def large_window_inputs(
    tokens: GenomeTokens, start: int, stop: int, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Bacformer Large's inputs (batch of 1) for the proteins ``tokens[start:stop]``; with start 0 the reference's."""
    return {
        "protein_embeddings": torch.from_numpy(tokens.embeddings[start:stop]).to(dtype)[None],
        "contig_ids": torch.from_numpy(tokens.token_types[start:stop])[None],
        "attention_mask": torch.ones(1, len(tokens.kinds[start:stop]), dtype=torch.int64),
    }


def window_inputs(
    tokens: GenomeTokens, start: int, stop: int, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Model inputs (batch of 1) for CLS + ``tokens[start:stop]`` + END; with start 0 the reference's input."""
    dim = tokens.embeddings.shape[1]
    zero = np.zeros((1, dim), np.float32)
    embeddings = np.concatenate([zero, tokens.embeddings[start:stop], zero])
    kinds = np.concatenate([[SPECIAL_TOKENS["CLS"]], tokens.kinds[start:stop], [SPECIAL_TOKENS["END"]]])
    token_types = np.concatenate([[0], tokens.token_types[start:stop], [tokens.end_token_type]])
    return {
        "protein_embeddings": torch.from_numpy(embeddings).to(dtype)[None],
        "special_tokens_mask": torch.from_numpy(kinds)[None],
        "token_type_ids": torch.from_numpy(token_types)[None],
        "attention_mask": torch.ones(1, len(kinds), dtype=torch.int64),
    }


def protein_embeddings_to_inputs(
    protein_embeddings: Sequence[ArrayLike],
    max_n_proteins: int = MAX_N_PROTEINS,
    max_n_contigs: int = MAX_N_CONTIGS,
    sep_token_id: int = INFERENCE_SEP_TOKEN_ID,
    dtype: torch.dtype = torch.float32,
    contig_ids: Sequence[int] | None = None,
    bacformer_model_type: str = "base",
) -> dict[str, torch.Tensor]:
    """The reference's ``protein_embeddings_to_inputs``: tensors with a batch dimension of 1.

    ``max_n_proteins`` limits the whole sequence in tokens, CLS, separators and END included. The
    reference's default is 9000 in 0.2.0 and 6000 at its repository head; 6000 is the training length.
    With ``bacformer_model_type="large"``, Bacformer Large's inputs (`large_genome_tokens`: ``contig_ids`` is
    for Large only, as in the reference), cut after ``max_n_proteins`` proteins.
    """
    if bacformer_model_type == "large":
        return large_window_inputs(
            large_genome_tokens(protein_embeddings, max_n_contigs, contig_ids), 0, max_n_proteins, dtype
        )
    if bacformer_model_type != "base":
        raise ValueError(f"bacformer_model_type must be 'base' or 'large', not {bacformer_model_type!r}")
    if max_n_proteins < 3:
        raise ValueError(f"max_n_proteins must leave room for CLS, one token and END, got {max_n_proteins}")
    tokens = genome_tokens(protein_embeddings, max_n_contigs, sep_token_id)
    return window_inputs(tokens, 0, max_n_proteins - 2, dtype)


def collate_inputs(
    samples: Sequence[Mapping[str, torch.Tensor]],
    max_n_contigs: int = MAX_N_CONTIGS,
    pad_token_id: int = SPECIAL_TOKENS["PAD"],
) -> dict[str, torch.Tensor]:
    """Right-pad single-genome inputs (batch of 1 each, as built above) into one batch.

    Padding values are the reference's ``collate_genome_samples``: embeddings 0, ``special_tokens_mask``
    PAD, ``token_type_ids`` ``max_n_contigs`` (the zero row), ``labels`` -100, and an ``attention_mask``
    of 0 that comes out as float32, as there. Bacformer Large's ``contig_ids`` are padded as token types are,
    its ``mlm_mask`` with False. Keys absent from the samples are absent from the batch.
    """
    padding = {
        "protein_embeddings": 0.0,
        "special_tokens_mask": pad_token_id,
        "token_type_ids": max_n_contigs,
        "contig_ids": max_n_contigs,
        "mlm_mask": False,
        "labels": IGNORE_INDEX,
        "attention_mask": 0,
    }
    batch = {
        key: pad_sequence([sample[key][0] for sample in samples], batch_first=True, padding_value=value)
        for key, value in padding.items()
        if key in samples[0]
    }
    if "attention_mask" in batch:
        batch["attention_mask"] = batch["attention_mask"].float()
    return batch


def window_spans(n_tokens: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """Windows ``[start, stop)`` of ``window`` tokens that cover ``n_tokens`` tokens, consecutive windows
    sharing at least ``overlap`` tokens, starts spread evenly from the first token to the last window's."""
    if n_tokens <= window:
        return [(0, n_tokens)]
    if not 0 <= overlap < window:
        raise ValueError(f"the window overlap must be at least 0 and less than the window ({window}), got {overlap}")
    count = 1 + math.ceil((n_tokens - window) / (window - overlap))
    starts = np.linspace(0, n_tokens - window, count).round().astype(int)
    return [(int(start), int(start) + window) for start in starts]


def window_owners(n_tokens: int, spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """For each token, the index of the window where it is farthest from a cut (ties: the earlier window).

    A cut is a window edge inside the genome; a window edge at the genome's own start or end cuts nothing.
    """
    positions = np.arange(n_tokens)
    owner = np.full(n_tokens, -1)
    best = np.full(n_tokens, -1)
    for index, (start, stop) in enumerate(spans):
        inside = positions[start:stop]
        left = inside - start if start > 0 else np.full(len(inside), n_tokens)
        right = stop - 1 - inside if stop < n_tokens else np.full(len(inside), n_tokens)
        distance = np.minimum(left, right)
        better = distance > best[start:stop]
        owner[start:stop][better] = index
        best[start:stop][better] = distance[better]
    return owner
