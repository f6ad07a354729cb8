#!/usr/bin/env python
"""Training throughput (tokens per second) of Bacformer pretraining, on the CPU or a GPU.

What it measures
----------------
One optimizer step of the masked objective exactly as `bacflow.pretrain.trainer` trains: examples built by
`bacflow.pretrain.masking.pretraining_example` (15 % of the proteins targets, 87.5 % of those masked), padded by
`bacflow.bacformer.inputs.collate_inputs`, the model in training mode (dropout on), forward, backward,
gradient clipping at 2.0 and an AdamW step (weight decay 0.01). Tokens are the example's tokens (CLS,
proteins, separators, END); a genome of n proteins on 10 contigs has n + 12. One genome per step.

Geometries (``--geometries``), each at the genome lengths of ``--lengths`` (default 500 and 1,000 proteins):

* ``small``: 4 layers, hidden 128, 4 heads, intermediate 256;
* ``released``: the published checkpoints' geometry, 12 layers, hidden 480, 8 heads, intermediate 1280.

Both have the released vocabulary (50,000 families and END). Each case runs ``--warmup`` steps untimed, then
``--steps`` timed steps; the report gives the median and the fastest step, the CPU time of a step (all
threads), and the model FLOPs of a step (matrix multiplications of forward and backward: 6 x weights x tokens
for the encoder, 12 x layers x tokens^2 x hidden for attention, 6 x hidden x classes for each target in the
output layer) divided by its time. With ``--peak-tflops`` (the device's dense peak in the chosen precision)
it also gives the FLOP utilisation.

On a GPU, the issue's case is::

    .venv/bin/python bench/pretrain.py --device cuda --geometries released --lengths 6000 --bf16 --steps 10
    .venv/bin/python bench/pretrain.py --device cuda --geometries released --lengths 6000 --bf16 --steps 10 \\
        --gradient-checkpointing --out pretrain-gpu-checkpointing

How to run
----------
From the repository root, in the README's environment (about 5 minutes on 2 cores)::

    .venv/bin/python bench/pretrain.py

Results go to ``bench/results/<out>.md`` (with the command that made them) and ``bench/results/<out>.json``
(``--out``, default ``pretrain``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from machine import machine_info, machine_markdown  # noqa: E402

from bacflow.bacformer.inputs import collate_inputs  # noqa: E402
from bacflow.bacformer.modeling_bacformer import IGNORE_INDEX, BacformerConfig, BacformerForMaskedGM  # noqa: E402
from bacflow.pretrain.masking import ExampleParams, pretraining_example  # noqa: E402

RESULTS = REPO / "bench" / "results"
GEOMETRIES = {
    "small": {"num_hidden_layers": 4, "hidden_size": 128, "num_attention_heads": 4, "intermediate_size": 256},
    "released": {"num_hidden_layers": 12, "hidden_size": 480, "num_attention_heads": 8, "intermediate_size": 1280},
}
VOCAB = 50_000
CONTIGS = 10


def batch(n_proteins: int, config: BacformerConfig, seed: int) -> dict[str, torch.Tensor]:
    """One genome's masked example, as the trainer's collator gives it."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n_proteins, config.hidden_size)).astype(np.float32)
    contigs = np.sort(np.arange(n_proteins) % CONTIGS)
    labels = rng.integers(0, VOCAB, n_proteins)
    params = ExampleParams(end_label=VOCAB, max_n_proteins=config.max_position_embeddings)
    return collate_inputs([pretraining_example(vectors, contigs, labels, params, rng)], max_n_contigs=1000)


def step_flops(model: BacformerForMaskedGM, tokens: int, targets: int) -> float:
    """Matrix-multiplication FLOPs of one forward and backward pass (see the module docstring)."""
    config = model.config
    head = config.hidden_size * (config.protein_clusters_vocab_size + 1)
    encoder = model.num_parameters() - head
    attention = 12 * config.num_hidden_layers * tokens**2 * config.hidden_size
    return 6 * encoder * tokens + attention + 6 * head * targets


def measure(args: argparse.Namespace, geometry: str, n_proteins: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    config = BacformerConfig(
        **GEOMETRIES[geometry],
        protein_clusters_vocab_size=VOCAB,
        max_position_embeddings=max(6000, n_proteins + CONTIGS + 2),
    )
    model = BacformerForMaskedGM(config).to(device).train()
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1.5e-4, weight_decay=0.01)
    inputs = {key: value.to(device) for key, value in batch(n_proteins, config, 0).items()}
    tokens = int(inputs["attention_mask"].sum())
    targets = int((inputs["labels"] != IGNORE_INDEX).sum())
    precision = torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()
    times, cpu_times = [], []
    for step in range(args.warmup + args.steps):
        started, cpu_started = time.perf_counter(), time.process_time()
        with precision:
            loss = model(**inputs, return_dict=True).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - started)
            cpu_times.append(time.process_time() - cpu_started)
    median = statistics.median(times)
    flops = step_flops(model, tokens, targets)
    return {
        "geometry": geometry,
        "proteins": n_proteins,
        "tokens": tokens,
        "targets": targets,
        "parameters": model.num_parameters(),
        "step_s_median": median,
        "step_s_min": min(times),
        "tokens_per_s_median": tokens / median,
        "tokens_per_s_max": tokens / min(times),
        "cpu_s_median": statistics.median(cpu_times),
        "tokens_per_cpu_s": tokens / statistics.median(cpu_times),
        "step_tflop": flops / 1e12,
        "tflops_median": flops / median / 1e12,
        "flop_utilisation": flops / median / 1e12 / args.peak_tflops if args.peak_tflops else None,
        "peak_memory_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "steps": args.steps,
    }


