"""bacflow's ESM-2 forward pass against transformers' EsmModel, on padded batches of real proteins."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import EsmConfig, EsmModel, EsmTokenizer

from bacflow.core.errors import InputError
from bacflow.embeddings.embedder import Embedder
from bacflow.embeddings.esm_encoder import EsmEncoder
from bacflow.embeddings.esm_model import load_esm
from bacflow.embeddings.packing import packed_by_default
from bacflow.embeddings.tiny import build_esm2
from conftest import needs_shared
from esm_helpers import many_real_proteins, real_proteins

pytestmark = needs_shared
CPU = torch.device("cpu")
#: bfloat16 is the compute dtype on GPUs; its test also runs on the CPU so that CI exercises it.
DEVICES = [
    CPU,
    pytest.param(
        torch.device("cuda"), marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
    ),
]


def padded_batch(model_path: Path, proteins: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids, attention mask) as EsmTokenizer pads them; one residue of the second protein is
    replaced by <mask>, so that ESM-2's mask-dependent embedding scale is exercised too."""
    tokenizer = EsmTokenizer.from_pretrained(model_path)
    batch = tokenizer(proteins, padding="longest", truncation=True, max_length=1024, return_tensors="pt")
    batch["input_ids"][1, 5] = tokenizer.mask_token_id
    return batch["input_ids"], batch["attention_mask"]


def hidden_states(
    model_path: Path, dtype: torch.dtype, proteins: list[str], device: torch.device = CPU
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(EsmModel's last hidden state, the encoder's, attention mask) of one padded batch run on `device`,
    returned on the CPU."""
    model, _ = load_esm(model_path, device, dtype)
    ids, mask = (tensor.to(device) for tensor in padded_batch(model_path, proteins))
    with torch.inference_mode():
        expected = model(input_ids=ids, attention_mask=mask).last_hidden_state
        ours = EsmEncoder(model)(ids, mask.bool())
    return expected.float().cpu(), ours.float().cpu(), mask.bool().cpu()


def test_hidden_states_equal_esm_model_in_float32(tiny_esm: Path):
    # Lengths from 38 to 1,024 tokens (truncated) in one batch: mostly padding for the short ones.
    proteins = sorted(real_proteins()[:40], key=len)[::8] + [max(real_proteins(), key=len)]
    expected, ours, real = hidden_states(tiny_esm, torch.float32, proteins)
    assert real.sum(1).tolist()[-1] == 1024 and real.sum(1).min() < 100
    assert (ours[real] - expected[real]).abs().max() <= 1e-5


def test_hidden_states_equal_esm_model_with_the_35m_geometry(tmp_path: Path):
    model = build_esm2(tmp_path / "esm2-35m", geometry="t12_35M")
    proteins = sorted(real_proteins()[:150], key=len)[:6]
    expected, ours, real = hidden_states(model, torch.float32, proteins)
    assert (ours[real] - expected[real]).abs().max() <= 1e-5


@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_bfloat16_stays_near_esm_model_in_bfloat16(tiny_esm: Path, device: torch.device):
    """bfloat16 rounding differs with the order of operations (a few ulps of values of order 1: measured
    up to 0.031 on the CPU), so within 0.06 of each other and of float32."""
    proteins = sorted(real_proteins()[:40], key=len)[::8]
    expected, ours, real = hidden_states(tiny_esm, torch.bfloat16, proteins, device)
    exact, _, _ = hidden_states(tiny_esm, torch.float32, proteins)
    assert (ours[real] - expected[real]).abs().max() <= 0.06
    assert (ours[real] - exact[real]).abs().max() <= 0.06
    assert (ours[real] - expected[real]).abs().mean() <= 0.01


def protein_vectors(model_path: Path, dtype: torch.dtype, proteins: list[str], packed: bool = False) -> np.ndarray:
    """Vectors as a bucket job makes them (pooling "mean", the CPU token budget of the config's default
    scaled up, since the tiny model is small), on the CPU."""
    model, tokenizer = load_esm(model_path, CPU, dtype)
    encoder = EsmEncoder(model, packed=packed)
    return Embedder(encoder, tokenizer, pooling="mean", max_length=1024, token_budget=8192).embed(proteins)[0]


def test_bfloat16_vectors_stay_within_tolerance_of_float32_on_533_real_proteins(tiny_esm: Path):
    """The bfloat16 recipe (dtype auto on GPUs and on CPUs with native bfloat16) against float32, protein
    by protein: cosine >= 0.9999 and max |difference| <= 5e-2 (measured: 0.99998 and 0.0077 for vectors
    whose largest entries are ~1.9). On a CPU without native bfloat16 it is emulated: slower, same values."""
    proteins = list(many_real_proteins())
    exact = protein_vectors(tiny_esm, torch.float32, proteins)
    rounded = protein_vectors(tiny_esm, torch.bfloat16, proteins)
    cosine = (exact * rounded).sum(1) / np.linalg.norm(exact, axis=1) / np.linalg.norm(rounded, axis=1)
    assert len(proteins) >= 500 and np.abs(exact).max() > 1
    assert cosine.min() >= 0.9999 and np.abs(rounded - exact).max() <= 5e-2


@pytest.mark.parametrize(
    ("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.bfloat16, 0.0625)], ids=["float32", "bfloat16"]
)
def test_packed_tokens_give_the_hidden_states_of_the_padded_batch(tiny_esm: Path, dtype: torch.dtype, tolerance):
    """Packed (no padding; SDPA over jagged nested tensors on the CPU, the GPU's default layout) against
    padded, on a batch of 38 to 1,024 tokens with a <mask>; bfloat16 within 4 ulps of its values (up to
    ~2.9: ulp 0.016; measured 0.031)."""
    proteins = sorted(real_proteins()[:40], key=len)[::8] + [max(real_proteins(), key=len)]
    model, _ = load_esm(tiny_esm, CPU, dtype)
    ids, mask = padded_batch(tiny_esm, proteins)
    real = mask.bool()
    with torch.inference_mode():
        padded = EsmEncoder(model, packed=False)(ids, real).float()
        packed = EsmEncoder(model, packed=True)(ids, real).float()
    assert (packed[real] - padded[real]).abs().max() <= tolerance
    assert (packed[~real] == 0).all() and padded[real].abs().max() > 2
    assert not EsmEncoder(model).packed  # padded is the CPU's default, packed CUDA's
    assert packed_by_default(torch.device("cuda")) and not packed_by_default(CPU)


def test_packed_and_padded_vectors_agree_on_real_proteins(tiny_esm: Path):
    proteins = list(many_real_proteins()[::10])
    padded = protein_vectors(tiny_esm, torch.float32, proteins)
    assert np.abs(protein_vectors(tiny_esm, torch.float32, proteins, packed=True) - padded).max() <= 1e-5


def test_an_esm_model_that_is_not_esm2_is_refused():
    esm1b_like = EsmConfig(
        vocab_size=33,
        hidden_size=48,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=96,
        position_embedding_type="absolute",
        emb_layer_norm_before=True,
        pad_token_id=1,
    )
    with pytest.raises(InputError, match="not ESM-2"):
        EsmEncoder(EsmModel(esm1b_like))
