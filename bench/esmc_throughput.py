#!/usr/bin/env python
"""Throughput of bacflow's ESM-C embedder against the reference recipe, on the CPU.

What it measures
----------------
The same real proteins (default: the first 500 distinct proteins of the *Paracoccus* MAG's NCBI
translations in ``../shared/data``, as ``bench/esm_throughput.py`` reads them) are embedded by:

* ``reference``: the recipe of ``bacformer.pp.embed_prot_seqs`` for Bacformer Large, with the ESM++ forward
  pass as Synthyra's remote code ships it (``modeling_esm_plusplus.py``, "sdpa" backend), written out below
  (`EsmPlusPlus`): the ESM-C tokenizer called on batches of 64 proteins sorted by length, padding to the
  longest, truncation to 1,024 tokens; its pairwise attention mask (padding masked as queries and as keys,
  an additive float mask); ``torch.no_grad``; mean of the last hidden state over the attention mask;
* ``bacflow``: ``bacflow.embeddings.embedder.Embedder`` with the encoder ``load_encoder`` gives for the same
  folder (`bacflow.embeddings.esmc_model.ESMCEncoder`, the lean forward pass over
  `bacflow.embeddings.modeling_esmc.ESMCModel`'s weights: key-padding boolean mask, padded batches, the
  CPU's default), batches longest first under the token budget (``--token-budget``, default the config's
  ``cpu_token_budget``), ``torch.inference_mode``.

Both in float32, on the same random weights (speed does not depend on the weights) of the geometry
``--geometry`` (default ``l6_w320``: 6 layers, width 320, 5 heads of 64, SwiGLU 1,024 wide: ESM-C's blocks
at a size that runs in a few minutes on 2 cores; ``300M`` is ESM-C 300M's own). As in
``bench/esm_throughput.py``, the proteins in the reference's order are cut into chunks of whole reference
batches, measured in a fixed random order, the two sides taking turns on each chunk, so that a machine
whose load changes weighs on both alike; results are rewritten after every chunk. Reported: wall-clock
and process CPU seconds, proteins/s, tokens/s (real tokens with BOS/EOS), the speed-up over the reference,
max |vector difference|, the CPU model, whether it has bfloat16 instructions (``avx512_bf16``/``amx_bf16``)
and the measured float32 and bfloat16 matrix-multiply rates.

How to run
----------
From the repository root::

    .venv/bin/python bench/esmc_throughput.py --threads 1     # ~5 minutes on a shared 2-core machine
    .venv/bin/python bench/esmc_throughput.py --proteins 128 --output /tmp/esmc.md   # smoke test

Results go to ``bench/results/esmc_throughput.md`` and ``.json``; the model is built under
``bench/work/esmc/`` (git-ignored).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from esm_throughput import load_proteins, reference_order
from machine import machine_info, machine_markdown
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bacflow.embeddings.embedder import Embedder  # noqa: E402
from bacflow.embeddings.encoders import load_encoder  # noqa: E402
from bacflow.embeddings.esmc_model import load_esmc_tokenizer  # noqa: E402
from bacflow.embeddings.modeling_esmc import swiglu_width  # noqa: E402
from bacflow.embeddings.stage import EmbeddingSettings  # noqa: E402
from bacflow.embeddings.tiny import ESMC_GEOMETRIES, build_esmc  # noqa: E402

MAX_LENGTH = 1024


class EsmPlusPlus(nn.Module):
    """ESM++'s forward pass as its remote code runs it with the "sdpa" backend (same state-dict keys)."""

    def __init__(self, width: int, heads: int, layers: int):
        super().__init__()
        self.heads, self.scale = heads, (layers / 36) ** 0.5
        inner = swiglu_width(width)
        self.embed = nn.Embedding(64, width)
        self.transformer = nn.Module()
        self.transformer.blocks = nn.ModuleList()
        for _ in range(layers):
            block = nn.Module()
            block.attn = nn.Module()
            block.attn.layernorm_qkv = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 3 * width, bias=False))
            block.attn.q_ln = nn.LayerNorm(width, bias=False)
            block.attn.k_ln = nn.LayerNorm(width, bias=False)
            block.attn.out_proj = nn.Linear(width, width, bias=False)
            block.ffn = nn.Sequential(
                nn.LayerNorm(width),
                nn.Linear(width, 2 * inner, bias=False),
                nn.Identity(),
                nn.Linear(inner, width, bias=False),
            )
            self.transformer.blocks.append(block)
        self.transformer.norm = nn.LayerNorm(width, bias=False)
        self.sequence_head = nn.Sequential(
            nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width), nn.Linear(width, 64)
        )
        head_dim = width // heads
        # ESM++'s RotaryEmbedding: a buffer rebuilt after loading, cos/sin cached per length in the input dtype.
        self.inv_freq = 1 / (10000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))

    def rotary(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, positions, heads, head_dim), rotate-half with ``repeat(cos, "s d -> s 1 (2 d)")``."""
        angles = torch.outer(torch.arange(x.shape[1], dtype=torch.float32), self.inv_freq)
        cos, sin = (table.to(x.dtype).repeat(1, 2)[:, None, :] for table in (angles.cos(), angles.sin()))
        first, second = x.chunk(2, dim=-1)
        return x * cos + torch.cat((-second, first), dim=-1) * sin

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids)
        token_mask = attention_mask.bool()
        pairwise = (token_mask[:, :, None] & token_mask[:, None, :])[:, None]
        sdpa_mask = torch.zeros_like(pairwise, dtype=x.dtype).masked_fill_(pairwise.logical_not(), float("-inf"))
        for block in self.transformer.blocks:
            attn = block.attn
            query, key, value = attn.layernorm_qkv(x).chunk(3, dim=-1)
            query, key = attn.q_ln(query).to(query.dtype), attn.k_ln(key).to(query.dtype)
            query, key = (self.rotary(t.unflatten(-1, (self.heads, -1))).flatten(-2) for t in (query, key))
            query, key, value = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (query, key, value))
            context = F.scaled_dot_product_attention(query, key, value, attn_mask=sdpa_mask)
            x = x + attn.out_proj(context.transpose(1, 2).flatten(-2)) / self.scale
            norm, up, _, down = block.ffn
            gate, linear = up(norm(x)).chunk(2, dim=-1)
            x = x + down(F.silu(gate) * linear) / self.scale
        return self.transformer.norm(x)


class Reference:
    """bacformer.pp's recipe with the ESM++ forward pass (see the module docstring)."""

    def __init__(self, model_path: Path, geometry: dict[str, int]):
        self.tokenizer = load_esmc_tokenizer(model_path)
        self.model = EsmPlusPlus(
            geometry["hidden_size"], geometry["num_attention_heads"], geometry["num_hidden_layers"]
        ).eval()
        self.model.load_state_dict(load_file(model_path / "model.safetensors"), strict=True)
        self.padded_tokens = 0

    def embed(self, proteins: list[str]) -> np.ndarray:
        vectors = []
        with torch.no_grad():
            for first in range(0, len(proteins), 64):
                batch = self.tokenizer(
                    proteins[first : first + 64],
                    padding="longest",
                    truncation=True,
                    max_length=MAX_LENGTH,
                    return_tensors="pt",
                )
                self.padded_tokens += batch["input_ids"].numel()
                hidden = self.model(batch["input_ids"], batch["attention_mask"])
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                vectors.append(((hidden * mask).sum(1) / mask.sum(1)).numpy())
        return np.concatenate(vectors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--proteins", type=int, default=500)
    parser.add_argument("--geometry", choices=sorted(ESMC_GEOMETRIES), default="l6_w320")
    parser.add_argument("--token-budget", type=int, default=EmbeddingSettings().cpu_token_budget)
    parser.add_argument("--chunk-batches", type=int, default=1, help="reference batches (of 64) per chunk")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "esmc_throughput.md")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    geometry = ESMC_GEOMETRIES[args.geometry]
    model_path = REPO / "bench" / "work" / "esmc" / f"esmc-{args.geometry}-random"
    if not (model_path / "model.safetensors").exists():
        build_esmc(model_path, geometry=args.geometry)
    host = machine_info(seconds=2.0)
    print(machine_markdown(host), flush=True)
    result = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {**host, "torch": torch.__version__, "torch_threads": torch.get_num_threads()},
        "matmul_gflop_per_s": host["cpu_matmul_gflop_per_s"],
        "geometry": {"name": args.geometry, **geometry},
        "token_budget": args.token_budget,
    }
    print(f"matmul GFLOP/s: {result['matmul_gflop_per_s']}", flush=True)
    proteins = load_proteins(args.proteins)
    reference = Reference(model_path, geometry)
    encoder, tokenizer = load_encoder(model_path, cpu, torch.float32)
    ours = Embedder(encoder, tokenizer, pooling="mean", max_length=MAX_LENGTH, token_budget=args.token_budget)
    reference.embed(proteins[:8])  # warm-up (untimed): first calls allocate and pick kernels
    ours.embed(proteins[:8])
    reference.padded_tokens = 0

    order = reference_order(proteins)
    size = 64 * args.chunk_batches
    chunks = [order[first : first + size] for first in range(0, len(order), size)]
    seconds = {"reference": [0.0, 0.0], "bacflow": [0.0, 0.0]}
    done: list[int] = []
    differences: list[float] = []
    load = [os.getloadavg()[0]]
    for number, chunk in enumerate(np.random.default_rng(0).permutation(len(chunks)), 1):
        members = [proteins[index] for index in chunks[chunk]]
        vectors = {}
        for name, embed in (("reference", reference.embed), ("bacflow", lambda batch: ours.embed(batch)[0])):
            wall, cpu_time = time.perf_counter(), time.process_time()
            vectors[name] = embed(members)
            seconds[name][0] += time.perf_counter() - wall
            seconds[name][1] += time.process_time() - cpu_time
        assert np.isfinite(vectors["reference"]).all()
        differences.append(float(np.abs(vectors["bacflow"] - vectors["reference"]).max()))
        done += chunks[chunk]
        load.append(os.getloadavg()[0])
        tokens = sum(min(len(proteins[index]), MAX_LENGTH - 2) + 2 for index in done)
        result |= {
            "chunks_measured": f"{number} of {len(chunks)}",
            "proteins": len(done),
            "tokens": tokens,
            "proteins_over_1022": sum(len(proteins[index]) > 1022 for index in done),
            "reference_padded_tokens": reference.padded_tokens,
            "load_average_1min": {"min": min(load), "max": max(load)},
            "max_abs_difference": max(differences),
            "results": {
                name: {
                    "seconds": wall,
                    "cpu_seconds": cpu_seconds,
                    "proteins_per_s": len(done) / wall,
                    "tokens_per_s": tokens / wall,
                    "speed_up": seconds["reference"][0] / wall,
                    "speed_up_cpu_seconds": seconds["reference"][1] / cpu_seconds,
                }
                for name, (wall, cpu_seconds) in seconds.items()
            },
        }
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        args.output.write_text(report(result))
        print(f"chunk {number}/{len(chunks)}: {len(done)} proteins", flush=True)
    print(args.output.read_text())


