"""bacflow.bacformer.modeling_bacformer: geometry, rotary tables, loading, heads, and parity with the reference package.

Parity tests run the reference implementation (``bacformer==0.2.0``) in its own environment (see
``bacformer_helpers.py``) on the same random weights, in both directions: checkpoints saved here and loaded
there, and saved there and loaded here. Tolerance: max |difference| <= 1e-5 in fp32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM

from bacflow.bacformer.inputs import collate_inputs, protein_embeddings_to_inputs
from bacflow.bacformer.modeling_bacformer import (
    SPECIAL_TOKENS,
    BacformerConfig,
    BacformerForCausalGM,
    BacformerForMaskedGM,
    BacformerModel,
    apply_rotary,
    rotary_tables,
)
from bacformer_helpers import (
    PARITY_TOLERANCE,
    assert_outputs_match,
    max_abs_diff,
    randomize,
    run_reference,
    tiny_config,
)

#: Inputs (from `example_inputs`, plus labelled variants) each model class runs on in the parity tests.
PARITY_CASES = {
    "BacformerModel": ["single", "padded", "padded_without_mask"],
    "BacformerForMaskedGM": ["padded", "masked_labels"],
    "BacformerForCausalGM": ["padded", "causal_labels"],
}
RELEASED = {"num_hidden_layers": 12, "hidden_size": 480, "intermediate_size": 1280, "num_attention_heads": 8}


def genome(seed: int, contig_sizes: list[int], dim: int = 32) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [[rng.normal(size=dim).astype(np.float32) for _ in range(size)] for size in contig_sizes]


def example_inputs() -> dict[str, dict[str, torch.Tensor]]:
    """A single genome, and a padded batch of two genomes of different lengths with and without a mask."""
    short = protein_embeddings_to_inputs(genome(1, [5, 3]))
    long = protein_embeddings_to_inputs(genome(2, [7, 2, 4]))
    padded = collate_inputs([short, long])
    unmasked = {key: value for key, value in padded.items() if key != "attention_mask"}
    return {"single": long, "padded": padded, "padded_without_mask": unmasked}


def with_labels(inputs: dict[str, torch.Tensor], seed: int, masked: bool) -> dict[str, torch.Tensor]:
    """Inputs with family labels on some proteins; ``masked``: those proteins' tokens become MASK."""
    generator = torch.Generator().manual_seed(seed)
    kinds = inputs["special_tokens_mask"].clone()
    chosen = (kinds == SPECIAL_TOKENS["PROT_EMB"]) & (torch.rand(kinds.shape, generator=generator) < 0.4)
    labels = torch.where(chosen, torch.randint(0, 101, kinds.shape, generator=generator), -100)
    if masked:
        kinds[chosen] = SPECIAL_TOKENS["MASK"]
    return {**inputs, "special_tokens_mask": kinds, "labels": labels}


# ---------------------------------------------------------------------------------------------- geometry


def test_parameter_counts_of_the_released_geometry() -> None:
    with torch.device("meta"):
        encoder = BacformerModel(BacformerConfig(**RELEASED))
        masked = BacformerForMaskedGM(BacformerConfig(**RELEASED))
    assert sum(p.numel() for p in encoder.parameters()) == 26_569_920
    assert sum(p.numel() for p in masked.parameters()) == 50_852_241


def test_state_dict_keys_and_shapes_are_the_references() -> None:
    with torch.device("meta"):
        shapes = {
            key: tuple(value.shape)
            for key, value in BacformerForMaskedGM(BacformerConfig(**RELEASED)).state_dict().items()
        }
    layer = "bacformer.encoder.encoder.layers.11."
    assert shapes["bacformer.embeddings.linear.weight"] == (480, 480)
    assert shapes["bacformer.embeddings.token_type_embeddings.weight"] == (1001, 480)
    assert shapes["bacformer.embeddings.special_tokens_embeddings.weight"] == (6, 480)
    assert shapes[layer + "self_mha.q.weight"] == (480, 480) and layer + "self_mha.q.bias" not in shapes
    assert shapes[layer + "self_mha.att_proj_linear.bias"] == (480,)
    assert shapes[layer + "fc1.weight"] == (1280, 480) and shapes[layer + "fc2.weight"] == (480, 1280)
    assert shapes[layer + "norm2.bias"] == (480,)
    assert shapes["gm_head.decoder.weight"] == (50001, 480) and shapes["gm_head.bias"] == (50001,)
    assert len(shapes) == 6 + 12 * 13 + 6  # embeddings, 13 tensors per layer, head; no rotary buffers


