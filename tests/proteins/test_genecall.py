"""Gene calls through bacflow's API equal those of the peers (Prodigal 2.6.3, Prokka, dRep's Prodigal)
wherever the parameters match, and the genetic code and mode rules do what the docstrings say.

Prodigal's defaults differ from bacflow's in one parameter: Prodigal does not mask runs of N unless run
with ``-m``, bacflow masks by default. Every comparison below states the mask setting of its reference.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from bacflow.proteins.annotate import AnnotationParams, annotate_genome
from bacflow.proteins.assembly import read_assembly
from bacflow.proteins.genecall import CalledGene, GeneCallingParams, call_genes
from conftest import (
    CT_114V1_FASTA,
    CT_114V1_PRODIGAL_GFF,
    PYRODIGAL_DATA,
    SHARED_DATA,
    SMALL_GENOME,
    ReferenceGene,
    gunzip_text,
    make_sample,
    needs_shared,
    read_gff_cds,
    read_prodigal_fasta,
)

REFERENCE_OUTPUTS = SHARED_DATA / "reference_outputs"


def called(path: Path, mode: str, mask: bool) -> list[tuple[ReferenceGene, str]]:
    """Genes that `bacflow.proteins.genecall.call_genes` finds in the assembly at `path` with genetic code 11 (as
    all these references used), as (gene, protein)."""
    contigs = read_assembly(path).contigs
    genes = call_genes(contigs, 11, mode, GeneCallingParams(mask=mask))
    return [(as_reference(gene, contigs[gene.contig_index].id), gene.protein) for gene in genes]


def as_reference(gene: CalledGene, contig_id: str) -> ReferenceGene:
    partial = f"{int(gene.partial_begin)}{int(gene.partial_end)}"
    return ReferenceGene(contig_id, gene.begin, gene.end, gene.strand, partial)


# Prodigal 2.6.3 runs shipped with pyrodigal's tests (and copied into the shared data): stem, run (single,
# meta, or meta+mask for -p meta -m) and the number of genes; the count guards against a vacuous match.
PRODIGAL_RUNS = [
    ("KK037166", "single", 22),
    ("KK037166", "meta", 19),
    ("SRR492066", "single", 76),
    ("SRR492066", "meta", 70),
    ("MIIJ01000039", "single", 404),
    ("MIIJ01000039", "meta", 381),
]
PRODIGAL_OUTPUTS = [
    *(
        pytest.param(PYRODIGAL_DATA, stem, run, count, id=f"pyrodigal-package-{stem}-{run}")
        for stem, run, count in [*PRODIGAL_RUNS, ("MIIJ01000039", "meta+mask", 380)]
    ),
    *(
        pytest.param(
            REFERENCE_OUTPUTS, f"pyrodigal-tests_{stem}", run, count, id=f"shared-{stem}-{run}", marks=needs_shared
        )
        for stem, run, count in PRODIGAL_RUNS
    ),
]


@pytest.mark.parametrize(("folder", "stem", "run", "expected"), PRODIGAL_OUTPUTS)
def test_calls_equal_prodigal_proteins_and_coordinates(folder: Path, stem: str, run: str, expected: int):
    """100% identical: every gene's contig, begin, end, strand, partial flags and protein, in order."""
    reference = read_prodigal_fasta(folder / f"{stem}.{run}.faa.gz")
    mode, _, mask = run.partition("+")
    ours = called(folder / f"{stem}.fna.gz", mode, mask=mask == "mask")
    assert len(reference) == expected
    assert ours == reference


@pytest.mark.parametrize(
    "gff",
    [
        pytest.param(PYRODIGAL_DATA / "SRR492066.meta.gff", id="pyrodigal-package"),
        pytest.param(REFERENCE_OUTPUTS / "pyrodigal-tests_SRR492066.meta.gff.gz", id="shared", marks=needs_shared),
    ],
)
def test_meta_calls_equal_prodigal_meta_gff(gff: Path):
    """Prodigal's meta-mode GFF3 of SRR492066 (best model: a table-4 Mycoplasma): our 70 meta calls have
    its coordinates and partial flags, and bacflow's code-4 translation of its CDS gives our proteins."""
    text = gff.read_text() if gff.suffix == ".gff" else gunzip_text(gff)
    reference = read_gff_cds(text)
    ours = called(SMALL_GENOME, "meta", mask=False)
    assert len(reference) == 70
    assert [gene for gene, _ in ours] == reference
    translated = read_assembly(SMALL_GENOME, gff=gff, genetic_code=4).cds
    assert [cds.translation for cds in translated] == [protein for _, protein in ours]


@needs_shared
def test_single_mode_equals_prodigal_gff_on_a_three_contig_draft():
    """C. trachomatis 114V1: Prodigal 2.6.3 single mode (no -m), trained on all contigs: 902/902."""
    reference = read_gff_cds(gunzip_text(CT_114V1_PRODIGAL_GFF))
    ours = [gene for gene, _ in called(CT_114V1_FASTA, "single", mask=False)]
    assert Counter(gene.contig_id for gene in reference) == {
        "NZ_JPNH01000001.1": 158,
        "NZ_JPNH01000002.1": 8,
        "NZ_JPNH01000003.1": 736,
    }
    assert ours == reference


