"""Gene calling with pyrodigal, following Prodigal's own rules for choosing single or meta mode.

Mode rule (``mode: auto``, the default):

* ``kind: mag`` genomes use meta mode: a bin may mix organisms, so no single training set fits it;
* a genome with fewer than `GeneCallingParams.single_min_bases` bases (default 20,000, the least
  Prodigal can train on) uses meta mode;
* every other genome uses single mode, trained on all its contigs together (joined by ``TTAATTAATTAA``
  linkers, as Prodigal does) with the sample's genetic code. Under 100,000 bases the training is
  weak (Prodigal's advice), and the QC table carries a warning.

In meta mode Prodigal picks, per contig, the best of its 50 pre-trained models, each with its own genetic
code; the sample's genetic code is then not used, as in Prodigal.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import pyrodigal

from bacflow.proteins.assembly import Contig

# pyrodigal warns about short training sequences on every call; the QC table records it once instead.
warnings.filterwarnings("ignore", message="sequence should be at least", category=UserWarning)

#: Below this many bases, single-mode training is allowed but weak (Prodigal's documentation).
WEAK_TRAINING_BASES = 100_000


@dataclass(frozen=True)
class GeneCallingParams:
    """Parameters of the gene caller; the defaults are Prodigal's, except `mask`."""

    mode: Literal["auto", "single", "meta"] = "auto"
    single_min_bases: int = 20_000
    mask: bool = True  # no gene may run across a run of N (Prodigal -m)
    closed: bool = False  # Prodigal -c: no gene may run off a contig end
    min_gene: int = 90
    min_edge_gene: int = 60
    max_overlap: int = 60


@dataclass(frozen=True)
class CalledGene:
    contig_index: int
    number: int  # 1-based rank of the gene on its contig, as in Prodigal's ids ("contig_3")
    begin: int  # 1-based leftmost coordinate
    end: int  # 1-based rightmost coordinate, inclusive
    strand: int
    partial_begin: bool
    partial_end: bool
    protein: str  # without the stop '*'
    translation_table: int


def choose_mode(bases: int, kind: str, params: GeneCallingParams) -> Literal["single", "meta"]:
    """Apply the mode rule of this module's docstring."""
    if params.mode != "auto":
        return params.mode
    if kind == "mag" or bases < params.single_min_bases:
        return "meta"
    return "single"


def call_genes(
    contigs: Sequence[Contig], genetic_code: int, mode: Literal["single", "meta"], params: GeneCallingParams
) -> list[CalledGene]:
    """Call genes on every contig, in contig order then in Prodigal's order (leftmost coordinate)."""
    finder = pyrodigal.GeneFinder(
        meta=mode == "meta",
        closed=params.closed,
        mask=params.mask,
        min_gene=params.min_gene,
        min_edge_gene=params.min_edge_gene,
        max_overlap=params.max_overlap,
    )
    sequences = [contig.sequence for contig in contigs if contig.sequence]
    if mode == "single":
        finder.train(*sequences, translation_table=genetic_code)
    called = []
    for contig_index, contig in enumerate(contigs):
        if not contig.sequence:
            continue
        for number, gene in enumerate(finder.find_genes(contig.sequence), start=1):
            called.append(
                CalledGene(
                    contig_index=contig_index,
                    number=number,
                    begin=gene.begin,
                    end=gene.end,
                    strand=gene.strand,
                    partial_begin=gene.partial_begin,
                    partial_end=gene.partial_end,
                    protein=gene.translate(include_stop=False),
                    translation_table=gene.translation_table,
                )
            )
    return called