def test_layer_norm_eps_are_the_references() -> None:
    # Checked apart from parity: a wrong eps changes outputs by only ~4e-6, within the parity tolerance.
    model = BacformerForMaskedGM(tiny_config())
    assert model.bacformer.embeddings.LayerNorm.eps == model.gm_head.layer_norm.eps == 1e-12
    assert all(layer.norm1.eps == layer.norm2.eps == 1e-5 for layer in model.bacformer.encoder.encoder.layers)


# ---------------------------------------------------------------------------------------------- rotary


def test_rotary_tables_have_the_analytic_values() -> None:
    cos, sin = rotary_tables(60, 9000)  # the released geometry: 8 heads of 60 dims, 1.5 x 6000 positions
    assert cos.shape == sin.shape == (9000, 30) and cos.dtype == torch.float32
    # The angles are fp32 products t * inv_freq; their cosine and sine are exact to float32 rounding.
    inv_freq = (1.0 / (10000.0 ** (torch.arange(0, 60, 2).float() / 60))).double()
    angles = (torch.arange(9000).double()[:, None] * inv_freq).float().double()
    assert torch.allclose(cos.double(), angles.cos(), rtol=0, atol=2e-7)
    assert torch.allclose(sin.double(), angles.sin(), rtol=0, atol=2e-7)
    assert cos[0].eq(1).all() and sin[0].eq(0).all()  # position 0 (CLS) is not rotated


def test_rotary_pairs_are_interleaved() -> None:
    # head_dim 4: inv_freq = (1, 0.01); dims (0, 1) and (2, 3) are the two complex pairs.
    cos, sin = rotary_tables(4, 9000)
    x = torch.tensor([1.0, 0.0, 1.0, 0.0]).expand(1, 2, 1, 4)  # (batch, seq, heads, head_dim)
    rotated = apply_rotary(x, cos[:2], sin[:2])
    expected = torch.tensor([math.cos(1), math.sin(1), math.cos(0.01), math.sin(0.01)])
    assert torch.allclose(rotated[0, 1, 0], expected, atol=1e-7)
    assert torch.equal(rotated[0, 0, 0], x[0, 0, 0])


def test_rotary_is_computed_in_fp32_for_a_bf16_model() -> None:
    cos, sin = rotary_tables(8, 9000)
    x = torch.randn(2, 50, 4, 8, generator=torch.Generator().manual_seed(0)).bfloat16()
    assert torch.equal(apply_rotary(x, cos[:50], sin[:50]), apply_rotary(x.float(), cos[:50], sin[:50]).bfloat16())
    model = randomize(BacformerModel(tiny_config()), seed=0)
    inputs = example_inputs()["padded"]
    reference = model(**inputs, return_dict=True).last_hidden_state
    bf16 = model.to(torch.bfloat16)(**inputs, return_dict=True).last_hidden_state
    assert bf16.dtype == torch.bfloat16
    assert max_abs_diff(bf16, reference) < 0.1  # bf16 rounding of activations only


# ---------------------------------------------------------------------------------------------- loading


@pytest.mark.parametrize(
    ("model_class", "auto_class"),
    [
        (BacformerModel, AutoModel),
        (BacformerForMaskedGM, AutoModelForMaskedLM),
        (BacformerForCausalGM, AutoModelForCausalLM),
    ],
)
def test_save_and_load_round_trip(tmp_path: Path, model_class: type, auto_class: type) -> None:
    """transformers 5 loads on the meta device: nothing may come back uninitialised (reference issue #33)."""
    model = randomize(model_class(tiny_config()), seed=1)
    model.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert type(config) is BacformerConfig and config.to_diff_dict() == model.config.to_diff_dict()
    loaded, info = auto_class.from_pretrained(tmp_path, output_loading_info=True)
    assert type(loaded) is model_class and loaded.training is False
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # Nothing but the state dict is loaded: the rotary tables are computed from the config, not buffers.
    assert not list(loaded.buffers())
    inputs = with_labels(example_inputs()["padded"], seed=2, masked=model_class is BacformerForMaskedGM)
    if model_class is BacformerModel:
        inputs.pop("labels")
    for ours, theirs in zip(
        loaded(**inputs, return_dict=True).values(), model(**inputs, return_dict=True).values(), strict=False
    ):
        assert torch.equal(ours, theirs)


def test_auto_model_takes_the_encoder_of_a_genome_modelling_checkpoint(tmp_path: Path) -> None:
    model = randomize(BacformerForMaskedGM(tiny_config()), seed=3)
    model.save_pretrained(tmp_path)
    encoder, info = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert type(encoder) is BacformerModel and not any(info.values()), info
    inputs = example_inputs()["padded"]
    assert torch.equal(encoder(**inputs)[0], model(**inputs, return_dict=True).last_hidden_state)


