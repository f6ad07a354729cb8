#!/usr/bin/env python
"""Throughput of bacflow's ESM-2 embedder against the reference recipe, and the cohort's dedup factor.

What it measures
----------------
The same real proteins (default: the first 1,000 distinct proteins of the *Paracoccus* MAG's NCBI
translations in ``../shared/data``, 314,411 tokens, 7 over 1,022 aa) are embedded by:

* ``reference``: bacformer.pp's recipe as it runs without faesm: ``AutoModel`` (EsmModel with pooler)
  and ``AutoTokenizer``, float32, proteins sorted by length ascending, batches of 64 padded to the
  longest, truncation to 1,024 tokens, ``torch.no_grad``, mean over the attention mask (BOS/EOS in);
* ``bacflow float32`` and ``bacflow bfloat16`` (``--dtypes``): ``bacflow.embeddings.embedder.Embedder`` as a
  bucket job runs it: batches longest first under the token budget (``--token-budget``, default the
  config's ``cpu_token_budget``/``gpu_token_budget``), bacflow's forward pass
  (``bacflow.embeddings.esm_encoder``: SDPA attention, packed tokens on a GPU) over the same weights,
  ``torch.inference_mode``, in that dtype. ``dtype: auto`` picks bfloat16 on GPUs and on CPUs with native
  bfloat16 (AMX-BF16, AVX512-BF16), float32 on other CPUs: the header says which this machine is.

The model is facebook/esm2_t12_35M_UR50D's architecture (12 layers, hidden 480, 20 heads, intermediate
1,920, 33 tokens, 1,026 positions, rotary) with random weights: speed does not depend on the weights.
The proteins, in the reference's order, are cut into chunks of whole reference batches
(``--chunk-batches``), so that the reference's batches are exactly those of one run over all of them.
Chunks are measured in a fixed random order, the sides taking turns on each chunk after a short
untimed warm-up: a machine whose load from other work changes over time weighs on both alike, and the
results, rewritten after every chunk, are a fair sample of the proteins if the run is cut short (they
say how many chunks were measured). Reported: wall-clock and
process CPU seconds (with ``--threads 1`` on cores that other work shares, CPU seconds are the time the
process really computed; rates are from wall-clock seconds), proteins/s,
tokens/s (real tokens, BOS/EOS included, padding not counted), the ratio to the reference, achieved
GFLOP/s (the forward pass's matrix products on real tokens, attention included) and that as a share of
the measured matrix-multiply rate of the device in the side's dtype ("MFU"; the CPU's is ``F.linear`` of
(2048, 480) by (1920, 480), ESM-2 35M's up-projection on a batch), and each bacflow side's max |vector
difference| from the reference and least cosine (float32: ~1e-6; bfloat16: ~1e-2).

The dedup factor is proteins / distinct sequences over the cohort in ``../shared/data/cohort`` (its own
``samples.tsv``; annotated as the workflow does: GenBank CDS where present, else pyrodigal).

How to run
----------
From the repository root, in the README's environment::

    .venv/bin/python bench/esm_throughput.py                      # CPU, ~15 minutes on 2 idle cores
    .venv/bin/python bench/esm_throughput.py --threads 1          # CPU, cores shared with other work
    .venv/bin/python bench/esm_throughput.py --device cuda        # on a GPU node (bf16 vs fp32)
    .venv/bin/python bench/esm_throughput.py --proteins 200 --no-dedup --output /tmp/esm.md  # smoke test

Results go to ``bench/results/esm_throughput[_cuda].md`` (tables, with the command that made them)
and ``.json``; the model is built under ``bench/work/esm/`` (git-ignored).
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from machine import machine_info, machine_markdown, matmul_rate

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bacflow.core.seqhash import normalise_protein  # noqa: E402
from bacflow.embeddings.embedder import Embedder  # noqa: E402
from bacflow.embeddings.esm_encoder import EsmEncoder  # noqa: E402
from bacflow.embeddings.esm_model import load_esm  # noqa: E402
from bacflow.embeddings.stage import EmbeddingSettings  # noqa: E402
from bacflow.embeddings.tiny import ESM2_GEOMETRIES, build_esm2  # noqa: E402

DATA = REPO.parent / "shared" / "data"
PROTEINS = DATA / "drafts" / "Paracoccus_sp_SCN68-21_MAG_MEES01.cds_translations.faa.gz"
GEOMETRY = ESM2_GEOMETRIES["t12_35M"]
MAX_LENGTH = 1024


def load_proteins(count: int) -> list[str]:
    from Bio import SeqIO  # here, not at the top: bench/gpu_check.py imports this file where Biopython is not

    with gzip.open(PROTEINS, "rt") as handle:
        distinct = dict.fromkeys(normalise_protein(str(record.seq)) for record in SeqIO.parse(handle, "fasta"))
    return list(distinct)[:count]


def forward_flops(lengths: list[int]) -> float:
    """Matrix-product FLOPs of the encoder's forward pass over these token counts (no padding)."""
    hidden, intermediate, layers = GEOMETRY["hidden_size"], GEOMETRY["intermediate_size"], GEOMETRY["num_hidden_layers"]
    per_token = 2 * (4 * hidden * hidden + 2 * hidden * intermediate)
    return float(sum(layers * (n * per_token + 4 * n * n * hidden) for n in lengths))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reference_order(proteins: list[str]) -> list[int]:
    """The reference's order: ascending length (its batches are runs of 64 in this order)."""
    return sorted(range(len(proteins)), key=lambda index: len(proteins[index]))


