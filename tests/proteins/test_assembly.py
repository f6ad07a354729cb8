"""Reading real assemblies (multi-replicon FASTA, a 156-contig draft, GenBank with pseudogenes, a MAG
GenBank with an edited record, GFF3 with and without ##FASTA) into ordered protein tables.
"""

from __future__ import annotations

import io
import re
from collections import Counter
from pathlib import Path

import pytest
from Bio import SeqIO
from Bio.Seq import Seq
from Bio.SeqFeature import Location

from bacflow.proteins.annotate import AnnotationParams, annotate_genome, annotate_shard
from bacflow.proteins.assembly import read_assembly
from bacflow.proteins.genecall import GeneCallingParams, call_genes
from conftest import (
    CT_114V1_FASTA,
    CT_114V1_PRODIGAL_GFF,
    SHARED_DATA,
    SMALL_GENOME,
    assert_protein_table_contract,
    gunzip_text,
    make_sample,
    needs_shared,
    split_gff_fasta,
)

pytestmark = needs_shared

PARACOCCUS_MAG = SHARED_DATA / "drafts" / "Paracoccus_sp_SCN68-21_MAG_MEES01.gbff.gz"
PARACOCCUS_TRANSLATIONS = SHARED_DATA / "drafts" / "Paracoccus_sp_SCN68-21_MAG_MEES01.cds_translations.faa.gz"
CT_D_GBFF = SHARED_DATA / "genomes" / "Ctrachomatis_D-CS637-11_GCF_001183765.1.gbff.gz"
CT_114V1_GBFF = SHARED_DATA / "cohort" / "Ctrachomatis_114V1_GCF_003788785.1.gbff.gz"

# path, kind, number of records in the file, and the source its proteins must come from
GENOMES = {
    "Ecoli_Sakai_3_replicons": (
        SHARED_DATA / "genomes" / "Ecoli_O157H7_Sakai_GCF_000008865.2.fna.gz",
        "complete",
        3,
        "pyrodigal",
    ),
    "Kpneumoniae_7_replicons": (
        SHARED_DATA / "genomes" / "Kpneumoniae_HS11286_GCA_000240185.2.fna.gz",
        "complete",
        7,
        "pyrodigal",
    ),
    "Ecoli_K12_156_contigs": (
        SHARED_DATA / "drafts" / "Ecoli_K12_MG1655_ragout_contigs.fna.gz",
        "draft",
        156,
        "pyrodigal",
    ),
    "Paracoccus_MAG_genbank": (PARACOCCUS_MAG, "mag", 87, "genbank"),
    "Ctrachomatis_D_genbank": (CT_D_GBFF, "complete", 2, "genbank"),
}


def record_ids_as_written(path: Path) -> list[str]:
    """Record ids straight from the file's text: FASTA header words, or GenBank VERSION accessions."""
    text = gunzip_text(path)
    pattern = r"^>(\S+)" if text.startswith(">") else r"^VERSION\s+(\S+)"
    return re.findall(pattern, text, flags=re.MULTILINE)


@pytest.mark.parametrize("name", GENOMES)
def test_protein_table_contract(annotated, name: str):
    path, kind, _, source = GENOMES[name]
    result = annotated(path, kind)
    assert_protein_table_contract(result, path)
    assert set(result.columns["source"]) == {source} and result.qc["source"] == source


@pytest.mark.parametrize("name", GENOMES)
def test_every_record_kept_in_file_order_with_its_id_as_written(annotated, name: str):
    path, kind, records, _ = GENOMES[name]
    written = record_ids_as_written(path)
    assert len(written) == records
    assert [contig.id for contig in read_assembly(path).contigs] == written
    result = annotated(path, kind)
    assert result.qc["contigs"] == records
    # Contigs appear in the table in file order (contigs too short for any gene are absent).
    appearing = list(dict.fromkeys(result.columns["contig_id"]))
    assert appearing == [contig_id for contig_id in written if contig_id in appearing]
    if kind == "complete":
        assert appearing == written, "every replicon of a complete genome has genes"


