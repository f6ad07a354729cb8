#!/usr/bin/env python
"""One prepared GPU check of bacflow: bf16 parity, throughput against the reference recipe, the out-of-memory path
and a pretraining step, in one command of a few minutes on one GPU.

What it checks
--------------
Models are random at the real geometries (ESM-2 ``t12_35M``: 12 layers, width 480, 20 heads; Bacformer base:
12 layers, width 480, 8 heads), built here: speed and numerical agreement do not depend on the weights. The
proteins are real: the genes of the *C. diphtheriae* NCTC 11397 genome bundled with pyrodigal (2,343 proteins,
2,318 distinct), called by bacflow's proteins stage. Sections, each timed and guarded so that one failure
loses none of the others:

1. ``esm_parity``: every distinct protein embedded by bacflow in float32 and in bfloat16, and by the reference
   recipe (transformers' ``EsmModel``, float32): max |difference| and the lowest cosine between the vectors.
   Tolerances: float32 against the reference max |difference| <= 1e-4, bfloat16 against float32 cosine >= 0.99.
2. ``bacformer_parity``: the genome (its float32 ESM-2 vectors in gene order) through Bacformer in float32 and
   in bfloat16: protein vectors and the genome embedding compared as above (cosine >= 0.99).
3. ``esm_throughput``: the reference recipe (bench/esm_throughput.py's: ``EsmModel`` and ``EsmTokenizer`` in
   float32, batches of 64 proteins sorted by length, padded to the longest) against bacflow's ``Embedder`` in
   bfloat16 with the GPU token budget (``gpu_token_budget``, 65,536), the two taking turns, ``--repeats``
   rounds after a warm-up: proteins/s, tokens/s (real tokens, BOS/EOS in), the matrix products' FLOP/s on
   real tokens and that as a share of the measured bfloat16 matrix-multiply rate ("MFU"). Targets: 5x the
   reference and 30 % MFU.
4. ``padded_vs_packed``: bacflow's forward pass with padded batches (tokens computed, padding included) and,
   where this checkout has it (an ``attention`` option of ``Embedder`` or ``EsmEncoder``), packed sequences
   without padding; "not available" otherwise.
5. ``bacformer_shard``: a shard of synthetic genomes (bench/bacformer.py's cohort: ~3,300 proteins each, half
   of them drafts) through the workflow's whole ``bacformer_shard`` call with the GPU token budget
   (``gpu_token_budget``, 48,000), and the forward passes alone at that budget and one genome at a time:
   genomes/s, tokens/s, MFU.
6. ``pretrain_step``: one pretraining step in bfloat16 with gradient checkpointing, twice: timed as
   bench/pretrain.py measures it (the released geometry on a 6,000-protein genome: tokens/s, FLOP/s, MFU, peak
   memory), and through bacflow's trainer (``bacflow.pretrain.trainer.train``, one optimizer step and one
   evaluation on a small synthetic corpus; the check reports the bf16 and checkpointing settings it chose).
7. ``oom``: the ESM-2 embedding job under a capped GPU memory (``torch.cuda.set_per_process_memory_fraction``,
   ``--oom-cap-gib``) with 8x the GPU token budget: it must finish, halving its batches, with the vectors of an
   uncapped run (cosine >= 0.99).

Every report starts with the machine (bench/machine.py: CPU model, its bf16 support, measured float32 and
bfloat16 matrix-multiply rates, the GPU and its measured rates), the exact command, torch and CUDA versions.

``--dry`` runs every section on the CPU with tiny sizes (ESM-2 and Bacformer of 2 layers, width 48; the first 24
distinct real proteins of pyrodigal's 100 kb excerpt of the same genome, 8 of them for padded vs packed, whose
packed path is slow on a CPU; 200-protein genomes) in under a minute on an idle 2-core machine, and
stands in for the memory cap with an encoder that raises CUDA's out-of-memory error above a number of tokens
(the same halving path of the Embedder): tests/test_bench.py runs it. A full run without a GPU is refused.

How to run
----------
The GPU machine needs PyTorch with CUDA, transformers, pyarrow and numpy; bacflow runs from the checkout. Its
proteins are called once with pyrodigal where bacflow's environment is (``--prepare``), into
``bench/work/gpu_check/`` (git-ignored), which goes with the checkout to the GPU machine::

    bash bench/gpu_check.sh --prepare     # here: the proteins, into bench/work/gpu_check/
    bash bench/gpu_check.sh               # on the GPU machine, from the checkout's root (a few minutes)
    bash bench/gpu_check.sh --dry         # anywhere, on the CPU: every section with tiny sizes

Results go to ``bench/results/gpu_check_cuda.md`` and ``.json`` (``--output`` names another folder; ``--dry``
writes to a temporary folder unless given one), rewritten after every section; scratch files to
``bench/work/gpu_check/`` (``--dry``: the output folder).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import inspect
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model is a local folder; the GPU machine has no network

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Beside numpy, pyarrow and torch: the other benchmarks, from this folder (the first on a script's path), whose
# reference recipe, synthetic genomes and pretraining step are the ones measured here (`bacformer` is
# bench/bacformer.py).
import bacformer as bacformer_bench  # noqa: E402
import esm_throughput  # noqa: E402
import numpy as np  # noqa: E402
import pretrain as pretrain_bench  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
from machine import machine_info, machine_markdown  # noqa: E402

from bacflow.bacformer.model import load_bacformer  # noqa: E402
from bacflow.bacformer.modeling_bacformer import BacformerConfig, BacformerModel  # noqa: E402
from bacflow.bacformer.stage import BacformerSettings, bacformer_shard, embed_genomes, plan_genome  # noqa: E402
from bacflow.embeddings.embedder import Embedder  # noqa: E402
from bacflow.embeddings.esm_encoder import EsmEncoder  # noqa: E402
from bacflow.embeddings.esm_model import load_esm  # noqa: E402
from bacflow.embeddings.stage import EmbeddingSettings  # noqa: E402
from bacflow.embeddings.tiny import build_esm2  # noqa: E402

log = logging.getLogger("bacflow")
RESULTS = REPO / "bench" / "results"
WORK = REPO / "bench" / "work" / "gpu_check"
SEP_TOKEN_ID = 2  # the separator id of bacflow's inference (and bench/bacformer.py's)
ESM_BUDGET = EmbeddingSettings().gpu_token_budget
BACFORMER_BUDGET = BacformerSettings().gpu_token_budget
BF16 = torch.bfloat16  # the reduced precision, on the CPU too in a dry run, so that its code paths run
#: The tolerances the sections check (see the module docstring).
FP32_MAX_DIFFERENCE = 1e-4
MIN_COSINE = 0.99


@dataclass(frozen=True)
class Sizes:
    """What a run measures: the full check on a GPU, or the dry run's tiny stand-ins on the CPU."""

    genome: str  #: a genome bundled with pyrodigal (its tests/data), the source of the real proteins
    proteins: int | None  #: the genome's first distinct proteins that the ESM-2 sections embed (None: all)
    layout_proteins: int | None  #: of those, the first ones of padded vs packed (packed is slow on a CPU)
    esm_geometry: str  #: a key of bacflow.embeddings.tiny.ESM2_GEOMETRIES
    bacformer: dict[str, int]  #: BacformerConfig geometry; its width is the ESM-2 model's
    shard_genomes: int
    genome_cap: int | None  #: synthetic genomes cut to this many proteins
    pretrain_geometry: str  #: a key of bench/pretrain.py's GEOMETRIES
    pretrain_proteins: int
    trainer_model: dict[str, int]  #: PretrainParams.model of the trainer's step (its width is the ESM-2 model's)
    trainer_vocab: int
    warmup: int  #: untimed pretraining steps
    repeats: int  #: timed rounds (ESM-2 throughput) and pretraining steps
    matmul_seconds: float