def report(args: argparse.Namespace, command: str, machine: dict, results: list[dict]) -> str:
    utilisation = args.peak_tflops is not None
    header = (
        "| geometry | parameters | proteins | tokens | step s | tokens/s | CPU s per step | tokens per CPU s "
        "| TFLOP/s |"
    )
    header += " FLOP utilisation |" if utilisation else ""
    rows = []
    for r in results:
        row = (
            f"| {r['geometry']} | {r['parameters'] / 1e6:.1f} M | {r['proteins']:,} | {r['tokens']:,} | "
            f"{r['step_s_median']:.2f} ({r['step_s_min']:.2f}) | "
            f"{r['tokens_per_s_median']:,.0f} ({r['tokens_per_s_max']:,.0f}) | "
            f"{r['cpu_s_median']:.2f} | {r['tokens_per_cpu_s']:,.0f} | {r['tflops_median']:.3f} |"
        )
        rows.append(row + (f" {r['flop_utilisation']:.1%} |" if utilisation else ""))
    load = [", ".join(f"{value:.1f}" for value in machine[key]) for key in ("load_before", "load_after")]
    gpu_note = (
        "**GPU numbers are not measured here**: this machine has no GPU. The issue's GPU benchmark (released "
        "geometry, 6,000 proteins, bf16, with and without gradient checkpointing, tokens/s and FLOP utilisation) is "
        "still to be run, with the GPU commands in `bench/pretrain.py`'s docstring."
        if args.device == "cpu"
        else f"Device: {machine['gpu']['name']}."
    )
    checkpointing = "with" if args.gradient_checkpointing else "without"
    return f"""# Bacformer pretraining: training throughput ({args.device})

Command: `{command}`

{args.threads} torch threads, device {args.device}; load average (1, 5, 15 min) {load[0]} before and {load[1]} after.
Peak resident memory of the whole run: {machine["peak_rss_mib"]:,.0f} MiB. Machine:

{machine_markdown(machine)}
One optimizer step of the masked objective on one genome (10 contigs), {"bf16 autocast" if args.bf16 else "float32"},
{checkpointing} gradient checkpointing, dropout on: forward, backward, clipping at 2.0,
AdamW. Vocabulary 50,000 families in both geometries. {args.steps} timed steps after {args.warmup} untimed; wall time
median (fastest), the CPU time (all threads) of the median step, and model FLOPs per second (see the script). On a
shared machine the wall times are slowed by the other work (see the load average); CPU time is less affected, and
tokens per CPU second times the cores is at best what an idle machine of this kind would reach.

{header}
|{"---|" * 4}{"---:|" * (5 + utilisation)}
{chr(10).join(rows)}

{gpu_note}

Raw numbers: `{args.out}.json` beside this file.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--geometries", nargs="+", choices=sorted(GEOMETRIES), default=["small", "released"])
    parser.add_argument("--lengths", nargs="+", type=int, default=[500, 1000], help="proteins per genome")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per case")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per case")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast, as the trainer on a GPU")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense peak TFLOP/s, for the utilisation")
    parser.add_argument("--out", default="pretrain", help="name of the result files in bench/results/")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load_before = os.getloadavg()
    results = []
    for geometry in args.geometries:
        for n_proteins in args.lengths:
            result = measure(args, geometry, n_proteins, device)
            print(json.dumps(result), flush=True)
            results.append(result)
    command = "python bench/pretrain.py" + "".join(
        f" --{name.replace('_', '-')}"
        + ("" if value is True else f" {' '.join(map(str, value)) if isinstance(value, list) else value}")
        for name, value in vars(args).items()
        if value != parser.get_default(name)
    )
    machine = {
        **machine_info(gpu=device.type == "cuda"),
        "threads": args.threads,
        "device": args.device,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    document = {"command": command, "machine": machine, "results": results}
    (RESULTS / f"{args.out}.json").write_text(json.dumps(document, indent=1) + "\n")
    (RESULTS / f"{args.out}.md").write_text(report(args, command, machine, results))
    print((RESULTS / f"{args.out}.md").read_text())


if __name__ == "__main__":
    main()
