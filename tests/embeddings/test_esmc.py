"""ESM-C against EvolutionaryScale's own implementation (the ``esm`` package) on real proteins: tokens, last
hidden states and the reference recipe's vectors; loading ESM++-style folders strictly; the embedder with the
tiny ESM-C; recipe keys of their own.

The oracle runs in its own virtual environment (``$BACFLOW_ESM_VENV``, default ``~/.cache/bacflow/esm-venv``),
created on first use (about a minute from PyPI): torch 2.13 (CPU) first, then ``esm==3.2.1.post1`` without
its declared dependencies (they would upgrade torch to a CUDA build through torchvision and torchtext), then
what importing ``esm.models.esmc`` needs (including ``httpx``, which ``esm`` does not declare). Without PyPI
the parity tests are skipped.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel

from bacflow.core.errors import InputError
from bacflow.core.models import resolve_model
from bacflow.core.provenance import canonical_json
from bacflow.embeddings.embedder import Embedder, EsmTokens
from bacflow.embeddings.encoders import encoder_family, load_encoder
from bacflow.embeddings.esm_encoder import EsmEncoder
from bacflow.embeddings.esmc_model import ESMCEncoder, load_esmc, load_esmc_tokenizer
from bacflow.embeddings.modeling_esmc import ESMCModel, ESMplusplusConfig
from bacflow.embeddings.recipe import EmbeddingRecipe
from bacflow.embeddings.tiny import ESMC_GEOMETRIES
from bacformer_helpers import ESM_INSTALL, ESM_VENV, randomize, reference_environment, run_reference
from conftest import needs_shared
from esm_helpers import many_real_proteins, real_proteins

pytestmark = needs_shared
CPU = torch.device("cpu")
ORACLE = Path(__file__).parents[1] / "esmc_oracle.py"
#: (d_model, n_heads, n_layers): the tiny model's (ESM-C's head width, 64), and a narrower head (16).
GEOMETRIES = {"tiny": (128, 2, 2), "d64": (64, 4, 2)}
#: Characters outside the vocabulary (single, in runs, at the ends, non-ASCII), and every letter of the
#: vocabulary in ESM-C's id order.
ODD = ["AJJA", "JMKJ", "A*B*C", "*", "MK<UNK>A", "MKÄA", "MKÄÄJA", "LAGVSERTIDPKQNFYMHWCXBUZO.-|"]


def esm_plusplus_folder(folder: Path, geometry: tuple[int, int, int], state_dict: dict, tokenizer_from: Path) -> Path:
    """A folder laid out as an ESM++ hub snapshot: its config.json keys (remote-code auto_map included),
    fp32 safetensors of the ESM-C state dict, and the tokenizer files EsmSequenceTokenizer saves."""
    width, heads, layers = geometry
    shutil.copytree(tokenizer_from, folder)
    config = {
        "architectures": ["ESMplusplusForMaskedLM"],
        "auto_map": {
            "AutoConfig": "modeling_esm_plusplus.ESMplusplusConfig",
            "AutoModel": "modeling_esm_plusplus.ESMplusplusModel",
            "AutoModelForMaskedLM": "modeling_esm_plusplus.ESMplusplusForMaskedLM",
        },
        "model_type": "ESMplusplus",
        "vocab_size": 64,
        "hidden_size": width,
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_labels": 2,
        "problem_type": None,
        "dropout": 0.0,
        "initializer_range": 0.02,
        "attn_backend": "sdpa",
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": "4.48.1",
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    save_file({key: value.contiguous() for key, value in state_dict.items()}, folder / "model.safetensors")
    return folder


@pytest.fixture(scope="module")
def esm_python() -> Path:
    return reference_environment(ESM_VENV, ESM_INSTALL)


@pytest.fixture(scope="module")
def oracle(esm_python: Path, tmp_path_factory) -> dict:
    """The oracle's tokens of the real and odd proteins, its tokenizer files, and per geometry the reference
    recipe run on random weights made here (every parameter random, so that swapped ones would show), with
    the proteins longest first, as the reference batches them; plus those proteins and an ESM++-style folder
    of the oracle's state dict."""
    work = tmp_path_factory.mktemp("esmc-oracle")
    proteins = sorted(real_proteins(), key=len, reverse=True)
    jobs = [
        {"kind": "tokens", "name": "tokens", "sequences": [*real_proteins(), *ODD], "max_length": 1024},
        {"kind": "save_tokenizer", "name": "tokenizer", "folder": str(work / "tokenizer")},
    ]
    for seed, (name, (width, heads, layers)) in enumerate(GEOMETRIES.items()):
        config = ESMplusplusConfig(hidden_size=width, num_attention_heads=heads, num_hidden_layers=layers)
        state_dict = randomize(ESMCModel(config), seed).state_dict()
        jobs.append(
            {"kind": "recipe", "name": name, "d_model": width, "n_heads": heads, "n_layers": layers,
             "state_dict": state_dict, "sequences": proteins, "batch_size": 64, "max_length": 1024}
        )  # fmt: skip
    results = run_reference(esm_python, jobs, work, oracle=ORACLE)
    for name, geometry in GEOMETRIES.items():
        state_dict = results[name]["state_dict"]
        results[name]["folder"] = esm_plusplus_folder(work / name, geometry, state_dict, work / "tokenizer")
    results["proteins"] = proteins
    return results


