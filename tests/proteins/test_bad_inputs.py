"""Bad and unusual inputs, built from real files: each bad one gives one clear `InputError` naming the
file (and the record or line where there is one), or quarantines its genome without harming the rest of
its shard; harmless variants (Windows line endings, lower case, IUPAC codes) give the same proteins.
"""

from __future__ import annotations

import gzip
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow.compute as pc
import pytest

from bacflow.core.errors import InputError
from bacflow.core.samples import Sample
from bacflow.families.stage import iter_sorted
from bacflow.proteins.annotate import AnnotationParams, GenomeProteins, annotate_genome, annotate_shard
from bacflow.proteins.assembly import read_assembly
from bacflow.proteins.unique import gather_bucket, write_shard_unique
from conftest import PYRODIGAL_DATA, SHARED_DATA, SMALL_GENOME, gunzip_text, make_sample, needs_shared

KK037166 = PYRODIGAL_DATA / "KK037166.fna.gz"  # 20,000 bp of a Kutzneria scaffold
SMALL_GENOME_GFF = PYRODIGAL_DATA / "SRR492066.meta.gff"  # Prodigal's GFF3 of SMALL_GENOME, no ##FASTA


@dataclass(frozen=True)
class BadInput:
    path: Path
    gff: Path | None = None

    @property
    def culprit(self) -> Path:
        """The file the error message must name."""
        return self.gff or self.path


def write_fasta(path: Path, records: list[tuple[str, str]], newline: str = "\n", bom: bool = False) -> Path:
    lines = [line for header, sequence in records for line in (f">{header}", *wrap(sequence))]
    path.write_bytes(("\ufeff" if bom else "").encode() + (newline.join(lines) + newline).encode())
    return path


def wrap(sequence: str, width: int = 60) -> list[str]:
    return [sequence[start : start + width] for start in range(0, len(sequence), width)]


def fasta_records(path: Path) -> list[tuple[str, str]]:
    """(header line without '>', sequence) of each record, headers kept whole."""
    blocks = gunzip_text(path).split(">")[1:]
    return [(block.partition("\n")[0], "".join(block.partition("\n")[2].split())) for block in blocks]


# Builders of bad inputs: each writes one into `folder` from real data. The expected message fragments
# follow; the message must also name the culprit file.


def empty_file(folder: Path) -> BadInput:
    path = folder / "empty.fna"
    path.touch()
    return BadInput(path)


def empty_gzip(folder: Path) -> BadInput:
    path = folder / "empty.fna.gz"
    with gzip.open(path, "wb"):
        pass
    return BadInput(path)


def binary_file(folder: Path) -> BadInput:
    """pyrodigal's binary training file (Prodigal's -t format) of C. diphtheriae."""
    return BadInput(Path(shutil.copy(PYRODIGAL_DATA / "GCF_001457455.1_NCTC11397_genomic.tinf_closed.bin", folder)))


def gzipped_binary_file(folder: Path) -> BadInput:
    return BadInput(Path(shutil.copy(PYRODIGAL_DATA / "SRR492066.training.bin.gz", folder)))


def table_not_sequences(folder: Path) -> BadInput:
    """Prodigal's gene score table (-s): text, but no sequence format."""
    return BadInput(Path(shutil.copy(PYRODIGAL_DATA / "SRR492066.meta.tsv", folder)))


def protein_fasta(folder: Path) -> BadInput:
    """Prodigal's proteins of SMALL_GENOME, given where its genome belongs."""
    return BadInput(Path(shutil.copy(PYRODIGAL_DATA / "SRR492066.meta.faa.gz", folder)))