def test_small_plasmids_keep_their_genes(annotated):
    """The smallest replicons (pOSAK1, 3,306 bp; pKPHS6, 1,308 bp) are gene-called with the chromosome."""
    sakai = Counter(annotated(GENOMES["Ecoli_Sakai_3_replicons"][0], "complete").columns["contig_id"])
    klebsiella = Counter(annotated(GENOMES["Kpneumoniae_7_replicons"][0], "complete").columns["contig_id"])
    assert sakai["NC_002127.1"] >= 1 and klebsiella["CP003228.1"] >= 1
    assert sum(sakai.values()) > 5000 and sum(klebsiella.values()) > 5000


def test_non_acgt_base_is_kept():
    """K. pneumoniae HS11286 has one N in its chromosome: accepted and kept as written."""
    chromosome = read_assembly(GENOMES["Kpneumoniae_7_replicons"][0]).contigs[0]
    assert Counter(base for base in chromosome.sequence if base not in "ACGT") == {"N": 1}


# GenBank file, its /translation proteins, and the expected QC counts: proteins,
# pseudogenes dropped, and CDS without /translation (MEES01000006 of the MAG lost 63 translations to an
# edit: 3,234 CDS - 98 /pseudo - 3,073 /translation = 63).
GENBANK_TRANSLATIONS = [
    pytest.param(
        CT_D_GBFF,
        SHARED_DATA / "genomes" / "Ctrachomatis_D-CS637-11_GCF_001183765.1.cds_translations.faa.gz",
        914,
        15,
        0,
        id="Ctrachomatis_D",
    ),
    pytest.param(
        CT_114V1_GBFF,
        SHARED_DATA / "drafts" / "Ctrachomatis_114V1_GCF_003788785.1.cds_translations.faa.gz",
        900,
        21,
        0,
        id="Ctrachomatis_114V1",
    ),
    pytest.param(PARACOCCUS_MAG, PARACOCCUS_TRANSLATIONS, 3073, 98, 63, id="Paracoccus_MAG"),
]

_TRANSLATION_HEADER = re.compile(r"^(\S+) .*\bloc=(\S+):(\d+)\.\.(\d+)\(([+-])\)")


def read_translations(path: Path) -> list[tuple]:
    """(protein_id, contig_id, start, end, strand, sequence) of each ``*.cds_translations.faa.gz`` record."""
    rows = []
    for block in gunzip_text(path).split(">")[1:]:
        header, _, body = block.partition("\n")
        protein_id, contig_id, start, end, strand = _TRANSLATION_HEADER.match(header).groups()
        rows.append((protein_id, contig_id, int(start), int(end), 1 if strand == "+" else -1, "".join(body.split())))
    return rows


@pytest.mark.parametrize(("gbff", "translations", "proteins", "pseudogenes", "untranslated"), GENBANK_TRANSLATIONS)
def test_genbank_proteins_are_its_translations(
    annotated, gbff: Path, translations: Path, proteins: int, pseudogenes: int, untranslated: int
):
    """Every /translation becomes one row, with its protein_id and location, in genome order."""
    result = annotated(gbff, "draft")
    columns = result.columns
    ours = list(
        zip(
            columns["protein_id"],
            columns["contig_id"],
            columns["start"],
            columns["end"],
            columns["strand"],
            columns["sequence"],
            strict=False,
        )
    )
    expected = read_translations(translations)
    assert len(expected) == proteins
    # The translations file lists CDS in file order; the table is in genome order (contig, then start).
    contig_order = {contig_id: index for index, contig_id in enumerate(record_ids_as_written(gbff))}
    assert ours == sorted(expected, key=lambda row: (contig_order[row[1]], row[2], row[3]))
    assert (result.qc["proteins"], result.qc["pseudogenes_dropped"], result.qc["cds_without_translation"]) == (
        proteins,
        pseudogenes,
        untranslated,
    )