FULL = Sizes(
    genome="GCF_001457455.1_NCTC11397_genomic.fna.gz",
    proteins=None,
    layout_proteins=None,
    esm_geometry="t12_35M",
    bacformer=bacformer_bench.PUBLISHED,
    shard_genomes=48,
    genome_cap=None,
    pretrain_geometry="released",
    pretrain_proteins=6000,
    trainer_model={"num_hidden_layers": 12, "num_attention_heads": 8, "intermediate_size": 1280},
    trainer_vocab=50_000,
    warmup=1,
    repeats=3,
    matmul_seconds=1.0,
)
DRY = Sizes(
    genome="GCF_001457455.1_NCTC11397_genomic_100kb.fna.gz",
    proteins=24,
    layout_proteins=8,
    esm_geometry="tiny",
    bacformer={"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 48, "intermediate_size": 96},
    shard_genomes=3,
    genome_cap=200,
    pretrain_geometry="small",
    pretrain_proteins=50,
    trainer_model={"num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 96},
    trainer_vocab=100,
    warmup=0,
    repeats=1,
    matmul_seconds=0.2,
)


# ------------------------------------------------------------------------------------------------ helpers


def genome_proteins(genome: str, work: Path) -> pa.Table:
    """(contig_index, sequence) of the genome's proteins in gene order: bacflow's proteins stage on a genome
    bundled with pyrodigal, run once (this needs pyrodigal) and kept in `work`."""
    cache = work / f"proteins-{genome.split('.fna')[0]}.parquet"
    if not cache.exists():
        from importlib.resources import files

        try:
            path = files("pyrodigal").joinpath("tests", "data", genome)
        except ModuleNotFoundError:
            raise SystemExit(
                f"{cache} is missing and pyrodigal is not installed here to make it: run "
                "`bash bench/gpu_check.sh --prepare` where bacflow's environment is, and bring bench/work/gpu_check/"
            ) from None
        from bacflow.core.samples import Sample
        from bacflow.proteins.annotate import AnnotationParams, annotate_genome

        genome = annotate_genome(Sample("genome", str(path), None, 11, "complete", "genome", None), AnnotationParams())
        work.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({key: genome.columns[key] for key in ("contig_index", "sequence")}), cache)
    return pq.read_table(cache)


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    """(wall seconds, result) of one call, GPU work waited for."""
    synchronize()
    started = time.perf_counter()
    result = function()
    synchronize()
    return time.perf_counter() - started, result


def compare(ours: np.ndarray, theirs: np.ndarray) -> dict[str, float]:
    """Max |difference| and the lowest and median cosine between the rows of two (n, d) arrays."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    cosine = (ours * theirs).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))
    return {
        "max_abs_difference": float(np.abs(ours - theirs).max()),
        "min_cosine": float(cosine.min()),
        "median_cosine": float(np.median(cosine)),
    }


def forward_flops(model: torch.nn.Module, lengths: list[int] | np.ndarray) -> float:
    """Matrix-product FLOPs of an encoder's forward pass over sequences of these token counts (no padding): 2 per
    weight of its linear maps per token, and 4 x width per pair of tokens per layer for attention."""
    linear = sum(module.weight.numel() for module in model.modules() if isinstance(module, torch.nn.Linear))
    config = model.config
    lengths = np.asarray(lengths, np.float64)
    return float(2 * linear * lengths.sum() + 4 * config.num_hidden_layers * config.hidden_size * (lengths**2).sum())


def esm_tokens(proteins: list[str]) -> np.ndarray:
    """Tokens of each protein as the recipe runs it (BOS and EOS, at most 1,024)."""
    return np.array([min(len(protein), esm_throughput.MAX_LENGTH - 2) + 2 for protein in proteins])


class Tally:
    """An encoder that counts the tokens it runs (padding included) and, with `fail_above`, raises CUDA's
    out-of-memory error on batches of more tokens: the dry run's stand-in for a capped GPU memory."""

    def __init__(self, encoder: EsmEncoder, fail_above: int | None = None):
        self.encoder = encoder
        self.fail_above = fail_above
        self.tokens = 0
        self.failures = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.encoder, name)

    def __call__(self, input_ids: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        if self.fail_above is not None and input_ids.numel() > self.fail_above:
            self.failures += 1
            raise torch.OutOfMemoryError(f"dry run: {input_ids.numel()} tokens > {self.fail_above}")
        self.tokens += input_ids.numel()
        return self.encoder(input_ids, real)


def packed_available() -> bool:
    """Whether this checkout's EsmEncoder can compute on packed tokens, without padding (its ``packed``
    argument: True packed, False padded, None its default for the device)."""
    return "packed" in inspect.signature(EsmEncoder.__init__).parameters


class WarningCount(logging.Handler):
    """Counts bacflow's out-of-memory warnings while attached."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "out of GPU memory" in record.getMessage():
            self.messages.append(record.getMessage())


# ------------------------------------------------------------------------------------------------ the check


@dataclass
class Check:
    """State the sections share: device, sizes, folders, the real proteins and the models, each made once."""

    sizes: Sizes
    device: torch.device
    work: Path
    oom_cap_gib: float
    machine: dict[str, Any] = field(default_factory=dict)

    def peak(self, dtype: torch.dtype) -> float:
        """The measured matrix-multiply rate (FLOP/s) of `dtype` on the device."""
        name = str(dtype).removeprefix("torch.")
        if self.device.type == "cuda":
            return self.machine["gpu"]["matmul_tflop_per_s"][name] * 1e12
        return self.machine["cpu_matmul_gflop_per_s"][name] * 1e9

    @cached_property
    def proteins(self) -> pa.Table:
        return genome_proteins(self.sizes.genome, self.work)

    @cached_property
    def distinct(self) -> list[str]:
        return list(dict.fromkeys(self.proteins.column("sequence").to_pylist()))[: self.sizes.proteins]

    @cached_property
    def esm_path(self) -> Path:
        folder = self.work / f"esm2-{self.sizes.esm_geometry}-random"
        return folder if (folder / "model.safetensors").exists() else build_esm2(folder, self.sizes.esm_geometry)

    @cached_property
    def bacformer_path(self) -> Path:
        folder = (
            self.work / f"bacformer-{self.sizes.bacformer['num_hidden_layers']}x{self.sizes.bacformer['hidden_size']}"
        )
        if not (folder / "model.safetensors").exists():
            torch.manual_seed(0)
            BacformerModel(BacformerConfig(**self.sizes.bacformer, bacflow_random_init=True)).save_pretrained(folder)
        return folder

    def embedder(
        self, dtype: torch.dtype, budget: int = ESM_BUDGET, fail_above: int | None = None, packed: bool | None = None
    ) -> Embedder:
        """bacflow's embedder as a bucket job makes it (pooling mean, 1,024 tokens), its encoder in a `Tally`;
        `packed` (where `packed_available`) chooses the encoder's token layout, else it keeps its default."""
        model, tokenizer = load_esm(self.esm_path, self.device, dtype)
        encoder = EsmEncoder(model) if packed is None else EsmEncoder(model, packed=packed)
        return Embedder(
            Tally(encoder, fail_above),
            tokenizer,
            pooling="mean",
            max_length=esm_throughput.MAX_LENGTH,
            token_budget=budget,
        )

    @cached_property
    def esm_shapes(self) -> torch.nn.Module:
        """The ESM-2 model on the CPU, whose layers `forward_flops` counts."""
        return load_esm(self.esm_path, torch.device("cpu"), torch.float32)[0]

    @cached_property
    def genome_vectors(self) -> np.ndarray:
        """bacflow's float32 ESM-2 vectors of every protein of the genome, in gene order."""
        sequences = self.proteins.column("sequence").to_pylist()
        distinct = list(dict.fromkeys(sequences))
        vectors, _, _ = self.embedder(torch.float32).embed(distinct)
        row = {sequence: index for index, sequence in enumerate(distinct)}
        return vectors[[row[sequence] for sequence in sequences]]

    def synthetic_genomes(self, count: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
        genomes = bacformer_bench.synthetic_cohort(count, self.sizes.bacformer["hidden_size"], seed)
        cap = self.sizes.genome_cap
        return [(vectors[:cap], contigs[:cap]) for vectors, contigs in genomes] if cap else genomes


def esm_parity(check: Check) -> dict[str, Any]:
    proteins = check.distinct
    reference = esm_throughput.Reference(check.esm_path, check.device)
    order = esm_throughput.reference_order(proteins)
    theirs = np.empty((len(proteins), reference.model.config.hidden_size), np.float32)
    theirs[order] = reference.embed([proteins[index] for index in order])
    del reference
    fp32 = check.embedder(torch.float32).embed(proteins)[0]
    low = check.embedder(BF16).embed(proteins)[0]
    result = {
        "proteins": len(proteins),
        "tokens": int(esm_tokens(proteins).sum()),
        "float32_vs_reference": compare(fp32, theirs),
        "bfloat16_vs_float32": compare(low, fp32),
        "bfloat16_vs_reference": compare(low, theirs),
    }
    result["passed"] = (
        result["float32_vs_reference"]["max_abs_difference"] <= FP32_MAX_DIFFERENCE
        and result["bfloat16_vs_float32"]["min_cosine"] >= MIN_COSINE
    )
    return result


def bacformer_parity(check: Check) -> dict[str, Any]:
    vectors = check.genome_vectors
    contigs = check.proteins.column("contig_index").to_numpy()
    plan = plan_genome(bacformer_bench.contigs_of(vectors, contigs), BacformerSettings(), SEP_TOKEN_ID)
    runs = {}
    for dtype in (torch.float32, BF16):
        model = load_bacformer(check.bacformer_path, check.device, dtype)
        runs[dtype] = embed_genomes(model, [plan])[0]
    fp32, low = runs[torch.float32], runs[BF16]
    result = {
        "proteins": len(vectors),
        "tokens": len(plan.tokens) + 2,
        "mode": plan.mode,
        "protein_vectors": compare(low.vectors, fp32.vectors),
        "genome_embedding": compare(low.embedding[None], fp32.embedding[None]),
    }
    result["passed"] = min(result["protein_vectors"]["min_cosine"], result["genome_embedding"]["min_cosine"]) >= (
        MIN_COSINE
    )
    return result


def esm_throughput_section(check: Check) -> dict[str, Any]:
    proteins = check.distinct
    order = esm_throughput.reference_order(proteins)
    ordered = [proteins[index] for index in order]
    reference = esm_throughput.Reference(check.esm_path, check.device)
    ours = check.embedder(BF16)
    sides: dict[str, Callable[[], Any]] = {
        "reference": lambda: reference.embed(ordered),
        "bacflow": lambda: ours.embed(proteins),
    }
    reference.embed(ordered[:8])  # warm-up: allocation and kernel choice
    ours.embed(proteins[:8])
    reference.padded_tokens = 0
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(check.sizes.repeats):
        for name, run in sides.items():  # turns: a change in the machine's load falls on both
            seconds[name].append(timed(run)[0])
    tokens = esm_tokens(proteins)
    flops = forward_flops(check.esm_shapes, tokens)
    rows = {}
    for name, values in seconds.items():
        wall = float(np.median(values))
        dtype = torch.float32 if name == "reference" else BF16
        rows[name] = {
            "dtype": str(dtype).removeprefix("torch."),
            "seconds": values,
            "proteins_per_s": len(proteins) / wall,
            "tokens_per_s": int(tokens.sum()) / wall,
            "tflop_per_s": flops / wall / 1e12,
            "mfu_bf16": flops / wall / check.peak(torch.bfloat16),
            "share_of_own_dtype_rate": flops / wall / check.peak(dtype),
        }
    speedup = float(np.median(seconds["reference"]) / np.median(seconds["bacflow"]))
    return {
        "proteins": len(proteins),
        "tokens": int(tokens.sum()),
        "reference_padded_tokens": reference.padded_tokens // check.sizes.repeats,
        "token_budget": ours.token_budget,
        "bacflow_layout": "packed" if getattr(ours.encoder, "packed", False) else "padded",
        "rows": rows,
        "speedup": speedup,
        "target_speedup_5x": speedup >= 5,
        "target_mfu_30": rows["bacflow"]["mfu_bf16"] >= 0.30,
    }


def padded_vs_packed(check: Check) -> dict[str, Any]:
    proteins = check.distinct[: check.sizes.layout_proteins]
    tokens = int(esm_tokens(proteins).sum())
    flops = forward_flops(check.esm_shapes, esm_tokens(proteins))
    # Without the option the encoder computes every position of its padded batches.
    variants = {"padded": False, "packed": True} if packed_available() else {"padded": None}
    rows, vectors = {}, {}
    for name, packed in variants.items():
        embedder = check.embedder(BF16, packed=packed)
        embedder.embed(proteins[:4])  # warm-up
        embedder.encoder.tokens = 0
        wall, (vectors[name], _, _) = timed(lambda embedder=embedder: embedder.embed(proteins))
        positions = embedder.encoder.tokens
        computed = tokens if packed else positions
        rows[name] = {
            "seconds": wall,
            "batch_positions": positions,
            "tokens_computed": computed,
            "padding_share": 1 - tokens / max(computed, 1),
            "tokens_per_s": tokens / wall,
            "mfu_bf16": flops / wall / check.peak(torch.bfloat16),
        }
    result: dict[str, Any] = {"proteins": len(proteins), "tokens": tokens, "rows": rows}
    if packed_available():
        result["packed_option"] = "EsmEncoder(packed=True)"
        result["packed_vs_padded"] = compare(vectors["packed"], vectors["padded"])
        result["speedup"] = rows["padded"]["seconds"] / rows["packed"]["seconds"]
        result["passed"] = result["packed_vs_padded"]["min_cosine"] >= MIN_COSINE
    else:
        result["packed_option"] = "not available (EsmEncoder has no `packed` option in this checkout)"
    return result


def bacformer_shard_section(check: Check) -> dict[str, Any]:
    genomes = check.synthetic_genomes(check.sizes.shard_genomes)
    folder = check.work / "shard"
    vectors_path, proteins_path = bacformer_bench.write_shard(genomes, folder)
    # A dry run on the CPU batches as a GPU does (its CPU budget is the GPU's), in float32 (bfloat16 on a GPU).
    dtype = BF16 if check.device.type == "cuda" else torch.float32
    settings = BacformerSettings(
        dtype=str(dtype).removeprefix("torch."), gpu_token_budget=BACFORMER_BUDGET, cpu_token_budget=BACFORMER_BUDGET
    )
    job_seconds, counts = timed(
        lambda: bacformer_shard(
            vectors_path,
            proteins_path,
            folder / "out" / "proteins.parquet",
            folder / "out" / "genomes.parquet",
            shard="00000",
            model=str(check.bacformer_path),
            revision=None,
            name="gpu_check",
            settings=settings,
            threads=torch.get_num_threads(),
        )
    )
    model = load_bacformer(check.bacformer_path, check.device, dtype)
    plans = [plan_genome(bacformer_bench.contigs_of(*genome), settings, SEP_TOKEN_ID) for genome in genomes]
    lengths = [len(plan.tokens) + 2 for plan in plans]
    flops = forward_flops(model, lengths)
    embed_genomes(model, plans[:2], token_budget=BACFORMER_BUDGET)  # warm-up
    rows = {"shard job (load, read, embed, write)": {"seconds": job_seconds}}
    for label, budget in (
        (f"forward passes, {BACFORMER_BUDGET:,} tokens", BACFORMER_BUDGET),
        ("one genome at a time", 1),
    ):
        wall, _ = timed(lambda budget=budget: embed_genomes(model, plans, token_budget=budget))
        rows[label] = {"seconds": wall, "tflop_per_s": flops / wall / 1e12, "mfu": flops / wall / check.peak(dtype)}
    for row in rows.values():
        row |= {"genomes_per_s": len(plans) / row["seconds"], "tokens_per_s": sum(lengths) / row["seconds"]}
    return {
        "genomes": len(plans),
        "proteins": int(sum(len(vectors) for vectors, _ in genomes)),
        "tokens": sum(lengths),
        "dtype": str(dtype).removeprefix("torch."),
        "job_counts": counts,
        "rows": rows,
    }


def pretrain_step(check: Check) -> dict[str, Any]:
    from bacflow.pretrain.trainer import PretrainParams, train, training_arguments

    settings = argparse.Namespace(
        gradient_checkpointing=True, bf16=True, warmup=check.sizes.warmup, steps=check.sizes.repeats, peak_tflops=None
    )
    if check.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(check.device)  # the step's peak, not the earlier sections'
    step = pretrain_bench.measure(settings, check.sizes.pretrain_geometry, check.sizes.pretrain_proteins, check.device)
    step["mfu_bf16"] = step["tflops_median"] * 1e12 / check.peak(torch.bfloat16)

    # bacflow's trainer: what it chooses here by default, and one step of it with bf16 and checkpointing.
    defaults = training_arguments(PretrainParams(), check.work / "trainer-defaults", 12)
    corpus = synthetic_corpus(check, check.work / "corpus")
    params = PretrainParams(
        model=check.sizes.trainer_model,
        batch_size=1,
        gradient_accumulation_steps=1,
        max_steps=1,
        warmup=0,
        eval_steps=1,
        save_steps=1,
        logging_steps=1,
        save_total_limit=1,
        dataloader_workers=0,
        bf16=True,
        gradient_checkpointing=True,
    )
    run_dir = check.work / "pretrain-run"
    shutil.rmtree(run_dir, ignore_errors=True)  # a new run, not the resumption of an earlier one
    wall, metrics = timed(lambda: train(corpus, run_dir, params))
    losses = [line.split(",") for line in (run_dir / "metrics.csv").read_text().splitlines()]
    return {
        "measured_step": step,
        "trainer_defaults_here": {
            "bf16": defaults.bf16,
            "gradient_checkpointing (12 layers)": defaults.gradient_checkpointing,
            "tf32": defaults.tf32,
        },
        "trainer_step": {
            "seconds_with_evaluation_and_saving": wall,
            "eval_loss": metrics.get("eval_loss"),
            "metrics_csv": losses,
            "model_written": (run_dir / "model" / "config.json").exists(),
        },
        "passed": bool(np.isfinite(metrics.get("eval_loss", np.nan))) and (run_dir / "model").is_dir(),
    }


def synthetic_corpus(check: Check, folder: Path) -> Path:
    """A pretraining corpus of three synthetic genomes (two to train on, one to validate), made by bacflow's
    corpus builder from a shard of bench/bacformer.py's genomes, each protein its own random family."""
    from bacflow.pretrain.data import SPLITS, build_corpus_shard, summarize_corpus

    genomes = check.synthetic_genomes(3, seed=1)
    vectors_path, _ = bacformer_bench.write_shard(genomes, folder)
    table = pq.read_table(vectors_path)
    hashes = [f"{row:032x}" for row in range(table.num_rows)]
    table = table.set_column(table.schema.get_field_index("seq_hash"), "seq_hash", pa.array(hashes))
    pq.write_table(table, vectors_path)
    families = np.random.default_rng(0).integers(0, check.sizes.trainer_vocab, table.num_rows)
    pq.write_table(
        pa.table({"seq_hash": hashes, "family_id": pa.array(families, pa.int32())}), folder / "families.parquet"
    )
    members = [{"genome_id": f"g{index}", "kind": "complete", "split": split} for index, split in enumerate(SPLITS[:2])]
    members.append({"genome_id": "g2", "kind": "complete", "split": "train"})
    outputs = {split: folder / "data" / split / "part-00000.parquet" for split in SPLITS}
    build_corpus_shard(vectors_path, folder / "families.parquet", members, outputs)
    summary = folder / "data" / "corpus.json"
    summarize_corpus(
        {split: [path] for split, path in outputs.items()}, check.sizes.trainer_vocab, SPLITS[:2], False, summary
    )
    return summary


def oom(check: Check) -> dict[str, Any]:
    proteins = check.distinct
    expected = check.embedder(BF16).embed(proteins)[0]
    budget = 8 * ESM_BUDGET
    counter = WarningCount()
    log.addHandler(counter)
    try:
        with memory_cap(check) as how:
            embedder = check.embedder(
                BF16, budget, fail_above=None if check.device.type == "cuda" else esm_tokens(proteins).max() * 4
            )
            wall, (vectors, _, _) = timed(lambda: embedder.embed(proteins))
    finally:
        log.removeHandler(counter)
    result = {
        "cap": how,
        "proteins": len(proteins),
        "first_budget": budget,
        "final_budget": embedder.token_budget,
        "halvings": len(counter.messages),
        "warnings": counter.messages,
        "seconds": wall,
        "vs_uncapped": compare(vectors, expected),
    }
    result["passed"] = (
        result["halvings"] > 0 and result["final_budget"] < budget and result["vs_uncapped"]["min_cosine"] >= MIN_COSINE
    )
    return result


@contextlib.contextmanager
def memory_cap(check: Check) -> Iterator[str]:
    """Caps the process's GPU memory at ``--oom-cap-gib`` (on the CPU: nothing; the dry run's `Tally` fails
    instead); lifted afterwards."""
    if check.device.type != "cuda":
        yield "dry run: the encoder raises CUDA's out-of-memory error above 4 x the longest protein's tokens"
        return
    gc.collect()
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(check.device).total_memory
    torch.cuda.set_per_process_memory_fraction(check.oom_cap_gib * 2**30 / total, check.device)
    try:
        yield f"torch.cuda.set_per_process_memory_fraction: {check.oom_cap_gib:g} GiB of {total / 2**30:.0f} GiB"
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, check.device)
        torch.cuda.empty_cache()


SECTIONS: dict[str, Callable[[Check], dict[str, Any]]] = {
    "esm_parity": esm_parity,
    "bacformer_parity": bacformer_parity,
    "esm_throughput": esm_throughput_section,
    "padded_vs_packed": padded_vs_packed,
    "bacformer_shard": bacformer_shard_section,
    "pretrain_step": pretrain_step,
    "oom": oom,
}


# ------------------------------------------------------------------------------------------------ the report


def versions() -> dict[str, str | None]:
    import transformers

    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
        commit_id = commit.stdout.strip()
    except OSError:  # no git on the GPU machine
        commit_id = ""
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": str(torch.backends.cudnn.version()) if torch.cuda.is_available() else None,
        "transformers": transformers.__version__,
        "bacflow_commit": commit_id or "unknown (no git repository or no git here)",
    }


