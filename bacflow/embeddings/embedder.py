"""ESM-2 protein vectors: tokenisation, length-sorted batches under a token budget, pooling.

The recipe is bacformer.pp's: EsmTokenizer ids with BOS and EOS, truncation to ``max_length`` tokens (the
first ``max_length - 2`` residues), the EsmModel's last hidden state (computed by
`bacflow.embeddings.esm_encoder.EsmEncoder`, a faster forward pass over its weights), and a mean over every non-padding
token, BOS and EOS included (pooling "mean"). Only the batching differs, and padding is masked out of
attention, so a vector does not depend on which other sequences share its batch (beyond float rounding).

Batches hold sequences of similar length, longest first, with at most ``token_budget`` tokens counting
padding: the first batch is the largest in memory, so a budget that does not fit fails at once, not hours
in. On a CUDA out-of-memory error the batch is halved and retried, and the budget stays halved.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from bacflow.core.errors import InputError
from bacflow.core.seqhash import normalise_protein

if TYPE_CHECKING:
    import torch
    from transformers import EsmTokenizer

    from bacflow.embeddings.esm_encoder import EsmEncoder

log = logging.getLogger("bacflow")

#: A fixed protein (human ubiquitin) embedded once after loading, to catch broken weights.
PROBE_SEQUENCE = "MQIFVKTLTGKTITLEVEPSDTIENVKAKIQDKEGIPPDQQRLIFAGKQLEDGRTLSDYNIQKESTLHLVLRLRGG"


class EsmTokens:
    """The tokenizer's ids for normalised protein sequences, computed with a lookup table.

    EsmTokenizer (ESM-2) is pure Python (about 1 ms per protein, slower than a GPU embeds them). For a
    normalised sequence (upper case, no white space) its output is one id per character, except that a
    run of characters outside the vocabulary becomes a single ``<unk>``; ESM-C's tokenizer gives one
    ``<unk>`` per such character instead, and which rule applies is asked of the tokenizer. This class
    reproduces exactly that, and hands any sequence it cannot (non-ASCII, or a vocabulary with upper-case
    multi-character tokens) to the tokenizer itself. tests/embeddings/test_esm_embed.py and test_esmc.py
    check both against each other.
    """

    def __init__(self, tokenizer: EsmTokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.cls, self.eos, self.pad, self.unk = (
            tokenizer.cls_token_id,
            tokenizer.eos_token_id,
            tokenizer.pad_token_id,
            tokenizer.unk_token_id,
        )
        vocab = tokenizer.get_vocab()
        self.table = np.full(128, -1, dtype=np.int64)
        for token, index in vocab.items():
            if len(token) == 1 and token.isascii():
                self.table[ord(token)] = index
        # A multi-character token that a normalised sequence could contain would need the tokenizer's
        # longest-match splitting; ESM vocabularies have none (<cls>, <null_1>, ... are lower case).
        self.exact = not any(len(token) > 1 and token == token.upper() for token in vocab)
        outside = next(chr(code) for code in range(33, 127) if self.table[code] < 0)
        self.fuse_unknown = len(tokenizer(outside * 2, add_special_tokens=False)["input_ids"]) == 1

    def residue_ids(self, sequence: str) -> np.ndarray:
        """Token ids of a normalised sequence, without BOS/EOS and before truncation."""
        if not (self.exact and sequence.isascii()):
            return np.asarray(self.tokenizer(sequence, add_special_tokens=False)["input_ids"], dtype=np.int64)
        ids = self.table[np.frombuffer(sequence.encode("ascii"), dtype=np.uint8)]
        unknown = ids < 0
        if unknown.any():
            ids = np.where(unknown, self.unk, ids)
            if self.fuse_unknown:  # one <unk> per run: keep the first of each
                ids = ids[~(unknown & np.concatenate(([False], unknown[:-1])))]
        return ids

    def encode(self, sequences: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids padded to the longest, shape (n, L); tokens per sequence with BOS/EOS; truncated flags)."""
        keep = self.max_length - 2
        residues = [self.residue_ids(sequence) for sequence in sequences]
        truncated = np.array([len(ids) > keep for ids in residues], dtype=bool)
        tokens = np.array([min(len(ids), keep) + 2 for ids in residues], dtype=np.int64)
        batch = np.full((len(sequences), int(tokens.max(initial=2))), self.pad, dtype=np.int64)
        for row, ids in enumerate(residues):
            batch[row, 0] = self.cls
            batch[row, 1 : tokens[row] - 1] = ids[:keep]
            batch[row, tokens[row] - 1] = self.eos
        return batch, tokens, truncated


