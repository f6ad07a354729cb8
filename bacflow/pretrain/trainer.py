"""Bacformer pretraining with the Hugging Face Trainer: masked (or causal) protein-family modelling.

The engine is ``transformers.Trainer``, as the reference's ``run_pretraining.py`` uses it, with the reference's
settings (its 0.2.0 command-line defaults): AdamW (weight decay 0.01), gradient clipping at 2.0, a
learning rate of ``learning_rate * sqrt(processes)`` (one process per GPU) with linear warmup and decay, bf16
and gradient checkpointing on GPUs, evaluation and checkpoints every N steps, early stopping on the validation
loss and, at the end, the checkpoint with the best validation loss. One process per GPU (``torchrun``, DDP);
`launch` starts them.

Run layout (``run_dir``, the workflow's ``pretrain/<run>/``): ``checkpoints/checkpoint-<step>/`` (the Trainer's
own, with optimizer, scheduler and random states) and ``checkpoints/metrics.csv`` (the rows so far), and, written
together when training ends, ``metrics.csv`` and ``metrics.svg``, and ``model/``, a Hugging
Face model folder (``AutoModelForMaskedLM.from_pretrained`` after ``import bacflow.bacformer.modeling_bacformer``) with
``bacflow_pretrain.json`` beside the weights: the parameters and their hash, the tool versions, the corpus,
the chosen checkpoint's validation metrics.

A run that finds a complete checkpoint in ``checkpoints/`` resumes from the newest one: the same optimizer
step, learning rate, random states, data order and masks, so on the CPU it ends bit for bit with the model and
metrics of a run that was never interrupted (tested; docs/pretraining.md lists what is restored from where, and
the two things of metrics.csv that are not). A checkpoint of another architecture is refused.

``family`` chooses the model: ``base`` (the published Bacformer, over ESM-2 vectors, either objective) or
``large`` (Bacformer Large, over ESM-C vectors, masked objective only: the reference has no causal Large), built
new from ``model`` or continued from ``init_from``, on the same corpus, splits, resume and metrics.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import AutoConfig, EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments, set_seed

from bacflow.bacformer.constants import MAX_N_CONTIGS, MAX_N_PROTEINS
from bacflow.bacformer.inputs import collate_inputs
from bacflow.bacformer.model import PRETRAIN_DESCRIPTION
from bacflow.bacformer.model_families import (
    BASE,
    LARGE,
    ModelFamily,
    family_named,
    family_of_config,
    family_of_config_class,
)
from bacflow.bacformer.modeling_bacformer import (
    SPECIAL_TOKENS,
    BacformerConfig,
    BacformerForCausalGM,
    BacformerForMaskedGM,
)
from bacflow.bacformer.modeling_bacformer_large import BacformerLargeConfig, BacformerLargeForMaskedGM
from bacflow.core.errors import InputError
from bacflow.core.provenance import config_hash, tool_versions
from bacflow.core.tables import atomic_path, remove_leftovers
from bacflow.pretrain.dataset import CorpusIndex, EpochSampler, GenomeDataset, length_sorted
from bacflow.pretrain.masking import ExampleParams
from bacflow.pretrain.metrics import FamilyAccuracy, MetricsCsv, family_hits, plot_metrics, write_metrics_csv
from bacflow.pretrain.runs import newest_checkpoint

log = logging.getLogger(__name__)

#: Config keys that fix the shapes of a model's weights: a checkpoint must agree on all of them to resume.
ARCHITECTURE_KEYS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "protein_clusters_vocab_size",
    "max_token_type_embeddings",
    "num_special_tokens",
    "is_causal_gm",
)
#: Reference: gradient checkpointing on a GPU for models deeper than this.
CHECKPOINTING_MIN_LAYERS = 7
_MODEL_CLASSES = {
    ("base", "masked"): BacformerForMaskedGM,
    ("base", "causal"): BacformerForCausalGM,
    ("large", "masked"): BacformerLargeForMaskedGM,
}
_CONFIG_CLASSES = {"base": BacformerConfig, "large": BacformerLargeConfig}
GenomeModel = BacformerForMaskedGM | BacformerForCausalGM | BacformerLargeForMaskedGM
_PACKAGES = ("bacflow", "torch", "transformers", "accelerate", "pyarrow", "numpy")


@dataclass(frozen=True)
class PretrainParams:
    """Training settings (config ``pretrain:``); defaults are the reference trainer's (0.2.0 command line)."""

    objective: str = "masked"  # masked | causal (base only)
    family: str = "base"  # base | large (bacflow.bacformer.model_families); init_from must be of this family
    # Config values of a new model (BacformerConfig's, or BacformerLargeConfig's for family large): the reference
    # trainer's (its config class defaults to 6 layers).
    model: Mapping[str, Any] = field(default_factory=lambda: dict(BASE.training_geometry))
    init_from: str | None = None  # a model folder or hub id to continue from (its architecture wins)
    mgm_probability: float = 0.15
    max_n_proteins: int = MAX_N_PROTEINS
    max_n_contigs: int = MAX_N_CONTIGS
    sep_token_id: int = SPECIAL_TOKENS["SEP"]
    shuffle_contigs: bool = True  # draft and MAG genomes: a new contig order every epoch
    batch_size: int = 2  # genomes per GPU and micro-batch
    gradient_accumulation_steps: int = 8
    learning_rate: float = 1.5e-4  # times sqrt(number of processes)
    weight_decay: float = 0.01
    max_grad_norm: float = 2.0
    max_epochs: float = 10
    max_steps: int = -1  # > 0: stop after this many optimizer steps instead
    warmup: float = 0.1  # < 1: a share of the steps; >= 1: a number of steps
    eval_steps: int = 4000
    save_steps: int = 4000
    logging_steps: int = 100
    early_stopping_patience: int = 10
    save_total_limit: int | None = 3
    seed: int = 30
    dataloader_workers: int = 8
    prefetch_factor: int = 2
    gradient_checkpointing: bool | None = None  # None: on a GPU with more than 6 layers
    bf16: bool | None = None  # None: on a GPU that supports it

    @classmethod
    def from_config(cls, block: Mapping[str, Any]) -> PretrainParams:
        """The parameters from the config's ``pretrain`` block (workflow-only keys there are ignored)."""
        return cls(**{name: block[name] for name in cls.__dataclass_fields__ if name in block})

    def __post_init__(self) -> None:
        if self.eval_steps < 1 or self.save_steps % self.eval_steps:
            raise InputError(
                f"pretrain: save_steps ({self.save_steps}) must be a multiple of eval_steps ({self.eval_steps}): the "
                "best checkpoint is chosen by validation loss"
            )
        family_named(self.family)
        self.example_params(1)  # fails on a bad objective or masking probability

    def within_threads(self, threads: int, processes: int) -> PretrainParams:
        """These parameters with no more data-loader workers per process than `threads` leave beside each
        process's trainer. The rule asks for processes * (workers + 1) threads, but Snakemake gives a job at most
        --cores of them, and workers beyond the job's threads only compete with the trainer for its cores."""
        workers = min(self.dataloader_workers, max(threads // processes - 1, 0))
        return dataclasses.replace(self, dataloader_workers=workers)

    def example_params(self, vocab_size: int) -> ExampleParams:
        try:
            return ExampleParams(
                objective=self.objective,  # type: ignore[arg-type]
                mgm_probability=self.mgm_probability if self.objective == "masked" else 0.0,
                max_n_proteins=self.max_n_proteins,
                max_n_contigs=self.max_n_contigs,
                end_label=vocab_size,
                sep_token_id=self.sep_token_id,
                special_tokens=family_named(self.family).special_tokens,
            )
        except ValueError as error:
            raise InputError(f"pretrain: {error}") from None


# ---------------------------------------------------------------------------------------------------
# Checkpoints and models


def check_resumable(checkpoint: Path, config: BacformerConfig | BacformerLargeConfig) -> None:
    """Refuse a checkpoint whose weights have other shapes or another objective than the model to train."""
    try:
        saved = json.loads((checkpoint / "config.json").read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"{checkpoint}: cannot read its config.json ({error})") from None
    ours = config.to_dict()
    differences = [
        f"{key} {saved.get(key)!r} (this run: {ours.get(key)!r})"
        for key in ARCHITECTURE_KEYS
        if saved.get(key) != ours.get(key)
    ]
    if saved.get("model_type") != config.model_type:
        differences.insert(0, f"model_type {saved.get('model_type')!r} (this run: {config.model_type!r})")
    elif (found := family_of_config(saved).name) != (ours_family := family_of_config(ours).name):
        differences.insert(0, f"Bacformer {found} (this run: {ours_family})")
    if differences:
        raise InputError(
            f"{checkpoint}: cannot resume from a checkpoint of another architecture: {'; '.join(differences)}. "
            f"Remove {checkpoint.parent} to start afresh, or use another run name"
        )


def config_vocabulary(family: ModelFamily, vocab_size: int) -> int:
    """``protein_clusters_vocab_size`` of a model for `vocab_size` families: base counts the families (its head
    adds END), Large counts its head's classes, the families and END (as the published 50,001)."""
    return vocab_size if family.special_tokens else vocab_size + 1


def make_model(params: PretrainParams, embedding_dim: int, vocab_size: int) -> GenomeModel:
    """A new model of ``params.family`` for the corpus (vectors of ``embedding_dim``, ``vocab_size`` families), or
    the model of ``init_from`` (continued pretraining), checked against the corpus and the family."""
    family = family_named(params.family)
    model_class = _MODEL_CLASSES[family.name, params.objective]
    vocabulary = config_vocabulary(family, vocab_size)
    if params.init_from:
        try:
            config = AutoConfig.from_pretrained(params.init_from)
            found = family_of_config_class(type(config).__name__) if type(config) in _CONFIG_CLASSES.values() else None
            if found is family:
                model = model_class.from_pretrained(params.init_from)
        except (OSError, ValueError) as error:
            raise InputError(f"pretrain.init_from: cannot load {params.init_from}: {error}") from None
        if found is not family:
            what = f"a Bacformer {found.name}" if found else f"a {config.model_type!r} model"
            raise InputError(f"pretrain.init_from: {params.init_from} is {what}, but pretrain.family is {family.name}")
        shape = {"hidden_size": model.config.hidden_size, "vocabulary": model.config.protein_clusters_vocab_size}
        if shape != {"hidden_size": embedding_dim, "vocabulary": vocabulary}:
            families = shape["vocabulary"] - (vocabulary - vocab_size)
            raise InputError(
                f"pretrain.init_from: {params.init_from} has hidden size {shape['hidden_size']} and "
                f"{families} families; the corpus has {embedding_dim}-d protein vectors and {vocab_size} families"
            )
        if family.name == "base":
            model.config.is_causal_gm = params.objective == "causal"
        return model
    config_class = _CONFIG_CLASSES[family.name]
    unknown = sorted(set(params.model) - set(inspect.signature(config_class.__init__).parameters))
    if unknown:
        raise InputError(
            f"pretrain.model: {', '.join(unknown)} not settings of a Bacformer {family.name} ({config_class.__name__})"
            + (f"; the published Large geometry is {dict(LARGE.training_geometry)}" if family.name == "large" else "")
        )
    settings = {
        **dict(params.model),
        "hidden_size": embedding_dim,
        "protein_clusters_vocab_size": vocabulary,
        "max_position_embeddings": params.max_n_proteins,
        "max_token_type_embeddings": params.max_n_contigs,
    }
    if family.name == "base":
        settings["is_causal_gm"] = params.objective == "causal"
    return model_class(config_class(**settings))


# ---------------------------------------------------------------------------------------------------
# The Trainer


class PretrainTrainer(Trainer):
    """The Trainer with bacflow's sampler, family accuracy in evaluation, and tokens per second in the log."""

    def __init__(self, *args: Any, causal: bool, majority_family: int, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.causal = causal
        self.majority_family = majority_family
        self.epoch_sampler: EpochSampler | None = None
        self._throughput_mark: tuple[float, int] | None = None
        self.add_callback(_SamplerEpoch(self))

    def _get_train_sampler(self, train_dataset: GenomeDataset | None = None) -> EpochSampler:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        self.epoch_sampler = EpochSampler(dataset.lengths(), self.args.per_device_train_batch_size, self.args.seed)
        return self.epoch_sampler

    def _get_eval_sampler(self, eval_dataset: GenomeDataset) -> list[int]:
        return length_sorted(eval_dataset.lengths())

    def get_train_dataloader(self) -> DataLoader:
        return own_seed_generator(super().get_train_dataloader(), self.args.seed)

    def get_eval_dataloader(self, eval_dataset: str | GenomeDataset | None = None) -> DataLoader:
        return own_seed_generator(super().get_eval_dataloader(eval_dataset), self.args.seed)

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        outputs = model(**inputs, return_dict=True)
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def prediction_step(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss, the per-genome accuracy counts of `family_hits` (in place of logits, which for 50,001 classes
        would not fit in memory across a validation set) and the labels."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            outputs = model(**inputs, return_dict=True)
        kinds = inputs.get("special_tokens_mask")
        if kinds is None:  # Bacformer Large: masked proteins are flagged in mlm_mask
            kinds = torch.where(inputs["mlm_mask"], SPECIAL_TOKENS["MASK"], SPECIAL_TOKENS["PROT_EMB"])
        hits = family_hits(outputs.logits, inputs["labels"], kinds, self.causal, self.majority_family)
        return outputs.loss.detach(), hits, inputs["labels"]

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log: tokens (non-padding, all processes) per second since the last one
            now, tokens = time.perf_counter(), self.state.num_input_tokens_seen
            if self._throughput_mark is not None:
                then, before = self._throughput_mark
                logs["tokens_per_second"] = (tokens - before) / max(now - then, 1e-9)
            self._throughput_mark = (now, tokens)
        super().log(logs, start_time)

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        started = time.perf_counter()
        metrics = super().evaluate(*args, **kwargs)
        if self._throughput_mark is not None:  # evaluation time is not training time
            then, tokens = self._throughput_mark
            self._throughput_mark = (then + time.perf_counter() - started, tokens)
        return metrics


def own_seed_generator(loader: DataLoader, seed: int) -> DataLoader:
    """`loader`, drawing its workers' seed from a generator of its own instead of PyTorch's global one.

    A DataLoader draws that seed whenever it starts its workers, and the global generator is also dropout's. Persistent
    workers start once per process, so a resumed run starts them at other steps than an unbroken one (at the first
    validation after the resume, at the epoch after the part-skipped one), and each such draw from the global
    generator would shift every dropout mask after it. The workers' seeds themselves decide nothing: the dataset
    draws every example from a generator seeded with (seed, split, epoch, genome)."""
    # Accelerate wraps the DataLoader; its batch-skipping copy for a resumed epoch takes this generator along.
    getattr(loader, "base_dataloader", loader).generator = torch.Generator().manual_seed(seed)
    return loader


class _SamplerEpoch(TrainerCallback):
    """Tells the sampler the epoch that starts. The Trainer's own ``set_epoch`` calls do not reach a sampler
    under both a distributed batch-sampler wrapper and a resumed run's batch-skipping wrapper; the epoch of the
    trainer state is right in every case (a whole number at an epoch's start, and within the resumed epoch
    when a run resumes mid-epoch)."""

    def __init__(self, trainer: PretrainTrainer):
        self.trainer = trainer

    def on_epoch_begin(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        if self.trainer.epoch_sampler is not None:
            self.trainer.epoch_sampler.set_epoch(math.floor(state.epoch))


def world_size() -> int:
    """Processes of this training run (torchrun sets WORLD_SIZE; one process otherwise)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def training_arguments(params: PretrainParams, output_dir: Path, model_layers: int) -> TrainingArguments:
    gpu = torch.cuda.is_available()
    bf16 = params.bf16 if params.bf16 is not None else gpu and torch.cuda.is_bf16_supported()
    checkpointing = (
        params.gradient_checkpointing
        if params.gradient_checkpointing is not None
        else gpu and model_layers >= CHECKPOINTING_MIN_LAYERS
    )
    workers = params.dataloader_workers
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=params.batch_size,
        per_device_eval_batch_size=params.batch_size,
        gradient_accumulation_steps=params.gradient_accumulation_steps,
        learning_rate=params.learning_rate * math.sqrt(world_size()),
        weight_decay=params.weight_decay,
        max_grad_norm=params.max_grad_norm,
        optim="adamw_torch",
        lr_scheduler_type="linear",
        warmup_steps=params.warmup,
        num_train_epochs=params.max_epochs,
        max_steps=params.max_steps,
        eval_strategy="steps",
        eval_steps=params.eval_steps,
        save_strategy="steps",
        save_steps=params.save_steps,
        save_total_limit=params.save_total_limit,
        logging_steps=params.logging_steps,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        batch_eval_metrics=True,
        include_num_input_tokens_seen="non_padding",
        seed=params.seed,
        bf16=bf16,
        tf32=gpu and torch.cuda.get_device_capability()[0] >= 8,
        gradient_checkpointing=checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        use_cpu=not gpu,
        ddp_backend="gloo" if not gpu and world_size() > 1 else None,
        ddp_find_unused_parameters=False,
        ddp_broadcast_buffers=False,
        dataloader_num_workers=workers,
        dataloader_prefetch_factor=params.prefetch_factor if workers else None,
        dataloader_persistent_workers=workers > 0,
        dataloader_pin_memory=gpu,
        remove_unused_columns=False,
        report_to=["tensorboard"] if find_spec("tensorboard") else "none",
        disable_tqdm=True,
    )


def read_corpus(corpus_json: str | Path) -> dict[str, Any]:
    """The corpus summary of `bacflow.pretrain.data.summarize_corpus`, with its part files relative to it."""
    corpus_json = Path(corpus_json)
    corpus = json.loads(corpus_json.read_text())
    for split in corpus["splits"].values():
        split["files"] = [str(corpus_json.parent / path) for path in split["files"]]
    return corpus


def train(
    corpus_json: str | Path,
    run_dir: str | Path,
    params: PretrainParams,
    callbacks: Sequence[TrainerCallback] = (),
) -> dict[str, Any]:
    """Train on the corpus that ``corpus_json`` describes; returns the final model's validation metrics.

    Runs in every process of a distributed run (torchrun); only the first writes the model and metrics.
    """
    run_dir = Path(run_dir)
    corpus = read_corpus(corpus_json)
    example = params.example_params(corpus["vocab_size"])  # before the model: a bad objective fails first
    set_seed(params.seed)
    model = make_model(params, corpus["embedding_dim"], corpus["vocab_size"])
    # Tells the Trainer which input holds the tokens (it counts the non-padding ones through attention_mask).
    model.main_input_name = "protein_embeddings"
    # The reference's default problem_type (single-label classification, for task heads that genome modelling
    # does not use) with num_labels 1 makes transformers' generic config class, which the Trainer uses to read
    # a checkpoint's config.json when it resumes, raise.
    model.config.problem_type = None
    checkpoints = run_dir / "checkpoints"
    checkpoint = newest_checkpoint(checkpoints)
    if checkpoint is not None:
        check_resumable(checkpoint, model.config)
        log.info("resuming from %s", checkpoint)

    def dataset(split: str) -> GenomeDataset:
        index = CorpusIndex.of_files(corpus["splits"][split]["files"])
        return GenomeDataset(index, split, example, params.seed, params.shuffle_contigs)

    trainer = PretrainTrainer(
        model=model,
        args=training_arguments(params, checkpoints, model.config.num_hidden_layers),
        train_dataset=dataset("train"),
        eval_dataset=dataset("val"),
        data_collator=partial(collate_inputs, max_n_contigs=params.max_n_contigs),
        compute_metrics=FamilyAccuracy(),
        callbacks=[
            EarlyStoppingCallback(params.early_stopping_patience),
            # The rows so far, beside the checkpoints: metrics.csv is the finished run's until this one ends.
            MetricsCsv(checkpoints / "metrics.csv"),
            *callbacks,
        ],
        causal=params.objective == "causal",
        majority_family=corpus["majority_family"],
    )
    log.info(
        "training %s (%d parameters) on %d genomes, validating on %d; %d process(es)",
        type(model).__name__,
        model.num_parameters(),
        len(trainer.train_dataset),
        len(trainer.eval_dataset),
        world_size(),
    )
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    # The model is the best checkpoint's (load_best_model_at_end): its metrics are that step's evaluation.
    metrics = next(
        (
            entry
            for entry in trainer.state.log_history
            if entry["step"] == trainer.state.best_global_step and "eval_loss" in entry
        ),
        {},
    )
    if trainer.is_world_process_zero():
        save_results(trainer.model, trainer.state.log_history, run_dir, params, corpus, metrics)
    return metrics


def save_results(
    model: GenomeModel,
    log_history: Sequence[dict[str, Any]],
    run_dir: Path,
    params: PretrainParams,
    corpus: Mapping[str, Any],
    metrics: Mapping[str, float],
) -> None:
    """``metrics.csv``, ``metrics.svg`` and ``model/`` (the Hugging Face model folder), each written beside its place
    and renamed into it once all three are whole, so that a run that fails or is killed leaves the previous run's.
    The model goes last: the workflow puts back the previous metrics and model description if the job fails, and
    they must never land beside new weights."""
    places = {name: run_dir / name for name in ("model", "metrics.svg", "metrics.csv")}
    for place in places.values():
        remove_leftovers(place)  # of a killed run (a whole model's weights)
    description = {
        "params": dataclasses.asdict(params),
        "config_hash": config_hash(dataclasses.asdict(params)),
        "tool_versions": tool_versions(_PACKAGES),
        "corpus": {key: corpus[key] for key in ("vocab_size", "embedding_dim", "embedding_dtype", "majority_family")},
        "genomes": {split: values["genomes"] for split, values in corpus["splits"].items()},
        "separator_token_id": params.sep_token_id,
        "metrics": dict(metrics),
    }
    # Renamed when the blocks end, innermost first.
    with (
        atomic_path(places["model"]) as folder,
        atomic_path(places["metrics.svg"]) as svg,
        atomic_path(places["metrics.csv"]) as table,
    ):
        write_metrics_csv(log_history, table)
        plot_metrics(table, svg)
        model.save_pretrained(folder)
        (folder / PRETRAIN_DESCRIPTION).write_text(json.dumps(description, indent=1, default=str) + "\n")


# ---------------------------------------------------------------------------------------------------
# Starting the processes


def launch_command(spec: Path, gpus: int, nodes: int, environ: Mapping[str, str]) -> list[str]:
    """How to run `train` with ``spec`` in one process per GPU: torchrun on one node, or under SLURM one
    torchrun per node (srun), meeting at the allocation's first node.

    Under the SLURM executor plugin the job itself already runs as a one-task job step that holds the
    allocation's GPUs, so the step that starts the torchruns must share them (``--overlap``) and ask for each
    node's GPUs again (``--gpus-per-node``), or SLURM would wait for resources that never free up or hide the
    GPUs from it."""
    module = ["-m", "bacflow.pretrain.trainer", str(spec)]
    torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={max(gpus, 1)}"]
    if nodes <= 1:
        return [*torchrun, "--standalone", *module]
    if "SLURM_JOB_ID" not in environ:
        raise InputError(f"pretrain: {nodes} nodes need a SLURM allocation of {nodes} nodes (see docs/pretraining.md)")
    # This process runs on the allocation's first node (the batch host): the processes meet here.
    head = environ.get("SLURMD_NODENAME") or socket.gethostname()
    return [
        *("srun", "--overlap", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1"),
        f"--gpus-per-node={gpus}",
        *torchrun,
        f"--nnodes={nodes}",
        *("--rdzv-backend=c10d", f"--rdzv-endpoint={head}:29500", f"--rdzv-id={environ['SLURM_JOB_ID']}"),
        *module,
    ]


def launch(
    corpus_json: str | Path, run_dir: str | Path, params: PretrainParams, gpus: int, nodes: int, threads: int
) -> None:
    """Train in this process (one GPU or none), or in one process per GPU, whose output goes to this log;
    `threads`: the job's, per node (`PretrainParams.within_threads`)."""
    fitted = params.within_threads(threads, max(gpus, 1))
    if fitted != params:
        log.info(
            "%d data-loader workers per process, not %d: the job has %d threads",
            fitted.dataloader_workers,
            params.dataloader_workers,
            threads,
        )
    params = fitted
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = run_dir / "run.json"
    spec.write_text(
        json.dumps(
            {"corpus": str(corpus_json), "run_dir": str(run_dir), "params": dataclasses.asdict(params)}, indent=1
        )
        + "\n"
    )
    if gpus <= 1 and nodes <= 1:
        train(corpus_json, run_dir, params)
        return
    command = launch_command(spec, gpus, nodes, os.environ)
    log.info("starting %s", " ".join(command))
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    for line in process.stdout:
        log.info("%s", line.rstrip())
    if process.wait() != 0:
        raise RuntimeError(f"pretraining failed (exit status {process.returncode}); its output is above")


def main(spec_path: str) -> None:
    """``python -m bacflow.pretrain.trainer RUN_JSON``: what each process of a distributed run executes."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = json.loads(Path(spec_path).read_text())
    train(spec["corpus"], spec["run_dir"], PretrainParams(**spec["params"]))


if __name__ == "__main__":
    main(*sys.argv[1:])