_CDS_FEATURE = re.compile(r"^ {5}CDS {13}(.+\n(?: {21}[^/].*\n)*)((?: {21}.*\n)*)", re.MULTILINE)


def partial_cds_in_text(gbff: Path) -> dict[tuple[str, int, int], tuple[bool, bool]]:
    """Partial, translated CDS read from the GenBank text: '<' marks a cut left end, '>' a cut right end."""
    flags = {}
    for record in gunzip_text(gbff).split("\n//")[:-1]:
        contig_id = re.search(r"^VERSION\s+(\S+)", record, flags=re.MULTILINE).group(1)
        for location, qualifiers in _CDS_FEATURE.findall(record + "\n"):
            positions = [int(number) for number in re.findall(r"\d+", location)]
            if ("<" in location or ">" in location) and "/translation=" in qualifiers and "/pseudo" not in qualifiers:
                flags[(contig_id, min(positions), max(positions))] = ("<" in location, ">" in location)
    return flags


@pytest.mark.parametrize(("gbff", "partial_proteins"), [(CT_114V1_GBFF, 1), (PARACOCCUS_MAG, 12)])
def test_genbank_partial_cds_flags(annotated, gbff: Path, partial_proteins: int):
    """A CDS cut at a contig end keeps the partial flag of the side where it is cut (left or right of the
    contig, whatever its strand); pseudogenes among partial CDS are dropped (114V1 has 5 partial CDS, 4
    of them /pseudo)."""
    result = annotated(gbff, "draft")
    columns = result.columns
    flags = {
        (contig, start, end): (begin, finish)
        for contig, start, end, begin, finish in zip(
            columns["contig_id"],
            columns["start"],
            columns["end"],
            columns["partial_begin"],
            columns["partial_end"],
            strict=False,
        )
        if begin or finish
    }
    assert len(flags) == result.qc["partial_proteins"] == partial_proteins
    assert flags == partial_cds_in_text(gbff)


def test_mag_record_without_translations_keeps_its_other_proteins(annotated):
    """MEES01000006 lost /translation on 63 CDS; its other CDS still give proteins."""
    result = annotated(PARACOCCUS_MAG, "mag")
    expected = Counter(row[1] for row in read_translations(PARACOCCUS_TRANSLATIONS))
    assert Counter(result.columns["contig_id"]) == expected
    assert expected["MEES01000006.1"] > 0


# GFF3: Prodigal's GFF3 of 114V1 carries its FASTA in a ##FASTA section; the same annotation is also
# given without it, next to the FASTA file ('gff' column). Both must translate to pyrodigal's calls.


@pytest.fixture(scope="module")
def gff_annotation_only(tmp_path_factory) -> Path:
    annotation, _ = split_gff_fasta(gunzip_text(CT_114V1_PRODIGAL_GFF))
    path = tmp_path_factory.mktemp("gff") / "114V1.prodigal.gff"
    path.write_text(annotation)
    return path


def test_gff_fasta_section_is_the_assembly():
    from_gff = read_assembly(CT_114V1_PRODIGAL_GFF)
    assert from_gff.format == "gff3" and len(from_gff.cds) == 902
    assert from_gff.contigs == read_assembly(CT_114V1_FASTA).contigs


