"""Reading genome assemblies: nucleotide FASTA, GenBank, and GFF3 (with ``##FASTA`` or a FASTA beside it).

The format is detected from the content, never only from the file name, and any of gzip, bzip2 or xz
compression is accepted. Contigs keep their ids exactly as written and their order in the file; a
duplicate contig id is an error. Annotated CDS (GenBank and GFF3) are returned as `AnnotatedCDS` with
1-based inclusive coordinates, ready for `bacflow.proteins.annotate` to turn into protein rows.
"""

from __future__ import annotations

import io
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from Bio import BiopythonParserWarning, SeqIO
from Bio.Data import CodonTable
from Bio.Seq import Seq
from Bio.SeqFeature import AfterPosition, BeforePosition

from bacflow.core.errors import InputError
from bacflow.core.textio import read_text

#: IUPAC nucleotide codes accepted in a genome; anything else in a sequence is an error.
NUCLEOTIDE_CODES = frozenset("ACGTURYSWKMBDHVN")
_NOT_NUCLEOTIDE = re.compile(f"[^{''.join(sorted(NUCLEOTIDE_CODES))}]")
_PROTEIN_ONLY = frozenset("EFILPQ*")


@dataclass(frozen=True)
class Contig:
    """One sequence record of an assembly: a chromosome, plasmid, contig or scaffold."""

    id: str
    sequence: str  # upper case, IUPAC nucleotide codes only; "" where a GenBank record has no sequence


@dataclass(frozen=True)
class AnnotatedCDS:
    """A CDS feature of an annotated assembly, in the file's own coordinates (1-based, inclusive)."""

    contig_index: int
    start: int
    end: int
    strand: int
    protein_id: str | None
    translation: str | None  # None: the file gives none and none could be made
    pseudo: bool
    partial_begin: bool
    partial_end: bool


@dataclass
class Assembly:
    """An assembly as read from disk: contigs in file order, and CDS when the file carries them."""

    path: Path
    format: str  # "fasta" | "genbank" | "gff3"
    contigs: list[Contig]
    cds: list[AnnotatedCDS] | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def bases(self) -> int:
        return sum(len(contig.sequence) for contig in self.contigs)


def detect_format(text: str) -> str:
    """Name the format of an assembly's text from its first meaningful line."""
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith(">"):
            return "fasta"
        if line.startswith("LOCUS"):
            return "genbank"
        if line.startswith("##gff-version"):
            return "gff3"
        break
    return "unknown"


def read_assembly(path: str | Path, gff: str | Path | None = None, genetic_code: int = 11) -> Assembly:
    """Read the assembly at `path`; with `gff`, read CDS from that GFF3 for the sequences in `path`.

    `genetic_code` is used to translate GFF3 CDS, which carry no translation of their own.
    """
    path = Path(path)
    text = read_text(path)
    kind = detect_format(text)
    if kind == "fasta":
        assembly = Assembly(path, "fasta", parse_fasta(text, path))
    elif kind == "genbank":
        assembly = _parse_genbank(text, path)
    elif kind == "gff3":
        assembly = _parse_gff3(text, path, contigs=None, genetic_code=genetic_code)
    else:
        raise InputError(
            f"{path}: not a nucleotide FASTA, GenBank or GFF3 file (the first line should start with "
            "'>', 'LOCUS' or '##gff-version 3')"
        )
    if gff is not None:
        if assembly.cds is not None:
            raise InputError(f"{path}: already annotated ({assembly.format}); do not also give a gff file")
        gff = Path(gff)
        gff_text = read_text(gff)
        if detect_format(gff_text) != "gff3":
            raise InputError(f"{gff}: not a GFF3 file (the first line should be '##gff-version 3')")
        annotated = _parse_gff3(gff_text, gff, contigs=assembly.contigs, genetic_code=genetic_code)
        assembly.cds = annotated.cds
        assembly.warnings += annotated.warnings
    if not assembly.contigs:
        raise InputError(f"{path}: no sequence records")
    _check_unique_ids(assembly.contigs, path)
    return assembly


