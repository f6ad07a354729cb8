"""From an assembly to its ordered protein table and one QC row: the ``proteins`` stage.

A genome's proteins come either from pyrodigal (``annotation: call``) or from the file's own CDS
(``annotation: file``: GenBank ``/translation``, or GFF3 CDS translated with the genetic code);
``annotation: auto`` uses the file's CDS when it has any and calls genes otherwise. Proteins are in
genome order: contig order as in the file, then start coordinate. A genome that cannot be processed is
*quarantined*: it gets a QC row with the reason and no proteins, and the rest of its shard goes on.
A protein whose sequence holds anything but `PROTEIN_LETTERS` (a GenBank ``/translation`` with an inner
``*`` or a ``#``) is dropped instead, counted in QC and named in a warning: the rest of the genome is
usable, and no cohort-wide job (families, embeddings) meets such a sequence.
"""

from __future__ import annotations

import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow as pa

from bacflow.bacformer.constants import MAX_N_CONTIGS, MAX_N_PROTEINS
from bacflow.core.errors import InputError
from bacflow.core.samples import Sample
from bacflow.core.seqhash import PROTEIN_LETTERS, normalise_protein, protein_problem, seq_hash
from bacflow.proteins.assembly import Assembly, Contig, read_assembly
from bacflow.proteins.genecall import WEAK_TRAINING_BASES, GeneCallingParams, call_genes, choose_mode

log = logging.getLogger("bacflow")

#: ESM-2 sees at most this many residues (1,024 tokens with BOS and EOS).
ESM_MAX_RESIDUES = 1022

PROTEIN_SCHEMA = pa.schema(
    [
        ("genome_id", pa.string()),
        ("contig_id", pa.string()),
        ("contig_index", pa.int32()),
        ("protein_index", pa.int32()),
        ("protein_id", pa.string()),
        ("start", pa.int64()),
        ("end", pa.int64()),
        ("strand", pa.int8()),
        ("partial_begin", pa.bool_()),
        ("partial_end", pa.bool_()),
        ("sequence", pa.string()),
        ("length", pa.int32()),
        ("seq_hash", pa.string()),
        ("source", pa.string()),
    ]
)

QC_SCHEMA = pa.schema(
    [
        ("genome_id", pa.string()),
        ("shard", pa.string()),
        ("path", pa.string()),
        ("kind", pa.string()),
        ("group", pa.string()),
        ("split", pa.string()),
        ("format", pa.string()),
        ("source", pa.string()),
        ("mode", pa.string()),
        ("genetic_code", pa.int32()),
        ("contigs", pa.int32()),
        ("bases", pa.int64()),
        ("proteins", pa.int32()),
        ("proteins_over_1022", pa.int32()),
        ("proteins_beyond_6000", pa.int32()),
        ("contigs_beyond_1000", pa.int32()),
        ("partial_proteins", pa.int32()),
        ("pseudogenes_dropped", pa.int32()),
        ("cds_without_translation", pa.int32()),
        ("warnings", pa.list_(pa.string())),
        ("quarantine_reason", pa.string()),
        ("bad_translations_dropped", pa.int32()),
    ]
)


@dataclass(frozen=True)
class AnnotationParams:
    annotation: Literal["auto", "call", "file"] = "auto"
    gene_calling: GeneCallingParams = field(default_factory=GeneCallingParams)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> AnnotationParams:
        return cls(
            annotation=config.get("annotation", "auto"),
            gene_calling=GeneCallingParams(**config.get("gene_calling", {})),
        )

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class GenomeProteins:
    """The proteins of one genome (columns of `PROTEIN_SCHEMA`) and its QC row (`QC_SCHEMA`)."""

    columns: dict[str, list]
    qc: dict[str, Any]


def annotate_genome(sample: Sample, params: AnnotationParams, shard: str = "") -> GenomeProteins:
    """Proteins and QC of one genome; bad input quarantines the genome instead of raising."""
    qc: dict[str, Any] = {name: None for name in QC_SCHEMA.names}
    qc.update(
        genome_id=sample.genome_id,
        shard=shard,
        path=sample.path,
        kind=sample.kind,
        group=sample.group,
        split=sample.split,
        genetic_code=sample.genetic_code,
        warnings=[],
    )
    columns: dict[str, list] = {name: [] for name in PROTEIN_SCHEMA.names}
    try:
        assembly = read_assembly(sample.path, sample.gff, sample.genetic_code)
        qc.update(format=assembly.format, contigs=len(assembly.contigs), bases=assembly.bases)
        qc["warnings"] += assembly.warnings
        _fill_proteins(columns, qc, assembly, sample, params)
        if not columns["sequence"]:
            raise InputError(f"{sample.path}: no genes ({qc['mode']} mode, {qc['bases']} bases)")
    except InputError as error:
        qc["quarantine_reason"] = str(error)
        columns = {name: [] for name in PROTEIN_SCHEMA.names}
    lengths = columns["length"]
    qc.update(
        proteins=len(lengths),
        proteins_over_1022=sum(length > ESM_MAX_RESIDUES for length in lengths),
        proteins_beyond_6000=max(0, len(lengths) - MAX_N_PROTEINS),
        contigs_beyond_1000=max(0, (qc["contigs"] or 0) - MAX_N_CONTIGS),
        partial_proteins=sum(a or b for a, b in zip(columns["partial_begin"], columns["partial_end"], strict=False)),
    )
    return GenomeProteins(columns, qc)