# ---------------------------------------------------------------------------------------------- behaviour


def test_nan_is_an_error() -> None:
    model = randomize(BacformerModel(tiny_config()), seed=4)
    inputs = example_inputs()["padded"]
    with torch.no_grad():
        model.embeddings.linear.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN"):
        model(**inputs)
    model = randomize(BacformerModel(tiny_config()), seed=4)
    inputs["protein_embeddings"][1, 3, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN"):
        model(**inputs)


def test_padding_is_masked_for_keys_only() -> None:
    model = randomize(BacformerModel(tiny_config()), seed=5)
    inputs = example_inputs()
    alone = model(**protein_embeddings_to_inputs(genome(1, [5, 3])))[0][0]  # the short genome, unpadded
    padded = model(**inputs["padded"])[0]
    assert max_abs_diff(padded[0, : len(alone)], alone) < 1e-6
    assert torch.isfinite(padded[0, len(alone) :]).all()  # padded rows still get (meaningless) outputs
    # Without a mask, tokens attend to the padding too (as in the reference).
    assert max_abs_diff(model(**inputs["padded_without_mask"])[0][0, : len(alone)], alone) > 1e-4


def test_masked_gm_computes_logits_only_on_labelled_rows() -> None:
    model = randomize(BacformerForMaskedGM(tiny_config()), seed=6)
    inputs = with_labels(example_inputs()["padded"], seed=7, masked=True)
    labels = inputs.pop("labels")
    full = model(**inputs, return_dict=True).logits
    output = model(**inputs, labels=labels, return_dict=True)
    labelled = labels != -100
    assert output.logits.shape == (int(labelled.sum()), 102)
    assert torch.allclose(output.logits, full[labelled], atol=1e-6)
    assert torch.allclose(output.loss, torch.nn.functional.cross_entropy(full[labelled], labels[labelled]), atol=1e-6)


@pytest.mark.parametrize("model_class", [BacformerForMaskedGM, BacformerForCausalGM])
def test_no_labelled_position_gives_a_zero_loss_tied_to_the_graph(model_class: type) -> None:
    inputs = example_inputs()["padded"]
    nothing = torch.full_like(inputs["special_tokens_mask"], -100)
    model = randomize(model_class(tiny_config()), seed=8).train()
    loss = model(**inputs, labels=nothing, return_dict=True).loss
    assert loss.item() == 0 and loss.requires_grad
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    # The switch restores the reference's NaN.
    model = randomize(model_class(tiny_config(zero_loss_without_labels=False)), seed=8)
    assert torch.isnan(model(**inputs, labels=nothing, return_dict=True).loss)


def test_causal_gm_sees_only_earlier_tokens_and_shifts_labels() -> None:
    model = randomize(BacformerForCausalGM(tiny_config()), seed=9)
    inputs = with_labels(example_inputs()["single"], seed=10, masked=False)
    output = model(**inputs, return_dict=True)
    changed = {**inputs, "protein_embeddings": inputs["protein_embeddings"].clone()}
    changed["protein_embeddings"][0, 5:] += 1.0
    logits = model(**changed, return_dict=True).logits
    assert torch.allclose(logits[0, :5], output.logits[0, :5], atol=1e-6)
    assert not torch.allclose(logits[0, 5:], output.logits[0, 5:])
    expected = torch.nn.functional.cross_entropy(output.logits[0, :-1], inputs["labels"][0, 1:])
    assert torch.allclose(output.loss, expected, atol=1e-6)


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    inputs = with_labels(example_inputs()["padded"], seed=11, masked=True)
    gradients = []
    for checkpointing in (False, True):
        model = randomize(
            BacformerForMaskedGM(tiny_config(attention_probs_dropout_prob=0.0, hidden_dropout_prob=0.0)), 12
        )
        if checkpointing:
            model.activation_checkpointing_enable()
            assert model.bacformer.encoder.encoder.layers[0].gradient_checkpointing
        model.train()
        model(**inputs, return_dict=True).loss.backward()
        gradients.append([p.grad for p in model.parameters()])
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(*gradients, strict=False))


