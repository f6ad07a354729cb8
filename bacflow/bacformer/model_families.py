"""The two Bacformer families as data, without PyTorch: what each needs as input, and which one a folder holds.

- ``base`` (``BacformerConfig``, `bacflow.bacformer.modeling_bacformer`): the published 27M-parameter models,
  over ESM-2 t12 35M protein vectors (480 wide), with special tokens (CLS, separators, END) in the input;
- ``large`` (``BacformerLargeConfig``, `bacflow.bacformer.modeling_bacformer_large`): Bacformer Large, over ESM-C
  300M vectors computed as ESM++ small (960 wide), one token per protein and nothing else.

Both write ``model_type`` "bacformer" into config.json (the reference's choice), so `family_of` tells them apart
by the keys only one family's config has or, failing that, by the architecture named there.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bacflow.core.errors import InputError


@dataclass(frozen=True)
class ModelFamily:
    name: str  #: "base" or "large"
    title: str  #: how messages name it
    config_class: str  #: the config class's name in bacflow (and in the reference)
    encoder: str  #: the protein-embedding encoder its input vectors come from: "esm2" or "esmc"
    embedding_model: str  #: the hub model of those vectors, as the published checkpoints were trained on
    embedding_revision: str | None  #: its pinned hub commit (None: the hub's current one)
    vector_width: int  #: the size of those vectors, which is the published checkpoints' hidden size
    special_tokens: bool  #: inputs carry CLS, separators and END besides the proteins
    checkpoints: tuple[str, ...]  #: the published masked checkpoints (hub ids), known without reading them
    #: Config values of a new model in pretraining, unless the config sets them: the geometry each family was
    #: published with (base: the reference's training command line, 0.2.0; its width is the vectors').
    training_geometry: Mapping[str, Any]


BASE = ModelFamily(
    name="base",
    title="Bacformer base",
    config_class="BacformerConfig",
    encoder="esm2",
    embedding_model="facebook/esm2_t12_35M_UR50D",
    embedding_revision=None,
    vector_width=480,
    special_tokens=True,
    checkpoints=("macwiatrak/bacformer-masked-complete-genomes", "macwiatrak/bacformer-masked-MAG"),
    training_geometry={
        "num_hidden_layers": 12,
        "num_attention_heads": 8,
        "intermediate_size": 1280,
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
    },
)
LARGE = ModelFamily(
    name="large",
    title="Bacformer Large",
    config_class="BacformerLargeConfig",
    encoder="esmc",
    embedding_model="Synthyra/ESMplusplus_small",
    # The commit BacBench pins "as Bacformer Large was trained on a specific version" of the remote code.
    embedding_revision="1e40c1b8ef46c33f93a9b817eb0bd81279ab4088",
    vector_width=960,
    special_tokens=False,
    checkpoints=("macwiatrak/bacformer-large-masked-complete-genomes", "macwiatrak/bacformer-large-masked-MAG"),
    training_geometry={
        "num_hidden_layers": 30,
        "num_attention_heads": 15,
        "hidden_dropout_prob": 0.1,
        "final_layer_dropout_prob": 0.1,
    },
)
FAMILIES = {family.name: family for family in (BASE, LARGE)}

#: Keys that only a Large config.json has, and keys that only a base one has.
_LARGE_ONLY_KEYS = ("final_layer_dropout_prob",)
_BASE_ONLY_KEYS = ("intermediate_size",)


def family_of_config(config: Mapping[str, Any]) -> ModelFamily:
    """The family of a Bacformer config.json's contents.

    Each family's config class writes keys the other's lacks (Large: ``final_layer_dropout_prob``; base:
    ``intermediate_size``), whatever names its architecture; where the keys do not decide, the architecture
    named in ``architectures`` does (``BacformerLarge...`` is Large), else it is base.
    """
    has_large = any(key in config for key in _LARGE_ONLY_KEYS)
    has_base = any(key in config for key in _BASE_ONLY_KEYS)
    if has_large != has_base:
        return LARGE if has_large else BASE
    architectures = [name for name in config.get("architectures") or [] if isinstance(name, str)]
    return LARGE if any(name.startswith("BacformerLarge") for name in architectures) else BASE


def family_of(folder: str | Path) -> ModelFamily:
    """The family of the Bacformer checkpoint in `folder` (from its config.json; no weights are read)."""
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: unreadable ({error})") from None
    if not isinstance(config, dict) or config.get("model_type") != "bacformer":
        model_type = config.get("model_type") if isinstance(config, dict) else None
        raise InputError(
            f"{path}: model_type {model_type!r}, not 'bacformer': set bacformer.model to a Bacformer checkpoint"
        )
    return family_of_config(config)


def published_family(model: str) -> ModelFamily | None:
    """The family of a published checkpoint's hub id, else None (the checkpoint's config.json must say)."""
    return next((family for family in FAMILIES.values() if model in family.checkpoints), None)


def family_of_encoder(encoder: str) -> ModelFamily:
    """The family whose input vectors come from `encoder` ("esm2" or "esmc")."""
    (family,) = [family for family in FAMILIES.values() if family.encoder == encoder]
    return family


def family_of_config_class(name: str) -> ModelFamily:
    """The family whose config class is called `name` (``type(model.config).__name__``)."""
    (family,) = [family for family in FAMILIES.values() if family.config_class == name]
    return family


def family_named(name: str) -> ModelFamily:
    """The family called `name` ("base" or "large"), as a config key gives it."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise InputError(f"unknown Bacformer family {name!r}: one of {sorted(FAMILIES)}") from None
