"""The embedding recipe (ESM-2 or ESM-C): everything that decides a protein's vector, and the key that names its store.

Two runs whose recipes have the same key give the same vectors for the same sequence (up to the
nondeterminism of GPU kernels), so one may reuse the other's; any other pair never shares vectors.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bacflow.core.provenance import canonical_json

#: Pooling of the last hidden states: "mean" averages every token the model saw, BOS and EOS included
#: (bacformer.pp, what Bacformer was trained on); "mean_residues" leaves BOS and EOS out (fair-esm's
#: extract.py).
POOLINGS = ("mean", "mean_residues")
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
VECTOR_DTYPES = ("float32", "float16")
#: Encoders (`bacflow.embeddings.encoders`): what recipe descriptions call their model and tokens.
ENCODERS = {
    "esm2": ("transformers EsmModel, last hidden state", "EsmTokenizer"),
    "esmc": (
        "ESM-C (bacflow.embeddings.modeling_esmc.ESMCModel, ESM++ checkpoint layout), last hidden state",
        "ESM-C's EsmSequenceTokenizer, one <unk> per unknown character",
    ),
}
#: What people call each encoder (the report names them so).
ENCODER_NAMES = {"esm2": "ESM-2", "esmc": "ESM-C"}
#: Metadata keys of every table made from a recipe's vectors: its key, and its description (JSON).
RECIPE_KEY = "bacflow.embedding_recipe_key"
RECIPE = "bacflow.embedding_recipe"


@dataclass(frozen=True)
class EmbeddingRecipe:
    model: str  #: the hub id, or "local:<folder name>" (a label: a folder is known by its checksum)
    revision: str  #: hub commit, or "sha256:..." of the folder's config, vocabulary and weights
    local: bool  #: the model came from a local folder, not the hub
    dtype: str  #: compute dtype of the model's forward pass
    pooling: str
    max_length: int  #: tokens, BOS and EOS included; longer proteins keep their first max_length-2 residues
    vector_dtype: str  #: how vectors are stored
    encoder: str = "esm2"  #: "esm2" or "esmc", from the model folder's config.json
    #: The weights are a tiny random model's (``bacflow_random_init`` in config.json), whose vectors mean nothing.
    #: Described, not part of the identity: the revision already tells these weights from any others.
    random_init: bool = False

    def __post_init__(self) -> None:
        if (
            self.dtype not in COMPUTE_DTYPES
            or self.vector_dtype not in VECTOR_DTYPES
            or self.pooling not in POOLINGS
            or self.encoder not in ENCODERS
        ):
            raise ValueError(f"unknown dtype, vector dtype, pooling or encoder in {self}")
        if self.max_length < 3:
            raise ValueError("max_length must leave room for BOS, EOS and one residue")

    def identity(self) -> dict[str, Any]:
        """What decides the vectors. A folder's name is not part of it: renamed or copied weights keep theirs."""
        identity = asdict(self)
        del identity["random_init"]
        if self.local:
            identity["model"] = None
        if self.encoder == "esm2":  # left out, so that stores made before ESM-C was supported keep their keys
            del identity["encoder"]
        return identity

    @property
    def key(self) -> str:
        """The store folder's name: readable model name, then 16 hex digits of the identity's SHA-256."""
        digest = hashlib.sha256(canonical_json(self.identity()).encode()).hexdigest()[:16]
        name = "local" if self.local else re.sub(r"[^\w.-]", "_", Path(self.model).name)
        return f"{name}-{digest}"

    def description(self) -> dict[str, Any]:
        architecture, tokenizer = ENCODERS[self.encoder]
        return {
            **asdict(self),
            "key": self.key,
            "architecture": architecture,
            "tokens": f"<cls> + first {self.max_length - 2} residues + <eos> ({tokenizer})",
            "sequence": "normalised as for seq_hash (white space removed, upper case, trailing * removed)",
        }
