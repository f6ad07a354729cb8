"""Shared locations of the real test data, and helpers used by several unit-test modules.

Two sources of real data are used: ``../shared/data`` beside the repository (public genomes and peer
gene calls; CI provides it), and the Prodigal reference outputs that the
installed pyrodigal package ships in ``pyrodigal/tests/data`` (present wherever bacflow is installed).
"""

from __future__ import annotations

import gzip
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from types import CodeType

import pytest

from bacflow.core.samples import Sample
from bacflow.core.seqhash import HASH_HEX_DIGITS, seq_hash
from bacflow.families import mmseqs
from bacflow.proteins.annotate import AnnotationParams, GenomeProteins, annotate_genome
from bacflow.proteins.assembly import read_assembly

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PYRODIGAL_DATA = Path(str(files("pyrodigal").joinpath("tests", "data")))

needs_shared = pytest.mark.skipif(
    not SHARED_DATA.is_dir(),
    reason=f"the shared real test genomes are absent (expected at {SHARED_DATA}, beside the repository)",
)

# The 3-contig C. trachomatis 114V1 draft and Prodigal 2.6.3's single-mode GFF3 of it; that GFF already
# ends with a ##FASTA section holding the same FASTA (checked in test_assembly.py).
CT_114V1_FASTA = SHARED_DATA / "drafts" / "Ctrachomatis_114V1_GCF_003788785.1.fna.gz"
CT_114V1_PRODIGAL_GFF = SHARED_DATA / "reference_outputs" / "Ctrachomatis_114V1_GCF_003788785.1.prodigal-2.6.3.gff.gz"
needs_mmseqs = pytest.mark.skipif(
    shutil.which(mmseqs.PROGRAM) is None, reason="MMseqs2 is not installed (`make system-deps` installs it)"
)

#: A small real genome (one 79,939 bp metagenomic contig) for tests that only need *a* good genome.
SMALL_GENOME = PYRODIGAL_DATA / "SRR492066.fna.gz"


def make_sample(
    path: str | Path,
    genome_id: str = "genome",
    *,
    genetic_code: int = 11,
    kind: str = "draft",
    gff: str | Path | None = None,
) -> Sample:
    """A sample-sheet row as `bacflow.core.samples.read_samples` would give it."""
    return Sample(
        genome_id=genome_id,
        path=str(path),
        gff=None if gff is None else str(gff),
        genetic_code=genetic_code,
        kind=kind,
        group=genome_id,
        split=None,
    )


def gunzip_text(path: Path) -> str:
    with gzip.open(path, "rt") as handle:
        return handle.read()


def split_gff_fasta(gff_text: str) -> tuple[str, str]:
    """The annotation part of a GFF3 text and its ``##FASTA`` section (without the marker line)."""
    annotation, marker, fasta = gff_text.partition("##FASTA\n")
    assert marker, "this GFF3 has no ##FASTA section"
    return annotation, fasta


@dataclass(frozen=True)
class ReferenceGene:
    """One gene of a peer's output, in Prodigal's coordinates (1-based, inclusive, begin <= end)."""

    contig_id: str
    begin: int
    end: int
    strand: int
    partial: str | None  # Prodigal's "partial=LR" flags ("10": runs off the left end), where given


_PARTIAL = re.compile(r"partial=([01]{2})")


def read_prodigal_fasta(path: Path) -> list[tuple[ReferenceGene, str]]:
    """Genes and sequences of a Prodigal ``-a``/``-d`` FASTA: ``>contig_N # begin # end # strand # attrs``.

    The trailing stop ``*`` of proteins is removed, as bacflow stores proteins without it.
    """
    genes = []
    for block in gunzip_text(path).split(">")[1:]:
        header, _, body = block.partition("\n")
        name, begin, end, strand, attributes = header.split(" # ")
        partial = _PARTIAL.search(attributes)
        gene = ReferenceGene(name.rsplit("_", 1)[0], int(begin), int(end), int(strand), partial and partial.group(1))
        genes.append((gene, "".join(body.split()).removesuffix("*")))
    return genes


def read_gff_cds(text: str) -> list[ReferenceGene]:
    """The CDS rows of a GFF3 text, read directly from its columns (independently of bacflow)."""
    genes = []
    for line in text.partition("##FASTA")[0].splitlines():
        columns = line.split("\t")
        if line.startswith("#") or len(columns) != 9 or columns[2] != "CDS":
            continue
        partial = _PARTIAL.search(columns[8])
        genes.append(
            ReferenceGene(
                columns[0],
                int(columns[3]),
                int(columns[4]),
                -1 if columns[6] == "-" else 1,
                partial and partial.group(1),
            )
        )
    return genes