@dataclass
class EmbeddedBatch:
    """Vectors of some of the sequences given to `Embedder.batches`, by their positions there."""

    positions: np.ndarray
    vectors: torch.Tensor  #: float32, (n, hidden), on the model's device
    tokens: np.ndarray  #: tokens pooled over, BOS and EOS included (before pooling "mean_residues")
    truncated: np.ndarray


class Embedder:
    """Embeds protein sequences with an ESM-2 encoder under one recipe's tokens and pooling."""

    def __init__(
        self, encoder: EsmEncoder, tokenizer: EsmTokenizer, *, pooling: str, max_length: int, token_budget: int
    ):
        import torch

        self.encoder = encoder
        self.device = encoder.device
        self.tokens = EsmTokens(tokenizer, max_length)
        self.pooling = pooling
        self.max_length = max_length
        self.token_budget = token_budget
        self.model_calls = 0
        self.sequences_embedded = 0
        self.torch = torch

    def check_probe(self, source: str) -> None:
        """Fail when the loaded weights give NaN or infinite vectors (broken or badly converted weights)."""
        vector = next(self.batches([PROBE_SEQUENCE])).vectors
        if not bool(self.torch.isfinite(vector).all()):
            raise InputError(
                f"model {source} gives NaN or infinite vectors for a probe protein: its weights are broken"
            )

    def batches(self, sequences: Sequence[str]) -> Iterator[EmbeddedBatch]:
        """Embed `sequences` (normalised here), longest first; vectors stay on the device until read."""
        sequences = [normalise_protein(sequence) for sequence in sequences]
        if not all(sequences):
            raise InputError("an empty protein sequence cannot be embedded")
        # Token counts before tokenising: an upper bound (a run of unknown characters is one token).
        bound = np.minimum([len(sequence) for sequence in sequences], self.max_length - 2) + 2
        order = np.argsort(-bound, kind="stable")
        start, started, total = 0, time.monotonic(), int(bound.sum())
        done_tokens, last_report = 0, started
        while start < len(order):
            size = max(1, self.token_budget // int(bound[order[start]]))
            positions = order[start : start + size]
            try:
                batch = self._embed([sequences[p] for p in positions], positions)
            except self.torch.OutOfMemoryError:
                if size == 1:
                    raise RuntimeError(
                        f"one protein of {bound[order[start]]} tokens does not fit in GPU memory: "
                        "lower embeddings.max_length or use a GPU with more memory"
                    ) from None
                self.token_budget = (size // 2) * int(bound[order[start]])
                log.warning(
                    "out of GPU memory with %d proteins; retrying in halves (budget now %d tokens)",
                    size,
                    self.token_budget,
                )
                self.torch.cuda.empty_cache()
                continue
            start += size
            done_tokens += int(bound[positions].sum())
            if time.monotonic() - last_report > 30 or start == len(order):
                last_report = time.monotonic()
                rate = done_tokens / max(last_report - started, 1e-9)
                left = (total - done_tokens) / max(rate, 1e-9)
                log.info("embedded %d/%d proteins, %.0f tokens/s, about %.0f s left", start, len(order), rate, left)
            yield batch

    def embed(self, sequences: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(float32 vectors in input order, tokens, truncated) of `sequences`."""
        vectors = np.zeros((len(sequences), self.encoder.hidden_size), dtype=np.float32)
        tokens = np.zeros(len(sequences), dtype=np.int64)
        truncated = np.zeros(len(sequences), dtype=bool)
        for batch in self.batches(sequences):
            vectors[batch.positions] = batch.vectors.cpu().numpy()
            tokens[batch.positions] = batch.tokens
            truncated[batch.positions] = batch.truncated
        return vectors, tokens, truncated

    def _embed(self, sequences: list[str], positions: np.ndarray) -> EmbeddedBatch:
        torch = self.torch
        ids, tokens, truncated = self.tokens.encode(sequences)
        ids_t = torch.from_numpy(ids).to(self.device, non_blocking=True)
        lengths = torch.from_numpy(tokens).to(self.device, non_blocking=True)
        mask = torch.arange(ids.shape[1], device=self.device)[None, :] < lengths[:, None]
        with torch.inference_mode():
            hidden = self.encoder(ids_t, mask)
            pool = mask.clone()
            if self.pooling == "mean_residues":
                pool[:, 0] = False
                pool[torch.arange(len(sequences), device=self.device), lengths - 1] = False
            weights = pool.to(torch.float32)
            vectors = torch.einsum("bl,bld->bd", weights, hidden.float()) / weights.sum(1, keepdim=True)
        self.model_calls += 1
        self.sequences_embedded += len(sequences)
        return EmbeddedBatch(positions, vectors, tokens, truncated)