def parse_fasta(text: str, path: Path) -> list[Contig]:
    """Parse nucleotide FASTA text; the contig id is the header up to the first whitespace."""
    if not text.lstrip().startswith(">"):
        raise InputError(f"{path}: not a FASTA file (no '>' header line)")
    contigs = []
    for number, block in enumerate(text.lstrip().split("\n>"), start=1):
        header, _, body = block.lstrip(">").partition("\n")
        words = header.split()
        if not words:
            raise InputError(f"{path}: record {number} has an empty header line")
        sequence = "".join(body.split()).upper()
        if not sequence:
            # Usually a cut-off file or a failed assembler step: a genome with a lost contig must not pass.
            raise InputError(f"{path}: record '{words[0]}' has no sequence")
        bad = _NOT_NUCLEOTIDE.search(sequence)
        if bad:
            hint = ""
            if _PROTEIN_ONLY.intersection(sequence):
                hint = " (this looks like a protein FASTA; bacflow needs the genome's nucleotide sequence)"
            raise InputError(
                f"{path}: record '{words[0]}' has the character {bad.group()!r} at position "
                f"{bad.start() + 1}, which is not an IUPAC nucleotide code{hint}"
            )
        contigs.append(Contig(words[0], sequence.replace("U", "T")))
    return contigs


def _check_unique_ids(contigs: list[Contig], path: Path) -> None:
    seen: set[str] = set()
    for contig in contigs:
        if contig.id in seen:
            raise InputError(f"{path}: contig id '{contig.id}' occurs more than once")
        seen.add(contig.id)


def _parse_genbank(text: str, path: Path) -> Assembly:
    # Biopython only warns when the text ends inside a record (an interrupted download or copy) and
    # returns the part it read, so a cut-off file would silently lose sequence. Every complete record
    # ends with a '//' line; a text that does not is truncated.
    if not text.rstrip().endswith("//"):
        raise InputError(f"{path}: truncated GenBank file (the last record has no '//' end line)")
    contigs, cds, warnings = [], [], []
    try:
        records = list(SeqIO.parse(io.StringIO(text), "genbank"))
    except (ValueError, BiopythonParserWarning) as error:
        raise InputError(f"{path}: unreadable GenBank record ({error})") from None
    for index, record in enumerate(records):
        contig_id = record.id if record.id and record.id != "<unknown id>" else record.name
        try:
            sequence = str(record.seq).upper()
        except Exception:  # Biopython raises UndefinedSequenceError for CONTIG-only records
            sequence = ""
            warnings.append(f"record '{contig_id}' has no sequence")
        bad = _NOT_NUCLEOTIDE.search(sequence)
        if bad:
            raise InputError(
                f"{path}: record '{contig_id}' has the character {bad.group()!r} at position "
                f"{bad.start() + 1}, which is not an IUPAC nucleotide code"
            )
        contigs.append(Contig(contig_id, sequence))
        for feature in record.features:
            if feature.type != "CDS" or feature.location is None:
                continue
            qualifiers = feature.qualifiers
            location = feature.location
            translation = qualifiers.get("translation", [None])[0]
            identifier = (qualifiers.get("protein_id") or qualifiers.get("locus_tag") or [None])[0]
            cds.append(
                AnnotatedCDS(
                    contig_index=index,
                    start=int(location.start) + 1,
                    end=int(location.end),
                    strand=location.strand or 1,
                    protein_id=identifier,
                    translation=translation,
                    pseudo="pseudo" in qualifiers or "pseudogene" in qualifiers,
                    partial_begin=isinstance(location.start, BeforePosition),
                    partial_end=isinstance(location.end, AfterPosition),
                )
            )
    return Assembly(path, "genbank", contigs, cds, warnings)


def _gff_attributes(column: str) -> dict[str, str]:
    attributes = {}
    for item in column.strip().strip(";").split(";"):
        key, _, value = item.partition("=")
        if key:
            attributes[key.strip()] = urllib.parse.unquote(value.strip())
    return attributes


