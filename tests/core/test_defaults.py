"""Every default is stated three times (config/config.yaml, the config schema's `default:` entries, and the
stages' dataclasses, which library users get without a config): the three must agree."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from bacflow.bacformer.stage import BacformerSettings
from bacflow.core.schemas import CONFIG_SCHEMA, load_schema
from bacflow.embeddings.stage import EmbeddingSettings
from bacflow.families.stage import FamilyParams
from bacflow.pretrain.trainer import PretrainParams
from bacflow.proteins.genecall import GeneCallingParams
from workflow_helpers import REPO

CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def schema_defaults(schema: dict[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(key path, default) of every key of the schema that states a default."""
    for key, spec in schema.get("properties", {}).items():
        if "default" in spec:
            yield (*path, key), spec["default"]
        yield from schema_defaults(spec, (*path, key))


def config_value(path: tuple[str, ...]) -> Any:
    value = CONFIG
    for key in path:
        value = value[key]
    return value


def has_value(path: tuple[str, ...]) -> bool:
    try:
        config_value(path)
    except (KeyError, TypeError):
        return False
    return True


def test_the_schema_states_the_defaults_of_config_yaml():
    defaults = dict(schema_defaults(load_schema(CONFIG_SCHEMA)))
    # config.yaml may leave a key out (the schema's default fills it in); where it states one, they agree.
    # An object's default ({}) only says that its keys' own defaults fill it in.
    stated = {path: default for path, default in defaults.items() if has_value(path) and not isinstance(default, dict)}
    assert len(stated) > 30
    disagree = {
        ".".join(path): (default, config_value(path))
        for path, default in stated.items()
        if config_value(path) != default
    }
    assert disagree == {}, "schema default vs config.yaml"


#: Keys whose config default ("auto", or left out) the run plan turns into a value of the dataclass (see
#: bacflow/plan.py: the family to pretrain, and its published geometry).
PLANNED = {"pretrain": {"family", "model"}}


@pytest.mark.parametrize(
    "block, settings",
    [
        ("gene_calling", GeneCallingParams),
        ("families", FamilyParams),
        ("embeddings", EmbeddingSettings),
        ("bacformer", BacformerSettings),
        ("pretrain", PretrainParams),
    ],
)
def test_the_stages_dataclasses_default_to_config_yaml(block: str, settings: type):
    fields = {field.name: field for field in dataclasses.fields(settings)}
    shared = sorted(set(fields) & set(CONFIG[block]) - PLANNED.get(block, set()))
    assert len(shared) >= 4, shared  # the dataclass really reads this block
    disagree = {}
    for name in shared:
        field = fields[name]
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        if default is not dataclasses.MISSING and default != CONFIG[block][name]:
            disagree[name] = (default, CONFIG[block][name])
    assert disagree == {}, f"{settings.__name__} default vs config.yaml {block}"