def _fill_proteins(
    columns: dict[str, list], qc: dict[str, Any], assembly: Assembly, sample: Sample, params: AnnotationParams
) -> None:
    annotation = params.annotation
    if annotation == "auto":
        annotation = "file" if assembly.cds else "call"
    if annotation == "file":
        if assembly.cds is None:
            raise InputError(f"{sample.path}: 'annotation: file' needs a GenBank or GFF3 file, not FASTA")
        # A FASTA given with a 'gff' column keeps format "fasta", yet its CDS come from the GFF3.
        qc.update(source="genbank" if assembly.format == "genbank" else "gff3", mode="file")
        rows = _file_proteins(assembly, qc)
        origin = sample.gff or sample.path
    else:
        mode = choose_mode(assembly.bases, sample.kind, params.gene_calling)
        qc.update(source="pyrodigal", mode=mode)
        if mode == "single" and assembly.bases < WEAK_TRAINING_BASES:
            qc["warnings"].append(
                f"single-mode training on {assembly.bases} bases (under {WEAK_TRAINING_BASES}): calls may be weak"
            )
        try:
            genes = call_genes(assembly.contigs, sample.genetic_code, mode, params.gene_calling)
        except (ValueError, RuntimeError) as error:  # pyrodigal refuses training on too short a genome
            raise InputError(f"{sample.path}: gene calling failed in {mode} mode ({error})") from None
        rows = [
            (g.contig_index, g.begin, g.end, g.strand, g.partial_begin, g.partial_end, None, g.protein) for g in genes
        ]
        origin = sample.path
    contigs = assembly.contigs
    rows = _drop_bad_translations(rows, qc, contigs, origin)
    rank_on_contig: dict[int, int] = {}
    for protein_index, row in enumerate(rows):
        contig_index, start, end, strand, partial_begin, partial_end, protein_id, protein = row
        contig_id = contigs[contig_index].id
        rank_on_contig[contig_index] = rank_on_contig.get(contig_index, 0) + 1
        sequence = normalise_protein(protein)
        columns["genome_id"].append(sample.genome_id)
        columns["contig_id"].append(contig_id)
        columns["contig_index"].append(contig_index)
        columns["protein_index"].append(protein_index)
        columns["protein_id"].append(protein_id or f"{contig_id}_{rank_on_contig[contig_index]}")
        columns["start"].append(start)
        columns["end"].append(end)
        columns["strand"].append(strand)
        columns["partial_begin"].append(partial_begin)
        columns["partial_end"].append(partial_end)
        columns["sequence"].append(sequence)
        columns["length"].append(len(sequence))
        columns["seq_hash"].append(seq_hash(sequence))
        columns["source"].append(qc["source"])


def _file_proteins(assembly: Assembly, qc: dict[str, Any]) -> list[tuple]:
    """The file's usable CDS in genome order; pseudogenes and CDS without translation are counted."""
    pseudo = missing = 0
    rows = []
    for cds in assembly.cds or []:
        if cds.pseudo:
            pseudo += 1
        elif not cds.translation or not normalise_protein(cds.translation):
            missing += 1
        else:
            rows.append(
                (
                    cds.contig_index,
                    cds.start,
                    cds.end,
                    cds.strand,
                    cds.partial_begin,
                    cds.partial_end,
                    cds.protein_id,
                    cds.translation,
                )
            )
    qc.update(pseudogenes_dropped=pseudo, cds_without_translation=missing)
    rows.sort(key=lambda row: (row[0], row[1], row[2], row[3]))
    return rows


#: Dropped proteins named in a genome's warning; the count covers them all.
_NAMED_DROPS = 5


def _drop_bad_translations(rows: list[tuple], qc: dict[str, Any], contigs: list[Contig], origin: str) -> list[tuple]:
    """The rows whose protein is made of `PROTEIN_LETTERS`; the others are counted in QC and named in one
    warning: `origin` (the file the proteins came from), record, protein id or coordinates, first fault."""
    kept, dropped = [], []
    for row in rows:
        contig_index, start, end, _, _, _, protein_id, protein = row
        problem = protein_problem(normalise_protein(protein))
        if problem is None:
            kept.append(row)
        else:
            name = protein_id or f"{start}..{end}"
            dropped.append(f"record '{contigs[contig_index].id}' protein '{name}': {problem}")
    qc["bad_translations_dropped"] = len(dropped)
    if dropped:
        more = len(dropped) - _NAMED_DROPS
        warning = (
            f"{origin}: dropped {len(dropped)} protein(s) not made of the protein letters {PROTEIN_LETTERS}: "
            + "; ".join(dropped[:_NAMED_DROPS])
            + (f"; and {more} more" if more > 0 else "")
        )
        qc["warnings"].append(warning)
        log.warning("%s", warning)
    return kept


def annotate_shard(
    samples: list[Sample], params: AnnotationParams, shard: str = "", threads: int = 1
) -> tuple[pa.Table, pa.Table]:
    """Proteins and QC tables of a shard, genomes in sheet order; genomes run on `threads` threads."""
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        results = list(pool.map(lambda sample: annotate_genome(sample, params, shard), samples))
    columns = {name: [value for result in results for value in result.columns[name]] for name in PROTEIN_SCHEMA.names}
    proteins = pa.table(columns, schema=PROTEIN_SCHEMA)
    qc = pa.Table.from_pylist([result.qc for result in results], schema=QC_SCHEMA)
    return proteins, qc
