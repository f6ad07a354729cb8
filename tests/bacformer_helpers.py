"""Shared by the Bacformer tests: tiny random models, and the reference implementation as a test oracle.

The oracle is the reference package (``bacformer==0.2.0``) in its own virtual environment, because it needs
``transformers<5`` while bacflow pins a newer one. The ``reference_python`` fixture creates that
environment once (about 2.5 minutes: torch, then bacformer and its dependencies from PyPI) at
``$BACFLOW_REFERENCE_VENV`` (default ``~/.cache/bacflow/reference-venv``) and reuses it afterwards; where
it cannot be created (no network), the parity tests are skipped. `run_reference` runs
``tests/reference_oracle.py`` in it, exchanging weights and tensors through files.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import PreTrainedModel

from bacflow.bacformer.modeling_bacformer import BacformerConfig
from bacflow.bacformer.modeling_bacformer_large import BacformerLargeConfig
from conftest import SHARED_DATA, gunzip_text

REFERENCE_VENV = Path(os.environ.get("BACFLOW_REFERENCE_VENV", Path.home() / ".cache" / "bacflow" / "reference-venv"))
ORACLE = Path(__file__).with_name("reference_oracle.py")
# torch first and alone: its pin selects the CPU build; bacformer would otherwise pull a CUDA torch.
REFERENCE_INSTALL = (["torch==2.13.0"], ["bacformer==0.2.0", "transformers<5", "requests"])
#: The ESM package's oracle of ESM-C (tests/esmc_oracle.py): esm 3.2.1 without its dependency pins, which would
#: pull a CUDA torch.
ESM_VENV = Path(os.environ.get("BACFLOW_ESM_VENV", Path.home() / ".cache" / "bacflow" / "esm-venv"))
ESM_INSTALL = (
    ["torch==2.13.0"],
    ["--no-deps", "esm==3.2.1.post1"],
    ["transformers<4.48.2", "attrs", "einops", "biotite>=1.0.0", "msgpack-numpy", "biopython", "brotli", "pandas"]
    + ["cloudpathlib", "tenacity", "zstd", "httpx", "requests"],
)
#: Every oracle's environment (venv, installs): what `python tests/build_oracles.py` makes ahead of the tests.
ORACLE_ENVIRONMENTS = ((REFERENCE_VENV, REFERENCE_INSTALL), (ESM_VENV, ESM_INSTALL))

#: The tiny geometry of the parity tests (head_dim 8).
TINY = {
    "num_hidden_layers": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_attention_heads": 4,
    "protein_clusters_vocab_size": 101,
}


#: The tiny Bacformer Large geometry of the parity tests (head_dim 8; 102 head classes: 101 families and END).
TINY_LARGE = {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 4, "protein_clusters_vocab_size": 102}


#: A real draft genome's proteins (Prodigal on E. faecalis TX0104: 3,145 proteins on 89 contigs).
REAL_PROTEINS = SHARED_DATA / "reference_outputs" / "Efaecalis_TX0104.drep-prodigal.faa.gz"


def real_contig_sizes() -> list[int]:
    """Proteins per contig of `REAL_PROTEINS`, contigs in file order (Prodigal names a protein <contig>_<n>)."""
    sizes: dict[str, int] = {}
    for header in gunzip_text(REAL_PROTEINS).split(">")[1:]:
        contig = header.split(" # ")[0].rsplit("_", 1)[0]
        sizes[contig] = sizes.get(contig, 0) + 1
    return list(sizes.values())


def tiny_config(**overrides: Any) -> BacformerConfig:
    return BacformerConfig(**{**TINY, **overrides})


def tiny_large_config(**overrides: Any) -> BacformerLargeConfig:
    return BacformerLargeConfig(**{**TINY_LARGE, **overrides})


def randomize(model: PreTrainedModel, seed: int) -> PreTrainedModel:
    """Give every parameter a random value (the default init leaves biases at 0 and norms at 1, which would
    hide mixed-up parameters); LayerNorm weights stay near 1. Returns the model in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator) * 0.1
            is_norm_weight = param.ndim == 1 and name.endswith("weight")
            param.copy_(1 + noise if is_norm_weight else noise)
    return model.eval()


def reference_environment(venv: Path = REFERENCE_VENV, install: tuple[list[str], ...] = REFERENCE_INSTALL) -> Path:
    """The Python of a reference's virtual environment `venv` (default the Bacformer reference's), created on
    first use by one ``pip install`` per list of `install`. Without PyPI the parity tests skip, or fail where
    ``BACFLOW_REQUIRE_ORACLES=1`` (CI sets it: parity with the references is the central correctness claim).
    One process builds it at a time; the others wait (CI builds the environments beside the unit tests)."""
    python = venv / "bin" / "python"
    ready = venv / ".bacflow-ready"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ready.exists():
            return python
        started = time.monotonic()
        commands = [[sys.executable, "-m", "venv", "--clear", str(venv)]]
        commands += [[str(python), "-m", "pip", "install", "-q", *packages] for packages in install]
        for command in commands:
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                required = os.environ.get("BACFLOW_REQUIRE_ORACLES") == "1"
                (pytest.fail if required else pytest.skip)(
                    f"cannot create the reference implementation's environment at {venv} (it needs PyPI): "
                    f"`{' '.join(command)}` failed: {result.stderr.strip()[-1000:]}"
                )
        ready.write_text(f"created in {time.monotonic() - started:.0f} s\n")
    return python


def run_reference(python: Path, jobs: list[dict[str, Any]], workdir: Path, oracle: Path = ORACLE) -> dict[str, Any]:
    """Run the `oracle` script's jobs (default ``tests/reference_oracle.py``) in one process; their results by name."""
    request, response = workdir / "oracle-request.pt", workdir / "oracle-response.pt"
    torch.save({"jobs": jobs}, request)
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["HF_HUB_OFFLINE"] = "1"
    result = subprocess.run(
        [str(python), str(oracle), str(request), str(response)], capture_output=True, text=True, cwd=workdir, env=env
    )
    assert result.returncode == 0, f"the reference oracle failed:\n{result.stderr[-4000:]}"
    return torch.load(response, weights_only=False)


#: Parity with the reference Bacformer, in float32: logits, losses and hidden states.
PARITY_TOLERANCE = 1e-5
#: The outputs compared with the reference's.
PARITY_KEYS = ("last_hidden_state", "logits", "loss")


def assert_outputs_match(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor], what: str) -> None:
    """Our model's outputs equal the reference's, within `PARITY_TOLERANCE`, for each of `PARITY_KEYS` the reference
    returned, and it returned at least one (a comparison of nothing would pass)."""
    assert theirs.keys() - {"attentions", "pooler_output"} <= ours.keys(), (theirs.keys(), ours.keys())
    compared = [key for key in PARITY_KEYS if key in theirs]
    assert compared, f"{what}: the reference returned none of {PARITY_KEYS}, only {sorted(theirs)}"
    for key in compared:
        delta = max_abs_diff(ours[key], theirs[key])
        print(f"{what} {key}: max |delta| = {delta:.2e}")
        assert delta <= PARITY_TOLERANCE, (what, key, delta)


def max_abs_diff(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    return (ours.float() - theirs.float()).abs().max().item() if ours.numel() else 0.0
