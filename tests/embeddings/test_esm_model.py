"""Finding and loading ESM-2 checkpoints: hub ids (from the cache, offline, without network), local
folders (checksums, recipe keys), and clear errors for missing or wrong models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertModel

from bacflow.core.errors import InputError
from bacflow.core.models import CPU_BF16_ENV, choose_device, folder_checksum, resolve_model
from bacflow.embeddings.esm_model import load_esm
from bacflow.embeddings.recipe import EmbeddingRecipe
from bacflow.embeddings.tiny import ESM2_VOCAB, build_esm2

HUB_ID = "bacflow-tests/esm2-tiny"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache, used instead of the user's; hub calls go to a closed local port."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return cache


def cache_model(cache: Path, model: Path) -> Path:
    """Put `model` into `cache` as huggingface_hub lays out a downloaded snapshot of HUB_ID at COMMIT."""
    repo = cache / f"models--{HUB_ID.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    shutil.copytree(model, repo / "snapshots" / COMMIT)
    return repo / "snapshots" / COMMIT


def test_hub_id_in_the_cache_resolves_offline(tiny_esm: Path, hub_cache: Path, monkeypatch: pytest.MonkeyPatch):
    snapshot = cache_model(hub_cache, tiny_esm)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    source = resolve_model(HUB_ID)
    assert (source.model, source.path, source.revision, source.local) == (HUB_ID, str(snapshot), COMMIT, False)
    assert resolve_model(HUB_ID, revision=COMMIT) == source
    model, _ = load_esm(source.path, torch.device("cpu"), torch.float32)
    assert model.config.hidden_size == 48


@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE", "no-network"])
def test_uncached_hub_id_without_network_says_how_to_use_a_folder(hub_cache: Path, monkeypatch, offline: bool):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    with pytest.raises(InputError) as error:
        resolve_model("facebook/esm2_t12_35M_UR50D")
    message = str(error.value)
    assert "facebook/esm2_t12_35M_UR50D" in message and str(hub_cache) in message
    assert "local folder" in message and "hf download facebook/esm2_t12_35M_UR50D" in message


def test_missing_folder(tmp_path: Path):
    with pytest.raises(InputError, match="neither a folder"):
        resolve_model(str(tmp_path / "no" / "such" / "model"))


def test_revision_is_for_hub_ids_only(tiny_esm: Path):
    with pytest.raises(InputError, match="applies to hub ids"):
        resolve_model(str(tiny_esm), revision="main")


def test_folder_checksum_follows_the_weights_not_the_path(tiny_esm: Path, tmp_path: Path):
    copy = shutil.copytree(tiny_esm, tmp_path / "copy")
    assert folder_checksum(copy) == folder_checksum(tiny_esm)
    other = build_esm2(tmp_path / "seed1", seed=1)
    assert folder_checksum(other) != folder_checksum(tiny_esm)

    def recipe(folder: Path, **changes) -> EmbeddingRecipe:
        source = resolve_model(str(folder))
        settings = dict(dtype="float32", pooling="mean", max_length=1024, vector_dtype="float32") | changes
        return EmbeddingRecipe(model=source.label, revision=source.revision, local=True, **settings)

    assert recipe(copy).key == recipe(tiny_esm).key != recipe(other).key
    # Random weights are known by their checksum like any others: saying so in the description changes no key.
    assert recipe(tiny_esm, random_init=True).key == recipe(tiny_esm).key
    assert recipe(tiny_esm, random_init=True).description()["random_init"]
    # What outputs write names the folder, never its path.
    assert recipe(copy).model == "local:copy" and str(tmp_path) not in json.dumps(recipe(copy).description())
    for change in (
        {"dtype": "bfloat16"},
        {"pooling": "mean_residues"},
        {"max_length": 512},
        {"vector_dtype": "float16"},
    ):
        assert recipe(tiny_esm, **change).key != recipe(tiny_esm).key, change
    hub = EmbeddingRecipe(HUB_ID, COMMIT, False, "float32", "mean", 1024, "float32")
    assert (
        hub.key.startswith("esm2-tiny-")
        and hub.key != EmbeddingRecipe(HUB_ID, "1" * 40, False, "float32", "mean", 1024, "float32").key
    )


def test_wrong_architecture(tmp_path: Path):
    folder = tmp_path / "bert"
    BertModel(
        BertConfig(vocab_size=33, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    ).save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(ESM2_VOCAB) + "\n")
    with pytest.raises(InputError, match="holds a 'bert' model.*not ESM-2"):
        load_esm(folder, torch.device("cpu"), torch.float32)


def test_folder_without_config_or_weights(tiny_esm: Path, tmp_path: Path):
    no_weights = shutil.copytree(tiny_esm, tmp_path / "no-weights")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(InputError, match="no weights"):
        resolve_model(str(no_weights))
    with pytest.raises(InputError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_missing_encoder_weights_are_an_error_not_random(tiny_esm: Path, tmp_path: Path):
    partial = shutil.copytree(tiny_esm, tmp_path / "partial")
    weights = load_file(partial / "model.safetensors")
    save_file(
        {k: v for k, v in weights.items() if ".layer.1." not in k},
        partial / "model.safetensors",
        metadata={"format": "pt"},
    )
    with pytest.raises(InputError, match="weights missing"):
        load_esm(partial, torch.device("cpu"), torch.float32)


def test_weights_of_the_wrong_shape(tiny_esm: Path, tmp_path: Path):
    wrong = shutil.copytree(tiny_esm, tmp_path / "wrong")
    build_esm2(tmp_path / "other-geometry", geometry="t12_35M")
    shutil.copy(tmp_path / "other-geometry" / "model.safetensors", wrong / "model.safetensors")
    with pytest.raises(InputError, match="wrong shape|do not load"):
        load_esm(wrong, torch.device("cpu"), torch.float32)


@pytest.mark.parametrize(
    ("bf16", "requested", "expected"),
    [(True, "auto", "bfloat16"), (False, "auto", "float16"), (True, "float32", "float32")],
)
def test_embeds_on_the_gpu_with_the_most_free_memory(
    monkeypatch: pytest.MonkeyPatch, bf16: bool, requested: str, expected: str
):
    free_bytes = {0: 2 << 30, 1: 70 << 30, 2: 30 << 30}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(free_bytes))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index: (free_bytes[index], 80 << 30))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
    device, dtype, _ = choose_device(requested)
    assert (device, dtype) == (torch.device("cuda", 1), expected)


@pytest.mark.parametrize(
    ("flags", "expected", "why"),
    [
        ({"avx2", "avx512_bf16", "amx_bf16", "amx_tile"}, "bfloat16", "AMX-BF16"),
        ({"avx2", "avx512f", "avx512_bf16"}, "bfloat16", "AVX512-BF16"),
        ({"avx2", "avx512f"}, "float32", "without native bfloat16"),
    ],
)
def test_dtype_auto_on_the_cpu_is_bfloat16_only_with_native_bfloat16(
    monkeypatch: pytest.MonkeyPatch, flags: set[str], expected: str, why: str
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv(CPU_BF16_ENV, raising=False)
    monkeypatch.setattr("bacflow.core.models._cpu_flags", lambda: flags)
    device, dtype, reason = choose_device("auto")
    assert (device, dtype) == (torch.device("cpu"), expected) and why in reason
    assert choose_device("float32")[1] == "float32"


def test_the_cpu_bfloat16_detection_reads_this_machine_and_yields_to_the_override(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv(CPU_BF16_ENV, raising=False)
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    native = " amx_bf16" in flags or " avx512_bf16" in flags
    assert choose_device("auto")[1] == ("bfloat16" if native else "float32")
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    assert choose_device("auto")[1:] == ("bfloat16", f"auto: CPU with native bfloat16 ({CPU_BF16_ENV}=1)")
    monkeypatch.setenv(CPU_BF16_ENV, "0")
    assert choose_device("auto")[1] == "float32"
    monkeypatch.setenv(CPU_BF16_ENV, "yes")
    with pytest.raises(InputError, match=CPU_BF16_ENV):
        choose_device("auto")
