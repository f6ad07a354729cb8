"""Runs the reference implementation (``bacformer==0.2.0``, under ``transformers<5``) as a test oracle.

Run by ``tests/reference_helpers.py`` with the reference's own virtual environment, never imported by
bacflow's tests: ``python reference_oracle.py REQUEST RESPONSE``. REQUEST is a ``torch.save``d dict
``{"jobs": [...]}``; RESPONSE receives ``{job name: result}``. Jobs (dicts with a ``kind`` and a ``name``):

- ``save``: build the class named ``model`` (base or ``BacformerLarge...``) from ``config`` (of that family's config
  class), load ``state_dict`` strictly, ``save_pretrained(folder)``;
- ``forward``: ``model`` class's ``from_pretrained(folder)`` in eval mode, run it on each dict of ``inputs`` (fp32,
  ``return_dict=True``); result: a list of dicts of output tensors, plus the base encoder's rotary tables;
- ``inputs``: the reference's ``protein_embeddings_to_inputs`` on each ``(protein_embeddings, kwargs)`` of
  ``genomes``, and its ``collate_genome_samples`` over all of them;
- ``large_inputs``: the same builder with ``bacformer_model_type="large"`` on each ``(protein_embeddings, kwargs)``.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from bacformer.modeling import BacformerConfig, BacformerForCausalGM, BacformerForMaskedGM, BacformerModel
from bacformer.modeling.data_reader import collate_genome_samples
from bacformer.modeling.modeling_large import BacformerLargeConfig, BacformerLargeForMaskedGM, BacformerLargeModel
from bacformer.pp.embed_prot_seqs import protein_embeddings_to_inputs

CLASSES = {
    cls.__name__: cls
    for cls in (
        BacformerModel,
        BacformerForMaskedGM,
        BacformerForCausalGM,
        BacformerLargeModel,
        BacformerLargeForMaskedGM,
    )
}


def save(job: dict[str, Any]) -> None:
    config_class = BacformerLargeConfig if job["model"].startswith("BacformerLarge") else BacformerConfig
    model = CLASSES[job["model"]](config_class(**job["config"]))
    model.load_state_dict(job["state_dict"], strict=True)
    model.save_pretrained(job["folder"])


def forward(job: dict[str, Any]) -> dict[str, Any]:
    model = CLASSES[job["model"]].from_pretrained(job["folder"]).eval()
    outputs = []
    with torch.no_grad():
        for inputs in job["inputs"]:
            output = model(**inputs, return_dict=True)
            outputs.append({key: value for key, value in output.items() if isinstance(value, torch.Tensor)})
    if job["model"].startswith("BacformerLarge"):
        return {"outputs": outputs}
    encoder = model.encoder if isinstance(model, BacformerModel) else model.bacformer.encoder
    return {"outputs": outputs, "freqs_cos": encoder.freqs_cos, "freqs_sin": encoder.freqs_sin}


def inputs(job: dict[str, Any]) -> dict[str, Any]:
    built = [protein_embeddings_to_inputs(genome, **kwargs) for genome, kwargs in job["genomes"]]
    samples = [
        {
            "prot_embeddings": sample["protein_embeddings"][0].numpy(),
            "special_tokens_mask": sample["special_tokens_mask"][0].numpy(),
            "token_type_ids": sample["token_type_ids"][0].numpy(),
            "attention_mask": sample["attention_mask"][0].numpy(),
        }
        for sample in built
    ]
    return {"built": built, "collated": collate_genome_samples(0, job["max_n_contigs"], samples)}


def large_inputs(job: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
    return [
        protein_embeddings_to_inputs(genome, bacformer_model_type="large", **kwargs)
        for genome, kwargs in job["genomes"]
    ]


def main(request_path: str, response_path: str) -> None:
    jobs = torch.load(request_path, weights_only=False)["jobs"]
    kinds = {"save": save, "forward": forward, "inputs": inputs, "large_inputs": large_inputs}
    torch.save({job["name"]: kinds[job["kind"]](job) for job in jobs}, response_path)


if __name__ == "__main__":
    main(*sys.argv[1:])
