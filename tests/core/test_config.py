"""The workflow's config check (`bacflow.core.schemas.check_config`); its messages, as Snakemake shows them, are
tested in test_workflow.py."""

from __future__ import annotations

import pytest
import yaml

from bacflow.core.errors import InputError
from bacflow.core.schemas import check_config


def test_text_values_mean_what_they_mean_in_a_config_file():
    """What Snakemake's `--config` makes of `strict=true families={vocab_size: 5, vocab: x}`."""
    config = {"samples": "s.tsv", "outdir": "1", "strict": "true", "families": {"vocab_size": "5", "vocab": "7"}}
    check_config(config)
    assert config["strict"] is True and config["families"]["vocab_size"] == 5
    # Keys that take text keep it, and defaults are filled in.
    assert config["outdir"] == "1" and config["families"]["vocab"] == "7"
    assert config["families"]["method"] == "linclust" and config["pretrain"]["family"] == "auto"
    # A key without a default stays out (pretrain.model's: the run plan takes the family's published values).
    assert config["pretrain"]["model"] == {}


def test_tiny_model_takes_a_family_or_a_boolean():
    for text, value in (("true", True), ("false", False), ("large", "large"), ("base", "base")):
        config = {"samples": "s.tsv", "outdir": "o", "bacformer": {"tiny_model": text}}
        check_config(config)
        assert config["bacformer"]["tiny_model"] == value


@pytest.mark.parametrize(
    ("block", "key", "text", "message"),
    [
        pytest.param("families", "vocab_size", "0", "0 is less than the minimum of 1", id="minimum"),
        pytest.param(None, "buckets", "10000", "10000 is greater than the maximum of 9999", id="maximum"),
        pytest.param("pretrain", "mgm_probability", "0", "0 is less than or equal to the minimum of 0", id="exclusive"),
        pytest.param("pretrain", "save_total_limit", "0", "0 is less than the minimum of 1", id="or-null"),
        pytest.param("bacformer", "sep_token_id", "5", "5 is not one of [2, 3]", id="any-of"),
        # Text that is no number stays text, and the message says what the key takes.
        pytest.param("families", "vocab_size", "many", "'many' is not of type 'integer'", id="not-a-number"),
        pytest.param("families", "vocab_size", "1.5", "is not of type 'integer'", id="not-whole"),
    ],
)
def test_a_value_out_of_range_names_the_limit(block: str | None, key: str, text: str, message: str):
    """As given on the command line (`--config 'families={vocab_size: 0}'` passes the 0 as text), or in a file."""
    for value in (text, yaml.safe_load(text)):
        config = {"samples": "s.tsv", "outdir": "o", **({block: {key: value}} if block else {key: value})}
        with pytest.raises(InputError) as raised:
            check_config(config)
        name = f"{block}.{key}" if block else key
        assert str(raised.value).startswith(f"config key '{name}': ") and message in str(raised.value), raised.value
