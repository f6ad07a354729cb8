"""Which Bacformer to run: a hub id, a local folder, or a model this workflow pretrained; its output name;
loading it with checks (base or Large, `bacflow.bacformer.model_families`); and a tiny randomly initialised one
of either family for the demo and tests.

``bacformer.model`` takes three forms:

- a Hugging Face hub id (``macwiatrak/bacformer-masked-complete-genomes``), resolved to a commit and a
  snapshot in the Hugging Face cache exactly as ESM-2 checkpoints are (`bacflow.core.models.resolve_model`);
- a local folder holding ``config.json`` and the weights (a hub snapshot, or any ``save_pretrained`` output);
- ``pretrain:<run>``: the ``model/`` folder of this workflow's pretraining run ``<run>``
  (``<outdir>/pretrain/<run>/model``).

Results go to ``<outdir>/bacformer/<name>/``; `output_name` derives ``<name>`` from the model (see there).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

from bacflow.bacformer.constants import INFERENCE_SEP_TOKEN_ID
from bacflow.bacformer.model_families import family_named, family_of_config_class
from bacflow.core.errors import InputError

if TYPE_CHECKING:
    import torch

    from bacflow.bacformer.modeling_bacformer import BacformerModel
    from bacflow.bacformer.modeling_bacformer_large import BacformerLargeModel

log = logging.getLogger("bacflow")

PRETRAIN_PREFIX = "pretrain:"
#: The model `bacformer.tiny_model` builds: what `output_name` calls it.
TINY_NAME = "tiny-random"
#: Files a Bacformer folder must hold, as error messages name them.
FOLDER_FILES = "config.json and weights"
#: Written by bacflow's pretraining beside the weights; names the separator id the model was trained with.
PRETRAIN_DESCRIPTION = "bacflow_pretrain.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

#: The tiny models of the demo and tests, per family: the released architecture at a fraction of its size. Their
#: width is not here: it must equal the protein vectors' size (the input layer maps a vector to the hidden size).
TINY_GEOMETRY = {
    "base": dict(num_hidden_layers=2, num_attention_heads=4, intermediate_size=96, protein_clusters_vocab_size=128),
    # 129 head classes: 128 families and END, as the published Large counts 50,000 and END.
    "large": dict(num_hidden_layers=2, num_attention_heads=4, protein_clusters_vocab_size=129),
}


def pretrain_run(model: str) -> str | None:
    """The run name of a ``pretrain:<run>`` model, else None."""
    if not model.startswith(PRETRAIN_PREFIX):
        return None
    run = model.removeprefix(PRETRAIN_PREFIX)
    if not run or _UNSAFE.search(run) or run.startswith("."):
        raise InputError(
            f"bacformer.model {model!r}: the run name after 'pretrain:' must be letters, digits, '.', '_', '-'"
        )
    return run


def pretrain_model_folder(outdir: str | Path, run: str) -> Path:
    """Where the pretraining stage leaves the Hugging Face folder of run `run`."""
    return Path(outdir) / "pretrain" / run / "model"


def output_name(model: str, revision: str | None = None, *, tiny: str | None = None) -> str:
    """The folder name of a model's results under ``bacformer/``: safe characters only, stable for a model.

    - the tiny random model of family `tiny`: ``tiny-random`` (base), ``tiny-random-large``;
    - ``pretrain:<run>``: ``pretrain-<run>``;
    - a hub id ``org/name``: ``org--name`` (the Hugging Face cache's convention), plus ``--<revision>``
      when a revision is set;
    - a local folder: ``local-<folder name>-<8 hex digits of the SHA-256 of its absolute path>``, so two
      folders that share a name (``.../a/model``, ``.../b/model``) do not share results.
    """
    if tiny:
        return TINY_NAME if tiny == "base" else f"{TINY_NAME}-{tiny}"
    if (run := pretrain_run(model)) is not None:
        return f"pretrain-{run}"
    folder = Path(model).expanduser()
    if folder.is_dir():
        path = str(folder.resolve())
        return f"local-{_safe(folder.resolve().name)}-{hashlib.sha256(path.encode()).hexdigest()[:8]}"
    name = _safe(model.replace("/", "--"))
    return f"{name}--{_safe(revision)}" if revision else name


def _safe(text: str) -> str:
    return _UNSAFE.sub("_", text).strip("._") or "_"


def hidden_size(folder: str | Path) -> int:
    """The ``hidden_size`` in a Hugging Face model folder's config.json."""
    path = Path(folder) / "config.json"
    try:
        return int(json.loads(path.read_text())["hidden_size"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(f"{path}: no readable hidden_size ({error})") from None


def pretrained_separator(folder: str | Path) -> int | None:
    """The separator id a model folder says it was pretrained with (bacflow's pretraining), else None."""
    path = Path(folder) / PRETRAIN_DESCRIPTION
    if not path.is_file():
        return None
    try:
        return int(json.loads(path.read_text())["separator_token_id"])
    except (ValueError, KeyError, TypeError) as error:
        raise InputError(f"{path}: no readable separator_token_id ({error})") from None


def separator_id(setting: int | str, folder: str | Path) -> int:
    """``bacformer.sep_token_id``: an id, or "auto": the model's pretraining separator where bacflow
    pretrained it, else 2, what the published checkpoints were given at inference."""
    if setting != "auto":
        return int(setting)
    pretrained = pretrained_separator(folder)
    return INFERENCE_SEP_TOKEN_ID if pretrained is None else pretrained


def load_bacformer(
    folder: str | Path, device: torch.device, dtype: torch.dtype
) -> BacformerModel | BacformerLargeModel:
    """The encoder (eval mode) of a Bacformer folder, base (``BacformerModel``) or Large
    (``BacformerLargeModel``) as its config.json says, on `device` in `dtype`.

    A genome-modelling checkpoint (masked or causal, as published) gives its encoder; its head is dropped.
    Anything else, or a checkpoint lacking encoder weights (transformers would fill them at random), is an
    InputError naming the folder and the weights.
    """
    from transformers import AutoConfig
    from transformers.utils import logging as transformers_logging

    from bacflow.bacformer.modeling_bacformer import BacformerConfig, BacformerModel
    from bacflow.bacformer.modeling_bacformer_large import BacformerLargeConfig, BacformerLargeModel

    folder = Path(folder)
    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as error:
        raise InputError(f"model folder {folder}: unreadable config.json ({error})") from None
    encoders = {BacformerConfig: BacformerModel, BacformerLargeConfig: BacformerLargeModel}
    if type(config) not in encoders:
        raise InputError(
            f"model folder {folder} holds a {config.model_type!r} model, not Bacformer (model_type 'bacformer'); "
            "set bacformer.model to a Bacformer checkpoint"
        )
    family = family_of_config_class(type(config).__name__)
    # The genome-modelling head of published checkpoints is reported as unexpected keys; missing encoder
    # weights are checked below, so transformers' own report (and its progress bar) is silenced.
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        model, info = encoders[type(config)].from_pretrained(folder, dtype=dtype, output_loading_info=True)
    except (RuntimeError, OSError) as error:
        raise InputError(
            f"model folder {folder}: its weights do not load into a Bacformer {family.name} ({error})"
        ) from None
    finally:
        transformers_logging.set_verbosity(verbosity)
        transformers_logging.enable_progress_bar()
    problems = sorted(info["missing_keys"]) + [str(key) for key in info["mismatched_keys"]]
    if problems:
        raise InputError(
            f"model folder {folder}: {len(problems)} encoder weights missing or of the wrong shape (e.g. "
            f"{', '.join(problems[:3])}): not a complete Bacformer {family.name} checkpoint"
        )
    if getattr(config, "bacflow_random_init", False):
        log.warning("%s is a randomly initialised model: its vectors carry no biological meaning", folder)
    return model.to(device).eval()


def build_tiny_bacformer(out: str | Path, hidden_size: int, seed: int = 0, family: str = "base") -> Path:
    """Write a randomly initialised masked-genome-modelling Bacformer of `family` ("base" or "large";
    `TINY_GEOMETRY`, width `hidden_size`, the protein vectors' size) to the folder `out` with
    ``save_pretrained``, as the published checkpoints are laid out; return it."""
    import torch

    from bacflow.bacformer.modeling_bacformer import BacformerConfig, BacformerForMaskedGM
    from bacflow.bacformer.modeling_bacformer_large import BacformerLargeConfig, BacformerLargeForMaskedGM

    geometry = TINY_GEOMETRY[family_named(family).name]
    heads = geometry["num_attention_heads"]
    # Large's rotary embedding turns pairs of dimensions: its heads need an even width.
    if hidden_size % heads or (family == "large" and hidden_size // heads % 2):
        raise InputError(
            f"a tiny Bacformer {family} of width {hidden_size} (the protein vectors' size) cannot have {heads} "
            "attention heads"
        )
    config_class, model_class = {
        "base": (BacformerConfig, BacformerForMaskedGM),
        "large": (BacformerLargeConfig, BacformerLargeForMaskedGM),
    }[family]
    out = Path(out)
    torch.manual_seed(seed)
    config = config_class(**geometry, hidden_size=hidden_size, bacflow_random_init=True)
    model_class(config).save_pretrained(out)
    name = "Bacformer" if family == "base" else "Bacformer Large"
    (out / "README.md").write_text(
        f"A randomly initialised {name} (2 layers, width {hidden_size}, seed {seed}), made by bacflow for tests\n"
        "and demos. Its vectors carry no biological meaning.\n"
    )
    return out