class Reference:
    """bacformer.pp's recipe: HF AutoModel + AutoTokenizer in float32, batches of 64 padded to the
    longest, truncation to 1,024 tokens, torch.no_grad, mean over the attention mask."""

    def __init__(self, model_path: Path, device: torch.device):
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModel.from_pretrained(model_path).to(device).eval()
        self.device = device
        self.padded_tokens = 0

    def embed(self, proteins: list[str]) -> np.ndarray:
        """Vectors of `proteins`, given in the reference's order, in batches of 64."""
        vectors = []
        with torch.no_grad():
            for first in range(0, len(proteins), 64):
                inputs = self.tokenizer(
                    proteins[first : first + 64],
                    add_special_tokens=True,
                    padding="longest",
                    truncation=True,
                    max_length=MAX_LENGTH,
                    return_tensors="pt",
                ).to(self.device)
                self.padded_tokens += inputs["input_ids"].numel()
                hidden = self.model(**inputs).last_hidden_state
                mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                vectors.append(((hidden * mask).sum(1) / mask.sum(1)).float().cpu().numpy())
        return np.concatenate(vectors)


def timed(
    embed: Callable[[list[str]], np.ndarray], proteins: list[str], device: torch.device
) -> tuple[float, float, np.ndarray]:
    """(wall-clock seconds, process CPU seconds, vectors) of one call."""
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    vectors = embed(proteins)
    synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu, vectors


def dedup_factor() -> dict[str, float]:
    from bacflow.core.samples import read_samples
    from bacflow.proteins.annotate import AnnotationParams, annotate_genome

    # The cohort's sheet gives paths relative to data/, not to the sheet's folder.
    sheet = REPO / "bench" / "work" / "esm" / "cohort_samples.tsv"
    sheet.parent.mkdir(parents=True, exist_ok=True)
    header, *rows = (DATA / "cohort" / "samples.tsv").read_text().splitlines()
    sheet.write_text("\n".join([header, *(row.replace("\t", f"\t{DATA}/", 1) for row in rows)]) + "\n")
    proteins, distinct = 0, set()
    samples = read_samples(sheet)
    for sample in samples:
        result = annotate_genome(sample, AnnotationParams())
        proteins += len(result.columns["seq_hash"])
        distinct.update(result.columns["seq_hash"])
    return {
        "genomes": len(samples),
        "proteins": proteins,
        "distinct": len(distinct),
        "factor": proteins / len(distinct),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--proteins", type=int, default=1000)
    parser.add_argument("--token-budget", type=int, default=None, help="default: the config's for the device")
    parser.add_argument("--chunk-batches", type=int, default=2, help="reference batches (of 64) per chunk")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default torch's: all cores); 1 on cores busy with other work",
    )
    parser.add_argument("--dtypes", default="float32,bfloat16", help="bacflow's sides, comma-separated")
    parser.add_argument("--no-dedup", action="store_true", help="skip the cohort's dedup factor")
    parser.add_argument("--output", type=Path, default=None, help="default: bench/results/esm_throughput[_cuda].md")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtypes = args.dtypes.split(",")
    budget = args.token_budget or EmbeddingSettings().token_budget(device)
    output = args.output or REPO / "bench" / "results" / f"esm_throughput{'_cuda' if device.type == 'cuda' else ''}.md"
    model_path = REPO / "bench" / "work" / "esm" / "esm2_t12_35M-random"
    if not (model_path / "model.safetensors").exists():
        build_esm2(model_path, geometry="t12_35M")

    result = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {
            "torch_threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__,
        },
        "token_budget": budget,
        "matmul_gflop_per_s": {
            dtype: matmul_rate(device.type, dtype, seconds=3.0) / 1e9 for dtype in ["float32", *dtypes]
        },
        "dedup": None if args.no_dedup else dedup_factor(),
        "host": machine_info(),
    }
    proteins = load_proteins(args.proteins)
    reference = Reference(model_path, device)
    sides: dict[str, Callable[[list[str]], np.ndarray]] = {"reference": reference.embed}
    for dtype in dtypes:
        model, tokenizer = load_esm(model_path, device, getattr(torch, dtype))
        embedder = Embedder(EsmEncoder(model), tokenizer, pooling="mean", max_length=MAX_LENGTH, token_budget=budget)
        sides[f"bacflow {dtype}"] = lambda batch, embedder=embedder: embedder.embed(batch)[0]
    # Warm-up (untimed): first calls allocate and pick kernels.
    for embed in sides.values():
        embed(proteins[:8])
    reference.padded_tokens = 0

    # Chunks of whole reference batches, in the reference's order (so its batches are exactly those of one
    # run over all proteins), measured in a fixed random order, the two sides alternating on each chunk:
    # a machine whose load changes over time weighs on both alike, and the results written after every
    # chunk are a fair sample of the proteins if the run is cut short.
    order = reference_order(proteins)
    size = 64 * args.chunk_batches
    chunks = [order[first : first + size] for first in range(0, len(order), size)]
    seconds = {name: [0.0, 0.0] for name in sides}
    done: list[int] = []
    differences: dict[str, list[float]] = {name: [] for name in sides if name != "reference"}
    cosines: dict[str, list[float]] = {name: [] for name in differences}
    load = [os.getloadavg()[0]]
    for number, chunk in enumerate(np.random.default_rng(0).permutation(len(chunks)), 1):
        members = [proteins[index] for index in chunks[chunk]]
        for name, embed in sides.items():
            wall, cpu, vectors = timed(embed, members, device)
            seconds[name][0] += wall
            seconds[name][1] += cpu
            if name == "reference":
                expected = vectors
                continue
            differences[name].append(float(np.abs(vectors - expected).max()))
            norms = np.linalg.norm(vectors, axis=1) * np.linalg.norm(expected, axis=1)
            cosines[name].append(float(((vectors * expected).sum(1) / norms).min()))
        done += chunks[chunk]
        load.append(os.getloadavg()[0])
        tokens = [min(len(proteins[index]), MAX_LENGTH - 2) + 2 for index in done]
        flops = forward_flops(tokens)
        result |= {
            "chunks_measured": f"{number} of {len(chunks)}",
            "proteins": len(done),
            "tokens": sum(tokens),
            "proteins_over_1022": sum(len(proteins[index]) > 1022 for index in done),
            "reference_padded_tokens": reference.padded_tokens,
            "reference_attention": reference.model.config._attn_implementation,
            "load_average_1min": {"min": min(load), "max": max(load)},
            "results": {
                name: {
                    "seconds": wall,
                    "cpu_seconds": cpu,
                    "proteins_per_s": len(done) / wall,
                    "tokens_per_s": sum(tokens) / wall,
                    "gflop_per_s": flops / wall / 1e9,
                    "mfu": flops
                    / wall
                    / 1e9
                    / result["matmul_gflop_per_s"][name.split()[-1].replace("reference", "float32")],
                    "max_abs_difference": max(differences.get(name, [0.0])),
                    "least_cosine": min(cosines.get(name, [1.0])),
                    "ratio": seconds["reference"][0] / wall,
                    "cpu_ratio": seconds["reference"][1] / cpu,
                }
                for name, (wall, cpu) in seconds.items()
            },
        }
        output.parent.mkdir(parents=True, exist_ok=True)
        output.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        output.write_text(report(result))
        print(f"chunk {number}/{len(chunks)}: {len(done)} proteins", flush=True)
    print(output.read_text())


