"""The workflow's config check (`bacflow.core.schemas.check_config`); its messages, as Snakemake shows them, are
tested in test_workflow.py."""

from __future__ import annotations

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
