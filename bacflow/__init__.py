"""bacflow: bacterial assemblies to the inputs and outputs of the Bacformer genome language model.

The Snakemake workflow runs the stages below on a cohort; each is also usable on its own:

>>> import bacflow
>>> samples = bacflow.read_samples("samples.tsv")                        # a checked sample sheet
>>> genome = bacflow.annotate_genome(samples[0], bacflow.AnnotationParams())  # ordered proteins and QC
>>> model, tokenizer = bacflow.load_esm("esm2-folder", device, dtype)     # ESM-2 (PyTorch from here on)
>>> embedder = bacflow.Embedder(bacflow.EsmEncoder(model), tokenizer, pooling="mean", max_length=1024,
...                             token_budget=2048)
>>> vectors, tokens, truncated = embedder.embed(genome.columns["sequence"])  # one vector per protein
>>> encoder, tokenizer = bacflow.load_encoder("esmc-folder", device, dtype)  # ESM-2 or ESM-C, by config.json
>>> bacformer = bacflow.BacformerModel.from_pretrained("bacformer-folder")

Names are imported on first use, so ``import bacflow`` loads neither PyTorch nor the stages' dependencies.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("bacflow")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

#: The public API: name -> the module that defines it.
_API = {
    "InputError": "bacflow.core.errors",
    "Sample": "bacflow.core.samples",
    "read_samples": "bacflow.core.samples",
    "seq_hash": "bacflow.core.seqhash",
    "read_assembly": "bacflow.proteins.assembly",
    "AnnotationParams": "bacflow.proteins.annotate",
    "annotate_genome": "bacflow.proteins.annotate",
    "load_esm": "bacflow.embeddings.esm_model",
    "load_encoder": "bacflow.embeddings.encoders",
    "EsmEncoder": "bacflow.embeddings.esm_encoder",
    "Embedder": "bacflow.embeddings.embedder",
    "BacformerConfig": "bacflow.bacformer.modeling_bacformer",
    "BacformerModel": "bacflow.bacformer.modeling_bacformer",
    "BacformerForMaskedGM": "bacflow.bacformer.modeling_bacformer",
    "BacformerForCausalGM": "bacflow.bacformer.modeling_bacformer",
    "BacformerLargeConfig": "bacflow.bacformer.modeling_bacformer_large",
    "BacformerLargeModel": "bacflow.bacformer.modeling_bacformer_large",
    "BacformerLargeForMaskedGM": "bacflow.bacformer.modeling_bacformer_large",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'bacflow' has no attribute {name!r}")
    value = getattr(import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
