#!/usr/bin/env python
"""Throughput of bacflow's Bacformer inference against the reference's forward, and Bacformer's share of
the whole pipeline's time.

What it measures
----------------
1. **Inference**, genomes per second, on a synthetic cohort of ``--genomes`` genomes (random ESM-2-sized
   protein vectors; protein counts drawn around 3,300, the median bacterial genome; every other genome a
   draft of 10-120 contigs; all within the 6,000-token limit, so both sides see the same inputs), with a
   randomly initialised model of the published geometry (12 layers, width 480, 8 heads; random weights
   cost what trained ones do):

   * ``bacflow, one genome at a time`` and ``bacflow, batched``: `bacflow.bacformer.stage.embed_genomes`
     with a token budget of one genome and of ``--budget`` tokens (several genomes per forward pass,
     padded and key-masked), the model loaded as the shard job loads it;
   * ``bacflow, shard job``: the whole `bacformer_shard` call of the workflow's rule (model loading,
     reading the vectors, the forward passes, writing both tables);
   * ``reference``: ``bacformer==0.2.0`` in its own environment (``bench/bacformer_reference.py``): its
     ``protein_embeddings_to_inputs`` and its encoder, one genome at a time, as its helpers run it.

   On the CPU both sides run in float32, on a GPU in bfloat16 (the reference README's setting; bacflow's
   ``dtype: auto``). The script checks that both sides give the same protein vectors. The two bacflow
   variants and the reference take turns for ``--repeats`` rounds, so that load from other work on the
   machine falls on all of them alike; rows give the median and every round.

2. **Share of the pipeline**: the demo (``config/demo.yaml``, its two genomes) is run from scratch and each
   job's seconds are read from Snakemake's benchmark files, grouped by stage. The demo's models are tiny,
   so the script also measures the published geometries on the demo's own inputs (ESM-2 t12 35M on a
   sample of its distinct proteins, Bacformer on its genomes' shapes) and reports the share with those.

How to run
----------
From the repository root, in the README's environment (10-15 minutes on 2 CPU cores)::

    # one thread: no OpenMP spin-waits on shared cores
    .venv/bin/python bench/bacformer.py --genomes 3 --repeats 3 --threads 1
    # on a GPU node
    .venv/bin/python bench/bacformer.py --genomes 64 --budget 48000 --repeats 3

The reference's environment is the one the parity tests create (``$BACFLOW_REFERENCE_VENV``, default
``~/.cache/bacflow/reference-venv``; ``--reference-python`` names another); without it that column is
skipped. On a GPU machine give it a CUDA build of torch 2.13 so that both sides run on the GPU. Results go
to ``bench/results/bacformer.md`` (with the command) and ``bacformer.json``; scratch files to
``bench/work/bacformer/`` (git-ignored).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
from machine import cpu_model, machine_info, machine_markdown  # noqa: E402

from bacflow.bacformer.model import load_bacformer  # noqa: E402
from bacflow.bacformer.modeling_bacformer import BacformerConfig, BacformerModel  # noqa: E402
from bacflow.bacformer.stage import BacformerSettings, bacformer_shard, embed_genomes, plan_genome  # noqa: E402
from bacflow.core.freshness import CONTENT_KEY, content_id, lineage  # noqa: E402
from bacflow.core.models import choose_device  # noqa: E402
from bacflow.core.tables import write_parquet  # noqa: E402
from bacflow.demo import write_demo_sheet  # noqa: E402
from bacflow.embeddings.stage import EmbeddingSettings  # noqa: E402
from bacflow.embeddings.store import vector_array  # noqa: E402

WORK = REPO / "bench" / "work" / "bacformer"
RESULTS = REPO / "bench" / "results"
REFERENCE_PYTHON = (
    Path(os.environ.get("BACFLOW_REFERENCE_VENV", Path.home() / ".cache" / "bacflow" / "reference-venv"))
    / "bin"
    / "python"
)
#: The published base checkpoints' geometry (``macwiatrak/bacformer-masked-complete-genomes``).
PUBLISHED = dict(num_hidden_layers=12, num_attention_heads=8, hidden_size=480, intermediate_size=1280)
MAX_TOKENS = 6000
#: Snakemake benchmark files by stage: the start of a file's path under benchmarks/ -> stage (the first that fits).
STAGES = {
    "proteins": "proteins",
    "qc_genomes": "proteins",
    "unique_index": "unique",
    "unique_bucket": "unique",
    "families_cluster": "families",
    "families_assign": "families",
    "families_qc": "families",
    "models/esm": "ESM-2",
    "embeddings/": "ESM-2",
    "bacformer/": "Bacformer",
    "models/bacformer": "Bacformer",
    "report": "report",
}


def synthetic_cohort(count: int, dim: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(vectors (n, dim), contig index per protein) of `count` genomes that fit MAX_TOKENS."""
    rng = np.random.default_rng(seed)
    genomes = []
    for index in range(count):
        contigs = 1 if index % 2 == 0 else int(rng.integers(10, 121))
        proteins = int(np.clip(rng.lognormal(np.log(3300), 0.35), 500, MAX_TOKENS - 2 - contigs))
        contig_of = np.sort(rng.integers(0, contigs, proteins))
        contig_of[:contigs] = np.arange(contigs)  # every contig has a protein
        genomes.append((rng.normal(size=(proteins, dim)).astype(np.float32), np.sort(contig_of)))
    return genomes