@pytest.mark.parametrize("layout", ["gff3_with_fasta", "fasta_with_gff_column"])
def test_gff_cds_translate_to_pyrodigal_calls(gff_annotation_only: Path, layout: str):
    """Prodigal (no -m) called these CDS; bacflow's own translation of them equals pyrodigal's proteins,
    partial flags and coordinates, 902/902."""
    if layout == "gff3_with_fasta":
        sample = make_sample(CT_114V1_PRODIGAL_GFF)
    else:
        sample = make_sample(CT_114V1_FASTA, gff=gff_annotation_only)
    result = annotate_genome(sample, AnnotationParams())
    columns = result.columns
    ours = list(
        zip(
            columns["contig_index"],
            columns["start"],
            columns["end"],
            columns["strand"],
            columns["partial_begin"],
            columns["partial_end"],
            columns["sequence"],
            strict=False,
        )
    )
    genes = call_genes(read_assembly(CT_114V1_FASTA).contigs, 11, "single", GeneCallingParams(mask=False))
    expected = [
        (gene.contig_index, gene.begin, gene.end, gene.strand, gene.partial_begin, gene.partial_end, gene.protein)
        for gene in genes
    ]
    assert len(expected) == 902
    assert ours == expected
    assert result.qc["source"] == "gff3" and set(columns["source"]) == {"gff3"}
    assert_protein_table_contract(result, CT_114V1_FASTA)


def test_same_genome_twice_gives_identical_tables():
    """Annotation is deterministic, and running genomes on threads does not change the tables."""
    samples = [make_sample(CT_114V1_FASTA, "Ct_114V1"), make_sample(SMALL_GENOME, "SRR492066", kind="mag")]
    first = annotate_shard(samples, AnnotationParams(), shard="00000")
    again = annotate_shard(samples, AnnotationParams(), shard="00000")
    threaded = annotate_shard(samples, AnnotationParams(), shard="00000", threads=2)
    for tables in (again, threaded):
        assert tables[0].equals(first[0]) and tables[1].equals(first[1])
    assert first[0].num_rows == sum(first[1].column("proteins").to_pylist()) > 900


# GFF3 CDS given as several rows sharing one ID (a programmed frameshift, a CDS across the origin): the
# rows form one CDS. On the minus strand its 5' end is the highest coordinate, so the rows are read from
# there down, each on the reverse strand.

MGENITALIUM = SHARED_DATA / "genomes" / "Mgenitalium_G37_L43967.2.fna.gz"  # genetic code 4


def write_cds_gff(path: Path, contig_id: str, rows: list[tuple[int, int, int]], attributes: str) -> Path:
    """A GFF3 without ##FASTA whose minus-strand CDS rows (start, end, phase) all carry `attributes`."""
    lines = [f"{contig_id}\ttest\tCDS\t{start}\t{end}\t.\t-\t{phase}\t{attributes}" for start, end, phase in rows]
    path.write_text("##gff-version 3\n" + "\n".join(lines) + "\n")
    return path


def only_protein(fasta: Path, gff: Path, genetic_code: int) -> str:
    result = annotate_genome(make_sample(fasta, gff=gff, genetic_code=genetic_code), AnnotationParams())
    assert result.qc["quarantine_reason"] is None and result.qc["proteins"] == 1, result.qc
    return result.columns["sequence"][0]


def biopython_translation(fasta: Path, location: str, genetic_code: int) -> str:
    """Biopython's translation of a complete CDS at an INSDC `location` such as complement(join(...))."""
    contig = Seq(read_assembly(fasta).contigs[0].sequence)
    nucleotides = Location.fromstring(location, length=len(contig)).extract(contig)
    return str(nucleotides.translate(table=genetic_code, cds=True))


# M. genitalium's gene complement(14395..15216) (called by pyrodigal with code 4, 273 aa) cut in two rows at
# 14838|14839 as in the report; with one end cut off for the partial variants. Each variant:
# one row (start, end, phase), the two rows, the GFF attributes, and the expected protein from the whole
# gene's translation `full`: a 5'-partial CDS (high end on this strand) loses its first residue (one
# base cut, phase 2) and keeps it as translated (no start codon -> M); a 3'-partial one (four bases cut
# at the low end: the stop and one base) loses its last residue.
SPLIT_MINUS_CDS = {
    "complete": ((14395, 15216, 0), [(14395, 14838, 0), (14839, 15216, 0)], "ID=x", slice(None)),
    "5prime_partial": ((14395, 15215, 2), [(14395, 14838, 0), (14839, 15215, 2)], "ID=x;partial=01", slice(1, None)),
    "3prime_partial": ((14399, 15216, 0), [(14399, 14838, 0), (14839, 15216, 0)], "ID=x;partial=10", slice(None, -1)),
}


