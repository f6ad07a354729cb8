"""Pretraining on a small synthetic corpus: splits, the corpus builder and its checks, the reference trainer's
reader on the corpus, the dataset and sampler, learning from context, resuming after a kill (same final model as
an uninterrupted run), a failed training that keeps the run's results, a run of the other family refused when
planned, two-process DDP on CPU, and bad inputs.

Training runs use a tiny model (width 16, 2 layers) on 12 genomes of 30-60 proteins, in subprocesses of one
thread each, so that a run takes seconds; the workflow test (test_pretrain_workflow.py) trains on real genomes.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from bacflow.bacformer.modeling_bacformer import SPECIAL_TOKENS, BacformerConfig, BacformerForMaskedGM
from bacflow.bacformer.modeling_bacformer_large import BacformerLargeConfig
from bacflow.core.errors import InputError
from bacflow.core.samples import Sample
from bacflow.plan import make_plan
from bacflow.pretrain.data import (
    SPLITS,
    assign_splits,
    build_corpus_shard,
    required_splits,
    splits_drawn,
    summarize_corpus,
)
from bacflow.pretrain.dataset import CorpusIndex, EpochSampler, GenomeDataset
from bacflow.pretrain.trainer import PretrainParams, launch_command, make_model, newest_checkpoint, train
from conftest import PYRODIGAL_DATA
from workflow_helpers import snakemake

REPO = Path(__file__).resolve().parents[2]
DIM, VOCAB = 16, 40
GENOMES = [f"g{number:02d}" for number in range(12)]
SPLIT_OF = {
    genome: "val" if number in (4, 9) else "test" if number == 11 else "train" for number, genome in enumerate(GENOMES)
}
KIND_OF = {genome: "draft" if number % 3 == 0 else "complete" for number, genome in enumerate(GENOMES)}
#: The tiny training run every test here starts from.
TINY = PretrainParams(
    model={"num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32},
    max_n_proteins=64,
    batch_size=2,
    gradient_accumulation_steps=1,
    learning_rate=3e-3,
    max_epochs=100,
    max_steps=12,
    warmup=2,
    eval_steps=3,
    save_steps=3,
    logging_steps=1,
    save_total_limit=None,
    dataloader_workers=0,
    seed=5,
)


def sample(genome_id: str, group: str | None = None, split: str | None = None) -> Sample:
    return Sample(genome_id, "x.fna", None, 11, "draft", group or genome_id, split)


# --- a synthetic cohort -------------------------------------------------------------------------------


def write_shards(folder: Path, labelled: bool = True) -> tuple[list[Path], Path]:
    """Two gathered-vector shards (the embeddings stage's layout) and a families table for `GENOMES`: a shared
    gene order of 60 families, with genome-specific gaps, 1-3 contigs, and every 7th sequence unlabelled."""
    rng = np.random.default_rng(0)
    family_vectors = rng.standard_normal((VOCAB, DIM))
    hashes, families, shards = {}, [], []
    for shard, genomes in enumerate((GENOMES[:6], GENOMES[6:])):
        rows = []
        for genome in genomes:
            n = int(rng.integers(30, 61))
            family = (np.arange(n) + int(rng.integers(0, 3))) % VOCAB
            contigs = np.sort(rng.integers(0, 1 + int(genome[1:]) % 3, n))
            for index in range(n):
                sequence = f"{genome}:{index}" if index % 7 == 0 else f"family{family[index]}"
                seq_hash = hashes.setdefault(sequence, f"{len(hashes):032x}")
                vector = family_vectors[family[index]] + 0.1 * rng.standard_normal(DIM)
                rows.append((genome, int(contigs[index]) * 2, index, seq_hash, vector.astype(np.float32)))
        table = pa.table(
            {
                "genome_id": [row[0] for row in rows],
                "contig_index": pa.array([row[1] for row in rows], pa.int32()),
                "protein_index": pa.array([row[2] for row in rows], pa.int32()),
                "seq_hash": [row[3] for row in rows],
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(np.concatenate([row[4] for row in rows])), DIM),
            }
        )
        shards.append(folder / f"shard={shard:05d}.parquet")
        pq.write_table(table, shards[-1])
    for sequence, seq_hash in sorted(hashes.items(), key=lambda item: item[1]):
        unlabelled = not labelled or not sequence.startswith("family")
        families.append((seq_hash, None if unlabelled else int(sequence.removeprefix("family"))))
    families_path = folder / "families.parquet"
    pq.write_table(
        pa.table({"seq_hash": [f[0] for f in families], "family_id": pa.array([f[1] for f in families], pa.int32())}),
        families_path,
    )
    return shards, families_path


def build_corpus(
    folder: Path,
    labelled: bool = True,
    split_of: dict[str, str] = SPLIT_OF,
    required: tuple[str, ...] = SPLITS,
    drawn: bool = False,
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shards, families = write_shards(folder, labelled)
    parts = {split: [] for split in SPLITS}
    for number, vectors in enumerate(shards):
        members = [
            {"genome_id": g, "kind": KIND_OF[g], "split": split_of[g]} for g in GENOMES[6 * number : 6 * number + 6]
        ]
        outputs = {split: folder / "data" / split / f"part-{number:05d}.parquet" for split in SPLITS}
        build_corpus_shard(vectors, families, members, outputs)
        for split in SPLITS:
            parts[split].append(outputs[split])
    summarize_corpus(parts, VOCAB, required, drawn, folder / "data" / "corpus.json")
    return folder / "data" / "corpus.json"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_corpus(tmp_path_factory.mktemp("corpus"))


# --- splits ---------------------------------------------------------------------------------------------


def test_splits_follow_the_sheet_and_keep_groups_together():
    samples = [sample("a", "G1", "test"), sample("b", "G1"), sample("c", "G2", "val"), sample("d", "G2")]
    samples += [sample(f"s{n}", f"group{n // 3}") for n in range(300)]
    splits = assign_splits(samples, 0.2, 0.1)
    assert splits["a"] == splits["b"] == "test" and splits["c"] == splits["d"] == "val"
    by_group: dict[str, set[str]] = {}
    for item in samples:
        by_group.setdefault(item.group, set()).add(splits[item.genome_id])
    assert all(len(split) == 1 for split in by_group.values()), "a group spans two splits"
    shares = {split: sum(value == split for value in splits.values()) / len(splits) for split in SPLITS}
    assert 0.1 < shares["val"] < 0.32 and 0.03 < shares["test"] < 0.2


def test_splits_are_stable_when_genomes_are_added_and_depend_on_the_seed():
    samples = [sample(f"s{n}") for n in range(200)]
    first = assign_splits(samples, 0.1, 0.1)
    more = assign_splits(samples[::-1] + [sample(f"new{n}") for n in range(50)], 0.1, 0.1)
    assert all(more[genome] == split for genome, split in first.items())
    assert assign_splits(samples, 0.1, 0.1, seed=1) != first


def test_splits_named_in_the_sheet_are_taken_as_given():
    """The fractions apply to groups without a split in the sheet: a sheet that names train and val for every
    genome asks for no test split, whatever test_fraction says."""
    named = [sample("a", split="train"), sample("b", "B", split="val"), sample("c", "B")]
    assert not splits_drawn(named)
    assert required_splits(named, assign_splits(named, 0.05, 0.05), 0.05) == ["train", "val"]
    with_test = [*named, sample("d", split="test")]
    assert required_splits(with_test, assign_splits(with_test, 0.05, 0.05), 0.0) == ["train", "val", "test"]
    # A group drawn by hash could land in test (here it does not), so test_fraction asks for the split.
    drawn = [*named, sample("e")]
    splits = assign_splits(drawn, 0.05, 0.05)
    assert splits_drawn(drawn) and splits["e"] == "train"
    assert required_splits(drawn, splits, 0.05) == ["train", "val", "test"]
    assert required_splits(drawn, assign_splits(drawn, 0.05, 0.0), 0.0) == ["train", "val"]


def test_a_group_with_two_sheet_splits_is_an_error():
    with pytest.raises(InputError, match="group 'G' spans two splits"):
        assign_splits([sample("a", "G", "train"), sample("b", "G", "val")], 0.1, 0.1)
    with pytest.raises(InputError, match="leave a share for training"):
        assign_splits([sample("a")], 0.6, 0.4)


# --- the corpus -----------------------------------------------------------------------------------------


def test_corpus_layout(corpus: Path):
    summary = json.loads(corpus.read_text())
    assert {split: summary["splits"][split]["genomes"] for split in SPLITS} == {"train": 9, "val": 2, "test": 1}
    assert (
        summary["embedding_dim"] == DIM and summary["vocab_size"] == VOCAB and summary["embedding_dtype"] == "float32"
    )
    table = pq.read_table(corpus.parent / "train" / "part-00000.parquet")
    assert table.column_names[:5] == ["genome_id", "kind", "protein_embeddings", "contig_idx", "prot_cluster_id"]
    assert table.column("genome_id").to_pylist() == ["g00", "g01", "g02", "g03", "g05"]
    assert table.column("kind").to_pylist() == [KIND_OF[g] for g in table.column("genome_id").to_pylist()]
    # One genome per row group: a trainer reads a genome alone. No genome, no row group (not an empty one).
    assert pq.ParquetFile(corpus.parent / "train" / "part-00000.parquet").num_row_groups == table.num_rows
    assert pq.ParquetFile(corpus.parent / "test" / "part-00000.parquet").num_row_groups == 0
    source = pq.read_table(corpus.parent.parent / "shard=00000.parquet").to_pandas()
    families = pq.read_table(corpus.parent.parent / "families.parquet").to_pandas().set_index("seq_hash")
    for row in table.to_pylist():
        proteins = source[source.genome_id == row["genome_id"]]
        assert np.allclose(np.array(row["protein_embeddings"]), np.stack(proteins.vector.to_list()))
        # Contigs renumbered 0, 1, ... in genome order (the source numbers them 0, 2, 4).
        assert row["contig_idx"] == (proteins.contig_index.rank(method="dense").astype(int) - 1).tolist()
        expected = families.loc[proteins.seq_hash, "family_id"].fillna(-100).astype(int).tolist()
        assert row["prot_cluster_id"] == row["prot_cluster_idx"] == expected
        assert row["n_proteins"] == len(proteins) and row["n_labelled"] == sum(f != -100 for f in expected)
        assert row["n_contigs"] == proteins.contig_index.nunique()


def test_a_protein_missing_from_the_families_is_an_error(tmp_path: Path):
    shards, families = write_shards(tmp_path)
    table = pq.read_table(families)
    pq.write_table(table.slice(1), families)
    outputs = {split: tmp_path / f"{split}.parquet" for split in SPLITS}
    members = [{"genome_id": g, "kind": "draft", "split": "train"} for g in GENOMES[:6]]
    with pytest.raises(InputError, match="have no row; the families were made from other proteins"):
        build_corpus_shard(shards[0], families, members, outputs)
    assert not any(path.exists() for path in outputs.values())


def test_vectors_out_of_genome_order_are_an_error(tmp_path: Path):
    shards, families = write_shards(tmp_path)
    table = pq.read_table(shards[0])
    pq.write_table(table.take(np.r_[1, 0, 2 : table.num_rows]), shards[0])
    members = [{"genome_id": g, "kind": "draft", "split": "train"} for g in GENOMES[:6]]
    with pytest.raises(InputError, match="not in genome order"):
        build_corpus_shard(shards[0], families, members, {split: tmp_path / f"{split}.parquet" for split in SPLITS})


def test_a_corpus_without_labels_is_an_error(tmp_path: Path):
    with pytest.raises(InputError, match="no protein of the train split has a family label"):
        build_corpus(tmp_path, labelled=False)


@pytest.mark.parametrize(
    ("drawn", "advice"),
    [
        pytest.param(False, "name it in the sample sheet's split column for some groups$", id="every-split-named"),
        pytest.param(True, "or raise pretrain.val_fraction$", id="some-groups-drawn"),
    ],
)
def test_a_split_without_genomes_is_an_error_that_says_what_fills_it(tmp_path: Path, drawn: bool, advice: str):
    """The fractions are advice only where some group has no split in the sheet (they apply to no other)."""
    without_val = {genome: "test" if split == "val" else split for genome, split in SPLIT_OF.items()}
    with pytest.raises(InputError, match="the val split has no genomes") as raised:
        build_corpus(tmp_path, split_of=without_val, drawn=drawn)
    assert re.search(advice, str(raised.value)), str(raised.value)


# --- dataset and sampler --------------------------------------------------------------------------------


def test_dataset_examples_depend_on_genome_and_epoch_only(corpus: Path):
    summary = json.loads(corpus.read_text())
    index = CorpusIndex.of_files([corpus.parent / path for path in summary["splits"]["train"]["files"]])
    dataset = GenomeDataset(index, "train", TINY.example_params(VOCAB), seed=1, shuffle_contigs=True)
    first, again, later = dataset[(3, 0)], dataset[(3, 0)], dataset[(3, 1)]
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not torch.equal(first["special_tokens_mask"], later["special_tokens_mask"])
    assert first["special_tokens_mask"].shape[1] == min(index.tokens[3], TINY.max_n_proteins)
    assert (first["special_tokens_mask"] == SPECIAL_TOKENS["MASK"]).sum() > 0


def test_sampler_shuffles_every_epoch_and_groups_lengths():
    lengths = np.random.default_rng(0).integers(10, 1000, 500)
    sampler = EpochSampler(lengths, batch_size=4, seed=3)
    epoch0 = list(sampler)
    assert epoch0 == list(sampler) and sorted(g for g, _ in epoch0) == list(range(500))
    assert {epoch for _, epoch in epoch0} == {0}
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert [g for g, _ in epoch1] != [g for g, _ in epoch0] and {e for _, e in epoch1} == {1}
    # Within each group of 50 batches, longest first: batches hold genomes of similar length.
    for start in range(0, 500, 200):
        group = [lengths[g] for g, _ in epoch0[start : start + 200]]
        assert group == sorted(group, reverse=True)


# --- training runs (subprocesses) -----------------------------------------------------------------------

_DRIVER = textwrap.dedent(
    """
    import json, logging, os, signal, sys
    import torch
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
    from bacflow.pretrain.trainer import PretrainParams, train

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO)
    corpus, run_dir, params, kill_after = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])

    class Kill(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)

    train(corpus, run_dir, PretrainParams(**params), callbacks=[Kill()])
    """
)


def run_training(
    tmp_path: Path, corpus: Path, run_dir: Path, params: PretrainParams, kill_after: int = -1, processes: int = 1
) -> subprocess.CompletedProcess:
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER)
    args = [str(driver), str(corpus), str(run_dir), json.dumps(params.__dict__), str(kill_after)]
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", f"--nproc-per-node={processes}", "--standalone"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([*launcher, *args], capture_output=True, text=True, env=env, cwd=tmp_path)


def training_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [
            {key: value for key, value in row.items() if key != "tokens_per_second"} for row in csv.DictReader(handle)
        ]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def assert_same_weights(ours: Path, theirs: Path) -> None:
    mine, other = weights(ours), weights(theirs)
    assert mine.keys() == other.keys() and all(torch.equal(mine[key], other[key]) for key in mine), (ours, theirs)


def test_resume_after_a_kill_gives_the_uninterrupted_model(corpus: Path, tmp_path: Path):
    """Killed (SIGKILL) right after the checkpoint of step 10, then run again in a new process: it resumes at step
    10 and ends with the losses, learning rates, validation metrics and model of a run that was never stopped.

    As the workflow runs it: a persistent data-loader worker (the job gives one beside the trainer with --cores 2),
    dropout on, and checkpoints mid-epoch (9 genomes in batches of 2, two per step: 3 steps an epoch, the last of
    one batch), so the resumed run skips part of an epoch and starts its workers at other steps than the unbroken
    one (at the resume, the first evaluation after it, the next epoch)."""
    params = replace(
        TINY,
        max_steps=30,
        eval_steps=10,
        save_steps=10,
        gradient_accumulation_steps=2,
        dataloader_workers=1,
    )
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    result = run_training(tmp_path, corpus, whole, params)
    assert result.returncode == 0, result.stderr[-3000:]

    killed = run_training(tmp_path, corpus, broken, params, kill_after=10)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert newest_checkpoint(broken / "checkpoints").name == "checkpoint-10"
    assert not (broken / "model").exists()

    resumed = run_training(tmp_path, corpus, broken, params)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr and "checkpoint-10" in resumed.stderr
    state = json.loads((broken / "checkpoints" / "checkpoint-30" / "trainer_state.json").read_text())
    assert state["global_step"] == 30
    ours, theirs = training_rows(broken), training_rows(whole)
    assert len(ours) == len(theirs) == 30 + 3
    for mine, other in zip(ours, theirs, strict=True):
        assert mine == other, f"step {mine['step']}: resumed {mine}, unbroken {other}"
    # The last step's weights, and the final model (the best checkpoint's), bit for bit.
    assert_same_weights(broken / "checkpoints" / "checkpoint-30", whole / "checkpoints" / "checkpoint-30")
    assert_same_weights(broken / "model", whole / "model")


def files_of(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `folder`: its bytes and mtime."""
    return {
        str(path.relative_to(folder)): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def finished_run(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An outdir whose pretraining run "r" is finished: a Bacformer base over this corpus's 16-d vectors, with its
    corpus (data/), checkpoints, metrics and model, as the workflow leaves it."""
    outdir = tmp_path_factory.mktemp("results")
    run_dir = outdir / "pretrain" / "r"
    shutil.copytree(corpus.parent, run_dir / "data")
    train(run_dir / "data" / "corpus.json", run_dir, replace(TINY, max_steps=6))
    assert {"model", "metrics.csv", "metrics.svg", "checkpoints", "data"} <= {path.name for path in run_dir.iterdir()}
    return outdir


def workflow_config(folder: Path, outdir: Path, **blocks: dict) -> dict:
    """The default config with a sheet (in `folder`) of pyrodigal genomes, `outdir`, tiny ESM models and `blocks`."""
    sheet = folder / "samples.tsv"
    rows = [f"g{number}\t{PYRODIGAL_DATA / name}\tmag" for number, name in enumerate(["SRR492066.fna.gz"] * 2)]
    sheet.write_text("\n".join(["genome_id\tpath\tkind", *rows]) + "\n")
    config = copy.deepcopy(yaml.safe_load((REPO / "config" / "config.yaml").read_text()))
    config |= {"samples": str(sheet), "outdir": str(outdir)}
    for key, value in {"embeddings": {"tiny_model": True}, **blocks}.items():
        config[key] |= value
    return config


def test_a_finished_run_of_the_other_family_is_refused_when_planned(finished_run: Path, tmp_path: Path):
    """``bacformer.model: pretrain:r`` where run r is a finished Bacformer base (ESM-2 vectors) and the config's vectors
    are ESM-C (``pretrain.family: large``): planning fails in one line that names both, for the bacformer and the
    pretrain targets, and no file of the run changes. Planned, the corpus jobs would rewrite r's data/ from the ESM-C
    vectors, and the training job, after Snakemake had deleted r's model and metrics, fail to resume."""
    run_dir = finished_run / "pretrain" / "r"
    before = files_of(run_dir)
    config = workflow_config(
        tmp_path, finished_run, bacformer={"model": "pretrain:r"}, pretrain={"run": "r", "family": "large"}
    )
    expected = r"pretraining run 'r' \(.*/pretrain/r/model/config\.json\) is a Bacformer base, .* vectors are esmc"
    with pytest.raises(InputError, match=expected):
        _ = make_plan(config).bacformer_model
    with pytest.raises(InputError, match=expected):
        _ = make_plan(config).pretrain_params
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    for target, dry_run in (("pretrain", ["--dry-run"]), ("bacformer", ["--dry-run"]), ("bacformer", [])):
        result = snakemake(tmp_path, target, "--configfile", str(tmp_path / "config.yaml"), *dry_run, check=False)
        lines = [line for line in (result.stdout + result.stderr).splitlines() if re.search(expected, line)]
        assert result.returncode != 0 and len(lines) == 1, (target, dry_run, result.stdout + result.stderr)
    assert files_of(run_dir) == before
    assert not (finished_run / "embeddings").exists()


def test_a_run_killed_before_its_model_is_known_by_its_checkpoints(tmp_path: Path):
    """The other way round, and without a model folder: run r has only a checkpoint, of a Bacformer Large (ESM-C
    vectors), and the config's vectors are ESM-2."""
    checkpoint = tmp_path / "out" / "pretrain" / "r" / "checkpoints" / "checkpoint-3"
    checkpoint.mkdir(parents=True)
    BacformerLargeConfig(hidden_size=DIM, num_hidden_layers=1, num_attention_heads=2).to_json_file(
        checkpoint / "config.json"
    )
    (checkpoint / "trainer_state.json").write_text("{}")
    (checkpoint.parent.parent / "model").mkdir()  # made empty by Snakemake for the run's first training job
    config = workflow_config(tmp_path, tmp_path / "out", bacformer={"model": "pretrain"}, pretrain={"run": "r"})
    with pytest.raises(InputError, match=r"checkpoint-3/config\.json\) is a Bacformer large, .* vectors are esm2"):
        _ = make_plan(config).bacformer_model


class _FailAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: object
    ) -> None:
        if state.global_step == self.step:
            raise RuntimeError(f"stopped at step {self.step}")


def test_a_training_that_fails_midway_leaves_the_previous_results(finished_run: Path, tmp_path: Path):
    """Run r continued for more steps (it resumes from its last checkpoint) fails after a few: its model, metrics and
    plot are the finished run's, untouched; the rows the failed attempt logged are in checkpoints/metrics.csv."""
    run_dir = tmp_path / "r"
    shutil.copytree(finished_run / "pretrain" / "r", run_dir)
    results = {
        "model/config.json",
        "model/model.safetensors",
        "model/bacflow_pretrain.json",
        "metrics.csv",
        "metrics.svg",
    }
    before = {name: value for name, value in files_of(run_dir).items() if name in results}
    assert before.keys() == results
    with pytest.raises(RuntimeError, match="stopped at step 9"):
        train(run_dir / "data" / "corpus.json", run_dir, replace(TINY, max_steps=12), callbacks=[_FailAt(9)])
    assert {name: value for name, value in files_of(run_dir).items() if name in results} == before
    assert [row["step"] for row in training_rows(run_dir / "checkpoints") if row["loss"]][-1] == "8"


def test_the_masked_objective_learns_from_context(corpus: Path, tmp_path: Path):
    """The synthetic genomes share one gene order and a family's vectors are alike, so a masked protein's
    family is given by its neighbours only: validation loss falls below the family entropy, and top-1 beats
    always predicting the most frequent family (the workflow test trains on real genomes, with the causal
    objective; see test_pretrain_workflow.py for why)."""
    params = replace(
        TINY,
        max_steps=400,
        eval_steps=100,
        save_steps=100,
        logging_steps=50,
        warmup=20,
        model={**TINY.model, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
    )
    result = run_training(tmp_path, corpus, tmp_path / "run", params)
    assert result.returncode == 0, result.stderr[-3000:]
    evaluations = [row for row in training_rows(tmp_path / "run") if row["eval_loss"]]
    first, last = evaluations[0], evaluations[-1]
    assert float(last["eval_loss"]) < min(float(first["eval_loss"]), np.log(VOCAB)) - 0.5
    assert float(last["eval_top1_accuracy"]) >= 0.25 > float(last["eval_majority_accuracy"])


def test_two_processes_start_with_the_loss_of_one(corpus: Path, tmp_path: Path):
    """DDP on CPU (gloo, torchrun): 2 processes of batch 2 see at step 1 the genomes that one process sees in
    two accumulated batches of 2, so the first loss is the same; the learning rate is sqrt(2) times larger."""
    params = replace(
        TINY,
        max_steps=2,
        eval_steps=2,
        save_steps=2,
        model={**TINY.model, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
    )
    two = run_training(tmp_path, corpus, tmp_path / "two", params, processes=2)
    assert two.returncode == 0, two.stderr[-3000:]
    one = run_training(tmp_path, corpus, tmp_path / "one", replace(params, gradient_accumulation_steps=2))
    assert one.returncode == 0, one.stderr[-3000:]
    first_two, first_one = training_rows(tmp_path / "two")[0], training_rows(tmp_path / "one")[0]
    assert float(first_two["loss"]) == pytest.approx(float(first_one["loss"]), abs=1e-5)
    assert float(first_two["learning_rate"]) == pytest.approx(np.sqrt(2) * float(first_one["learning_rate"]))
    assert (tmp_path / "two" / "model" / "model.safetensors").is_file()


def test_resuming_from_another_architecture_is_an_error(corpus: Path, tmp_path: Path):
    config = BacformerConfig(
        hidden_size=DIM,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=32,
        protein_clusters_vocab_size=VOCAB,
    )
    checkpoint = tmp_path / "checkpoints" / "checkpoint-4"
    BacformerForMaskedGM(config).save_pretrained(checkpoint)
    (checkpoint / "trainer_state.json").write_text("{}")
    with pytest.raises(InputError, match=r"another architecture: num_hidden_layers 3 \(this run: 2\)"):
        train(corpus, tmp_path, TINY)


def test_an_incomplete_checkpoint_is_passed_over(tmp_path: Path):
    for step in (3, 6):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-3" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-6" / "trainer_state.json").write_text('{"glob')  # cut off while written
    assert newest_checkpoint(tmp_path).name == "checkpoint-3"
    assert newest_checkpoint(tmp_path / "none") is None


def test_initialising_from_an_earlier_model_continues_it(tmp_path: Path):
    """Continued pretraining: the model starts with the earlier model's weights and architecture (not
    ``pretrain.model``'s), also when it switches objective."""
    config = BacformerConfig(
        hidden_size=DIM,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=24,
        protein_clusters_vocab_size=VOCAB,
    )
    BacformerForMaskedGM(config).save_pretrained(tmp_path / "earlier")
    earlier = BacformerForMaskedGM.from_pretrained(tmp_path / "earlier").state_dict()
    for objective in ("masked", "causal"):
        model = make_model(replace(TINY, objective=objective, init_from=str(tmp_path / "earlier")), DIM, VOCAB)
        assert model.config.num_hidden_layers == 3 and model.config.is_causal_gm == (objective == "causal")
        encoder = {key: value for key, value in model.state_dict().items() if key.startswith("bacformer.")}
        assert encoder and all(torch.equal(value, earlier[key]) for key, value in encoder.items())


def test_initialising_from_a_model_of_another_width_is_an_error(corpus: Path, tmp_path: Path):
    config = BacformerConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        protein_clusters_vocab_size=VOCAB,
    )
    BacformerForMaskedGM(config).save_pretrained(tmp_path / "published")
    with pytest.raises(InputError, match="has hidden size 32 and 40 families; the corpus has 16-d protein vectors"):
        train(corpus, tmp_path / "run", replace(TINY, init_from=str(tmp_path / "published")))


def test_bad_training_settings_are_errors():
    with pytest.raises(InputError, match="save_steps .* must be a multiple of eval_steps"):
        replace(TINY, save_steps=4)
    with pytest.raises(InputError, match="objective must be 'masked' or 'causal'"):
        replace(TINY, objective="contrastive")


def test_data_loader_workers_fit_in_the_jobs_threads():
    """Each process's trainer takes one of the job's threads and its workers the rest, up to those configured."""
    params = replace(TINY, dataloader_workers=8)
    assert [params.within_threads(threads, 1).dataloader_workers for threads in (1, 2, 9, 32)] == [0, 1, 8, 8]
    assert params.within_threads(6, 2).dataloader_workers == 2


def test_launch_commands():
    spec = Path("run.json")
    single = launch_command(spec, gpus=4, nodes=1, environ={})
    assert single[1:] == [
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=4",
        "--standalone",
        "-m",
        "bacflow.pretrain.trainer",
        "run.json",
    ]
    nodes = launch_command(spec, gpus=8, nodes=2, environ={"SLURM_JOB_ID": "77", "SLURMD_NODENAME": "gpu01"})
    assert nodes[:6] == ["srun", "--overlap", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--gpus-per-node=8"]
    assert {"--nnodes=2", "--nproc-per-node=8", "--rdzv-endpoint=gpu01:29500", "--rdzv-id=77"} <= set(nodes)
    with pytest.raises(InputError, match="2 nodes need a SLURM allocation"):
        launch_command(spec, gpus=8, nodes=2, environ={})


# --- the reference trainer reads the corpus ---------------------------------------------------------------

_REFERENCE_READER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from bacformer.modeling.data_reader import fetch_training_data

    # Its defaults: the cluster ids from the column prot_cluster_idx; no masking (the causal objective's input).
    data = fetch_training_data(sys.argv[1], 0.0, int(sys.argv[2]), 1000, end_token_idx=int(sys.argv[3]), test=True)
    out = {}
    for split, dataset in (("train", data.train_dataset), ("val", data.val_dataset), ("test", data.test_dataset)):
        keys = ("prot_embeddings", "special_tokens_mask", "token_type_ids", "labels")
        out[split] = [{key: np.asarray(sample[key]).tolist() for key in keys} for sample in dataset]
    json.dump(out, open(sys.argv[4], "w"))
    """
)


def test_the_reference_trainer_reads_the_corpus(corpus: Path, reference_python: Path, tmp_path: Path):
    """bacformer 0.2.0's own reader (``fetch_training_data``, streaming ``datasets``) reads every split of the
    corpus and builds, genome for genome, the sequences that bacflow's dataset builds."""
    script, response = tmp_path / "reader.py", tmp_path / "samples.json"
    script.write_text(_REFERENCE_READER)
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    command = [
        str(reference_python),
        str(script),
        str(corpus.parent),
        str(TINY.max_n_proteins),
        str(VOCAB),
        str(response),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, env={**env, "HF_DATASETS_OFFLINE": "1"}, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    theirs = json.loads(response.read_text())
    summary = json.loads(corpus.read_text())
    params = replace(TINY, objective="causal").example_params(VOCAB)
    for split in SPLITS:
        index = CorpusIndex.of_files([corpus.parent / path for path in summary["splits"][split]["files"]])
        dataset = GenomeDataset(index, split, params, seed=0, shuffle_contigs=False)
        ours = [{key: value[0].tolist() for key, value in dataset[genome].items()} for genome in range(len(dataset))]
        assert len(theirs[split]) == len(ours) == summary["splits"][split]["genomes"]
        # The reference shuffles its file list: match genomes by their labels (distinct in this corpus).
        by_labels = {tuple(sample["labels"]): sample for sample in theirs[split]}
        for example in ours:
            reference = by_labels[tuple(example["labels"])]
            assert reference["special_tokens_mask"] == example["special_tokens_mask"]
            assert reference["token_type_ids"] == example["token_type_ids"]
            assert np.allclose(reference["prot_embeddings"], example["protein_embeddings"])