def contigs_of(vectors: np.ndarray, contig_index: np.ndarray) -> list[np.ndarray]:
    return np.split(vectors, np.flatnonzero(np.diff(contig_index)) + 1)


def write_shard(genomes: list[tuple[np.ndarray, np.ndarray]], folder: Path) -> tuple[Path, Path]:
    """The cohort as an embeddings shard and a protein table, the inputs of a shard job."""
    ids = np.concatenate([[f"g{index}"] * len(vectors) for index, (vectors, _) in enumerate(genomes)])
    contigs = np.concatenate([contig for _, contig in genomes]).astype(np.int32)
    protein_index = np.concatenate([np.arange(len(vectors), dtype=np.int32) for vectors, _ in genomes])
    vectors = np.concatenate([vectors for vectors, _ in genomes])
    folder.mkdir(parents=True, exist_ok=True)
    common = {"genome_id": ids, "contig_index": contigs, "protein_index": protein_index}
    names = [f"{genome}_{index}" for genome, index in zip(ids, protein_index, strict=False)]
    contig_ids = [f"{genome}_c{contig}" for genome, contig in zip(ids, contigs, strict=False)]
    proteins = pa.table({**common, "protein_id": names, "contig_id": contig_ids})
    # With their lineage, as the workflow's jobs write them: the shard job checks it.
    write_parquet(proteins, folder / "proteins.parquet", {CONTENT_KEY: content_id(proteins)})
    write_parquet(
        pa.table({**common, "seq_hash": ["0" * 32] * len(ids), "vector": vector_array(vectors, "float32")}),
        folder / "vectors.parquet",
        lineage(folder / "proteins.parquet", None),
    )
    return folder / "vectors.parquet", folder / "proteins.parquet"


def timed(function) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process, result) of one call; CUDA work is waited for. CPU seconds
    hardly change with the load that other work puts on a shared machine; wall seconds do."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started, cpu = time.perf_counter(), time.process_time()
    result = function()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started, time.process_time() - cpu, result


