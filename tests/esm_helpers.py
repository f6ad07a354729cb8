"""Helpers of the ESM-2 embedding tests: real proteins, tiny models, and the reference recipe.

The reference recipe is written here independently of bacflow, as bacformer.pp does it: EsmTokenizer with
padding to the longest sequence of each batch of 64 and truncation to 1,024 tokens, HF EsmModel in
float32, mean of the last hidden state over the attention mask (BOS and EOS included).
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

import numpy as np
import torch
from Bio import SeqIO
from transformers import EsmModel, EsmTokenizer

from bacflow.core.seqhash import normalise_protein
from conftest import SHARED_DATA

CT_D_PROTEINS = SHARED_DATA / "genomes" / "Ctrachomatis_D-CS637-11_GCF_001183765.1.cds_translations.faa.gz"
UNIPROT_PROTEINS = SHARED_DATA / "mmseqs2" / "DB.fasta.gz"
ECOLI_K12 = SHARED_DATA / "genomes" / "Ecoli_K12_MG1655_ragout.fna.gz"
PARACOCCUS_PROTEINS = SHARED_DATA / "drafts" / "Paracoccus_sp_SCN68-21_MAG_MEES01.cds_translations.faa.gz"

# One thread: on a machine whose cores are busy with other work (CI runners, parallel test sessions),
# torch's OpenMP threads spin-wait for each other and a 2-thread forward pass of a small model was
# measured 8x slower than a 1-thread one. The tests measure results, not speed.
torch.set_num_threads(1)


def read_fasta(path: Path) -> list[str]:
    with gzip.open(path, "rt") as handle:
        return [str(record.seq) for record in SeqIO.parse(handle, "fasta")]


def ecoli_fdhf() -> str:
    """E. coli K-12 formate dehydrogenase H (FdhF), complement(4295245..4297389) of MG1655: a real
    selenoprotein, translated here with its UGA codon 140 read as selenocysteine (U), as the cell does.
    No protein file in ../shared/data holds a U: NCBI-style translations end selenoproteins there."""
    with gzip.open(ECOLI_K12, "rt") as handle:
        genome = next(SeqIO.parse(handle, "fasta")).seq
    protein = str(genome[4295244:4297389].reverse_complement().translate())
    assert protein.startswith("MKKVVTVCPYC") and len(protein) == 715 and protein.index("*") == 139
    return protein.replace("*", "U")


@functools.cache
def real_proteins() -> tuple[str, ...]:
    """233 real proteins, normalised: 150 of C. trachomatis D/CS637/11 and all 18 of its proteins over
    1,022 aa (NCBI translations), 64 UniProt proteins with B, Z or X (3 with B or Z, 61 with X; 13 of
    the 64 over 1,022 aa; the MMseqs2 example database), and E. coli FdhF with its selenocysteine (U)."""
    chlamydia = read_fasta(CT_D_PROTEINS)
    long = [protein for protein in chlamydia if len(protein) > 1022]
    uniprot = read_fasta(UNIPROT_PROTEINS)
    rare = [protein for protein in uniprot if "B" in protein or "Z" in protein]
    rare += [protein for protein in uniprot if "X" in protein and protein not in rare][:61]
    short = [protein for protein in chlamydia if len(protein) <= 1022][:150]
    proteins = [normalise_protein(protein) for protein in short + long + rare + [ecoli_fdhf()]]
    assert len(long) == 18 and len(set(proteins)) == len(proteins) == 233
    return tuple(proteins)


@functools.cache
def many_real_proteins() -> tuple[str, ...]:
    """533 distinct real proteins: `real_proteins` and the first 300 distinct ones of the Paracoccus
    SCN68-21 MAG (NCBI translations) that are not among them."""
    seen = set(real_proteins())
    paracoccus = dict.fromkeys(normalise_protein(protein) for protein in read_fasta(PARACOCCUS_PROTEINS))
    return real_proteins() + tuple(protein for protein in paracoccus if protein not in seen)[:300]


def reference_vectors(model_path: Path, sequences: list[str], batch_size: int = 64) -> np.ndarray:
    """bacformer.pp's recipe (see the module docstring), with eager attention, independent of bacflow."""
    tokenizer = EsmTokenizer.from_pretrained(model_path)
    model = EsmModel.from_pretrained(model_path, add_pooling_layer=False, attn_implementation="eager").eval()
    vectors = []
    with torch.no_grad():
        for start in range(0, len(sequences), batch_size):
            batch = tokenizer(
                sequences[start : start + batch_size],
                add_special_tokens=True,
                padding="longest",
                truncation=True,
                max_length=1024,
                return_tensors="pt",
            )
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            vectors.append(((hidden * mask).sum(1) / mask.sum(1)).numpy())
    return np.concatenate(vectors)
