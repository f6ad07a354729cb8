"""Loading an ESM-C checkpoint folder (an ESM++ hub snapshot such as ``Synthyra/ESMplusplus_small``, or one
written by `bacflow.embeddings.tiny`), checked on load; ESM-C's tokenizer; the encoder the embedder calls.

The model is `bacflow.embeddings.modeling_esmc.ESMCModel`, never the hub's remote code. The tokenizer is
read from the folder's ``tokenizer.json`` (the tokenizer ESM++ ships, or the one `esmc_tokenizer` builds)
and must hold ESM-C's vocabulary: one token per character, ids as in the ``esm`` package's
``EsmSequenceTokenizer``, each character outside the vocabulary its own ``<unk>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bacflow.core.errors import InputError
from bacflow.core.models import folder_checksum
from bacflow.embeddings.encoders import model_type
from bacflow.embeddings.esm_model import quiet_transformers, warn_if_random

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerFast

    from bacflow.embeddings.modeling_esmc import ESMCModel

#: ESM-C's sequence vocabulary in id order (``esm.utils.constants.esm3.SEQUENCE_VOCAB``); the model's
#: embedding has 64 rows, the rest unused.
ESMC_VOCAB = ("<cls>", "<pad>", "<eos>", "<unk>", *"LAGVSERTIDPKQNFYMHWCXBUZO.-|", "<mask>")
#: Its special tokens, as EsmSequenceTokenizer names them ("|" separates chains).
_SPECIAL = {
    "cls_token": "<cls>",
    "pad_token": "<pad>",
    "eos_token": "<eos>",
    "unk_token": "<unk>",
    "mask_token": "<mask>",
}


def esmc_tokenizer() -> PreTrainedTokenizerFast:
    """ESM-C's tokenizer built as EsmSequenceTokenizer builds it: a BPE model without merges (one token per
    character), the special tokens matched first, and the template ``<cls> sequence <eos>``."""
    from tokenizers import Tokenizer
    from tokenizers.models import BPE
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(ESMC_VOCAB)}
    backend = Tokenizer(BPE(vocab, merges=[], unk_token="<unk>"))
    backend.add_special_tokens(["<cls>", "<pad>", "<mask>", "<eos>", "|"])
    backend.post_processor = TemplateProcessing(
        single="<cls> $A <eos>", special_tokens=[("<cls>", vocab["<cls>"]), ("<eos>", vocab["<eos>"])]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, **_SPECIAL)


def load_esmc_tokenizer(path: Path) -> PreTrainedTokenizerFast:
    """The tokenizer of the folder `path` (its tokenizer.json), refused unless its vocabulary is ESM-C's."""
    from transformers import PreTrainedTokenizerFast

    file = path / "tokenizer.json"
    if not file.is_file():
        raise InputError(f"model folder {path}: no tokenizer.json (ESM-C's tokenizer, shipped with ESM++ checkpoints)")
    try:
        # From the file alone: tokenizer_config.json of hub snapshots names a remote-code class.
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(file), **_SPECIAL)
    except Exception as error:  # the tokenizers library raises plain Exceptions for unreadable files
        raise InputError(f"model folder {path}: unreadable tokenizer.json ({error})") from None
    if tokenizer.get_vocab() != {token: index for index, token in enumerate(ESMC_VOCAB)}:
        raise InputError(
            f"model folder {path}: tokenizer.json does not hold ESM-C's vocabulary ({len(ESMC_VOCAB)} tokens)"
        )
    return tokenizer


def load_esmc(path: str | Path, device: torch.device, dtype: torch.dtype) -> tuple[ESMCModel, PreTrainedTokenizerFast]:
    """The ESMCModel (eval mode) and tokenizer of the folder `path`.

    Strict: an InputError names the folder when its config.json is not ESM++'s (``model_type``
    "ESMplusplus") or its weights lack any key of the ESM-C layout, hold others, or have other shapes.
    """
    from bacflow.embeddings.modeling_esmc import ESMCModel, ESMplusplusConfig

    path = Path(path)
    folder_checksum(path)  # the same checks of config.json and weights as for ESM-2, with clear messages
    found = model_type(path)
    if found != ESMplusplusConfig.model_type:
        raise InputError(
            f"model folder {path} holds a {found!r} model, not ESM-C (model_type 'ESMplusplus', the ESM++ "
            "checkpoints); set embeddings.model to an ESM-C checkpoint"
        )
    tokenizer = load_esmc_tokenizer(path)
    try:
        with quiet_transformers():
            model, info = ESMCModel.from_pretrained(path, dtype=dtype, output_loading_info=True)
    except (RuntimeError, ValueError) as error:  # e.g. weights whose shapes contradict config.json
        raise InputError(f"model folder {path}: its weights do not load into an ESM-C model ({error})") from None
    problems = [
        *(f"missing {key}" for key in sorted(info["missing_keys"])),
        *(f"unexpected {key}" for key in sorted(info["unexpected_keys"])),
        *(f"wrong shape {key}" for key in sorted(str(key) for key in info["mismatched_keys"])),
    ]
    if problems:
        raise InputError(
            f"model folder {path}: its weights are not the ESM-C layout of its config.json "
            f"({len(problems)} problems, e.g. {', '.join(problems[:3])})"
        )
    warn_if_random(model.config, path)
    return model.to(device).eval(), tokenizer


class ESMCEncoder:
    """The ESM-C model's last hidden state of padded token batches, with `EsmEncoder`'s interface."""

    def __init__(self, model: ESMCModel):
        self.model = model
        self.hidden_size = model.config.hidden_size
        self.device = model.device
        self.dtype = model.dtype

    def __call__(self, input_ids: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Last hidden states (batch, positions, hidden) of `input_ids` whose real tokens are where `real` is
        true, the rest padding (masked out of attention)."""
        return self.model(input_ids, attention_mask=real).last_hidden_state