@needs_shared
def test_prokka_cds_are_all_found_with_identical_proteins():
    """Prokka (Prodigal -c -m, single) on C. trachomatis D/CS637/11: all 899 CDS among our 904 calls
    (with or without closed ends, the calls are the same here).

    Prokka drops the 5 other Prodigal calls where they overlap its RNA genes. Prokka's GFF carries no
    proteins, so bacflow translates its CDS from the GFF's own ##FASTA section.
    """
    prokka = annotate_genome(
        make_sample(REFERENCE_OUTPUTS / "Ctrachomatis_D-CS637-11_GCF_001183765.1.prokka.gff.gz"), AnnotationParams()
    )
    columns = prokka.columns
    prokka_proteins = {
        (contig, start, end, strand): sequence
        for contig, start, end, strand, sequence in zip(
            columns["contig_id"], columns["start"], columns["end"], columns["strand"], columns["sequence"], strict=False
        )
    }
    ours = called(SHARED_DATA / "genomes" / "Ctrachomatis_D-CS637-11_GCF_001183765.1.fna.gz", "single", mask=True)
    our_proteins = {(g.contig_id, g.begin, g.end, g.strand): protein for g, protein in ours}
    assert prokka.qc["source"] == "gff3" and len(prokka_proteins) == 899
    assert len(our_proteins) == 904
    assert {key: our_proteins.get(key) for key in prokka_proteins} == prokka_proteins


@needs_shared
@pytest.mark.parametrize(
    ("genome", "reference", "expected_reference", "expected_shared", "expected_calls"),
    [
        # dRep's Prodigal run matches meta mode with N-masking (-p meta -m).
        pytest.param(
            "genomes/Ecasseliflavus_EC20_NC_020995.1.fna.gz",
            "Ecasseliflavus_EC20.drep-prodigal.faa.gz",
            3161,
            3161,
            3163,
            id="Ecasseliflavus_EC20",
        ),
        # One reference gene (NZ_GG668924.1 65745..65993 +) is not called: probably an older Prodigal.
        pytest.param(
            "drafts/Efaecalis_TX0104_scaffolds.fna.gz",
            "Efaecalis_TX0104.drep-prodigal.faa.gz",
            3145,
            3144,
            3149,
            id="Efaecalis_TX0104",
        ),
    ],
)
def test_meta_mask_calls_match_drep_prodigal(
    genome: str, reference: str, expected_reference: int, expected_shared: int, expected_calls: int
):
    """Same coordinates for all but the stated genes, and every shared gene has the identical protein.

    dRep's headers give no partial flags, so genes are matched on contig, begin, end and strand.
    """

    def location(gene: ReferenceGene) -> tuple:
        return gene.contig_id, gene.begin, gene.end, gene.strand

    theirs = {location(gene): protein for gene, protein in read_prodigal_fasta(REFERENCE_OUTPUTS / reference)}
    ours = {location(gene): protein for gene, protein in called(SHARED_DATA / genome, "meta", mask=True)}
    shared = theirs.keys() & ours.keys()
    assert (len(theirs), len(shared), len(ours)) == (expected_reference, expected_shared, expected_calls)
    assert all(theirs[key] == ours[key] for key in shared)


@needs_shared
@pytest.mark.parametrize(
    ("genetic_code", "min_mean_length", "max_mean_length"),
    [
        pytest.param(4, 300, None, id="code4-whole-proteins"),
        pytest.param(11, None, 200, id="code11-fragments"),
    ],
)
def test_genetic_code_4_genome(annotated, genetic_code: int, min_mean_length: int | None, max_mean_length: int | None):
    """M. genitalium reads UGA as Trp: with code 4 its genes are whole (measured: 527 genes, mean 348 aa);
    with code 11 every UGA ends a gene early (995 genes, mean 150 aa)."""
    result = annotated(SHARED_DATA / "genomes" / "Mgenitalium_G37_L43967.2.fna.gz", "complete", genetic_code)
    lengths = result.columns["length"]
    mean_length = sum(lengths) / len(lengths)
    assert result.qc["mode"] == "single" and result.qc["genetic_code"] == genetic_code
    assert min_mean_length is None or mean_length > min_mean_length
    assert max_mean_length is None or mean_length < max_mean_length


@pytest.mark.parametrize(
    ("kind", "run", "weak_training_warning"),
    [
        # mag: a bin may mix organisms, so meta mode whatever its size.
        pytest.param("mag", "meta", False, id="mag-meta"),
        # 79,939 bp: enough to train single mode (>= 20,000) but under 100,000, so QC warns.
        pytest.param("draft", "single", True, id="draft-single"),
    ],
)
def test_annotate_genome_chooses_mode_and_matches_prodigal(annotated, kind: str, run: str, weak_training_warning: bool):
    """annotate_genome's automatic mode on SRR492066 (one 79,939 bp contig) gives exactly Prodigal's proteins
    of that mode. bacflow masks N runs by default and Prodigal (no -m) did not; this contig has no N."""
    result = annotated(SMALL_GENOME, kind)
    reference = [protein for _, protein in read_prodigal_fasta(PYRODIGAL_DATA / f"SRR492066.{run}.faa.gz")]
    assert result.qc["mode"] == run and result.qc["source"] == "pyrodigal"
    assert result.columns["sequence"] == reference
    assert any("single-mode training" in warning for warning in result.qc["warnings"]) == weak_training_warning


def test_short_genome_uses_meta_mode(tmp_path: Path):
    """Under 20,000 bases single mode cannot be trained, so a draft of 15,000 bases uses meta mode."""
    contig = read_assembly(SMALL_GENOME).contigs[0]
    short = tmp_path / "short.fna"
    short.write_text(f">{contig.id}\n{contig.sequence[:15_000]}\n")
    result = annotate_genome(make_sample(short), AnnotationParams())
    assert result.qc["mode"] == "meta" and result.qc["quarantine_reason"] is None
    assert result.qc["proteins"] > 0