def inference(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    model_folder = WORK / "model"
    BacformerModel(BacformerConfig(**PUBLISHED)).save_pretrained(model_folder)
    device, dtype, _ = choose_device("auto")
    torch.set_num_threads(args.threads)
    model = load_bacformer(model_folder, device, getattr(torch, dtype))
    genomes = synthetic_cohort(args.genomes, PUBLISHED["hidden_size"])
    settings = BacformerSettings(mode="truncate", sep_token_id=2)
    plans = [plan_genome(contigs_of(*genome), settings, 2) for genome in genomes]
    tokens = [len(plan.tokens) + 2 for plan in plans]
    embed_genomes(model, plans[:1])  # warm-up
    labels = {1: "bacflow, one genome at a time", args.budget: f"bacflow, batched ({args.budget} tokens)"}
    # The sides take turns, round after round, so that a change in the machine's load (shared CPUs) falls on
    # all of them; each row is the median over rounds.
    measured: dict[str, list[tuple[float, float]]] = {}  # label -> (wall, CPU) seconds per round
    ours, reference = None, None
    for round_ in range(args.repeats):
        for budget, label in labels.items():
            wall, cpu, results = timed(lambda budget=budget: embed_genomes(model, plans, token_budget=budget))
            ours = ours or results
            measured.setdefault(label, []).append((wall, cpu))
            print(f"round {round_ + 1}, {label}: {wall:.1f} s wall, {cpu:.1f} s CPU", flush=True)
        reference = reference_forward(args, model_folder, genomes, ours)
        if reference:
            measured.setdefault(reference["what"], []).append((reference["seconds"], reference["cpu_seconds"]))
    vectors_path, proteins_path = write_shard(genomes, WORK / "shard")
    wall, cpu, _ = timed(
        lambda: bacformer_shard(
            vectors_path,
            proteins_path,
            WORK / "out" / "proteins.parquet",
            WORK / "out" / "genomes.parquet",
            shard="00000",
            model=str(model_folder),
            revision=None,
            name="bench",
            settings=BacformerSettings(mode="truncate", cpu_token_budget=1, gpu_token_budget=args.budget),
            threads=args.threads,
        )
    )
    measured["bacflow, shard job (load, read, embed, write; one round)"] = [(wall, cpu)]
    print(f"shard job: {wall:.1f} s wall, {cpu:.1f} s CPU", flush=True)
    rows = []
    for label, runs in measured.items():
        row: dict = {"what": label}
        for kind, values in (("wall", [run[0] for run in runs]), ("cpu", [run[1] for run in runs])):
            row[f"{kind}_seconds"], row[f"{kind}_rounds"] = statistics.median(values), values
        row["genomes_per_s"] = len(plans) / row["wall_seconds"]
        rows.append(row)
    if reference:
        reference_row = next(row for row in rows if row["what"] == reference["what"])
        reference_row["max_abs_difference_from_bacflow"] = reference["max_abs_difference_from_bacflow"]
        for row in rows:
            for kind in ("wall", "cpu"):
                row[f"vs_reference_{kind}"] = reference_row[f"{kind}_seconds"] / row[f"{kind}_seconds"]
                if len(row[f"{kind}_rounds"]) == args.repeats:  # the same rounds: the spread of the ratio
                    ratios = [
                        ref / own
                        for ref, own in zip(reference_row[f"{kind}_rounds"], row[f"{kind}_rounds"], strict=False)
                    ]
                    row[f"vs_reference_{kind}_range"] = [min(ratios), max(ratios)]
    return {
        "device": f"{device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else cpu_model()})",
        "dtype": dtype,
        "threads": args.threads,
        "genomes": len(plans),
        "proteins": int(sum(len(vectors) for vectors, _ in genomes)),
        "tokens_mean": float(np.mean(tokens)),
        "tokens_range": [int(min(tokens)), int(max(tokens))],
        "rows": rows,
    }


def reference_forward(args: argparse.Namespace, model_folder: Path, genomes: list, ours: list) -> dict | None:
    python = Path(args.reference_python)
    if not python.exists():
        print(f"no reference environment at {python}: reference skipped (the parity tests create it)", flush=True)
        return None
    data = {"count": len(genomes), "max_n_proteins": MAX_TOKENS}
    for index, (vectors, contigs) in enumerate(genomes):
        data[f"vectors_{index}"], data[f"contigs_{index}"] = vectors, contigs
    np.savez(WORK / "genomes.npz", **data)
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(args.threads))
    subprocess.run(
        [
            # -P: not bench/ first on sys.path, where this file would shadow the reference's `bacformer` package.
            *(str(python), "-P"),
            str(REPO / "bench" / "bacformer_reference.py"),
            str(model_folder),
            str(WORK / "genomes.npz"),
            str(WORK / "reference.npz"),
        ],
        check=True,
        env=env,
    )
    result = np.load(WORK / "reference.npz")
    difference = max(
        float(np.abs(result[f"vectors_{index}"] - ours[index].vectors).max()) for index in range(len(genomes))
    )
    seconds, cpu_seconds = float(result["seconds"].sum()), float(result["cpu_seconds"].sum())
    print(
        f"reference: {seconds:.1f} s wall, {cpu_seconds:.1f} s CPU on {result['device']}; largest difference "
        f"from bacflow {difference:.2e}",
        flush=True,
    )
    return {
        "what": f"reference 0.2.0, one genome at a time ({result['device']}, {result['dtype']})",
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "max_abs_difference_from_bacflow": difference,
    }


def stage_seconds(benchmarks: Path) -> dict[str, float]:
    """Job seconds per stage, from Snakemake's benchmark files."""
    totals: dict[str, float] = {}
    for path in sorted(benchmarks.rglob("*.tsv")):
        job = path.relative_to(benchmarks).as_posix().removesuffix(".tsv")
        stage = next((stage for start, stage in STAGES.items() if job.startswith(start)), job)
        with path.open() as handle:
            seconds = float(next(csv.DictReader(handle, delimiter="\t"))["s"])
        totals[stage] = totals.get(stage, 0.0) + seconds
    return totals


