"""The reference's Bacformer forward (``bacformer==0.2.0``) on bench/bacformer.py's genomes, timed.

Run by bench/bacformer.py with the reference's own Python (it needs ``transformers<5``; see
tests/bacformer_helpers.py): ``python bacformer_reference.py MODEL_FOLDER GENOMES_NPZ OUT_NPZ``. Per genome,
as the reference's helpers do: ``protein_embeddings_to_inputs`` (its default separator id, 2), then the
encoder's forward pass, one genome at a time; fp32 on the CPU, bf16 on a GPU (the reference README's
setting). Writes each genome's wall and CPU seconds and its protein vectors (float32) to OUT_NPZ.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from bacformer.modeling import BacformerModel
from bacformer.pp.embed_prot_seqs import protein_embeddings_to_inputs

PROT_EMB = 4


def main(model_folder: str, genomes_path: str, out_path: str) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = BacformerModel.from_pretrained(model_folder, torch_dtype=dtype).to(device).eval()
    data = np.load(genomes_path)
    genomes = []
    for index in range(int(data["count"])):
        vectors, contigs = data[f"vectors_{index}"], data[f"contigs_{index}"]
        cuts = np.flatnonzero(np.diff(contigs)) + 1
        genomes.append([list(contig) for contig in np.split(vectors, cuts)])

    def forward(genome: list[list[np.ndarray]]) -> torch.Tensor:
        inputs = protein_embeddings_to_inputs(genome, max_n_proteins=int(data["max_n_proteins"]), torch_dtype=dtype)
        inputs = {key: value.to(device) for key, value in inputs.items()}
        with torch.no_grad():
            hidden = model(**inputs, return_dict=True).last_hidden_state[0]
        return hidden[inputs["special_tokens_mask"][0] == PROT_EMB].float().cpu()

    forward(genomes[0])  # warm-up
    seconds, cpu_seconds, outputs = [], [], {}
    for index, genome in enumerate(genomes):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started, cpu = time.perf_counter(), time.process_time()
        vectors = forward(genome)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
        cpu_seconds.append(time.process_time() - cpu)
        outputs[f"vectors_{index}"] = vectors.numpy()
    np.savez(
        out_path,
        seconds=np.array(seconds),
        cpu_seconds=np.array(cpu_seconds),
        device=str(device),
        dtype=str(dtype),
        **outputs,
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