def report(result: dict) -> str:
    machine, rates = result["machine"], result["matmul_gflop_per_s"]
    lines = [
        f"# ESM-2 embedding throughput ({machine['device']}: {result['host']['cpu_model']})",
        "",
        "Made by `bench/esm_throughput.py` (its docstring says what is measured and how).",
        "",
        f"Command: `{result['command']}` ({result['date']})",
        "",
        f"{machine['torch_threads']} torch thread(s) on device {machine['device']}. Matrix-multiply rates measured "
        "beside the runs (the shares below are of these): "
        + ", ".join(f"{dtype} {rate:.0f} GFLOP/s" for dtype, rate in rates.items())
        + ".",
        "",
        f"{result['proteins']} real proteins ({result['tokens']:,} tokens with BOS/EOS, "
        f"{result['proteins_over_1022']} over "
        f"1,022 aa), facebook/esm2_t12_35M_UR50D architecture with random weights; bacflow's token budget "
        f"{result['token_budget']:,}; the reference (float32) ran {result['reference_padded_tokens']:,} tokens "
        f"with padding, attention `{result['reference_attention']}` (transformers' default). "
        f"1-minute load average {result['load_average_1min']['min']:.1f}-{result['load_average_1min']['max']:.1f}. "
        f"Chunks measured: {result['chunks_measured']}.",
        "",
        machine_markdown(result["host"]),
        "| method | seconds | CPU seconds | proteins/s | tokens/s | GFLOP/s | share of its dtype's matmul rate "
        "| speed-up | speed-up (CPU s) | max abs diff | least cosine |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in result["results"].items():
        lines.append(
            f"| {name} | {row['seconds']:.1f} | {row['cpu_seconds']:.1f} | {row['proteins_per_s']:.2f} | "
            f"{row['tokens_per_s']:.0f} | "
            f"{row['gflop_per_s']:.1f} | {row['mfu']:.0%} | {row['ratio']:.2f}x | {row['cpu_ratio']:.2f}x | "
            f"{row['max_abs_difference']:.1e} | {row['least_cosine']:.6f} |"
        )
    if result["dedup"]:
        dedup = result["dedup"]
        lines += [
            "",
            f"Dedup factor of ../shared/data/cohort ({dedup['genomes']} genomes): {dedup['proteins']:,} proteins / "
            f"{dedup['distinct']:,} distinct sequences = {dedup['factor']:.2f}.",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