def embedder(model_path: Path, token_budget: int = 4096, dtype: torch.dtype = torch.float32) -> Embedder:
    encoder, tokenizer = load_encoder(model_path, CPU, dtype)
    return Embedder(encoder, tokenizer, pooling="mean", max_length=1024, token_budget=token_budget)


@pytest.mark.parametrize("source", ["esm++ folder", "tiny"])
def test_tokens_are_the_esm_packages(oracle: dict, tiny_esmc: Path, source: str):
    """ESM-C's tokenizer as ESM++ ships it (saved by the esm package) and as bacflow writes it: the embedder's
    lookup table and the tokenizer itself give the esm package's ids, on real proteins (over 1,022 aa
    truncated, U, B, Z, X) and on characters outside the vocabulary (each its own <unk>)."""
    folder = oracle["tiny"]["folder"] if source == "esm++ folder" else tiny_esmc
    tokenizer = load_esmc_tokenizer(folder)
    tokens = EsmTokens(tokenizer, max_length=1024)
    assert not tokens.fuse_unknown
    sequences = [*real_proteins(), *ODD]
    assert sum(len(sequence) > 1022 for sequence in sequences) >= 20
    for sequence, expected in zip(sequences, oracle["tokens"], strict=True):
        ids, count, truncated = tokens.encode([sequence])
        assert ids[0].tolist() == expected, sequence
        assert count[0] == len(expected) and truncated[0] == (len(sequence) > 1022)
        assert tokenizer(sequence, truncation=True, max_length=1024)["input_ids"] == expected, sequence
    assert oracle["tokens"][-1][1:-1] == list(range(4, 32))  # every letter of the vocabulary, in id order


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_hidden_states_equal_the_esm_packages_esmc(oracle: dict, geometry: str):
    """The oracle's state dict, loaded strictly from an ESM++-style folder, run on the oracle's padded batches
    (lengths 52 to 1,024 tokens, truncated ones included): last hidden states of `ESMCModel` and of the
    encoder the embedder runs (`ESMCEncoder`, padded and packed) within 1e-5 in float32 (measured: the model
    identical, the same operations in the same order; the encoder, whose roundings differ in places, up to
    6.0e-6 padded and 7.3e-6 packed)."""
    model, _ = load_esmc(oracle[geometry]["folder"], CPU, torch.float32)
    encoders = {"padded": ESMCEncoder(model, packed=False), "packed": ESMCEncoder(model, packed=True)}
    worst = dict.fromkeys(["model", *encoders], 0.0)
    with torch.inference_mode():
        for batch in oracle[geometry]["batches"]:
            real, expected = batch["mask"], batch["hidden"][batch["mask"]]
            hidden = {"model": model(batch["input_ids"], attention_mask=real).last_hidden_state}
            hidden |= {name: encoder(batch["input_ids"], real) for name, encoder in encoders.items()}
            for name, ours in hidden.items():
                worst[name] = max(worst[name], (ours[real] - expected).abs().max().item())
    assert max(worst.values()) <= 1e-5, worst
    assert max(batch["mask"].sum(1).max().item() for batch in oracle[geometry]["batches"]) == 1024


def test_vectors_equal_the_reference_recipe(oracle: dict):
    """bacflow's embedder (its own batches under a token budget) against the reference recipe run by the esm
    package (batches of 64 by length, padded to the longest, mean over the attention mask)."""
    proteins = oracle["proteins"]
    vectors, tokens, truncated = embedder(oracle["tiny"]["folder"]).embed(proteins)
    assert np.abs(vectors - oracle["tiny"]["vectors"].numpy()).max() <= 1e-5
    assert truncated.tolist() == [len(protein) > 1022 for protein in proteins]
    assert tokens.tolist() == [min(len(protein), 1022) + 2 for protein in proteins]