def truncated_gzip(folder: Path) -> BadInput:
    """The first half of a real gzipped genome, as an interrupted download leaves it."""
    raw = SMALL_GENOME.read_bytes()
    path = folder / SMALL_GENOME.name
    path.write_bytes(raw[: len(raw) // 2])
    return BadInput(path)


def truncated_genbank(folder: Path) -> BadInput:
    """The first half of a real GenBank file, uncompressed, so that only the GenBank reader can tell."""
    text = gunzip_text(SHARED_DATA / "genomes" / "Ctrachomatis_D-CS637-11_GCF_001183765.1.gbff.gz")
    path = folder / "truncated.gbff"
    path.write_text(text[: len(text) // 2])
    return BadInput(path)


def duplicate_contig_ids(folder: Path) -> BadInput:
    records = fasta_records(KK037166)
    return BadInput(write_fasta(folder / "twice.fna", records + records))


def record_without_sequence(folder: Path) -> BadInput:
    """A real contig followed by a header whose sequence was lost (a cut-off copy)."""
    records = fasta_records(KK037166)
    return BadInput(write_fasta(folder / "lost_contig.fna", records + [("lost_contig_2 length=5000", "")]))


def gff_without_sequences(folder: Path) -> BadInput:
    return BadInput(Path(shutil.copy(SMALL_GENOME_GFF, folder)))


def gff_of_another_assembly(folder: Path) -> BadInput:
    """SMALL_GENOME cut to 40,000 bases, with the GFF3 of the whole contig: CDS beyond its end."""
    ((header, sequence),) = fasta_records(SMALL_GENOME)
    return BadInput(write_fasta(folder / "cut.fna", [(header, sequence[:40_000])]), SMALL_GENOME_GFF)


def missing_path(folder: Path) -> BadInput:
    return BadInput(folder / "no_such_genome.fna.gz")


def first_cds_line_beyond(gff: Path, length: int) -> int:
    """Line number of the first CDS of `gff` that ends past `length` (to check the message names it)."""
    for number, line in enumerate(gff.read_text().splitlines(), start=1):
        columns = line.split("\t")
        if len(columns) == 9 and columns[2] == "CDS" and int(columns[4]) > length:
            return number
    raise AssertionError(f"{gff} has no CDS beyond {length}")


READ_ERRORS = [
    pytest.param(empty_file, ("file is empty",), id="empty-file"),
    pytest.param(empty_gzip, ("file is empty",), id="empty-gzip"),
    pytest.param(binary_file, ("binary content",), id="binary-junk"),
    pytest.param(gzipped_binary_file, ("binary content",), id="gzipped-binary-junk"),
    pytest.param(table_not_sequences, ("not a nucleotide FASTA, GenBank or GFF3",), id="text-not-sequences"),
    pytest.param(protein_fasta, ("record 'NODE_23_length_79939_cov_26.984653_1'", "protein FASTA"), id="protein-fasta"),
    pytest.param(truncated_gzip, ("truncated or corrupt gzip",), id="truncated-gzip"),
    pytest.param(truncated_genbank, ("truncated GenBank",), id="truncated-genbank", marks=needs_shared),
    pytest.param(duplicate_contig_ids, ("contig id 'KK037166.1' occurs more than once",), id="duplicate-ids"),
    pytest.param(record_without_sequence, ("record 'lost_contig_2' has no sequence",), id="empty-record"),
    pytest.param(gff_without_sequences, ("GFF3 without a ##FASTA section",), id="gff-without-sequences"),
    pytest.param(
        gff_of_another_assembly,
        (
            f"line {first_cds_line_beyond(SMALL_GENOME_GFF, 40_000)}:",
            "outside sequence 'NODE_23_length_79939_cov_26.984653'",
        ),
        id="gff-of-another-assembly",
    ),
    pytest.param(missing_path, ("file not found",), id="missing-path"),
]


def n_block(length: int) -> Callable[[Path], BadInput]:
    """A genome made of `length` bases of the real N gap in E. coli contig MIIJ01000039 (432,770 N)."""

    def build(folder: Path) -> BadInput:
        ((header, sequence),) = fasta_records(PYRODIGAL_DATA / "MIIJ01000039.fna.gz")
        start = sequence.index("N" * length)
        return BadInput(write_fasta(folder / f"n{length}.fna", [(header, sequence[start : start + length])]))

    return build


def linker_repeat(folder: Path) -> BadInput:
    """Low complexity: Prodigal's contig linker TTAA repeated, which has a stop every 12 bases in all frames."""
    return BadInput(write_fasta(folder / "ttaa.fna", [("ttaa_repeat", "TTAA" * 2500)]))


NO_GENES = [
    # Under 20,000 bases: meta mode; from 20,000: single mode trains on nothing but N.
    pytest.param(n_block(10_000), ("no genes (meta mode, 10000 bases)",), id="all-N-meta"),
    pytest.param(n_block(30_000), ("no genes (single mode, 30000 bases)",), id="all-N-single"),
    pytest.param(linker_repeat, ("no genes (meta mode, 10000 bases)",), id="low-complexity"),
]


@pytest.mark.parametrize(("build", "fragments"), READ_ERRORS)
def test_read_assembly_raises_one_clear_error(tmp_path: Path, build, fragments: tuple[str, ...]):
    bad = build(tmp_path)
    with pytest.raises(InputError) as raised:
        read_assembly(bad.path, gff=bad.gff)
    message = str(raised.value)
    assert message.startswith(f"{bad.culprit}:"), message
    assert all(fragment in message for fragment in fragments), message
    assert "\n" not in message and raised.value.__cause__ is None


@pytest.fixture(scope="module")
def good_neighbours(annotated) -> list[tuple[str, Sample, GenomeProteins]]:
    """Two good genomes that share a shard with each bad one, and their proteins annotated alone."""
    return [
        ("SRR492066", make_sample(SMALL_GENOME, "SRR492066", kind="mag"), annotated(SMALL_GENOME, "mag")),
        ("KK037166", make_sample(KK037166, "KK037166"), annotated(KK037166, "draft")),
    ]


@pytest.mark.parametrize(("build", "fragments"), READ_ERRORS + NO_GENES)
def test_bad_genome_is_quarantined_and_its_shard_goes_on(tmp_path: Path, good_neighbours, build, fragments):
    bad = build(tmp_path)
    (first_id, first, first_alone), (last_id, last, last_alone) = good_neighbours
    samples = [first, make_sample(bad.path, "bad", gff=bad.gff), last]
    proteins, qc = annotate_shard(samples, AnnotationParams(), shard="00007")
    rows = {row["genome_id"]: row for row in qc.to_pylist()}
    assert list(rows) == [first_id, "bad", last_id]
    reason = rows["bad"]["quarantine_reason"]
    assert reason is not None and str(bad.culprit) in reason
    assert all(fragment in reason for fragment in fragments), reason
    assert rows["bad"]["proteins"] == 0
    for genome_id, alone in ((first_id, first_alone), (last_id, last_alone)):
        assert rows[genome_id]["quarantine_reason"] is None
        assert proteins.filter(pc.equal(proteins["genome_id"], genome_id)).to_pydict() == alone.columns
    assert set(proteins.column("genome_id").to_pylist()) == {first_id, last_id}


# Harmless variants of SMALL_GENOME's FASTA (single mode, so gene training sees every base).


def same_text(sequence: str) -> str:
    return sequence


def soft_masked(sequence: str) -> str:
    """Lower case on every other 1,000 bases, as repeat maskers write it."""
    return "".join(block.lower() if number % 2 else block for number, block in enumerate(wrap(sequence, 1000)))


@pytest.mark.parametrize(
    ("transform", "newline", "bom"),
    [
        pytest.param(same_text, "\r\n", False, id="windows-line-endings"),
        pytest.param(same_text, "\r\n", True, id="windows-line-endings-and-byte-order-mark"),
        pytest.param(str.lower, "\n", False, id="lower-case"),
        pytest.param(soft_masked, "\n", False, id="soft-masked"),
    ],
)
def test_equivalent_text_gives_the_same_proteins(tmp_path: Path, annotated, transform, newline: str, bom: bool):
    ((header, sequence),) = fasta_records(SMALL_GENOME)
    variant = write_fasta(tmp_path / "variant.fna", [(header, transform(sequence))], newline=newline, bom=bom)
    assert variant.read_bytes() != gzip.decompress(SMALL_GENOME.read_bytes())
    result = annotate_genome(make_sample(variant, "SRR492066"), AnnotationParams())
    assert result.columns == annotated(SMALL_GENOME, "draft").columns


def test_iupac_codes_are_accepted(tmp_path: Path, annotated):
    """Every IUPAC ambiguity code, placed at 11 spread positions, is kept as written and gene-called
    through: the genes are those of the plain genome except where a code makes a codon unknown ('X')."""
    codes = "RYSWKMBDHVN"
    ((header, sequence),) = fasta_records(SMALL_GENOME)
    bases = list(sequence)
    positions = [len(bases) * (number + 1) // (len(codes) + 1) for number in range(len(codes))]
    for position, code in zip(positions, codes, strict=False):
        bases[position] = code
    path = write_fasta(tmp_path / "iupac.fna", [(header, "".join(bases))])
    contig = read_assembly(path).contigs[0]
    assert [contig.sequence[position] for position in positions] == list(codes)

    result = annotate_genome(make_sample(path, "SRR492066"), AnnotationParams())
    plain = annotated(SMALL_GENOME, "draft").columns["sequence"]
    ours = result.columns["sequence"]
    changed = Counter(ours) - Counter(plain)
    assert result.qc["quarantine_reason"] is None and len(ours) == len(plain)
    # Measured: 67 of 76 proteins identical, 9 each with one X. A code can touch at most two overlapping genes.
    assert len(changed) <= 2 * len(codes)
    assert all("X" in protein for protein in changed)


# Bad /translation qualifiers in a real GenBank file: each such protein is dropped where the proteins
# table is made, counted in QC and named in a warning, so that no cohort-wide job (families, embeddings)
# meets it. C. trachomatis D has 914 translated CDS on a chromosome and a plasmid.

CT_D_GBFF = SHARED_DATA / "genomes" / "Ctrachomatis_D-CS637-11_GCF_001183765.1.gbff.gz"
# protein_id: (contig, text inserted into its /translation, at this residue offset, what the warning says)
BAD_TRANSLATIONS = {
    "WP_009871347.1": ("NZ_CP007131.1", "#", 10, "'#' at position 11"),
    "WP_009871348.1": ("NZ_CP007131.1", "J", 5, "'J' at position 6"),
    "WP_014541318.1": ("NZ_CP007132.1", "*", 20, "a stop '*' at position 21"),
}


def with_bad_translations(folder: Path) -> Path:
    """CT_D_GBFF, uncompressed, with BAD_TRANSLATIONS inserted into the first line of those /translation values."""
    text = gunzip_text(CT_D_GBFF)
    for protein_id, (_, inserted, offset, _) in BAD_TRANSLATIONS.items():
        qualifier = f'/protein_id="{protein_id}"'
        assert text.count(qualifier) == 1, protein_id
        at = text.index('/translation="', text.index(qualifier)) + len('/translation="') + offset
        text = text[:at] + inserted + text[at:]
    path = folder / "bad_translations.gbff"
    path.write_text(text)
    return path


def test_bad_translations_are_dropped_counted_and_named(tmp_path: Path):
    path = with_bad_translations(tmp_path)
    good = annotate_genome(make_sample(CT_D_GBFF, "Ct_D"), AnnotationParams())
    result = annotate_genome(make_sample(path, "Ct_D"), AnnotationParams())
    assert result.qc["quarantine_reason"] is None and result.qc["proteins"] == 914 - 3
    assert (result.qc["bad_translations_dropped"], good.qc["bad_translations_dropped"]) == (3, 0)
    # The other proteins are those of the unedited file, renumbered.
    kept = [index for index, protein_id in enumerate(good.columns["protein_id"]) if protein_id not in BAD_TRANSLATIONS]
    for name, values in result.columns.items():
        expected = list(range(len(kept))) if name == "protein_index" else [good.columns[name][i] for i in kept]
        assert values == expected, name
    (warning,) = result.qc["warnings"]
    assert warning.startswith(f"{path}: dropped 3 protein(s)"), warning
    for protein_id, (contig_id, _, _, problem) in BAD_TRANSLATIONS.items():
        assert f"record '{contig_id}' protein '{protein_id}': the sequence has {problem}" in warning


def test_bad_translation_never_reaches_the_families_job(tmp_path: Path):
    """Before, the '#' protein went into the cohort's buckets and the families job failed on it, naming
    only a bucket file and a hash."""
    samples = [make_sample(with_bad_translations(tmp_path), "bad"), make_sample(KK037166, "KK037166")]
    proteins, qc = annotate_shard(samples, AnnotationParams(), shard="00000")
    write_shard_unique(proteins, tmp_path / "unique.parquet")
    assert gather_bucket([tmp_path / "unique.parquet"], 0, 1, tmp_path / "bucket=0000.parquet") > 900
    rows = sum(table.num_rows for table in iter_sorted([tmp_path / "bucket=0000.parquet"], []))
    assert rows == len(set(proteins.column("seq_hash").to_pylist()))
    assert qc.column("bad_translations_dropped").to_pylist() == [3, 0]