@pytest.mark.parametrize("rows_in_file", ["ascending", "descending"])
@pytest.mark.parametrize("variant", SPLIT_MINUS_CDS)
def test_split_minus_strand_cds_translates_as_one_row(tmp_path: Path, variant: str, rows_in_file: str):
    one_row, two_rows, attributes, kept = SPLIT_MINUS_CDS[variant]
    two_rows = sorted(two_rows, reverse=rows_in_file == "descending")
    full = biopython_translation(MGENITALIUM, "complement(join(14395..14838,14839..15216))", 4)
    assert len(full) == 273 and full.startswith("M")
    single = only_protein(MGENITALIUM, write_cds_gff(tmp_path / "one.gff", "L43967.2", [one_row], attributes), 4)
    split = only_protein(MGENITALIUM, write_cds_gff(tmp_path / "two.gff", "L43967.2", two_rows, attributes), 4)
    assert single == full[kept]
    assert split == single


def test_ncbi_frameshifted_minus_strand_cds_from_gff_is_its_genbank_translation(tmp_path: Path):
    """C. trachomatis 114V1's prfB (WP_100059501.1) is complement(join(345014..346058,346057..346121)), a
    programmed -1 frameshift. As GFF3 rows beside the FASTA, as NCBI writes such a CDS, it must translate to
    the GenBank file's /translation."""
    location = "complement(join(345014..346058,346057..346121))"
    gbff = gunzip_text(CT_114V1_GBFF)
    assert f"     CDS             {location}\n" in gbff
    record = next(record for record in SeqIO.parse(io.StringIO(gbff), "genbank") if record.id == "NZ_JPNH01000003.1")
    (feature,) = [feature for feature in record.features if feature.qualifiers.get("protein_id") == ["WP_100059501.1"]]
    translation = feature.qualifiers["translation"][0]
    assert str(feature.location.extract(record.seq).translate(table=11, cds=True)) == translation
    attributes = "ID=cds-WP_100059501.1;protein_id=WP_100059501.1"
    rows = [(345014, 346058, 0), (346057, 346121, 0)]
    for order, rows_in_file in (("ascending", rows), ("descending", rows[::-1])):
        gff = write_cds_gff(tmp_path / f"prfB_{order}.gff", "NZ_JPNH01000003.1", rows_in_file, attributes)
        assert only_protein(CT_114V1_FASTA, gff, 11) == translation, order


def test_gff_cds_over_ambiguous_bases_translates_them_as_prodigal_does(tmp_path: Path):
    """IUPAC codes inside a GFF3 CDS (as an assembly may hold): a codon that can only be one amino acid is
    that amino acid, Leu-or-Ile (J to Biopython) and other undecidable codons are X; the genome is kept."""
    contig = read_assembly(MGENITALIUM).contigs[0]
    gene = Seq(contig.sequence[14394:15216]).reverse_complement()  # complement(14395..15216), code 4
    # Codon 2 -> MTT (ATT or CTT: Ile or Leu), codon 3 -> its first base N, codon 4 -> GGN (always Gly).
    edited = str(gene[:3]) + "MTT" + "N" + str(gene[7:9]) + "GGN" + str(gene[12:])
    sequence = contig.sequence[:14394] + str(Seq(edited).reverse_complement()) + contig.sequence[15216:]
    fasta = tmp_path / "edited.fna"
    fasta.write_text(f">{contig.id}\n{sequence}\n")
    protein = only_protein(fasta, write_cds_gff(tmp_path / "one.gff", contig.id, [(14395, 15216, 0)], "ID=x"), 4)
    full = str(gene.translate(table=4, cds=True))
    assert protein == "M" + "X" + "X" + "G" + full[4:]
