"""Loading an ESM-2 checkpoint folder (found by `bacflow.core.models`), checked on load."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bacflow.core.errors import InputError
from bacflow.core.models import folder_checksum

if TYPE_CHECKING:
    import torch
    from transformers import EsmModel, EsmTokenizer

log = logging.getLogger("bacflow")

# Checkpoint keys an EsmModel may lack without harm: heads the embedding never uses, and buffers that
# transformers recomputes on load.
_OPTIONAL_KEYS = re.compile(r"^(pooler\.|contact_head\.|rotary_embeddings\.inv_freq$|embeddings\.position_ids$)")


def load_esm(path: str | Path, device: torch.device, dtype: torch.dtype) -> tuple[EsmModel, EsmTokenizer]:
    """The EsmModel (eval mode, fused SDPA attention, no pooler) and tokenizer of the folder `path`.

    Fails with an InputError when the folder is not an ESM checkpoint or lacks any encoder weight
    (transformers would otherwise initialise the missing ones at random and say little about it).
    """
    from transformers import AutoConfig, EsmModel, EsmTokenizer

    path = Path(path)
    folder_checksum(path)  # the same checks of config.json and weights, with clear messages
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as error:
        raise InputError(f"model folder {path}: unreadable config.json ({error})") from None
    if config.model_type != "esm":
        raise InputError(
            f"model folder {path} holds a {config.model_type!r} model ({', '.join(config.architectures or [])}), "
            "not ESM-2 (model_type 'esm'); set embeddings.model to an ESM-2 checkpoint"
        )
    try:
        tokenizer = EsmTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError) as error:
        raise InputError(f"model folder {path}: no usable ESM tokenizer (vocab.txt): {error}") from None
    # transformers reports the checkpoint's unused MLM head as "UNEXPECTED" keys; what matters (missing
    # encoder weights) is checked below, so its report and progress bar are silenced.
    try:
        with quiet_transformers():
            model, info = EsmModel.from_pretrained(
                path, dtype=dtype, attn_implementation="sdpa", add_pooling_layer=False, output_loading_info=True
            )
    except RuntimeError as error:  # e.g. weights whose shapes contradict config.json
        raise InputError(f"model folder {path}: its weights do not load into an EsmModel ({error})") from None
    missing = sorted(key for key in info["missing_keys"] if not _OPTIONAL_KEYS.match(key))
    if missing or info["mismatched_keys"]:
        problems = missing + [str(key) for key in info["mismatched_keys"]]
        raise InputError(
            f"model folder {path}: weights missing or of the wrong shape for its config.json "
            f"({len(problems)}, e.g. {', '.join(problems[:3])}): not a complete ESM-2 checkpoint"
        )
    warn_if_random(config, path)
    return model.to(device).eval(), tokenizer


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' loading report and progress bar (the loaders check the loading info themselves)."""
    from transformers.utils import logging as transformers_logging

    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)
        transformers_logging.enable_progress_bar()


def warn_if_random(config: Any, path: Path) -> None:
    if getattr(config, "bacflow_random_init", False):
        log.warning("%s is a randomly initialised model: its vectors carry no biological meaning", path)