def pipeline(args: argparse.Namespace) -> dict:
    demo = WORK / "demo"
    shutil.rmtree(demo, ignore_errors=True)
    write_demo_sheet(demo / "samples.tsv")
    command = [
        *(sys.executable, "-m", "snakemake", "all", "--cores", str(args.cores), "--configfile", "config/demo.yaml"),
        *("--config", f"samples={demo / 'samples.tsv'}", f"outdir={demo / 'results'}"),
    ]
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO, capture_output=True)
    wall = time.perf_counter() - started
    stages = stage_seconds(demo / "results" / "benchmarks")
    print(f"demo: {wall:.0f} s wall; job seconds by stage {stages}", flush=True)
    published = published_geometry_on_demo(args, demo / "results")
    estimated = {
        **stages,
        "ESM-2": stages["ESM-2"] + published["esm_seconds"],
        "Bacformer": stages["Bacformer"] + published["bacformer_seconds"],
    }
    return {
        "demo_buckets": len(list((demo / "results" / "unique").glob("bucket=*.parquet"))),
        "demo_wall_seconds": wall,
        "demo_stage_seconds": stages,
        "demo_bacformer_share": stages["Bacformer"] / sum(stages.values()),
        "published_geometry": published,
        "estimated_stage_seconds": estimated,
        "estimated_bacformer_share": estimated["Bacformer"] / sum(estimated.values()),
    }


def published_geometry_on_demo(args: argparse.Namespace, results: Path) -> dict:
    """Seconds the published geometries would add to the demo's ESM-2 and Bacformer jobs on this device: ESM-2
    t12 35M timed on a sample of the demo's distinct proteins and scaled to all of them; Bacformer run on the
    demo genomes' shapes (protein counts and contigs) with random vectors."""
    from bacflow.embeddings.embedder import Embedder
    from bacflow.embeddings.esm_encoder import EsmEncoder
    from bacflow.embeddings.esm_model import load_esm
    from bacflow.embeddings.tiny import build_esm2

    device, dtype, _ = choose_device("auto")
    unique = pa.concat_tables(
        pq.read_table(path, columns=["sequence"]) for path in sorted((results / "unique").glob("bucket=*.parquet"))
    )
    rng = np.random.default_rng(0)
    sample = [
        unique.column("sequence")[int(i)].as_py() for i in rng.choice(unique.num_rows, args.esm_sample, replace=False)
    ]
    esm, tokenizer = load_esm(build_esm2(WORK / "esm2-t12_35M", geometry="t12_35M"), device, getattr(torch, dtype))
    embedder = Embedder(
        EsmEncoder(esm),
        tokenizer,
        pooling="mean",
        max_length=1024,
        token_budget=EmbeddingSettings().token_budget(device),
    )
    embedder.embed(sample[:4])  # warm-up
    esm_sample_seconds, _, _ = timed(lambda: embedder.embed(sample))
    torch.manual_seed(0)
    model = BacformerModel(BacformerConfig(**PUBLISHED)).to(device, getattr(torch, dtype)).eval()
    proteins = pq.read_table(results / "proteins", columns=["genome_id", "contig_index"])
    settings = BacformerSettings(sep_token_id=2)
    plans = []
    for genome in dict.fromkeys(proteins.column("genome_id").to_pylist()):
        contigs = proteins.filter(pc.equal(proteins.column("genome_id"), genome)).column("contig_index").to_numpy()
        vectors = rng.normal(size=(len(contigs), PUBLISHED["hidden_size"])).astype(np.float32)
        plans.append(plan_genome(contigs_of(vectors, contigs), settings, 2))
    embed_genomes(model, plans[:1])  # warm-up
    bacformer_seconds, _, _ = timed(lambda: embed_genomes(model, plans))
    return {
        "device": str(device),
        "dtype": dtype,
        "esm_sample": args.esm_sample,
        "esm_sample_seconds": esm_sample_seconds,
        "distinct_proteins": unique.num_rows,
        "esm_seconds": esm_sample_seconds * unique.num_rows / args.esm_sample,
        "bacformer_genomes": len(plans),
        "bacformer_seconds": bacformer_seconds,
    }


