"""bacflow's ESM-2 forward pass against transformers' EsmModel, on padded batches of real proteins."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import EsmConfig, EsmModel, EsmTokenizer

from bacflow.core.errors import InputError
from bacflow.embeddings.esm_encoder import EsmEncoder
from bacflow.embeddings.esm_model import load_esm
from bacflow.embeddings.tiny import build_esm2
from conftest import needs_shared
from esm_helpers import real_proteins

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
