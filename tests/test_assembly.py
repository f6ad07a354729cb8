"""Reading real assemblies (multi-replicon FASTA, a 156-contig draft, GenBank with pseudogenes, a MAG
GenBank with an edited record, GFF3 with and without ##FASTA) into ordered protein tables.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from bacflow.assembly import read_assembly
from bacflow.genecall import GeneCallingParams, call_genes
from bacflow.proteins import AnnotationParams, annotate_genome, annotate_shard
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

# path, kind, number of records in the file, and the source its proteins must come from (SOURCES.md)
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
    """K. pneumoniae HS11286 has one N in its chromosome (SOURCES.md): accepted and kept as written."""
    chromosome = read_assembly(GENOMES["Kpneumoniae_7_replicons"][0]).contigs[0]
    assert Counter(base for base in chromosome.sequence if base not in "ACGT") == {"N": 1}


# GenBank file, its /translation proteins (SOURCES.md), and the expected QC counts: proteins,
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
            columns["contig_id"], columns["start"], columns["end"], columns["partial_begin"], columns["partial_end"]
        )
        if begin or finish
    }
    assert len(flags) == result.qc["partial_proteins"] == partial_proteins
    assert flags == partial_cds_in_text(gbff)


def test_mag_record_without_translations_keeps_its_other_proteins(annotated):
    """MEES01000006 lost /translation on 63 CDS (SOURCES.md); its other CDS still give proteins."""
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