def test_training_works_after_inference_in_inference_mode() -> None:
    # The rotary tables are cached across models: made first under inference_mode (an embedding run), they
    # must still be usable by a later backward pass (a training run in the same process).
    config = tiny_config(max_position_embeddings=37)  # a geometry no other test caches
    inputs = with_labels(example_inputs()["padded"], seed=5, masked=True)
    with torch.inference_mode():
        BacformerModel(config).eval()(**example_inputs()["padded"])
    model = randomize(BacformerForMaskedGM(config), 5).train()
    model(**inputs, return_dict=True).loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_unsupported_requests_fail_clearly() -> None:
    with pytest.raises(NotImplementedError, match="return_attn_weights"):
        BacformerModel(tiny_config(return_attn_weights=True))
    model = BacformerModel(tiny_config(max_position_embeddings=10)).eval()  # 15 rotary positions
    with pytest.raises(ValueError, match="windows"):
        model(**protein_embeddings_to_inputs(genome(0, [20]), max_n_proteins=100))


# ---------------------------------------------------------------------------------------------- parity


@dataclass
class Parity:
    inputs: dict[str, dict[str, torch.Tensor]]
    ours: dict[str, Any]  # models saved here, by class name
    reference: dict[str, Any]  # the oracle's results by job name
    reference_folder: Path  # a BacformerForMaskedGM checkpoint saved by the reference


@pytest.fixture(scope="module")
def parity(reference_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Parity:
    """One oracle run: the reference loads the checkpoints saved here and runs them; it also saves a
    checkpoint of its own from random weights and runs that."""
    workdir = tmp_path_factory.mktemp("parity")
    inputs = example_inputs()
    inputs["masked_labels"] = with_labels(inputs["padded"], seed=13, masked=True)
    inputs["causal_labels"] = with_labels(inputs["padded"], seed=14, masked=False)
    ours, jobs = {}, []
    for seed, model_class in enumerate((BacformerModel, BacformerForMaskedGM, BacformerForCausalGM)):
        name = model_class.__name__
        ours[name] = randomize(model_class(tiny_config()), seed=20 + seed)
        ours[name].save_pretrained(workdir / name)
        cases = [inputs[case] for case in PARITY_CASES[name]]
        jobs.append(dict(kind="forward", name=name, model=name, folder=str(workdir / name), inputs=cases))
    theirs = randomize(BacformerForMaskedGM(tiny_config()), seed=30)
    folder = workdir / "saved-by-reference"
    state = dict(config=tiny_config().to_dict(), state_dict=theirs.state_dict())
    jobs.append(dict(kind="save", name="save", model="BacformerForMaskedGM", folder=str(folder), **state))
    cases = [inputs["padded"], inputs["masked_labels"]]
    jobs.append(
        dict(
            kind="forward", name="reference-checkpoint", model="BacformerForMaskedGM", folder=str(folder), inputs=cases
        )
    )
    return Parity(inputs, ours, run_reference(reference_python, jobs, workdir), folder)


@pytest.mark.parametrize("name", ["BacformerModel", "BacformerForMaskedGM", "BacformerForCausalGM"])
def test_the_reference_loads_our_checkpoints_and_computes_the_same(parity: Parity, name: str) -> None:
    model = parity.ours[name]
    for case, theirs in zip(PARITY_CASES[name], parity.reference[name]["outputs"], strict=True):
        with torch.no_grad():
            ours = model(**parity.inputs[case], return_dict=True)
        assert_outputs_match(dict(ours), theirs, f"{name} {case}")


def test_we_load_the_references_checkpoints_and_compute_the_same(parity: Parity) -> None:
    padded, labelled = parity.reference["reference-checkpoint"]["outputs"]
    masked, info = AutoModelForMaskedLM.from_pretrained(parity.reference_folder, output_loading_info=True)
    assert not any(info.values()), info
    encoder, info = AutoModel.from_pretrained(parity.reference_folder, output_loading_info=True)
    assert not any(info.values()), info
    with torch.no_grad():
        assert_outputs_match(dict(masked(**parity.inputs["padded"], return_dict=True)), padded, "reference checkpoint")
        assert_outputs_match(
            dict(masked(**parity.inputs["masked_labels"], return_dict=True)), labelled, "reference checkpoint labelled"
        )
        hidden = encoder(**parity.inputs["padded"], return_dict=True).last_hidden_state
    assert max_abs_diff(hidden, padded["last_hidden_state"]) <= PARITY_TOLERANCE


def test_rotary_tables_are_bit_identical_to_the_references(parity: Parity) -> None:
    cos, sin = rotary_tables(8, 9000)
    for name in [*PARITY_CASES, "reference-checkpoint"]:
        assert torch.equal(cos, parity.reference[name]["freqs_cos"])
        assert torch.equal(sin, parity.reference[name]["freqs_sin"])
