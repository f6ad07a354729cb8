"""The JSON schemas of the config and of a sample-sheet row (``bacflow/schemas/``), and a validator that fills
in their defaults; `check_config` checks the workflow's config with them and says what is wrong in one line."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from bacflow.core.errors import InputError

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"  # package data: installed with the package
CONFIG_SCHEMA = SCHEMA_DIR / "config.schema.yaml"
SAMPLES_SCHEMA = SCHEMA_DIR / "samples.schema.yaml"


def load_schema(path: str | Path) -> dict[str, Any]:
    with open(path) as handle:
        return yaml.safe_load(handle)


def filling_validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    """A Draft 2020-12 validator that also fills in each property's default."""
    base = jsonschema.Draft202012Validator
    check_properties = base.VALIDATORS["properties"]

    def properties_with_defaults(validator, properties, instance, schema):
        for name, subschema in properties.items():
            if isinstance(instance, dict) and "default" in subschema:
                instance.setdefault(name, subschema["default"])
        yield from check_properties(validator, properties, instance, schema)

    filling = jsonschema.validators.extend(base, {"properties": properties_with_defaults})
    return filling(schema)


def check_config(config: dict[str, Any], schema_path: str | Path = CONFIG_SCHEMA) -> None:
    """Validate the workflow's config in place: text values are read as YAML where the schema wants another
    type, and defaults are filled in. The first problem raises one `InputError` line naming the key."""
    schema = load_schema(schema_path)
    _read_text_values(config, schema)
    error = jsonschema.exceptions.best_match(filling_validator(schema).iter_errors(config))
    if error is not None:
        raise InputError(_describe(error, schema))


def _read_text_values(instance: Any, schema: dict[str, Any]) -> Any:
    """`instance` with each text value that its schema refuses replaced by its YAML reading, where the schema
    takes that reading's type: Snakemake's ``--config`` passes ``true`` and every value of a nested mapping as
    text. A reading of the right type that is still wrong (``0`` for a key of at least 1) replaces the text too,
    so that the message says what is wrong with the number, not that text is no number."""
    if isinstance(instance, dict):
        properties = schema.get("properties", {})
        for key, value in instance.items():
            if key in properties:
                instance[key] = _read_text_values(value, properties[key])
        return instance
    if isinstance(instance, str):
        validator = jsonschema.Draft202012Validator(schema)
        if not validator.is_valid(instance):
            try:
                value = yaml.safe_load(instance)
            except yaml.YAMLError:
                return instance
            if not any(error.validator == "type" and not error.path for error in validator.iter_errors(value)):
                return value
    return instance


def _describe(error: jsonschema.ValidationError, schema: dict[str, Any]) -> str:
    where = ".".join(str(part) for part in error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = list(error.schema.get("properties", {}))
        unknown = [key for key in error.instance if key not in allowed]
        keys = ", ".join(repr(f"{where}.{key}" if where else key) for key in unknown)
        guesses = [guess for key in unknown for guess in difflib.get_close_matches(key, allowed, n=1)]
        hint = f" (did you mean {', '.join(map(repr, guesses))}?)" if guesses else ""
        named = f"config keys {keys} are" if len(unknown) > 1 else f"config key {keys} is"
        return f"{named} unknown{hint}; {where or 'the top level'} takes {', '.join(allowed)}"
    if not where:
        return f"config: {error.message}"
    for part in error.absolute_path:
        schema = schema["properties"][part]
    # jsonschema's message says what is wrong; the key's description says what it is for (and, where the
    # message cannot, e.g. for a failed anyOf, what it takes).
    about = f" ({schema['description']})" if "description" in schema else ""
    return f"config key '{where}': {error.message}{about}"
