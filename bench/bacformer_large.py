#!/usr/bin/env python
"""Throughput of bacflow's Bacformer Large shard job against the reference's Large forward, in one run.

What it measures
----------------
On a synthetic cohort of ``--genomes`` genomes (random 960-wide vectors, the ESM-C width; protein counts around
3,300, every other genome a draft of 10-120 contigs; within ``--max-proteins``, so both sides see the same
inputs), with a randomly initialised Bacformer Large of the published width and heads (960, 15) and
``--layers`` layers (the published model has 30; a CPU run takes a few):

* ``bacflow, shard job``: the whole `bacflow.bacformer.stage.bacformer_shard` call of the workflow's rule
  (model loading, reading the vectors, the forward passes one genome at a time, writing both tables);
* ``bacflow, embed_genomes``: its forward passes alone;
* ``reference``: ``bacformer==0.2.0`` in its own environment (``bench/bacformer_large_reference.py``): its
  ``protein_embeddings_to_inputs(..., bacformer_model_type="large")`` and ``BacformerLargeModel``, one genome at a
  time, as its helpers run it.

fp32 on the CPU, bf16 on a GPU (both sides). The sides take turns for ``--repeats`` rounds; rows give the median
and every round, and the ratio reference seconds / bacflow seconds. The script checks that both give the same
protein vectors, and prints the CPU model and whether it computes bf16 natively.

How to run (a few minutes on 2 CPU cores)::

    .venv/bin/python bench/bacformer_large.py --genomes 2 --layers 2 --repeats 2 --threads 1

The reference's environment is the one the parity tests create (``$BACFLOW_REFERENCE_VENV``, default
``~/.cache/bacflow/reference-venv``). Results go to ``bench/results/bacformer_large.md`` and ``.json``; scratch
files to ``bench/work/bacformer_large/`` (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bacflow.bacformer.model import load_bacformer  # noqa: E402
from bacflow.bacformer.modeling_bacformer_large import BacformerLargeConfig, BacformerLargeModel  # noqa: E402
from bacflow.bacformer.stage import BacformerSettings, bacformer_shard, embed_genomes, plan_genome  # noqa: E402
from bacflow.core.models import choose_device  # noqa: E402
from bench.bacformer import REFERENCE_PYTHON, contigs_of, synthetic_cohort, timed, write_shard  # noqa: E402
from bench.machine import machine_info, machine_markdown  # noqa: E402

WORK = REPO / "bench" / "work" / "bacformer_large"
RESULTS = REPO / "bench" / "results"
WIDTH, HEADS = 960, 15  # the published Large's (ESM-C 300M's) width and heads


def reference_forward(args: argparse.Namespace, model_folder: Path, genomes: list) -> dict:
    data = {"count": len(genomes), "max_n_proteins": args.max_proteins}
    for index, (vectors, contigs) in enumerate(genomes):
        data[f"vectors_{index}"], data[f"contigs_{index}"] = vectors, contigs
    np.savez(WORK / "genomes.npz", **data)
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(args.threads))
    script = REPO / "bench" / "bacformer_large_reference.py"
    command = [args.reference_python, "-P", str(script), str(model_folder), str(WORK / "genomes.npz")]
    subprocess.run([*command, str(WORK / "reference.npz")], check=True, env=env)
    result = np.load(WORK / "reference.npz")
    return {key: result[key] for key in result.files}


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    model_folder = WORK / "model"
    config = BacformerLargeConfig(num_hidden_layers=args.layers, num_attention_heads=HEADS, hidden_size=WIDTH)
    BacformerLargeModel(config).save_pretrained(model_folder)
    device, dtype = choose_device("auto")
    torch.set_num_threads(args.threads)
    genomes = synthetic_cohort(args.genomes, WIDTH)
    genomes = [(vectors[: args.max_proteins], contigs[: args.max_proteins]) for vectors, contigs in genomes]
    settings = BacformerSettings(mode="truncate", max_n_proteins=args.max_proteins)
    vectors_path, proteins_path = write_shard(genomes, WORK / "shard")
    model = load_bacformer(model_folder, device, getattr(torch, dtype))
    plans = [plan_genome(contigs_of(*genome), settings, 2, special_tokens=False) for genome in genomes]
    embed_genomes(model, plans[:1])  # warm-up

    def shard_job() -> dict:
        return bacformer_shard(
            vectors_path,
            proteins_path,
            WORK / "out" / "proteins.parquet",
            WORK / "out" / "genomes.parquet",
            shard="00000",
            model=str(model_folder),
            revision=None,
            name="bench",
            settings=settings,
            threads=args.threads,
        )

    measured: dict[str, list[tuple[float, float]]] = {}
    ours, reference = None, None
    for round_ in range(args.repeats):
        for label, function in (
            ("bacflow, shard job (load, read, embed, write)", shard_job),
            ("bacflow, embed_genomes (forward passes only)", lambda: embed_genomes(model, plans)),
        ):
            wall, cpu, result = timed(function)
            ours = result if isinstance(result, list) else ours
            measured.setdefault(label, []).append((wall, cpu))
            print(f"round {round_ + 1}, {label}: {wall:.1f} s wall, {cpu:.1f} s CPU", flush=True)
        reference = reference_forward(args, model_folder, genomes)
        label = f"reference 0.2.0, one genome at a time ({reference['device']}, {reference['dtype']})"
        measured.setdefault(label, []).append(
            (float(reference["seconds"].sum()), float(reference["cpu_seconds"].sum()))
        )
        print(f"round {round_ + 1}, {label}: {measured[label][-1][0]:.1f} s wall", flush=True)
    difference = max(
        float(np.abs(reference[f"vectors_{index}"] - ours[index].vectors).max()) for index in range(len(genomes))
    )
    reference_runs = measured[label]
    rows = []
    for what, runs in measured.items():
        row: dict = {"what": what}
        for kind, position in (("wall", 0), ("cpu", 1)):
            values = [run[position] for run in runs]
            row[f"{kind}_seconds"], row[f"{kind}_rounds"] = statistics.median(values), values
            ratios = [ref[position] / own[position] for ref, own in zip(reference_runs, runs, strict=True)]
            row[f"vs_reference_{kind}"], row[f"vs_reference_{kind}_rounds"] = statistics.median(ratios), ratios
        rows.append(row)
    return {
        "machine": machine_info(),
        "device": str(device),
        "dtype": dtype,
        "threads": args.threads,
        "layers": args.layers,
        "genomes": len(genomes),
        "proteins": int(sum(len(vectors) for vectors, _ in genomes)),
        "max_abs_difference_from_reference": difference,
        "rows": rows,
    }


def write_report(args: argparse.Namespace, result: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bacformer_large.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        "# Bacformer Large inference: bacflow's shard job vs the reference's forward",
        "",
        f"Command: `python bench/bacformer_large.py {' '.join(sys.argv[1:])}`",
        "",
        machine_markdown(result["machine"]),
        "",
        f"Run on {result['device']} in {result['dtype']}, {result['threads']} thread(s).",
        "",
        f"{result['genomes']} synthetic genomes, {result['proteins']:,} proteins (at most {args.max_proteins} each), "
        f"a random Bacformer Large of width {WIDTH}, {HEADS} heads and {result['layers']} layers (published: 30); "
        f"{args.repeats} round(s) after a warm-up, the sides taking turns. Seconds: median (each round). "
        "vs reference: the reference's seconds / these seconds, median (each round); above 1 is faster.",
        "",
        "| what | wall s | CPU s | vs reference, wall | vs reference, CPU |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        cells = [row["what"]]
        for kind in ("wall", "cpu"):
            cells.append(f"{row[f'{kind}_seconds']:.1f} (" + ", ".join(f"{s:.1f}" for s in row[f"{kind}_rounds"]) + ")")
        for kind in ("wall", "cpu"):
            rounds = ", ".join(f"{ratio:.2f}" for ratio in row[f"vs_reference_{kind}_rounds"])
            cells.append(f"{row[f'vs_reference_{kind}']:.2f} ({rounds})")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Largest difference between the two sides' protein vectors: "
        f"{result['max_abs_difference_from_reference']:.1e}.",
        "",
    ]
    if result["device"] == "cpu":
        lines += ["**GPU numbers are not measured**: no GPU was available to this run (CPU only).", ""]
    lines.append("Raw numbers: `bacformer_large.json` beside this file.")
    (RESULTS / "bacformer_large.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--genomes", type=int, default=2, help="synthetic genomes (default 2)")
    parser.add_argument("--layers", type=int, default=2, help="layers of the random model (default 2)")
    parser.add_argument("--max-proteins", type=int, default=6000, help="proteins per genome at most (default 6000)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds (default 2)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reference-python", default=str(REFERENCE_PYTHON))
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    result = run(args)
    write_report(args, result)
    print((RESULTS / "bacformer_large.md").read_text())


if __name__ == "__main__":
    main()
