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
    """`ESMCModel`'s last hidden state of padded token batches, with `EsmEncoder`'s interface, computed from
    the model's weights (not copied) on its device and in its dtype; `packed` (default: on CUDA) computes on
    the real tokens only (`bacflow.embeddings.packing`).

    The same operations as ``ESMCModel.forward`` up to the order of some additions (tests/embeddings/
    test_esmc.py holds it to 1e-5 in float32 on real proteins), in fewer passes, as `EsmEncoder` does for
    ESM-2: query, key and value stay views of the one projection's output (q_ln and k_ln read them there);
    the rotary embedding is `bacflow.embeddings.packing.rotate` (three element-wise passes in the model's
    dtype, no concatenation); attention is `TokenLayout.attend`; each residual branch accumulates into the
    stream inside its output matrix product, its division by sqrt(layers / 36) done there too
    (`bacflow.embeddings.esm_encoder.residual`); SwiGLU is ``F.silu`` times the linear half, in place. A
    layer is 4 matrix products, attention and 12 element-wise kernels (4 layer norms, 2 × 3 rotary for query
    and key, SiLU, its product) against 20 in ``ESMCModel`` (torch profiler), with no cast: in bfloat16 every
    kernel and the residual stream are bfloat16, as in ``ESMCModel`` (and ESM-C's own code), whose q_ln/k_ln
    and rotary embedding are bfloat16 too. Float32 on a CPU is bound by the matrix products, which are the
    same: there both are equally fast (bench/results/esmc_throughput.md); the gain is where matrix products
    are fast (GPUs, CPUs with native bfloat16), and packed batches spend no FLOPs on padding.
    """

    def __init__(self, model: ESMCModel, *, packed: bool | None = None):
        from bacflow.embeddings.packing import packed_by_default

        config = model.config
        self.hidden_size = config.hidden_size
        self.heads = config.num_attention_heads
        self.head_width = config.hidden_size // config.num_attention_heads
        self.device = model.device
        self.dtype = model.dtype
        self.packed = packed_by_default(self.device) if packed is None else packed
        self.embed = model.embed.weight.detach()
        self.layers = []
        for block in model.transformer.blocks:
            norm, up, _, down = block.ffn
            self.layers.append(
                {
                    "norm1": block.attn.layernorm_qkv[0],
                    "qkv": block.attn.layernorm_qkv[1].weight,
                    "q_ln": block.attn.q_ln,
                    "k_ln": block.attn.k_ln,
                    "out": block.attn.out_proj.weight,
                    "norm2": norm,
                    "up": up.weight,
                    "down": down.weight,
                    "scale": 1 / block.residual_scale,
                }
            )
        self.final_norm = model.transformer.norm

    def __call__(self, input_ids: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Last hidden states, (batch, positions, hidden), of `input_ids` (batch, positions) whose real
        tokens are where the boolean `real` (batch, positions) is true, the rest padding (zeros when
        packed); both on the model's device."""
        import torch.nn.functional as F

        from bacflow.embeddings.esm_encoder import residual
        from bacflow.embeddings.modeling_esmc import rotary_half_tables
        from bacflow.embeddings.packing import TokenLayout, rotate

        layout = TokenLayout(real, self.packed)
        rows, width, heads = layout.rows, self.hidden_size, self.heads
        x = self.embed[layout.pack(input_ids)]
        # ESMCModel's float32 tables rounded to the model's dtype, one half (`rotate` takes one: rotate-half).
        cos, sin = (
            layout.positional(table.to(self.dtype))
            for table in rotary_half_tables(self.head_width, layout.positions, self.device)
        )

        def turned(part: torch.Tensor) -> torch.Tensor:
            """(rows, width) queries or keys, normalised, with rotary positions, as (rows, heads, head width)."""
            return rotate(layout.grid(part.view(rows, 1, heads, -1)), cos, sin).view(rows, heads, -1)

        def norm(inputs: torch.Tensor, layer_norm: torch.nn.LayerNorm) -> torch.Tensor:
            return F.layer_norm(inputs, (width,), layer_norm.weight, layer_norm.bias, layer_norm.eps)

        for layer in self.layers:
            qkv = F.linear(norm(x, layer["norm1"]), layer["qkv"])
            query = turned(norm(qkv[:, :width], layer["q_ln"]))
            key = turned(norm(qkv[:, width : 2 * width], layer["k_ln"]))
            value = qkv[:, 2 * width :].view(rows, heads, -1)
            residual(
                x, layout.attend(query, key, value, scale=self.head_width**-0.5), layer["out"], scale=layer["scale"]
            )
            gate, linear = F.linear(norm(x, layer["norm2"]), layer["up"]).chunk(2, dim=-1)
            residual(x, F.silu(gate).mul_(linear), layer["down"], scale=layer["scale"])
        return layout.unpack(norm(x, self.final_norm))