def report(result: dict) -> str:
    host, geometry, rates = result["machine"], result["geometry"], result["matmul_gflop_per_s"]
    lines = [
        "# ESM-C embedding throughput (CPU, float32)",
        "",
        "Made by `bench/esmc_throughput.py` (its docstring says what is measured and how).",
        "",
        f"Command: `{result['command']}` ({result['date']})",
        "",
        machine_markdown(host),
        "",
        f"{host['torch_threads']} torch thread(s); measured matrix-multiply rate "
        f"{rates['float32']:.0f} GFLOP/s in float32, {rates['bfloat16']:.2f} in bfloat16. 1-minute load average "
        f"{result['load_average_1min']['min']:.1f}-{result['load_average_1min']['max']:.1f} (other work shared the "
        "cores: compare the two rows, not absolute rates).",
        "",
        f"{result['proteins']} real proteins ({result['tokens']:,} tokens with BOS/EOS, {result['proteins_over_1022']} "
        f"over 1,022 aa); ESM-C geometry `{geometry['name']}` ({geometry['num_hidden_layers']} layers, width "
        f"{geometry['hidden_size']}, {geometry['num_attention_heads']} heads), random weights; bacflow's token budget "
        f"{result['token_budget']:,}; the reference ran {result['reference_padded_tokens']:,} tokens with padding. "
        f"Chunks measured: {result['chunks_measured']}.",
        "",
        "| method | seconds | CPU seconds | proteins/s | tokens/s | speed-up | speed-up (CPU s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in result["results"].items():
        lines.append(
            f"| {name} | {row['seconds']:.1f} | {row['cpu_seconds']:.1f} | {row['proteins_per_s']:.2f} | "
            f"{row['tokens_per_s']:.0f} | {row['speed_up']:.2f}x | {row['speed_up_cpu_seconds']:.2f}x |"
        )
    lines += [
        "",
        f"Max |bacflow - reference| over all vector entries: {result['max_abs_difference']:.2e}.",
        "",
        "GPU numbers (bfloat16) are not in this file: no GPU was available when it was made.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