def test_auto_classes_load_esm_plusplus_folders_without_remote_code(oracle: dict):
    folder = oracle["tiny"]["folder"]
    assert "auto_map" in json.loads((folder / "config.json").read_text())
    model = AutoModel.from_pretrained(folder)  # no trust_remote_code
    assert isinstance(model, ESMCModel) and model.config.num_hidden_layers == 2


@pytest.fixture(scope="module")
def baseline(tiny_esmc: Path) -> np.ndarray:
    return embedder(tiny_esmc).embed(real_proteins())[0]


@pytest.mark.parametrize("budget", [1, 1500, 200_000])
def test_vectors_do_not_depend_on_batch_composition(tiny_esmc: Path, baseline: np.ndarray, budget: int):
    # The extremes (one protein per batch; all in one batch padded to 1,024 tokens) are slow: every third
    # protein for them (long ones and rare residues included).
    chosen = np.arange(len(real_proteins()))[:: 1 if budget == 1500 else 3]
    vectors, _, _ = embedder(tiny_esmc, token_budget=budget).embed([real_proteins()[i] for i in chosen])
    assert np.abs(vectors - baseline[chosen]).max() <= 1e-5


def test_bfloat16_vectors_stay_within_tolerance_of_float32_on_533_real_proteins(tiny_esmc: Path):
    """The bfloat16 recipe (dtype auto on GPUs and on CPUs with native bfloat16) against float32, protein
    by protein: cosine >= 0.9999 and max |difference| <= 5e-2 (measured: 0.99997 and 0.021, mean 0.0037,
    for vectors whose largest entries are ~3.3). On a CPU without native bfloat16 it is emulated (~45 s
    here): slower, same values."""
    proteins = list(many_real_proteins())
    exact = embedder(tiny_esmc, token_budget=8192).embed(proteins)[0]
    rounded_embedder = embedder(tiny_esmc, token_budget=8192, dtype=torch.bfloat16)
    assert rounded_embedder.encoder.dtype == torch.bfloat16
    rounded = rounded_embedder.embed(proteins)[0]
    cosine = (exact * rounded).sum(1) / np.linalg.norm(exact, axis=1) / np.linalg.norm(rounded, axis=1)
    assert len(proteins) >= 500 and np.abs(exact).max() > 1 and rounded.dtype == np.float32
    assert cosine.min() >= 0.9999 and np.abs(rounded - exact).max() <= 5e-2


