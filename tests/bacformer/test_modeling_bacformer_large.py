"""bacflow.bacformer.modeling_bacformer_large: geometry, loading beside base, behaviour, and parity with the reference.

Parity tests run the reference implementation (``bacformer==0.2.0``, ``modeling_large.py``) in its own environment
(see ``bacformer_helpers.py``) on the same random weights, in both directions: checkpoints saved here and loaded
there, and saved there (by its own config class and ``save_pretrained``) and loaded here through the Auto classes.
Tolerance: max |difference| <= 1e-5 in fp32.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM

from bacflow.bacformer.inputs import collate_inputs, protein_embeddings_to_inputs
from bacflow.bacformer.model_families import BASE, LARGE, family_of, family_of_config
from bacflow.bacformer.modeling_bacformer import BacformerConfig, BacformerForMaskedGM, BacformerModel
from bacflow.bacformer.modeling_bacformer_large import (
    BacformerLargeConfig,
    BacformerLargeForMaskedGM,
    BacformerLargeModel,
    apply_rotate_half,
)
from bacflow.embeddings.modeling_esmc import rotary_half_tables
from bacformer_helpers import (
    PARITY_TOLERANCE,
    TINY_LARGE,
    assert_outputs_match,
    max_abs_diff,
    randomize,
    run_reference,
    tiny_config,
    tiny_large_config,
)

PARITY_CASES = {
    "BacformerLargeModel": ["single", "padded", "padded_without_mask"],
    "BacformerLargeForMaskedGM": ["padded", "masked_labels", "no_targets"],
}


def genome(seed: int, contig_sizes: list[int], dim: int = 32) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [[rng.normal(size=dim).astype(np.float32) for _ in range(size)] for size in contig_sizes]


def large_inputs(contigs: list[list[np.ndarray]], **kwargs: Any) -> dict[str, torch.Tensor]:
    return protein_embeddings_to_inputs(contigs, bacformer_model_type="large", **kwargs)


def example_inputs() -> dict[str, dict[str, torch.Tensor]]:
    """A single genome, and a padded batch of two genomes of different lengths with and without a mask."""
    short, long = large_inputs(genome(1, [5, 3])), large_inputs(genome(2, [7, 2, 4]))
    padded = collate_inputs([short, long])
    unmasked = {key: value for key, value in padded.items() if key != "attention_mask"}
    return {"single": long, "padded": padded, "padded_without_mask": unmasked}


def with_labels(inputs: dict[str, torch.Tensor], seed: int, share: float = 0.4) -> dict[str, torch.Tensor]:
    """Inputs with family labels on some real proteins, whose vectors `mlm_mask` replaces by the mask vector."""
    generator = torch.Generator().manual_seed(seed)
    real = inputs["attention_mask"].bool()
    chosen = real & (torch.rand(real.shape, generator=generator) < share)
    labels = torch.where(chosen, torch.randint(0, 102, real.shape, generator=generator), -100)
    return {**inputs, "mlm_mask": chosen, "labels": labels}


# ---------------------------------------------------------------------------------------------- geometry


def test_parameter_counts_of_the_published_geometry() -> None:
    with torch.device("meta"):
        encoder = BacformerLargeModel(BacformerLargeConfig())
        masked = BacformerLargeForMaskedGM(BacformerLargeConfig())
    assert sum(p.numel() for p in encoder.parameters()) == 333_864_960
    assert sum(p.numel() for p in masked.parameters()) == 431_765_841


def test_state_dict_keys_and_shapes_are_the_references() -> None:
    with torch.device("meta"):
        shapes = {
            key: tuple(value.shape)
            for key, value in BacformerLargeForMaskedGM(BacformerLargeConfig()).state_dict().items()
        }
    layer = "bacformer.encoder.layers.29."
    assert shapes["bacformer.embeddings.mask_embed"] == (960,)
    assert shapes["bacformer.embeddings.linear.weight"] == (960, 960)
    assert shapes["bacformer.embeddings.contig_embeddings.weight"] == (1001, 960)
    assert shapes["bacformer.embeddings.norm1.bias"] == (960,)
    assert shapes[layer + "norm.weight"] == (960,) and layer + "norm.bias" not in shapes
    assert shapes[layer + "attn.layernorm_qkv.0.bias"] == (960,)
    assert shapes[layer + "attn.layernorm_qkv.1.weight"] == (2880, 960)
    assert shapes[layer + "attn.out_proj.weight"] == (960, 960) and layer + "attn.out_proj.bias" not in shapes
    assert shapes[layer + "attn.q_ln.weight"] == shapes[layer + "attn.k_ln.weight"] == (960,)
    assert shapes[layer + "ffn.0.bias"] == (960,)
    assert shapes[layer + "ffn.1.weight"] == (5120, 960) and shapes[layer + "ffn.3.weight"] == (960, 2560)
    assert shapes["bacformer.encoder.final_ln.weight"] == (960,) and "bacformer.encoder.final_ln.bias" not in shapes
    assert shapes["gm_head.1.weight"] == (1920, 960) and shapes["gm_head.3.bias"] == (1920,)
    assert shapes["gm_head.4.weight"] == (50001, 1920) and shapes["gm_head.4.bias"] == (50001,)
    assert len(shapes) == 6 + 30 * 11 + 1 + 6  # embeddings, 11 tensors per layer, final norm, head; no buffers


def test_norm_eps_are_the_references() -> None:
    model = BacformerLargeForMaskedGM(tiny_large_config())
    assert model.bacformer.embeddings.norm1.eps == 1e-12 and model.gm_head[3].eps == 1e-5
    layer = model.bacformer.encoder.layers[0]
    assert layer.norm.eps == layer.attn.layernorm_qkv[0].eps == layer.attn.q_ln.eps == layer.ffn[0].eps == 1e-5


# ---------------------------------------------------------------------------------------------- rotary


def test_rotary_turns_dimension_j_with_j_plus_half_the_head() -> None:
    # head_dim 4: inv_freq = (1, 0.01); dims (0, 2) and (1, 3) are the two rotated pairs (rotate-half, not LLaMA's).
    cos, sin = rotary_half_tables(4, 2, torch.device("cpu"))
    x = torch.tensor([1.0, 1.0, 0.0, 0.0]).expand(1, 2, 1, 4)  # (batch, seq, heads, head_dim)
    rotated = apply_rotate_half(x, cos, sin)
    expected = torch.tensor([math.cos(1), math.cos(0.01), math.sin(1), math.sin(0.01)])
    assert torch.allclose(rotated[0, 1, 0], expected, atol=1e-7)
    assert torch.equal(rotated[0, 0, 0], x[0, 0, 0])  # position 0 is not rotated


def test_bf16_model_runs_and_stays_near_fp32() -> None:
    model = randomize(BacformerLargeModel(tiny_large_config()), seed=0)
    inputs = example_inputs()["padded"]
    exact = model(**inputs, return_dict=True).last_hidden_state
    half = model.to(torch.bfloat16)(**inputs, return_dict=True).last_hidden_state
    assert half.dtype == torch.bfloat16
    assert max_abs_diff(half, exact) < 0.1  # bf16 rounding of activations only


# ---------------------------------------------------------------------------------------------- loading


@pytest.mark.parametrize(
    ("model_class", "auto_class"), [(BacformerLargeModel, AutoModel), (BacformerLargeForMaskedGM, AutoModelForMaskedLM)]
)
def test_save_and_load_round_trip(tmp_path: Path, model_class: type, auto_class: type) -> None:
    """transformers 5 loads on the meta device: nothing may come back uninitialised (reference issue #33)."""
    model = randomize(model_class(tiny_large_config()), seed=1)
    model.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert type(config) is BacformerLargeConfig and config.to_diff_dict() == model.config.to_diff_dict()
    assert family_of(tmp_path) is LARGE
    loaded, info = auto_class.from_pretrained(tmp_path, output_loading_info=True)
    assert type(loaded) is model_class and not any(info.values()), info
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert not list(loaded.buffers())  # the rotary tables are computed, not loaded
    inputs = with_labels(example_inputs()["padded"], seed=2)
    if model_class is BacformerLargeModel:
        inputs.pop("labels")
    for ours, theirs in zip(
        loaded(**inputs, return_dict=True).values(), model(**inputs, return_dict=True).values(), strict=True
    ):
        assert torch.equal(ours, theirs)


def test_base_folders_still_load_as_base_beside_large(tmp_path: Path) -> None:
    BacformerForMaskedGM(tiny_config()).save_pretrained(tmp_path / "base")
    BacformerLargeForMaskedGM(tiny_large_config()).save_pretrained(tmp_path / "large")
    assert (
        type(AutoConfig.from_pretrained(tmp_path / "base")) is BacformerConfig and family_of(tmp_path / "base") is BASE
    )
    assert type(AutoModel.from_pretrained(tmp_path / "base")) is BacformerModel
    assert type(AutoModel.from_pretrained(tmp_path / "large")) is BacformerLargeModel
    # A base class asked to load a Large folder says so.
    with pytest.raises(TypeError, match="BacformerLargeConfig"):
        BacformerModel.from_pretrained(tmp_path / "large")
    # The keys only Large's config has decide, whatever `architectures` says or when it is absent.
    config = json.loads((tmp_path / "large" / "config.json").read_text())
    for architectures in (["BacformerForMaskedGM"], None):
        (tmp_path / "large" / "config.json").write_text(json.dumps({**config, "architectures": architectures}))
        assert family_of(tmp_path / "large") is LARGE
        assert type(AutoConfig.from_pretrained(tmp_path / "large")) is BacformerLargeConfig
    # Where the keys do not decide, the architecture does.
    assert family_of_config({"architectures": ["BacformerLargeModel"]}) is LARGE
    assert family_of_config({"architectures": ["BacformerModel"]}) is family_of_config({}) is BASE


# ---------------------------------------------------------------------------------------------- behaviour


def test_nan_is_an_error() -> None:
    model = randomize(BacformerLargeModel(tiny_large_config()), seed=4)
    inputs = example_inputs()["padded"]
    with torch.no_grad():
        model.embeddings.linear.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN"):
        model(**inputs)


def test_padding_is_masked_for_keys_only() -> None:
    model = randomize(BacformerLargeModel(tiny_large_config()), seed=5)
    inputs = example_inputs()
    alone = model(**large_inputs(genome(1, [5, 3])))[0][0]
    padded = model(**inputs["padded"])[0]
    assert max_abs_diff(padded[0, : len(alone)], alone) < 1e-5  # float rounding of the padded batch's kernels
    assert torch.isfinite(padded[0, len(alone) :]).all()
    assert max_abs_diff(model(**inputs["padded_without_mask"])[0][0, : len(alone)], alone) > 1e-4


def test_mlm_mask_replaces_the_masked_proteins_vectors() -> None:
    model = randomize(BacformerLargeModel(tiny_large_config()), seed=6)
    inputs = with_labels(example_inputs()["single"], seed=7)
    inputs.pop("labels")
    changed = {**inputs, "protein_embeddings": inputs["protein_embeddings"].clone()}
    changed["protein_embeddings"][inputs["mlm_mask"]] += 5.0  # what a masked protein held does not matter
    assert torch.equal(model(**inputs)[0], model(**changed)[0])
    assert max_abs_diff(model(**{**inputs, "mlm_mask": None})[0], model(**inputs)[0]) > 1e-3


def test_masked_gm_computes_logits_only_on_labelled_rows_and_a_zero_loss_without_any() -> None:
    model = randomize(BacformerLargeForMaskedGM(tiny_large_config()), seed=8)
    inputs = with_labels(example_inputs()["padded"], seed=9)
    labels = inputs.pop("labels")
    full = model(**inputs, return_dict=True).logits
    output = model(**inputs, labels=labels, return_dict=True)
    labelled = labels != -100
    assert full.shape[-1] == 102 and output.logits.shape == (int(labelled.sum()), 102)
    assert torch.allclose(output.logits, full[labelled], atol=1e-6)
    assert torch.allclose(output.loss, torch.nn.functional.cross_entropy(full[labelled], labels[labelled]), atol=1e-6)
    model.train()
    loss = model(**inputs, labels=torch.full_like(labels, -100), return_dict=True).loss
    assert loss.item() == 0 and loss.requires_grad
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    inputs = with_labels(example_inputs()["padded"], seed=11)
    gradients = []
    for checkpointing in (False, True):
        model = randomize(
            BacformerLargeForMaskedGM(tiny_large_config(hidden_dropout_prob=0.0, final_layer_dropout_prob=0.0)), 12
        )
        if checkpointing:
            model.activation_checkpointing_enable()
            assert model.bacformer.encoder.layers[0].gradient_checkpointing
        model.train()
        model(**inputs, return_dict=True).loss.backward()
        gradients.append([p.grad for p in model.parameters()])
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(*gradients, strict=True))