def percent(value: float) -> str:
    return f"{value:.1%}"


def section_lines(name: str, result: dict[str, Any]) -> list[str]:
    """The markdown of one section's result."""
    if name == "esm_parity":
        rows = [
            (label, result[key])
            for label, key in (
                ("bacflow float32 vs reference float32", "float32_vs_reference"),
                ("bacflow bfloat16 vs bacflow float32", "bfloat16_vs_float32"),
                ("bacflow bfloat16 vs reference float32", "bfloat16_vs_reference"),
            )
        ]
        return [
            f"{result['proteins']:,} distinct real proteins ({result['tokens']:,} tokens). Tolerances: float32 vs "
            f"reference max |difference| <= {FP32_MAX_DIFFERENCE:g}; bfloat16 vs float32 lowest cosine "
            f">= {MIN_COSINE}.",
            "",
            "| vectors | max abs difference | lowest cosine | median cosine |",
            "|---|---:|---:|---:|",
            *(
                f"| {label} | {r['max_abs_difference']:.2e} | {r['min_cosine']:.6f} | {r['median_cosine']:.6f} |"
                for label, r in rows
            ),
        ]
    if name == "bacformer_parity":
        rows = (("protein vectors", result["protein_vectors"]), ("genome embedding", result["genome_embedding"]))
        return [
            f"The genome's {result['proteins']:,} proteins in gene order ({result['tokens']:,} tokens, "
            f"{result['mode']}), their float32 ESM-2 vectors, through Bacformer in bfloat16 against float32 (lowest "
            f"cosine >= {MIN_COSINE}).",
            "",
            "| bfloat16 vs float32 | max abs difference | lowest cosine | median cosine |",
            "|---|---:|---:|---:|",
            *(
                f"| {label} | {r['max_abs_difference']:.2e} | {r['min_cosine']:.6f} | {r['median_cosine']:.6f} |"
                for label, r in rows
            ),
        ]
    if name == "esm_throughput":
        lines = [
            f"{result['proteins']:,} distinct real proteins, {result['tokens']:,} tokens (the reference ran "
            f"{result['reference_padded_tokens']:,} with its padding); bacflow's token budget "
            f"{result['token_budget']:,}, its encoder's default layout ({result['bacflow_layout']}). Seconds: "
            "median of the rounds (every round in brackets). MFU: the matrix "
            "products' FLOP/s on real tokens over the measured bfloat16 rate.",
            "",
            "| side | dtype | seconds | proteins/s | tokens/s | TFLOP/s | MFU (bf16 rate) | share of own dtype's "
            "rate |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for side, row in result["rows"].items():
            lines.append(
                f"| {side} | {row['dtype']} | {np.median(row['seconds']):.2f} ("
                + ", ".join(f"{s:.2f}" for s in row["seconds"])
                + f") | {row['proteins_per_s']:,.1f} | {row['tokens_per_s']:,.0f} | {row['tflop_per_s']:.2f} "
                f"| {percent(row['mfu_bf16'])} | {percent(row['share_of_own_dtype_rate'])} |"
            )
        lines += [
            "",
            f"Speed-up over the reference: **{result['speedup']:.2f}x** (target 5x: "
            f"{'met' if result['target_speedup_5x'] else 'not met'}); bacflow's MFU "
            f"{percent(result['rows']['bacflow']['mfu_bf16'])} (target 30 %: "
            f"{'met' if result['target_mfu_30'] else 'not met'}).",
        ]
        return lines
    if name == "padded_vs_packed":
        lines = [
            f"{result['proteins']:,} proteins, {result['tokens']:,} real tokens, bfloat16. Packed: "
            f"{result['packed_option']}.",
            "",
            "| layout | seconds | batch positions | tokens computed | padding share | tokens/s (real) "
            "| MFU (bf16 rate) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for variant, row in result["rows"].items():
            lines.append(
                f"| {variant} | {row['seconds']:.2f} | {row['batch_positions']:,} | {row['tokens_computed']:,} "
                f"| {percent(row['padding_share'])} | {row['tokens_per_s']:,.0f} | {percent(row['mfu_bf16'])} |"
            )
        if "packed_vs_padded" in result:
            r = result["packed_vs_padded"]
            lines += [
                "",
                f"Packed vs padded: {result['speedup']:.2f}x; max |difference| {r['max_abs_difference']:.2e}, "
                f"lowest cosine {r['min_cosine']:.6f}.",
            ]
        return lines
    if name == "bacformer_shard":
        lines = [
            f"{result['genomes']} synthetic genomes (bench/bacformer.py's cohort), {result['proteins']:,} proteins, "
            f"{result['tokens']:,} tokens, {result['dtype']}; the shard job wrote {result['job_counts']}.",
            "",
            "| what | seconds | genomes/s | tokens/s | TFLOP/s | MFU (own dtype's rate) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for label, row in result["rows"].items():
            lines.append(
                f"| {label} | {row['seconds']:.2f} | {row['genomes_per_s']:.2f} | {row['tokens_per_s']:,.0f} | "
                + (f"{row['tflop_per_s']:.2f} | {percent(row['mfu'])} |" if "mfu" in row else "- | - |")
            )
        return lines
    if name == "pretrain_step":
        step, trainer = result["measured_step"], result["trainer_step"]
        memory = f"{step['peak_memory_mib']:,.0f} MiB" if step["peak_memory_mib"] is not None else "- (CPU)"
        return [
            f"Timed step (bench/pretrain.py's `measure`, bf16 autocast, gradient checkpointing): geometry "
            f"`{step['geometry']}` ({step['parameters'] / 1e6:.1f} M parameters), {step['proteins']:,} proteins "
            f"({step['tokens']:,} tokens): {step['step_s_median']:.3f} s per step (median of {step['steps']}), "
            f"{step['tokens_per_s_median']:,.0f} tokens/s, {step['tflops_median']:.2f} TFLOP/s, MFU "
            f"{percent(step['mfu_bf16'])}, peak GPU memory {memory}.",
            "",
            f"bacflow's trainer here would choose: {result['trainer_defaults_here']}. One optimizer step through "
            f"`bacflow.pretrain.trainer.train` (bf16, gradient checkpointing, then one evaluation and the saving of "
            f"a checkpoint and the model): {trainer['seconds_with_evaluation_and_saving']:.1f} s, evaluation loss "
            f"{trainer['eval_loss']}, model written: {trainer['model_written']}.",
        ]
    if name == "oom":
        r = result["vs_uncapped"]
        return [
            f"Cap: {result['cap']}. The embedding job over {result['proteins']:,} proteins started at "
            f"{result['first_budget']:,} tokens per batch and finished in {result['seconds']:.2f} s at "
            f"{result['final_budget']:,} after {result['halvings']} halving(s); against an uncapped run: max "
            f"|difference| {r['max_abs_difference']:.2e}, lowest cosine {r['min_cosine']:.6f}.",
        ]
    raise ValueError(name)


def report(document: dict[str, Any]) -> str:
    machine, device = document["machine"], document["device"]
    lines = [
        f"# bacflow GPU check ({device}{', dry run on the CPU' if document['dry'] else ''})",
        "",
        "Made by `bench/gpu_check.py` (its docstring says what each section measures and checks).",
        "",
        f"Command: `{document['command']}` ({document['date']}); versions: "
        + ", ".join(f"{key} {value}" for key, value in document["versions"].items()),
        "",
        "## Machine",
        "",
        machine_markdown(machine),
        "## Summary",
        "",
        "| section | status | seconds | checks |",
        "|---|---|---:|---|",
    ]
    for name, section in document["sections"].items():
        passed = section.get("result", {}).get("passed")
        verdict = "-" if passed is None else ("passed" if passed else "**failed**")
        lines.append(f"| {name} | {section['status']} | {section.get('seconds', 0):.1f} | {verdict} |")
    for name, section in document["sections"].items():
        lines += ["", f"## {name}", ""]
        if section["status"] == "ok":
            lines += section_lines(name, section["result"])
        else:
            lines.append(
                f"**{section['status']}**" + (f":\n\n```\n{section['error']}\n```" if "error" in section else "")
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry", action="store_true", help="every section on the CPU with tiny sizes (CI)")
    parser.add_argument("--prepare", action="store_true", help="only call the genome's proteins (needs pyrodigal)")
    parser.add_argument(
        "--output", type=Path, help="folder of the report (default bench/results; --dry: a temporary one)"
    )
    parser.add_argument("--work", type=Path, help="scratch folder (default bench/work/gpu_check; --dry: the output)")
    parser.add_argument("--sections", nargs="+", choices=sorted(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--budget-s", type=float, default=420, help="sections not started after this many seconds")
    parser.add_argument("--oom-cap-gib", type=float, default=2.0, help="GPU memory of the out-of-memory section")
    args = parser.parse_args()
    started = time.perf_counter()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.prepare:
        print(genome_proteins(FULL.genome, args.work or WORK).num_rows, "proteins in", args.work or WORK)
        return
    if not args.dry and not torch.cuda.is_available():
        raise SystemExit("no GPU is visible: the full check needs one (--dry runs every section on the CPU)")
    sizes = DRY if args.dry else FULL
    output = args.output or (Path(tempfile.mkdtemp(prefix="gpu_check-")) if args.dry else RESULTS)
    work = args.work or (output if args.dry else WORK)
    device = torch.device("cpu") if args.dry else torch.device("cuda", 0)
    stem = output / ("gpu_check_dry" if args.dry else "gpu_check_cuda")
    command = os.environ.get("BACFLOW_GPU_CHECK_COMMAND") or shlex.join(["python", "bench/gpu_check.py", *sys.argv[1:]])
    machine = machine_info(seconds=sizes.matmul_seconds, gpu=device.type == "cuda")
    check = Check(sizes, device, work, args.oom_cap_gib, machine)
    document: dict[str, Any] = {
        "command": command,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "dry": args.dry,
        "device": machine["gpu"]["name"] if device.type == "cuda" else f"CPU {machine['cpu_model']}",
        "versions": versions(),
        "sizes": asdict(sizes),
        "machine": machine,
        "sections": {},
    }
    print(machine_markdown(machine), flush=True)
    print(f"{check.proteins.num_rows} real proteins of {sizes.genome}", flush=True)  # or stop here, saying why
    output.mkdir(parents=True, exist_ok=True)
    for name in args.sections:
        if time.perf_counter() - started > args.budget_s:
            document["sections"][name] = {"status": f"skipped: the {args.budget_s:.0f} s budget was spent"}
        else:
            section_started = time.perf_counter()
            try:
                result = SECTIONS[name](check)
                document["sections"][name] = {"status": "ok", "result": result}
            except Exception:  # noqa: BLE001  one failing section must not lose the others
                document["sections"][name] = {"status": "failed", "error": traceback.format_exc(limit=8)[-4000:]}
            document["sections"][name]["seconds"] = time.perf_counter() - section_started
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        print(f"{name}: {document['sections'][name]['status']}", flush=True)
        stem.with_suffix(".json").write_text(json.dumps(document, indent=1, default=str) + "\n")
        stem.with_suffix(".md").write_text(report(document))
    document["seconds"] = time.perf_counter() - started
    stem.with_suffix(".json").write_text(json.dumps(document, indent=1, default=str) + "\n")
    print(report(document), flush=True)
    print(f"written: {stem.with_suffix('.md')} and .json", flush=True)


if __name__ == "__main__":
    main()
