"""Runs EvolutionaryScale's own ESM-C (the ``esm`` package, ``esm==3.2.1.post1``) as a test oracle.

Run by ``tests/embeddings/test_esmc.py`` with the ``esm`` package's own virtual environment (see
``esmc_environment`` there), never imported by bacflow's tests: ``python esmc_oracle.py REQUEST RESPONSE``.
REQUEST is a ``torch.save``d dict ``{"jobs": [...]}``; RESPONSE receives ``{job name: result}``. Jobs:

- ``tokens``: ``EsmSequenceTokenizer`` ids (``<cls>``/``<eos>`` added, truncated to ``max_length``) of each
  of ``sequences``;
- ``save_tokenizer``: ``EsmSequenceTokenizer().save_pretrained(folder)``, the files an ESM++ hub folder ships;
- ``recipe``: ``ESMC(d_model, n_heads, n_layers, use_flash_attn=False)`` with ``state_dict`` loaded strictly,
  in float32 on the CPU, run on ``sequences`` in consecutive batches of ``batch_size`` tokenised with padding
  to the longest and truncation to ``max_length`` (the reference recipe); result: per batch its ids, mask and
  last hidden state (the model's ``embeddings``: after the final norm), the vectors (mean of the last hidden
  state over the attention mask, ``<cls>`` and ``<eos>`` included), and the model's state dict.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from esm.models.esmc import ESMC
from esm.tokenization import EsmSequenceTokenizer


def tokens(job: dict[str, Any]) -> list[list[int]]:
    tokenizer = EsmSequenceTokenizer()
    return [
        tokenizer(sequence, add_special_tokens=True, truncation=True, max_length=job["max_length"])["input_ids"]
        for sequence in job["sequences"]
    ]


def save_tokenizer(job: dict[str, Any]) -> None:
    EsmSequenceTokenizer().save_pretrained(job["folder"])


def recipe(job: dict[str, Any]) -> dict[str, Any]:
    tokenizer = EsmSequenceTokenizer()
    model = ESMC(job["d_model"], job["n_heads"], job["n_layers"], tokenizer=tokenizer, use_flash_attn=False)
    model.load_state_dict(job["state_dict"], strict=True)
    model.eval()
    sequences, size = job["sequences"], job["batch_size"]
    batches, vectors = [], []
    with torch.no_grad():
        for start in range(0, len(sequences), size):
            batch = tokenizer(
                sequences[start : start + size],
                add_special_tokens=True,
                padding="longest",
                truncation=True,
                max_length=job["max_length"],
                return_tensors="pt",
            )
            ids, mask = batch["input_ids"], batch["attention_mask"].bool()
            hidden = model(sequence_tokens=ids, sequence_id=mask).embeddings
            weights = mask[..., None].float()
            vectors.append((hidden * weights).sum(1) / weights.sum(1))
            batches.append({"input_ids": ids, "mask": mask, "hidden": hidden})
    return {"batches": batches, "vectors": torch.cat(vectors), "state_dict": model.state_dict()}


def main(request_path: str, response_path: str) -> None:
    jobs = torch.load(request_path, weights_only=False)["jobs"]
    kinds = {"tokens": tokens, "save_tokenizer": save_tokenizer, "recipe": recipe}
    torch.save({job["name"]: kinds[job["kind"]](job) for job in jobs}, response_path)


if __name__ == "__main__":
    main(*sys.argv[1:])
