"""The fixed identity of a protein sequence, used to deduplicate proteins across genomes and runs.

``seq_hash`` is the first 32 hexadecimal digits (128 bits) of the SHA-256 of the *normalised* sequence:
white space removed, upper case, one trailing stop ``*`` removed. At 128 bits, a corpus of 10^12 distinct
proteins has a collision probability below 10^-14. The definition is part of bacflow's output contract
and never changes; embedding stores and family tables are keyed by it.
"""

from __future__ import annotations

import hashlib

HASH_HEX_DIGITS = 32


def normalise_protein(sequence: str) -> str:
    """The form of a protein sequence that is stored, hashed and embedded."""
    sequence = "".join(sequence.split()).upper()
    return sequence[:-1] if sequence.endswith("*") else sequence


def seq_hash(sequence: str) -> str:
    """`seq_hash` of a protein sequence (normalised first, so 'mk*' and 'MK' share a hash)."""
    digest = hashlib.sha256(normalise_protein(sequence).encode("ascii"))
    return digest.hexdigest()[:HASH_HEX_DIGITS]
