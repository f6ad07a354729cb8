"""Reading the pretraining corpus for training: a map-style dataset of genomes and a length-grouped sampler.

A genome is read on demand from its own parquet row group (see `bacflow.pretrain.data`), so neither the
trainer nor its data-loader workers hold the corpus in memory, and every genome can be reached in any order:
the whole training split is shuffled every epoch, not only the order of its files.

Randomness is a pure function of (seed, split, epoch, genome): the sampler yields ``(genome, epoch)`` keys and
the dataset draws contig shuffling and masking from a generator seeded with them. A genome's example is thus
the same in every worker and process, in a resumed run as in an uninterrupted one, and new in every epoch.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset, Sampler

from bacflow.pretrain.data import UNORDERED_KINDS
from bacflow.pretrain.masking import ExampleParams, pretraining_example

#: Streams of random numbers, so that the splits and the sampler never share draws.
STREAMS = {"train": 0, "val": 1, "test": 2, "sampler": 3}
#: A length group spans this many batches (as Hugging Face's LengthGroupedSampler's megabatches).
GROUP_BATCHES = 50
_OPEN_FILES = 64
_COLUMNS = ["protein_embeddings", "contig_idx", "prot_cluster_id", "kind"]


@dataclass(frozen=True)
class CorpusIndex:
    """Where each genome of a split is (file, row group, row) and how many tokens its example has."""

    files: list[str]
    file_of: np.ndarray  # (genomes,) index into files
    row_group_of: np.ndarray
    row_of: np.ndarray  # row within its row group
    tokens: np.ndarray  # example length before truncation: CLS, proteins, separators, END
    proteins: np.ndarray  # Bacformer Large's example length before truncation

    @classmethod
    def of_files(cls, paths: Sequence[str | Path]) -> CorpusIndex:
        file_of, row_group_of, row_of, tokens, proteins = [], [], [], [], []
        for number, path in enumerate(paths):
            parquet = pq.ParquetFile(path)
            for group in range(parquet.num_row_groups):
                rows = parquet.metadata.row_group(group).num_rows
                file_of += [number] * rows
                row_group_of += [group] * rows
                row_of += range(rows)
            sizes = parquet.read(columns=["n_proteins", "n_contigs"])
            tokens.append(pc.add(pc.add(sizes.column("n_proteins"), sizes.column("n_contigs")), 2).to_numpy())
            proteins.append(sizes.column("n_proteins").to_numpy())
        return cls(
            files=[str(path) for path in paths],
            file_of=np.array(file_of, np.int64),
            row_group_of=np.array(row_group_of, np.int64),
            row_of=np.array(row_of, np.int64),
            tokens=np.concatenate(tokens) if tokens else np.zeros(0, np.int64),
            proteins=np.concatenate(proteins) if proteins else np.zeros(0, np.int64),
        )

    def __len__(self) -> int:
        return len(self.file_of)


class GenomeDataset(Dataset):
    """The examples of one split. Keys: ``(genome, epoch)`` from `EpochSampler`, or a plain genome index,
    which means epoch 0 (evaluation: the same masks at every evaluation)."""

    def __init__(self, index: CorpusIndex, split: str, params: ExampleParams, seed: int, shuffle_contigs: bool):
        self.index = index
        self.stream = STREAMS[split]
        self.params = params
        self.seed = seed
        self.shuffle_contigs = shuffle_contigs
        self._files: OrderedDict[int, pq.ParquetFile] = OrderedDict()

    def __len__(self) -> int:
        return len(self.index)

    def lengths(self) -> np.ndarray:
        """Example lengths in tokens, after truncation."""
        tokens = self.index.tokens if self.params.special_tokens else self.index.proteins
        return np.minimum(tokens, self.params.max_n_proteins)

    def _file(self, number: int) -> pq.ParquetFile:
        # Opened lazily in each worker process (file handles do not travel to workers), a few at a time.
        if number not in self._files:
            if len(self._files) >= _OPEN_FILES:
                self._files.popitem(last=False)
            self._files[number] = pq.ParquetFile(self.index.files[number])
        self._files.move_to_end(number)
        return self._files[number]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        genome, epoch = (key, 0) if isinstance(key, (int, np.integer)) else key
        table = self._file(int(self.index.file_of[genome])).read_row_group(
            int(self.index.row_group_of[genome]), columns=_COLUMNS
        )
        row = table.slice(int(self.index.row_of[genome]), 1)
        rng = np.random.default_rng([self.seed, self.stream, int(epoch), int(genome)])
        return pretraining_example(
            protein_vectors(row.column("protein_embeddings")),
            pc.list_flatten(row.column("contig_idx")).to_numpy(),
            pc.list_flatten(row.column("prot_cluster_id")).to_numpy().astype(np.int64),
            self.params,
            rng,
            shuffle_contigs=self.shuffle_contigs and row.column("kind")[0].as_py() in UNORDERED_KINDS,
        )


def protein_vectors(column: pa.ChunkedArray) -> np.ndarray:
    """One genome's ``protein_embeddings`` cell as an (n, dim) array, in the stored dtype."""
    vectors = pc.list_flatten(column)
    dim = vectors.type.list_size
    return pc.list_flatten(vectors).to_numpy(zero_copy_only=False).reshape(-1, dim)


class EpochSampler(Sampler):
    """Training order: a new permutation of the genomes every epoch, grouped by length.

    The permutation is cut into groups of ``GROUP_BATCHES`` batches, and each group is sorted by length, longest
    first, so that a batch (and the batches that the processes of one step get) holds genomes of similar length
    and little padding. Yields ``(genome, epoch)``; `set_epoch` chooses the epoch, and the order depends only on
    (seed, epoch).
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int):
        self.lengths = np.asarray(lengths)
        self.group = batch_size * GROUP_BATCHES
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = np.random.default_rng([self.seed, STREAMS["sampler"], self.epoch]).permutation(len(self.lengths))
        for start in range(0, len(order), self.group):
            group = order[start : start + self.group]
            # Stable: equal lengths keep their random order.
            for genome in group[np.argsort(-self.lengths[group], kind="stable")]:
                yield int(genome), self.epoch


def length_sorted(lengths: np.ndarray) -> list[int]:
    """Genome indices from longest to shortest: evaluation batches with little padding."""
    return np.argsort(-np.asarray(lengths), kind="stable").tolist()


def padded_fraction(lengths: Sequence[int], batch_size: int) -> float:
    """Share of padding tokens when consecutive genomes of these lengths form batches (for the log)."""
    total = padded = 0
    for start in range(0, len(lengths), batch_size):
        batch = lengths[start : start + batch_size]
        total += max(batch) * len(batch)
        padded += max(batch) * len(batch) - sum(batch)
    return padded / total if total else math.nan
