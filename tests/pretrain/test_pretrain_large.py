"""Pretraining Bacformer Large (``pretrain.family: large``) on the synthetic corpus of test_pretrain.py: its examples,
a run that is killed and resumed into the uninterrupted model, continued pretraining, and the refusals."""

from __future__ import annotations

import json
import signal
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import test_pretrain as synthetic
import torch
from transformers import AutoModel, AutoModelForMaskedLM

from bacflow.bacformer.model import load_bacformer
from bacflow.bacformer.model_families import LARGE
from bacflow.bacformer.modeling_bacformer import BacformerConfig, BacformerForMaskedGM
from bacflow.bacformer.modeling_bacformer_large import (
    BacformerLargeConfig,
    BacformerLargeForMaskedGM,
    BacformerLargeModel,
)
from bacflow.bacformer.stage import BacformerSettings, embed_genomes, plan_genome
from bacflow.core.errors import InputError
from bacflow.pretrain.masking import ExampleParams, pretraining_example
from bacflow.pretrain.trainer import make_model, train

DIM, VOCAB = synthetic.DIM, synthetic.VOCAB
#: test_pretrain's tiny run, with a tiny Bacformer Large (2 layers, 2 heads of 8).
TINY_LARGE = replace(synthetic.TINY, family="large", model={"num_hidden_layers": 2, "num_attention_heads": 2})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic.build_corpus(tmp_path_factory.mktemp("corpus"))


def test_large_examples_are_the_proteins_alone_with_masked_ones_flagged():
    rng = np.random.default_rng(0)
    n = 120
    vectors = rng.normal(size=(n, DIM)).astype(np.float16)
    contigs = np.repeat(np.arange(6), 20)
    labels = rng.integers(0, VOCAB, n)
    labels[::9] = -100
    params = ExampleParams(max_n_proteins=100, max_n_contigs=4, end_label=VOCAB, special_tokens=False)
    example = pretraining_example(vectors, contigs, labels, params, np.random.default_rng(1))
    assert example.keys() == {"protein_embeddings", "contig_ids", "mlm_mask", "labels", "attention_mask"}
    assert example["protein_embeddings"].dtype == torch.float16
    assert torch.equal(example["protein_embeddings"][0], torch.from_numpy(vectors[:100]))  # no special tokens, cut
    assert example["contig_ids"][0].tolist() == np.minimum(contigs[:100], 3).tolist()
    masked, targets = example["mlm_mask"][0], example["labels"][0]
    assert masked.dtype == torch.bool and int(masked.sum()) == int(0.15 * 100 * 0.875)  # the reference's count
    assert (targets[masked] == torch.from_numpy(labels[:100])[masked]).all()  # masked proteins are targets...
    assert (targets != -100).sum() <= int(masked.sum()) + int(0.15 * 100 * 0.125)  # ...with few unchanged ones
    assert VOCAB not in targets  # no END target: there is no END token


def test_causal_large_and_base_settings_for_large_are_refused(tmp_path: Path):
    with pytest.raises(InputError, match="only the masked objective"):
        replace(TINY_LARGE, objective="causal")
    with pytest.raises(InputError, match="unknown Bacformer family 'huge'"):
        replace(TINY_LARGE, family="huge")
    with pytest.raises(InputError, match="intermediate_size not settings of a Bacformer large.*num_hidden_layers"):
        make_model(replace(TINY_LARGE, model=synthetic.TINY.model), DIM, VOCAB)
    new = make_model(replace(TINY_LARGE, model=LARGE.training_geometry), 960, 50000)
    assert new.config.num_hidden_layers == 30 and new.config.protein_clusters_vocab_size == 50001  # as published


def test_large_run_resumes_into_the_uninterrupted_model_which_loads_everywhere(corpus: Path, tmp_path: Path):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    result = synthetic.run_training(tmp_path, corpus, whole, TINY_LARGE)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "BacformerLargeForMaskedGM" in result.stderr
    killed = synthetic.run_training(tmp_path, corpus, broken, TINY_LARGE, kill_after=6)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = synthetic.run_training(tmp_path, corpus, broken, TINY_LARGE)
    assert resumed.returncode == 0 and "checkpoint-6" in resumed.stderr, resumed.stderr[-3000:]
    rows = synthetic.training_rows(whole)
    assert rows == synthetic.training_rows(broken)
    evaluations = [row for row in rows if row["eval_loss"]]
    assert len(evaluations) == 4 and all(np.isfinite(float(row["eval_top1_accuracy"])) for row in evaluations)
    synthetic.assert_same_weights(broken / "model", whole / "model")

    folder = whole / "model"
    assert json.loads((folder / "bacflow_pretrain.json").read_text())["params"]["family"] == "large"
    masked, info = AutoModelForMaskedLM.from_pretrained(folder, output_loading_info=True)
    assert type(masked) is BacformerLargeForMaskedGM and not any(info.values()), info
    assert masked.config.protein_clusters_vocab_size == VOCAB + 1  # the families and END, as published
    encoder, info = AutoModel.from_pretrained(folder, output_loading_info=True)
    assert type(encoder) is BacformerLargeModel and not any(info.values()), info
    # The bacformer stage runs it.
    model = load_bacformer(folder, torch.device("cpu"), torch.float32)
    contigs = [np.random.default_rng(2).normal(size=(size, DIM)).astype(np.float32) for size in (30, 12)]
    plan = plan_genome(contigs, BacformerSettings(max_n_proteins=64, window_overlap=8), 3, special_tokens=False)
    (vectors,) = embed_genomes(model, [plan])
    assert vectors.embedded.all() and np.isfinite(vectors.vectors).all()


def test_continuing_a_large_model_keeps_its_weights_and_a_base_one_is_refused(corpus: Path, tmp_path: Path):
    config = BacformerLargeConfig(
        hidden_size=DIM, num_hidden_layers=3, num_attention_heads=2, protein_clusters_vocab_size=VOCAB + 1
    )
    BacformerLargeForMaskedGM(config).save_pretrained(tmp_path / "earlier")
    earlier = BacformerLargeForMaskedGM.from_pretrained(tmp_path / "earlier").state_dict()
    model = make_model(replace(TINY_LARGE, init_from=str(tmp_path / "earlier")), DIM, VOCAB)
    assert type(model) is BacformerLargeForMaskedGM and model.config.num_hidden_layers == 3
    assert all(torch.equal(value, earlier[key]) for key, value in model.state_dict().items())
    with pytest.raises(
        InputError, match="has hidden size 16 and 40 families; the corpus has 16-d protein vectors and 39"
    ):
        make_model(replace(TINY_LARGE, init_from=str(tmp_path / "earlier")), DIM, VOCAB - 1)
    base = BacformerConfig(hidden_size=DIM, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    BacformerForMaskedGM(base).save_pretrained(tmp_path / "base")
    with pytest.raises(InputError, match="is a Bacformer base, but pretrain.family is large"):
        make_model(replace(TINY_LARGE, init_from=str(tmp_path / "base")), DIM, VOCAB)
    # A run of the other family's checkpoints does not resume.
    checkpoint = tmp_path / "run" / "checkpoints" / "checkpoint-3"
    BacformerForMaskedGM(
        BacformerConfig(hidden_size=DIM, num_attention_heads=2, protein_clusters_vocab_size=VOCAB)
    ).save_pretrained(checkpoint)
    (checkpoint / "trainer_state.json").write_text("{}")
    with pytest.raises(InputError, match=r"another architecture: Bacformer base \(this run: large\)"):
        train(corpus, tmp_path / "run", TINY_LARGE)
