"""The `pretrain` target on real genomes: 10 C. trachomatis strains of the shared cohort (their GenBank CDS),
real MMseqs2 families and a tiny random ESM-2, from the sample sheet to a trained model that the `bacformer`
stage, ``AutoModel`` and the reference package load.

The run trains the causal objective: with vectors of a random tiny ESM-2 (nearly parallel, mean cosine ~0.9)
and a handful of training genomes, the masked objective needs more steps than a CPU test affords before validation
improves (tried: after 300 steps of batch 2 its validation loss sat at the entropy of the family frequencies,
top-1 0), while next-family prediction over the strains' shared gene order is learnt in a few dozen steps. The
masked objective's examples are tested against the reference in test_masking.py, its training (learning from
context on synthetic genomes, resume, DDP) in test_pretrain.py.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from transformers import AutoModel

from bacflow.bacformer.model import load_bacformer, separator_id
from bacflow.bacformer.modeling_bacformer import BacformerForCausalGM
from bacformer_helpers import max_abs_diff, run_reference
from conftest import SHARED_DATA, needs_mmseqs, needs_shared
from workflow_helpers import snakemake

pytestmark = [
    needs_shared,
    needs_mmseqs,
]
COHORT_SHEET = SHARED_DATA / "cohort" / "samples.tsv"
RUN = "tiny"
# Sheet splits: 7 train, 2 val, 1 test; every other genome a draft (its contigs shuffled every epoch).
N_GENOMES, VAL, TEST = 10, (3, 8), (9,)
PRETRAIN = {
    "run": RUN,
    "objective": "causal",
    "model": {"num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 96},
    "max_n_proteins": 1100,
    "batch_size": 2,
    "gradient_accumulation_steps": 1,
    "learning_rate": 0.005,
    "max_steps": 60,
    "warmup": 5,
    "eval_steps": 30,
    "save_steps": 30,
    "logging_steps": 10,
    "dataloader_workers": 0,
    "gpus": 0,
    "mem_mb": 4000,
    "runtime": 30,
}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("pretrain")
    rows = [line.split("\t") for line in COHORT_SHEET.read_text().splitlines()[1:]]
    strains = [(genome, path) for genome, path in rows if "Ctrachomatis" in path][:N_GENOMES]
    lines = ["genome_id\tpath\tgenetic_code\tkind\tgroup\tsplit"]
    for number, (genome, path) in enumerate(strains):
        split = "val" if number in VAL else "test" if number in TEST else "train"
        kind = "draft" if number % 2 else "complete"
        lines.append(f"{genome}\t{SHARED_DATA / path}\t11\t{kind}\t{genome}\t{split}")
    (workdir / "samples.tsv").write_text("\n".join(lines) + "\n")
    config = {
        "samples": str(workdir / "samples.tsv"),
        "outdir": "results",
        "shard_size": 6,
        "buckets": 2,
        "threads": {"proteins": 1, "families": 2, "embeddings": 2},
        "families": {"vocab_size": 1500},
        # Proteins cut at 256 tokens: the tiny ESM-2 is the test's slowest step.
        "embeddings": {"tiny_model": True, "max_length": 256},
        # The model has max_n_proteins positions (as the reference's pretraining gives it).
        "bacformer": {"model": "pretrain", "max_n_proteins": PRETRAIN["max_n_proteins"], "window_overlap": 100},
        "pretrain": PRETRAIN,
    }
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    # Closes the loop: sheet -> proteins -> families + ESM-2 -> corpus -> training -> Bacformer embeddings.
    snakemake(workdir, "pretrain", "bacformer", "--configfile", str(workdir / "config.yaml"))
    return workdir / "results"


def test_the_corpus_follows_the_sheet_splits(run: Path):
    corpus = json.loads((run / "pretrain" / RUN / "data" / "corpus.json").read_text())
    assert {split: values["genomes"] for split, values in corpus["splits"].items()} == {"train": 7, "val": 2, "test": 1}
    assert corpus["embedding_dim"] == 48 and corpus["vocab_size"] == 1500
    val = pq.read_table(run / "pretrain" / RUN / "data" / "val", columns=["genome_id", "n_labelled"])
    assert val.num_rows == 2 and min(val.column("n_labelled").to_pylist()) > 500


def test_training_learns_next_families(run: Path):
    with open(run / "pretrain" / RUN / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    losses = [float(row["loss"]) for row in rows if row["loss"]]
    evaluations = [row for row in rows if row["eval_loss"]]
    assert len(losses) == 6 and len(evaluations) == 2
    assert losses[-1] < 0.7 * losses[0], losses
    last = evaluations[-1]
    assert float(last["eval_loss"]) < float(evaluations[0]["eval_loss"])
    # Predicting the most frequent training family is right for ~0.2 % of the validation targets.
    assert float(last["eval_top1_accuracy"]) > 0.5 > 10 * float(last["eval_majority_accuracy"])
    assert float(last["eval_top5_accuracy"]) >= float(last["eval_top1_accuracy"])
    assert all(
        float(row["learning_rate"]) > 0 and float(row["tokens_per_second"]) > 0 for row in rows[1:] if row["loss"]
    )
    assert (run / "pretrain" / RUN / "metrics.svg").read_text().startswith("<svg")


def test_a_failed_rerun_of_the_training_keeps_the_run(run: Path, tmp_path: Path):
    """A rerun of the training job (its parameters changed) that fails leaves the run's model, metrics and plot as they
    were: Snakemake neither deletes them before the job (update() outputs) nor after it failed."""
    workdir = tmp_path / "copy"
    shutil.copytree(run.parent, workdir, symlinks=True)
    run_dir = workdir / "results" / "pretrain" / RUN
    results = ["model/config.json", "model/model.safetensors", "model/bacflow_pretrain.json"]
    results += ["metrics.csv", "metrics.svg"]
    before = {name: (run_dir / name).read_bytes() for name in results}
    weights = (run_dir / "model" / "model.safetensors").stat().st_mtime_ns
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    # Twice the steps, so the job runs again; checkpoints off the validations, so it fails when it starts.
    config["pretrain"] |= {"max_steps": 120, "save_steps": 45}
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    failed = snakemake(workdir, "pretrain", "--configfile", str(workdir / "config.yaml"), check=False)
    assert failed.returncode != 0 and "must be a multiple of eval_steps" in failed.stderr, failed.stderr[-3000:]
    assert {name: (run_dir / name).read_bytes() for name in results} == before
    assert (run_dir / "model" / "model.safetensors").stat().st_mtime_ns == weights


def test_the_model_folder_loads_everywhere(run: Path, reference_python: Path, tmp_path: Path):
    folder = run / "pretrain" / RUN / "model"
    description = json.loads((folder / "bacflow_pretrain.json").read_text())
    assert description["params"]["objective"] == "causal" and description["separator_token_id"] == 3
    assert description["metrics"]["eval_top1_accuracy"] > 0.5
    assert description["tool_versions"]["torch"] == torch.__version__ and len(description["config_hash"]) == 16

    model = BacformerForCausalGM.from_pretrained(folder).eval()
    encoder = AutoModel.from_pretrained(folder)
    assert torch.equal(encoder.state_dict()["embeddings.linear.weight"], model.bacformer.embeddings.linear.weight)
    # The bacformer stage's loader, and its separator: the one the model was trained with.
    assert separator_id("auto", folder) == 3
    loaded = load_bacformer(folder, torch.device("cpu"), torch.float32)
    assert torch.equal(loaded.state_dict()["embeddings.linear.weight"], model.bacformer.embeddings.linear.weight)
    # The bacformer stage ran on it (the `bacformer` target with bacformer.model: pretrain).
    genomes = pq.read_table(run / "bacformer" / f"pretrain-{RUN}" / "genomes.parquet")
    assert genomes.num_rows == N_GENOMES

    # The reference package loads the folder and computes the same logits.
    generator = torch.Generator().manual_seed(0)
    inputs = {
        "protein_embeddings": torch.randn(1, 12, 48, generator=generator),
        "special_tokens_mask": torch.tensor([[2] + [4] * 5 + [3] + [4] * 4 + [5]]),
        "token_type_ids": torch.tensor([[0] * 7 + [1] * 5]),
        "attention_mask": torch.ones(1, 12, dtype=torch.long),
    }
    theirs = run_reference(
        reference_python,
        [
            {
                "kind": "forward",
                "name": "causal",
                "model": "BacformerForCausalGM",
                "folder": str(folder),
                "inputs": [inputs],
            }
        ],
        tmp_path,
    )["causal"]["outputs"][0]
    with torch.no_grad():
        ours = model(**inputs, return_dict=True)
    assert max_abs_diff(ours.logits, theirs["logits"]) < 1e-4
