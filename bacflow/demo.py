"""Write the demo's sample sheet: genomes that ship with the installed pyrodigal package.

* ``Cdiphtheriae_NCTC11397``: the complete *Corynebacterium diphtheriae* NCTC 11397 genome (2.46 Mb);
* ``SRR492066_contig``: one 80 kb contig of a metagenome, run as ``kind: mag`` (meta-mode gene calling).

Their pretraining splits are train and val: the demo's pretraining needs both, and no test split.

Usage: ``python -m bacflow.demo demo/samples.tsv``
"""

from __future__ import annotations

import sys
from importlib.resources import files
from pathlib import Path

DEMO_GENOMES = (
    ("Cdiphtheriae_NCTC11397", "GCF_001457455.1_NCTC11397_genomic.fna.gz", "complete", "train"),
    ("SRR492066_contig", "SRR492066.fna.gz", "mag", "val"),
)


def write_demo_sheet(sheet: Path) -> None:
    data = files("pyrodigal").joinpath("tests", "data")
    sheet.parent.mkdir(parents=True, exist_ok=True)
    lines = ["genome_id\tpath\tkind\tsplit"]
    lines += [f"{genome_id}\t{data / name}\t{kind}\t{split}" for genome_id, name, kind, split in DEMO_GENOMES]
    sheet.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    write_demo_sheet(Path(sys.argv[1] if len(sys.argv) > 1 else "demo/samples.tsv"))
