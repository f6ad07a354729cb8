"""The reference's Bacformer Large forward (``bacformer==0.2.0``) on bench/bacformer_large.py's genomes, timed.

Run by bench/bacformer_large.py with the reference's own Python (it needs ``transformers<5``), with ``-P`` so that
bench/bacformer.py does not shadow the reference's package: ``python -P bacformer_large_reference.py MODEL_FOLDER
GENOMES_NPZ OUT_NPZ``. Per genome, as the reference's helpers do: ``protein_embeddings_to_inputs`` with
``bacformer_model_type="large"``, then ``BacformerLargeModel``'s forward pass, one genome at a time, fp32 on the
CPU, bf16 on a GPU. Writes each genome's wall and CPU seconds and its protein vectors (float32) to OUT_NPZ.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from bacformer.modeling.modeling_large import BacformerLargeModel
from bacformer.pp.embed_prot_seqs import protein_embeddings_to_inputs


def main(model_folder: str, genomes_path: str, out_path: str) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = BacformerLargeModel.from_pretrained(model_folder, torch_dtype=dtype).to(device).eval()
    data = np.load(genomes_path)
    result: dict[str, np.ndarray] = {}
    seconds, cpu_seconds = [], []
    for index in range(int(data["count"])):
        vectors, contigs = data[f"vectors_{index}"], data[f"contigs_{index}"]
        genome = [list(contig) for contig in np.split(vectors, np.flatnonzero(np.diff(contigs)) + 1)]
        if device.type == "cuda":
            torch.cuda.synchronize()
        started, cpu = time.perf_counter(), time.process_time()
        inputs = protein_embeddings_to_inputs(
            genome, max_n_proteins=int(data["max_n_proteins"]), bacformer_model_type="large", torch_dtype=dtype
        )
        with torch.no_grad():
            hidden = model(**{key: value.to(device) for key, value in inputs.items()}, return_dict=True)
        vectors_out = hidden.last_hidden_state[0].float().cpu()
        seconds.append(time.perf_counter() - started)
        cpu_seconds.append(time.process_time() - cpu)
        result[f"vectors_{index}"] = vectors_out.numpy()
    np.savez(
        out_path,
        seconds=np.array(seconds),
        cpu_seconds=np.array(cpu_seconds),
        device=str(device),
        dtype=str(dtype).removeprefix("torch."),
        **result,
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
