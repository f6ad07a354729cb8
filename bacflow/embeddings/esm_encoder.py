"""ESM-2's forward pass for inference, over a loaded ``EsmModel``'s weights, in fewer and larger steps.

It computes what ``EsmModel(...).last_hidden_state`` computes (tests/embeddings/test_esm_encoder.py holds it to
1e-5 in float32 on real proteins), with the same operations up to the order of some additions, but:

* query, key and value come from one matrix product (their weights concatenated once), the query's
  1/sqrt(head width) folded into its weights;
* the rotary embedding turns query and key together in three element-wise passes in the model's dtype
  (`bacflow.embeddings.packing.rotate`: no cast to float32 and back, no concatenation), from cosine and
  sine tables made once;
* GELU is one fused kernel (``F.gelu``, the exact erf form) instead of five element-wise passes;
* each residual is accumulated inside its output matrix product;
* attention is PyTorch's fused ``scaled_dot_product_attention``: over the padded batch with the padding
  mask, or over the real tokens alone, packed (`bacflow.embeddings.packing`; the default on CUDA).

A layer is thus 4 matrix products, attention and 10 element-wise kernels (2 layer norms, 3 rotary, 2
bias copies inside ``F.linear``, 2 bias additions to the residual, GELU) in float32 and in bfloat16 alike,
against 14 in float32 and 16 in bfloat16 (two casts) when rotary was done in float32 with a concatenation
(torch profiler, 35M geometry). On two CPU cores a float32 forward
pass of the 35M model spends ~75 % of its time in matrix products; bench/results/esm_throughput.md has
the measured effect. In bfloat16 every kernel runs in bfloat16 and the residual stream is bfloat16, as in
transformers (whose rotary embedding alone is in float32); bfloat16 vectors stay within cosine 0.9999
of float32 ones (tests/embeddings/test_esm_encoder.py).

Only the ESM-2 architecture is supported (rotary positions, no layer norm before the first layer,
encoder only); another ``model_type: esm`` checkpoint (ESM-1b) is refused with a clear error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bacflow.core.errors import InputError
from bacflow.embeddings.packing import TokenLayout, packed_by_default, rotary_tables, rotate

if TYPE_CHECKING:
    import torch
    from transformers import EsmModel

#: ESM-2 was trained with 15 % of tokens selected and 80 % of those masked; at inference its embeddings
#: are scaled as though that share were dropped (transformers' EsmEmbeddings, "token dropout").
_MASK_RATIO_TRAIN = 0.15 * 0.8


class EsmEncoder:
    """``EsmModel.last_hidden_state`` of padded token batches, from the model's weights (not copied,
    except query/key/value, concatenated), on the model's device and in its dtype. `packed` (default: on
    CUDA) computes on the real tokens only (`bacflow.embeddings.packing`)."""

    def __init__(self, model: EsmModel, *, packed: bool | None = None):
        import torch

        config = model.config
        if config.position_embedding_type != "rotary" or config.emb_layer_norm_before or config.is_decoder:
            raise InputError(
                f"model {config.name_or_path or '(unnamed)'} is an ESM model but not ESM-2 (rotary positions, "
                "no embedding layer norm, encoder only); set embeddings.model to an ESM-2 checkpoint"
            )
        self.hidden_size = config.hidden_size
        self.heads = config.num_attention_heads
        self.head_width = config.hidden_size // config.num_attention_heads
        self.eps = config.layer_norm_eps
        self.token_dropout = config.token_dropout
        self.mask_id = config.mask_token_id
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.packed = packed_by_default(self.device) if packed is None else packed
        self.word_embeddings = model.embeddings.word_embeddings.weight.detach()

        scale = self.head_width**-0.5
        self.layers = []
        with torch.no_grad():
            for layer in model.encoder.layer:
                attention = layer.attention.self
                self.layers.append(
                    {
                        "norm1": (layer.attention.LayerNorm.weight, layer.attention.LayerNorm.bias),
                        "qkv": (
                            torch.cat([attention.query.weight * scale, attention.key.weight, attention.value.weight]),
                            torch.cat([attention.query.bias * scale, attention.key.bias, attention.value.bias]),
                        ),
                        "out": (layer.attention.output.dense.weight, layer.attention.output.dense.bias),
                        "norm2": (layer.LayerNorm.weight, layer.LayerNorm.bias),
                        "up": (layer.intermediate.dense.weight, layer.intermediate.dense.bias),
                        "down": (layer.output.dense.weight, layer.output.dense.bias),
                    }
                )
            final = model.encoder.emb_layer_norm_after
            self.final_norm = (final.weight, final.bias)
            # In the model's dtype, as transformers rounds them; they turn query and key in that dtype too
            # (transformers does it in float32: bfloat16 vectors move by a few ulps, see the tests).
            self.cos, self.sin = rotary_tables(
                model.rotary_embeddings.inv_freq, config.max_position_embeddings, self.dtype, self.device
            )

    def __call__(self, input_ids: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Last hidden states, (batch, positions, hidden), of `input_ids` (batch, positions) whose real
        tokens are where the boolean `real` (batch, positions) is true, the rest padding (zeros when
        packed); both on the model's device."""
        import torch
        import torch.nn.functional as F

        layout = TokenLayout(real, self.packed)
        rows, width, heads = layout.rows, self.hidden_size, self.heads

        # What each token's embedding is multiplied by: 0 for padding and, with token dropout, <mask>.
        factor = real.to(torch.float32)
        if self.token_dropout:
            masked = input_ids == self.mask_id
            observed = masked.sum(-1) / real.sum(-1)
            factor = factor.masked_fill(masked, 0.0) * ((1 - _MASK_RATIO_TRAIN) / (1 - observed))[:, None]
        x = (self.word_embeddings[layout.pack(input_ids)] * layout.pack(factor)[:, None]).to(self.dtype)

        cos, sin = layout.positional(self.cos), layout.positional(self.sin)
        for layer in self.layers:
            h = F.layer_norm(x, (width,), *layer["norm1"], self.eps)
            qkv = F.linear(h, *layer["qkv"]).view(rows, 3, heads, self.head_width)
            query, key = (part.view(rows, heads, -1) for part in rotate(layout.grid(qkv[:, :2]), cos, sin))
            attended = layout.attend(query, key, qkv[:, 2], scale=1.0)
            residual(x, attended, *layer["out"])
            h = F.layer_norm(x, (width,), *layer["norm2"], self.eps)
            residual(x, F.gelu(F.linear(h, *layer["up"])), *layer["down"])
        return layout.unpack(F.layer_norm(x, (width,), *self.final_norm, self.eps))


def residual(
    stream: torch.Tensor,
    inputs: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    scale: float = 1.0,
) -> None:
    """stream += scale × linear(inputs): the matrix product accumulates into the residual stream itself,
    the scale applied inside it, saving two passes over the stream and one over the product (inference
    only: autograd needs the stream as it was)."""
    stream.addmm_(inputs, weight.t(), alpha=scale)
    if bias is not None:
        stream.add_(bias, alpha=scale)
