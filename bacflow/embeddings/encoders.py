"""Which protein encoder a model folder holds, and loading it: ESM-2 or ESM-C, told apart by config.json.

Both give an encoder with `bacflow.embeddings.esm_encoder.EsmEncoder`'s interface (called on padded ids and
a real-token mask, it returns the last hidden state; ``hidden_size``, ``device``, ``dtype``) and a tokenizer
that `bacflow.embeddings.embedder.Embedder` reads ids from, so embedding, its store and its QC are the same
code for both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bacflow.core.errors import InputError

if TYPE_CHECKING:
    import torch

#: config.json ``model_type`` -> encoder family (`bacflow.embeddings.recipe.FAMILIES`).
MODEL_TYPES = {"esm": "esm2", "ESMplusplus": "esmc"}
#: Encoder family -> how messages name it.
ENCODER_NAMES = {"esm2": "ESM-2", "esmc": "ESM-C"}
#: Hub organisations' model-name prefixes whose encoder family is known without reading config.json.
HUB_PREFIXES = {"facebook/esm2_": "esm2", "Synthyra/ESMplusplus_": "esmc"}


def hub_encoder_family(model: str) -> str | None:
    """The encoder family of a well-known hub id (ESM-2 from facebook, ESM++ from Synthyra), else None."""
    return next((family for prefix, family in HUB_PREFIXES.items() if model.startswith(prefix)), None)


def model_type(path: str | Path) -> str:
    """The ``model_type`` in the folder's config.json."""
    try:
        return str(_config(path)["model_type"])
    except KeyError as error:
        raise InputError(f"model folder {path}: no model_type in config.json ({error!r})") from None


def random_init(path: str | Path) -> bool:
    """Whether the folder holds a tiny randomly initialised model (`bacflow.embeddings.tiny`)."""
    return bool(_config(path).get("bacflow_random_init", False))


def _config(path: str | Path) -> dict[str, Any]:
    config = Path(path) / "config.json"
    try:
        values = json.loads(config.read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"model folder {path}: no readable config.json ({error!r})") from None
    if not isinstance(values, dict):
        raise InputError(f"model folder {path}: config.json holds no settings")
    return values


def encoder_family(path: str | Path) -> str:
    """ "esm2" or "esmc": the encoder family of the model folder `path`."""
    found = model_type(path)
    if found not in MODEL_TYPES:
        raise InputError(
            f"model folder {path} holds a {found!r} model, neither ESM-2 (model_type 'esm') nor ESM-C "
            "(model_type 'ESMplusplus', e.g. Synthyra/ESMplusplus_small); set embeddings.model to one of them"
        )
    return MODEL_TYPES[found]


def load_encoder(path: str | Path, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
    """(encoder, tokenizer) of the ESM-2 or ESM-C folder `path`, checked on load, on `device` in `dtype`."""
    if encoder_family(path) == "esmc":
        from bacflow.embeddings.esmc_model import ESMCEncoder, load_esmc

        model, tokenizer = load_esmc(path, device, dtype)
        return ESMCEncoder(model), tokenizer
    from bacflow.embeddings.esm_encoder import EsmEncoder
    from bacflow.embeddings.esm_model import load_esm

    model, tokenizer = load_esm(path, device, dtype)
    return EsmEncoder(model), tokenizer