@pytest.mark.parametrize(
    ("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.bfloat16, 0.125)], ids=["float32", "bfloat16"]
)
def test_encoder_equals_esmc_model_packed_or_padded(tiny_esmc: Path, dtype: torch.dtype, tolerance: float):
    """`ESMCEncoder` padded and packed (no padding; SDPA over jagged nested tensors on the CPU, the GPU's
    default layout) against `ESMCModel`, the module checked against the esm package, on one batch of 38 to
    1,024 tokens; bfloat16 within 4 ulps of its values (up to ~4.8: ulp 0.031; measured 0.0625 against the
    model and 0.055 between packed and padded). Every parameter is random: the tiny model's norms are all
    1 and would hide mixed-up query and key norms."""
    width, heads, layers = GEOMETRIES["tiny"]
    config = ESMplusplusConfig(hidden_size=width, num_attention_heads=heads, num_hidden_layers=layers)
    model = randomize(ESMCModel(config), 7).to(dtype)
    proteins = sorted(real_proteins()[:40], key=len)[::8] + [max(real_proteins(), key=len)]
    ids, tokens, _ = EsmTokens(load_esmc_tokenizer(tiny_esmc), max_length=1024).encode(proteins)
    ids, real = torch.as_tensor(ids), torch.arange(ids.shape[1]) < torch.as_tensor(tokens)[:, None]
    with torch.inference_mode():
        expected = model(ids, attention_mask=real).last_hidden_state.float()
        padded = ESMCEncoder(model, packed=False)(ids, real).float()
        packed = ESMCEncoder(model, packed=True)(ids, real).float()
    assert real.sum(1).max() == 1024 and real.sum(1).min() < 100 and expected[real].abs().max() > 2
    assert (padded[real] - expected[real]).abs().max() <= tolerance
    assert (packed[real] - padded[real]).abs().max() <= tolerance
    assert (packed[~real] == 0).all()
    assert not ESMCEncoder(model).packed  # padded is the CPU's default, packed CUDA's


def test_load_encoder_picks_the_family_from_config_json(tiny_esmc: Path, tiny_esm: Path):
    assert (encoder_family(tiny_esmc), encoder_family(tiny_esm)) == ("esmc", "esm2")
    esmc, _ = load_encoder(tiny_esmc, CPU, torch.float32)
    esm2, _ = load_encoder(tiny_esm, CPU, torch.float32)
    assert isinstance(esmc, ESMCEncoder) and isinstance(esm2, EsmEncoder)
    assert (esmc.hidden_size, esmc.device, esmc.dtype) == (128, CPU, torch.float32)


def test_recipe_keys_differ_between_esm2_and_esmc_and_esm2_keys_are_unchanged():
    settings = dict(model="local:model", revision="sha256:" + "0" * 32, local=True, dtype="float32", pooling="mean")
    settings |= dict(max_length=1024, vector_dtype="float32")
    esm2, esmc = EmbeddingRecipe(**settings), EmbeddingRecipe(**settings, encoder="esmc")
    assert esm2.key != esmc.key
    # ESM-2's identity is what it was before ESM-C existed, so existing stores keep their folders.
    assert canonical_json(esm2.identity()) == canonical_json({**settings, "model": None})
    assert "EsmModel" in esm2.description()["architecture"] and "EsmTokenizer" in esm2.description()["tokens"]
    assert "ESM-C" in esmc.description()["architecture"] and "EsmSequenceTokenizer" in esmc.description()["tokens"]
    with pytest.raises(ValueError, match="encoder in"):
        EmbeddingRecipe(**settings, encoder="esm3")


def test_the_tiny_esmc_is_marked_random_and_its_checksum_covers_the_tokenizer(tiny_esmc: Path, tmp_path: Path):
    config = json.loads((tiny_esmc / "config.json").read_text())
    assert config["bacflow_random_init"] and config["model_type"] == "ESMplusplus"
    assert ESMC_GEOMETRIES["tiny"]["hidden_size"] == config["hidden_size"]
    copy = shutil.copytree(tiny_esmc, tmp_path / "copy")
    assert resolve_model(str(copy)).revision == resolve_model(str(tiny_esmc)).revision
    tokenizer = json.loads((copy / "tokenizer.json").read_text())
    tokenizer["truncation"] = {"direction": "Left", "max_length": 5, "strategy": "LongestFirst", "stride": 0}
    (copy / "tokenizer.json").write_text(json.dumps(tokenizer))
    assert resolve_model(str(copy)).revision != resolve_model(str(tiny_esmc)).revision


# Refusals: each one InputError naming the folder.


def test_missing_weights_are_refused(tiny_esmc: Path, tmp_path: Path):
    partial = shutil.copytree(tiny_esmc, tmp_path / "partial")
    weights = load_file(partial / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "blocks.1." not in k}, partial / "model.safetensors")
    with pytest.raises(
        InputError, match=r"partial: its weights are not the ESM-C layout.*missing transformer\.blocks\.1"
    ):
        load_esmc(partial, CPU, torch.float32)


def test_weights_of_another_geometry_are_refused(tiny_esmc: Path, tmp_path: Path):
    wrong = shutil.copytree(tiny_esmc, tmp_path / "wrong")
    config = json.loads((wrong / "config.json").read_text())
    (wrong / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1, "hidden_size": 64}))
    with pytest.raises(InputError, match="wrong: its weights"):
        load_esmc(wrong, CPU, torch.float32)


def test_another_model_type_is_refused(tiny_esm: Path, tmp_path: Path):
    with pytest.raises(InputError, match="holds a 'esm' model, not ESM-C"):
        load_esmc(tiny_esm, CPU, torch.float32)
    bert = shutil.copytree(tiny_esm, tmp_path / "bert")
    config = json.loads((bert / "config.json").read_text())
    (bert / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    with pytest.raises(InputError, match="bert holds a 'bert' model, neither ESM-2 .* nor ESM-C"):
        load_encoder(bert, CPU, torch.float32)


def test_a_tokenizer_that_is_not_esmcs_is_refused(tiny_esmc: Path, tmp_path: Path):
    folder = shutil.copytree(tiny_esmc, tmp_path / "tokenizer")
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    vocab["L"], vocab["A"] = vocab["A"], vocab["L"]
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(InputError, match="tokenizer: tokenizer.json does not hold ESM-C's vocabulary"):
        load_esmc(folder, CPU, torch.float32)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(InputError, match="tokenizer: no tokenizer.json"):
        load_esmc(folder, CPU, torch.float32)


def test_broken_weights_fail_the_probe(tiny_esmc: Path, tmp_path: Path):
    broken = shutil.copytree(tiny_esmc, tmp_path / "broken")
    weights = load_file(broken / "model.safetensors")
    weights["transformer.blocks.0.ffn.1.weight"] = torch.full_like(
        weights["transformer.blocks.0.ffn.1.weight"], float("nan")
    )
    save_file(weights, broken / "model.safetensors")
    with pytest.raises(InputError, match="NaN or infinite"):
        embedder(broken).check_probe(str(broken))