def _parse_gff3(text: str, path: Path, contigs: list[Contig] | None, genetic_code: int) -> Assembly:
    """Parse GFF3; CDS rows that share an ID (a CDS split across the origin, say) form one CDS."""
    annotation, _, fasta = text.partition("\n##FASTA")
    if contigs is None:
        if not fasta.strip():
            raise InputError(
                f"{path}: GFF3 without a ##FASTA section; give the genome's FASTA in the sheet's 'path' "
                "column and this file in its 'gff' column"
            )
        contigs = parse_fasta(fasta, path)
    index_of = {contig.id: index for index, contig in enumerate(contigs)}
    segments: dict[str, list[tuple[int, int, int, int, dict[str, str]]]] = {}
    for line_number, line in enumerate(annotation.splitlines(), start=1):
        if not line or line.startswith("#"):
            continue
        columns = line.split("\t")
        if len(columns) != 9:
            raise InputError(f"{path}: line {line_number} has {len(columns)} tab-separated columns, not 9")
        seqid, _, feature_type, start, end, _, strand, phase, attributes = columns
        if feature_type != "CDS":
            continue
        seqid = urllib.parse.unquote(seqid)
        if seqid not in index_of:
            raise InputError(f"{path}: line {line_number} names sequence '{seqid}', which is not in the FASTA")
        try:
            row = (index_of[seqid], int(start), int(end), -1 if strand == "-" else 1, int(phase or 0))
        except ValueError:
            raise InputError(f"{path}: line {line_number} has a non-numeric start, end or phase") from None
        # A CDS outside its sequence means the GFF belongs to another assembly; slicing would silently
        # translate a cut-off CDS instead.
        length = len(contigs[row[0]].sequence)
        if not 1 <= row[1] <= row[2] <= length:
            raise InputError(
                f"{path}: line {line_number}: CDS {start}..{end} lies outside sequence '{seqid}' "
                f"({length} bases); is this the GFF of another assembly?"
            )
        parsed = _gff_attributes(attributes)
        key = parsed.get("ID") or parsed.get("Parent") or f"line{line_number}"
        segments.setdefault(key, []).append((*row, parsed))
    # The ambiguous table translates codons with IUPAC codes (an assembly may have them) instead of failing.
    table = CodonTable.ambiguous_dna_by_id[genetic_code]
    cds = []
    for key, parts in segments.items():
        contig_index, _, _, strand, _, attributes = parts[0]
        # Parts in 5' to 3' order, so that parts[0] holds the phase. On the minus strand that is from the
        # highest coordinate down, and each part is reverse-complemented on its own: reverse-complementing
        # the joined parts would undo that order.
        parts.sort(key=lambda part: part[1], reverse=strand < 0)
        sequence = contigs[contig_index].sequence
        pieces = [sequence[start - 1 : end] for _, start, end, *_ in parts]
        if strand < 0:
            pieces = [str(Seq(piece).reverse_complement()) for piece in pieces]
        nucleotides = "".join(pieces)
        partial = attributes.get("partial", "").lower()
        partial_begin = partial in ("true", "10", "11") or "start_range" in attributes
        partial_end = partial in ("true", "01", "11") or "end_range" in attributes
        cds.append(
            AnnotatedCDS(
                contig_index=contig_index,
                start=min(part[1] for part in parts),
                end=max(part[2] for part in parts),
                strand=strand,
                protein_id=attributes.get("protein_id") or attributes.get("locus_tag") or attributes.get("ID", key),
                translation=_translate_cds(
                    nucleotides[parts[0][4] :], table, five_prime_partial=partial_begin if strand > 0 else partial_end
                ),
                pseudo=attributes.get("pseudo", "").lower() == "true",
                partial_begin=partial_begin,
                partial_end=partial_end,
            )
        )
    return Assembly(path, "gff3", contigs, cds)


def _translate_cds(nucleotides: str, table: CodonTable.CodonTable, five_prime_partial: bool) -> str | None:
    """Translate a CDS as annotation tools do: a start codon becomes M; None if it holds an inner stop."""
    usable = len(nucleotides) - len(nucleotides) % 3
    if usable < 3:
        return None
    # Biopython writes J for a codon that is Leu or Ile (e.g. MTT); Prodigal writes X, and J is no protein
    # letter of bacflow's (ESM-2 has no token for it). B and Z stay: ESM-2 and MMseqs2 read them.
    protein = str(Seq(nucleotides[:usable]).translate(table=table)).replace("J", "X")
    if protein.endswith("*"):
        protein = protein[:-1]
    if "*" in protein or not protein:
        return None
    if not five_prime_partial and nucleotides[:3] in CodonTable.unambiguous_dna_by_id[table.id].start_codons:
        protein = "M" + protein[1:]
    return protein