def assert_protein_table_contract(result: GenomeProteins, assembly_path: Path) -> None:
    """The contract of every genome's protein table (docs/proteins.md), checked row by row.

    Contig ids and their order are taken from the file itself by a fresh `read_assembly`, so the table
    must carry each contig's id as written and its position in the file.
    """
    columns = result.columns
    contigs = read_assembly(assembly_path).contigs
    count = len(columns["sequence"])
    assert count > 0 and result.qc["proteins"] == count and result.qc["quarantine_reason"] is None
    assert columns["protein_index"] == list(range(count)), "protein_index must be dense 0..n-1"
    assert set(columns["genome_id"]) == {result.qc["genome_id"]}
    for index in range(count):
        contig_index, contig_id = columns["contig_index"][index], columns["contig_id"][index]
        sequence = columns["sequence"][index]
        assert contigs[contig_index].id == contig_id
        assert 1 <= columns["start"][index] <= columns["end"][index] <= len(contigs[contig_index].sequence)
        assert columns["strand"][index] in (1, -1)
        assert sequence and "*" not in sequence and sequence == sequence.upper()
        assert columns["length"][index] == len(sequence)
        assert columns["seq_hash"][index] == seq_hash(sequence)
        assert len(columns["seq_hash"][index]) == HASH_HEX_DIGITS
    order = list(zip(columns["contig_index"], columns["start"], strict=False))
    assert order == sorted(order), "proteins must be in genome order: contig order, then start"


@pytest.fixture(scope="session")
def annotated() -> Callable[..., GenomeProteins]:
    """`annotate_genome` with default parameters, memoised: each genome is annotated once per session."""
    results: dict[tuple[Path, str, int], GenomeProteins] = {}

    def annotate(path: Path, kind: str = "draft", genetic_code: int = 11) -> GenomeProteins:
        key = (path, kind, genetic_code)
        if key not in results:
            sample = make_sample(path, path.name.split(".")[0], genetic_code=genetic_code, kind=kind)
            results[key] = annotate_genome(sample, AnnotationParams())
        return results[key]

    return annotate


def pytest_configure(config: pytest.Config) -> None:
    # bacflow.proteins.genecall silences pyrodigal's short-training warning at import (QC records it instead), but
    # pytest re-applies its own warning filters around each test, which would bring it back.
    config.addinivalue_line("filterwarnings", "ignore:sequence should be at least:UserWarning")


#: What a test calls to run Snakemake (tests/workflow_helpers.py): a test that does, itself or through a fixture,
#: is a workflow test.
_WORKFLOW_CALLS = frozenset({"snakemake", "planned_jobs", "workflow_rules", "SNAKEMAKE"})


def _calls_snakemake(code: CodeType) -> bool:
    return not _WORKFLOW_CALLS.isdisjoint(code.co_names) or any(
        _calls_snakemake(const) for const in code.co_consts if isinstance(const, CodeType)
    )


def _runs_snakemake(item: pytest.Item) -> bool:
    functions = [getattr(item, "function", None)]
    fixtures = getattr(item, "_fixtureinfo", None)
    if fixtures is not None:
        functions += [definitions[-1].func for definitions in fixtures.name2fixturedefs.values()]
    return any(_calls_snakemake(function.__code__) for function in functions if hasattr(function, "__code__"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that runs Snakemake `workflow` (found from the code of the test and its fixtures), and run
    the unit tests first: a unit failure is reported in minutes, not after the workflow runs."""
    workflow = {item for item in items if _runs_snakemake(item)}
    for item in workflow:
        item.add_marker(pytest.mark.workflow)
    items.sort(key=lambda item: item in workflow)  # stable: files and tests keep their order within each group


@pytest.fixture(scope="session")
def tiny_esm(tmp_path_factory) -> Path:
    """A tiny random ESM-2 (2 layers, width 48) in a folder, shared by the session's tests."""
    from bacflow.embeddings.tiny import build_esm2

    return build_esm2(tmp_path_factory.mktemp("models") / "esm2-tiny")


@pytest.fixture(scope="session")
def tiny_esmc(tmp_path_factory) -> Path:
    """A tiny random ESM-C (2 layers, width 128, ESM++ layout) in a folder, shared by the session's tests."""
    from bacflow.embeddings.tiny import build_esmc

    return build_esmc(tmp_path_factory.mktemp("models") / "esmc-tiny")


@pytest.fixture(scope="session")
def reference_python() -> Path:
    """The Python of the reference Bacformer's own virtual environment (bacformer==0.2.0), the tests' oracle."""
    from bacformer_helpers import reference_environment

    return reference_environment()
