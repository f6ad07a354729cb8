"""Finding a model checkpoint (ESM-2 or Bacformer): a Hugging Face hub id or a local folder; and the device
a job runs it on.

A hub id is resolved to a commit of the hub repository and a snapshot folder in the Hugging Face cache,
downloading it when it is not cached and the hub can be reached. A local folder is identified by a
checksum of its config, vocabulary and weights. Either way the model is then loaded from a folder, so
that GPU jobs never need the network. Loading is each model family's own (`bacflow.embeddings.esm_model`,
`bacflow.bacformer.model`).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from bacflow.core.errors import InputError

if TYPE_CHECKING:
    import torch

log = logging.getLogger("bacflow")

#: What the workflow fetches of a hub repository: config, tokenizer and safetensors weights (hub ESM-2
#: repositories also hold TensorFlow and PyTorch-pickle copies of the same weights).
_HUB_FILES = ["*.json", "vocab.txt", "*.safetensors"]
_HUB_PICKLE_FILES = ["pytorch_model*.bin"]
_WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin")
#: What identifies a folder besides its weights: config and vocabulary (ESM-2's vocab.txt, ESM-C's tokenizer.json).
_IDENTITY_FILES = ("config.json", "vocab.txt", "tokenizer.json")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class ModelSource:
    """An ESM-2 checkpoint ready to load: the id the user gave, its folder, and its exact identity."""

    model: str  #: the hub id or folder as configured
    path: str  #: the folder holding config.json, vocab.txt and the weights
    revision: str  #: hub commit (40 hex digits), or "sha256:<hex>" of a local folder's files
    local: bool  #: a local folder, not a hub repository

    @property
    def label(self) -> str:
        """How outputs name the model: the hub id, or ``local:<folder name>``. Never a path, so that outputs do
        not depend on where a folder is (or on the outdir, which holds the tiny models); its checksum,
        `revision`, is what identifies a folder."""
        return f"local:{Path(self.path).name}" if self.local else self.model


#: What a model folder must hold, as messages name it; Bacformer passes its own (no vocabulary).
ESM_FOLDER_FILES = "config.json, vocab.txt and weights"


def offline_hint(model: str, setting: str = "embeddings", files: str = ESM_FOLDER_FILES) -> str:
    return (
        f"Download it where the hub can be reached (`hf download {model}`, into the same HF_HOME), or "
        f"set {setting}.model to a local folder holding its {files} "
        "(e.g. made with `hf download <id> --local-dir <folder>`)."
    )


def is_hub_id(model: str) -> bool:
    return bool(_HUB_ID.match(model)) and ".." not in model and "--" not in model


def resolve_model(
    model: str, revision: str | None = None, *, setting: str = "embeddings", files: str = ESM_FOLDER_FILES
) -> ModelSource:
    """Locate `model` (a folder, or a hub id at `revision`, default the hub's main branch). Messages name
    the config keys of the block `setting` and, for a local folder, the `files` it must hold."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        if revision:
            raise InputError(f"{setting}.revision {revision!r} applies to hub ids, not to the folder {model}")
        return ModelSource(model, str(folder.resolve()), folder_checksum(folder), local=True)
    if not is_hub_id(model):
        raise InputError(f"{setting}.model: {model} is neither a folder ({folder.resolve()}) nor a hub id")
    snapshot = _hub_snapshot(model, revision, setting, files)
    return ModelSource(model, str(snapshot), snapshot.name, local=False)


def planned_model(
    model: str, revision: str | None = None, *, setting: str = "embeddings", files: str = ESM_FOLDER_FILES
) -> tuple[str, str | None]:
    """(model, revision) for the jobs of a model stage: a folder as it is (each job checksums it), a hub
    id with `revision` resolved to a commit, downloading it into the cache when need be."""
    if Path(model).expanduser().is_dir():
        return model, None
    source = resolve_model(model, revision, setting=setting, files=files)
    return source.model, source.revision


def _hub_snapshot(model: str, revision: str | None, setting: str, files: str) -> Path:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError

    def fetch(patterns: list[str], local_only: bool) -> Path:
        return Path(snapshot_download(model, revision=revision, allow_patterns=patterns, local_files_only=local_only))

    try:
        cached = fetch(_HUB_FILES + _HUB_PICKLE_FILES, local_only=True)
        if _weight_files(cached):
            return cached
    except OSError:  # not in the cache (huggingface_hub's LocalEntryNotFoundError)
        pass
    where = f"the Hugging Face cache ({constants.HF_HUB_CACHE})"
    try:
        if constants.HF_HUB_OFFLINE:
            raise OSError("HF_HUB_OFFLINE is set")
        log.info("downloading %s (revision %s) from the hub into %s", model, revision or "main", where)
        snapshot = fetch(_HUB_FILES, local_only=False)
        if not _weight_files(snapshot):
            snapshot = fetch(_HUB_PICKLE_FILES, local_only=False)
    except (OSError, HfHubHTTPError, HFValidationError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(
            f"{setting}.model {model!r}"
            + (f" at revision {revision!r}" if revision else "")
            + f" is not in {where} and could not be fetched from the hub ({reason}); nor is it a folder "
            f"here ({Path(model).resolve()}). {offline_hint(model, setting, files)}"
        ) from None
    if not _weight_files(snapshot):
        raise InputError(f"hub repository {model!r} has no safetensors or PyTorch weights")
    return snapshot


def _weight_files(folder: Path) -> list[Path]:
    return sorted(path for pattern in _WEIGHT_GLOBS for path in folder.glob(pattern))


def folder_checksum(folder: str | Path) -> str:
    """`sha256:<hex>` over a model folder's config, vocabulary and weight files (names and contents)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise InputError(f"model folder {folder} has no config.json: not a Hugging Face model folder")
    weights = _weight_files(folder)
    if not weights:
        raise InputError(f"model folder {folder} has no weights (model.safetensors or pytorch_model.bin)")
    digest = hashlib.sha256()
    for path in [folder / name for name in _IDENTITY_FILES if (folder / name).is_file()] + weights:
        digest.update(f"{path.name}\0{path.stat().st_size}\0".encode())
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 24):
                digest.update(chunk)
    return f"sha256:{digest.hexdigest()[:32]}"


#: Set to 1 or 0 to say whether the CPU multiplies bfloat16 natively, instead of asking it (tests, or a
#: machine whose detection is wrong).
CPU_BF16_ENV = "BACFLOW_CPU_BF16"


class Placement(NamedTuple):
    """Where a job computes and in what dtype, and why that dtype (recorded in the outputs' metadata)."""

    device: torch.device
    dtype: str
    reason: str


def cpu_bf16_support() -> str | None:
    """The CPU's native bfloat16 matrix instructions ("AMX-BF16" or "AVX512-BF16"), or None where bfloat16
    would be emulated in float32 (slower than float32 itself). `CPU_BF16_ENV` overrides the detection."""
    import os

    forced = os.environ.get(CPU_BF16_ENV)
    if forced is not None:
        if forced not in ("0", "1"):
            raise InputError(f"{CPU_BF16_ENV}={forced!r}: set it to 1 or 0, or unset it")
        return f"{CPU_BF16_ENV}=1" if forced == "1" else None
    flags = _cpu_flags()
    if "amx_bf16" in flags:
        return "AMX-BF16"
    if "avx512_bf16" in flags:
        return "AVX512-BF16"
    return None


def _cpu_flags() -> set[str]:
    """The CPU's feature flags, as torch's cpuinfo sees them (the names of /proc/cpuinfo's "flags")."""
    import torch

    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is not None:
        return {name for name, present in capabilities().items() if present is True}
    try:
        with open("/proc/cpuinfo") as handle:
            return next((set(line.split(":", 1)[1].split()) for line in handle if line.startswith("flags")), set())
    except OSError:
        return set()


def choose_device(dtype: str) -> Placement:
    """The device to compute on and the compute dtype: a visible GPU (the one with the most free memory
    when several are visible), else the CPU. dtype "auto" means bfloat16 on GPUs that support it (float16
    on older ones) and on CPUs with native bfloat16 matrix instructions (`cpu_bf16_support`), float32 on
    other CPUs."""
    import torch

    if not torch.cuda.is_available():
        device = torch.device("cpu")
        if dtype != "auto":
            return Placement(device, dtype, "set in the config")
        support = cpu_bf16_support()
        if support:
            return Placement(device, "bfloat16", f"auto: CPU with native bfloat16 ({support})")
        return Placement(device, "float32", "auto: CPU without native bfloat16 (no AMX-BF16 or AVX512-BF16)")
    free = [torch.cuda.mem_get_info(index)[0] for index in range(torch.cuda.device_count())]
    device = torch.device("cuda", free.index(max(free)))
    if dtype != "auto":
        return Placement(device, dtype, "set in the config")
    if torch.cuda.is_bf16_supported():
        return Placement(device, "bfloat16", "auto: GPU with bfloat16")
    return Placement(device, "float16", "auto: GPU without bfloat16")