def test_unsupported_requests_fail_clearly() -> None:
    with pytest.raises(NotImplementedError, match="causal"):
        BacformerLargeModel(tiny_large_config(is_causal_gm=True))
    model = BacformerLargeModel(tiny_large_config()).eval()
    inputs = example_inputs()["single"]
    with pytest.raises(NotImplementedError, match="is_causal"):
        model(**inputs, is_causal=True)
    with pytest.raises(NotImplementedError, match="attention weights"):
        model(**inputs, return_attn_weights=True)


# ---------------------------------------------------------------------------------------------- parity


@dataclass
class Parity:
    inputs: dict[str, dict[str, torch.Tensor]]
    ours: dict[str, Any]  # models saved here, by class name
    reference: dict[str, Any]  # the oracle's results by job name
    reference_folder: Path  # a BacformerLargeForMaskedGM checkpoint saved by the reference


@pytest.fixture(scope="module")
def parity(reference_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Parity:
    """One oracle run: the reference loads the checkpoints saved here and runs them; it also saves a checkpoint
    of its own (its config class and save_pretrained) from random weights and runs that."""
    workdir = tmp_path_factory.mktemp("large-parity")
    inputs = example_inputs()
    inputs["masked_labels"] = with_labels(inputs["padded"], seed=13)
    inputs["no_targets"] = {**inputs["padded"], "labels": torch.full_like(inputs["padded"]["contig_ids"], -100)}
    ours, jobs = {}, []
    for seed, model_class in enumerate((BacformerLargeModel, BacformerLargeForMaskedGM)):
        name = model_class.__name__
        ours[name] = randomize(model_class(tiny_large_config()), seed=20 + seed)
        ours[name].save_pretrained(workdir / name)
        cases = [inputs[case] for case in PARITY_CASES[name]]
        jobs.append(dict(kind="forward", name=name, model=name, folder=str(workdir / name), inputs=cases))
    theirs = randomize(BacformerLargeForMaskedGM(tiny_large_config()), seed=30)
    folder = workdir / "saved-by-reference"
    # The reference's own config: only the geometry is passed, its config class fills the rest.
    state = dict(config=dict(TINY_LARGE), state_dict=theirs.state_dict())
    jobs.append(dict(kind="save", name="save", model="BacformerLargeForMaskedGM", folder=str(folder), **state))
    cases = [inputs["padded"], inputs["masked_labels"]]
    jobs.append(
        dict(
            kind="forward",
            name="reference-checkpoint",
            model="BacformerLargeForMaskedGM",
            folder=str(folder),
            inputs=cases,
        )
    )
    return Parity(inputs, ours, run_reference(reference_python, jobs, workdir), folder)


@pytest.mark.parametrize("name", list(PARITY_CASES))
def test_the_reference_loads_our_checkpoints_and_computes_the_same(parity: Parity, name: str) -> None:
    model = parity.ours[name]
    for case, theirs in zip(PARITY_CASES[name], parity.reference[name]["outputs"], strict=True):
        with torch.no_grad():
            ours = model(**parity.inputs[case], return_dict=True)
        assert_outputs_match(dict(ours), theirs, f"{name} {case}")


def test_we_load_the_references_checkpoints_and_compute_the_same(parity: Parity) -> None:
    padded, labelled = parity.reference["reference-checkpoint"]["outputs"]
    saved = json.loads((parity.reference_folder / "config.json").read_text())
    assert saved["architectures"] == ["BacformerLargeForMaskedGM"] and saved["model_type"] == "bacformer"
    assert family_of(parity.reference_folder) is LARGE
    masked, info = AutoModelForMaskedLM.from_pretrained(parity.reference_folder, output_loading_info=True)
    assert type(masked) is BacformerLargeForMaskedGM and not any(info.values()), info
    encoder, info = AutoModel.from_pretrained(parity.reference_folder, output_loading_info=True)
    assert type(encoder) is BacformerLargeModel and not any(info.values()), info
    case = parity.inputs["masked_labels"]
    with torch.no_grad():
        assert_outputs_match(dict(masked(**parity.inputs["padded"], return_dict=True)), padded, "reference checkpoint")
        # The reference's argument names, as keywords.
        output = masked(
            protein_embeddings=case["protein_embeddings"],
            contig_ids=case["contig_ids"],
            attention_mask=case["attention_mask"],
            mlm_mask=case["mlm_mask"],
            labels=case["labels"],
            return_dict=True,
        )
        assert_outputs_match(dict(output), labelled, "reference checkpoint labelled")
        hidden = encoder(
            protein_embeddings=case["protein_embeddings"],
            contig_ids=case["contig_ids"],
            attention_mask=case["attention_mask"],
        )[0]
    assert max_abs_diff(hidden, padded["last_hidden_state"]) <= PARITY_TOLERANCE
