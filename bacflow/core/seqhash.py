"""The fixed identity of a protein sequence, used to deduplicate proteins across genomes and runs.

``seq_hash`` is the first 32 hexadecimal digits (128 bits) of the SHA-256 of the *normalised* sequence:
white space removed, upper case, one trailing stop ``*`` removed. At 128 bits, a corpus of 10^12 distinct
proteins has a collision probability below 10^-14. The definition is part of bacflow's output contract
and never changes; embedding stores and family tables are keyed by it.

A stored sequence holds only `PROTEIN_LETTERS`; the proteins stage drops any protein that does not.
"""

from __future__ import annotations

import hashlib
import re

HASH_HEX_DIGITS = 32

#: The letters of a stored protein: the 20 standard amino acids, then X (unknown), B (Asx), Z (Glx),
#: U (selenocysteine) and O (pyrrolysine). These are the amino-acid tokens of ESM-2's vocabulary, and MMseqs2
#: reads them all. J (Leu or Ile) is left out: ESM-2 has no token for it and would embed it as <unk>.
PROTEIN_LETTERS = "ACDEFGHIKLMNPQRSTVWYXBZUO"
_NOT_PROTEIN_LETTER = re.compile(f"[^{PROTEIN_LETTERS}]")


def normalise_protein(sequence: str) -> str:
    """The form of a protein sequence that is stored, hashed and embedded."""
    sequence = "".join(sequence.split()).upper()
    return sequence[:-1] if sequence.endswith("*") else sequence


def seq_hash(sequence: str) -> str:
    """`seq_hash` of a protein sequence (normalised first, so 'mk*' and 'MK' share a hash)."""
    digest = hashlib.sha256(normalise_protein(sequence).encode("ascii"))
    return digest.hexdigest()[:HASH_HEX_DIGITS]


def protein_problem(sequence: str) -> str | None:
    """Why a normalised protein sequence cannot be stored (its first fault), or None when it can."""
    if not sequence:
        return "the sequence is empty"
    bad = _NOT_PROTEIN_LETTER.search(sequence)
    if bad is None:
        return None
    letter, position = bad.group(), bad.start() + 1
    if letter == "*":
        return f"the sequence has a stop '*' at position {position}"
    if letter.islower():
        return f"the sequence is not upper case ({letter!r} at position {position})"
    return f"the sequence has {letter!r} at position {position}, which is not one of bacflow's protein letters"