def write_report(args: argparse.Namespace, result: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bacformer.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        "# Bacformer inference: bacflow vs the reference, and its share of the pipeline",
        "",
        f"Command: `python bench/bacformer.py {' '.join(sys.argv[1:])}`".replace("  ", " "),
        "",
        f"Load average {result['load_before']} before and {result['load_after']} after. Machine:",
        "",
        machine_markdown(result["machine"]),
    ]
    if "inference" in result:
        run = result["inference"]
        lines += [
            f"## Inference ({run['device']}, {run['dtype']}, {run['threads']} threads)",
            "",
            f"{run['genomes']} synthetic genomes, {run['proteins']:,} proteins, "
            f"{run['tokens_mean']:.0f} tokens on average "
            f"({run['tokens_range'][0]}-{run['tokens_range'][1]}); a random model of the published geometry "
            f"(12 layers, width 480, 8 heads); {args.repeats} round(s) after a warm-up, in each round bacflow alone, "
            "bacflow batched, then the reference. Seconds: median (each round). vs reference: the reference's "
            "seconds / these seconds, median (range over rounds); above 1 is faster than the reference. CPU seconds "
            "(all threads of the process) hardly depend on other work on the machine; wall seconds do.",
            "",
            "| what | wall s | CPU s | genomes/s (wall) | vs reference, wall | vs reference, CPU |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for row in run["rows"]:
            cells = [row["what"]]
            for kind in ("wall", "cpu"):
                cells.append(
                    f"{row[f'{kind}_seconds']:.1f} (" + ", ".join(f"{s:.1f}" for s in row[f"{kind}_rounds"]) + ")"
                )
            cells.append(f"{row['genomes_per_s']:.3f}")
            for kind in ("wall", "cpu"):
                ratio = f"{row[f'vs_reference_{kind}']:.2f}" if f"vs_reference_{kind}" in row else "-"
                if f"vs_reference_{kind}_range" in row and args.repeats > 1:
                    ratio += " ({:.2f}-{:.2f})".format(*row[f"vs_reference_{kind}_range"])
                cells.append(ratio)
            lines.append("| " + " | ".join(cells) + " |")
        for row in run["rows"]:
            if "max_abs_difference_from_bacflow" in row:
                lines += [
                    "",
                    "Largest difference between the two sides' protein vectors: "
                    f"{row['max_abs_difference_from_bacflow']:.1e}.",
                ]
        lines.append("")
    if "pipeline" in result:
        share = result["pipeline"]
        published = share["published_geometry"]
        lines += [
            "## Share of the pipeline",
            "",
            f"The demo from scratch (`config/demo.yaml`, 2 genomes, {share['demo_buckets']} buckets, "
            f"{args.cores} cores): "
            f"{share['demo_wall_seconds']:.0f} s wall. Job seconds by stage, with the demo's tiny models and with the "
            f"published geometries on the same inputs ({published['device']}, {published['dtype']}: "
            "ESM-2 t12 35M timed "
            f"on {published['esm_sample']} of the {published['distinct_proteins']:,} distinct proteins, "
            f"{published['esm_sample_seconds']:.1f} s, and scaled; Bacformer 12 layers on both genomes, "
            f"{published['bacformer_seconds']:.1f} s; added to the demo jobs' own seconds):",
            "",
            "| stage | demo (tiny models) s | published geometries s |",
            "|---|---:|---:|",
        ]
        for stage, seconds in share["demo_stage_seconds"].items():
            lines.append(f"| {stage} | {seconds:.1f} | {share['estimated_stage_seconds'][stage]:.1f} |")
        lines += [
            f"| **Bacformer share** | **{share['demo_bacformer_share']:.1%}** | "
            f"**{share['estimated_bacformer_share']:.1%}** |",
            "",
        ]
    devices = [
        result.get("inference", {}).get("device", ""),
        result.get("pipeline", {}).get("published_geometry", {}).get("device", ""),
    ]
    if not any(device.startswith("cuda") for device in devices):
        lines += ["**GPU numbers are not measured**: no GPU was available to this run (CPU only).", ""]
    lines.append("Raw numbers: `bacformer.json` beside this file.")
    (RESULTS / "bacformer.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--genomes", type=int, default=8, help="synthetic genomes (default 8)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of the inference comparison (default 1)")
    parser.add_argument("--budget", type=int, default=12000, help="tokens per batched forward pass (default 12000)")
    parser.add_argument(
        "--threads", type=int, default=min(os.cpu_count() or 1, 2 if not torch.cuda.is_available() else 8)
    )
    parser.add_argument("--cores", type=int, default=2, help="cores of the demo run (default 2)")
    parser.add_argument("--esm-sample", type=int, default=48, help="distinct demo proteins timed with ESM-2 t12 35M")
    parser.add_argument("--reference-python", default=str(REFERENCE_PYTHON))
    parser.add_argument("--skip-inference", action="store_true")
    parser.add_argument("--skip-pipeline", action="store_true")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    result: dict = {"load_before": ", ".join(f"{x:.1f}" for x in os.getloadavg())}
    if not args.skip_inference:
        result["inference"] = inference(args)
    if not args.skip_pipeline:
        result["pipeline"] = pipeline(args)
    torch.set_num_threads(args.threads)  # the rates of the threads the inference ran with
    result["machine"] = machine_info()
    result["load_after"] = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    write_report(args, result)
    print((RESULTS / "bacformer.md").read_text())


if __name__ == "__main__":
    main()
