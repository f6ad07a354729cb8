"""ESM-2's forward pass for inference, over a loaded ``EsmModel``'s weights, in fewer and larger steps.

It computes what ``EsmModel(...).last_hidden_state`` computes (tests/embeddings/test_esm_encoder.py holds it to
1e-5 in float32 on real proteins), with the same operations up to the order of some additions, but:

* query, key and value come from one matrix product (their weights concatenated once), the query's
  1/sqrt(head width) folded into its weights;
* the rotary embedding turns query and key together, from cosine and sine tables made once;
* GELU is one fused kernel (``F.gelu``, the exact erf form) instead of five element-wise passes;
* each residual is accumulated inside its output matrix product;
* attention is PyTorch's fused ``scaled_dot_product_attention`` with the padding mask, always.

On two CPU cores a forward pass of the 35M model spends ~60 % of its time in matrix products running at
the machine's peak; the rest was element-wise passes over activations and attention (head width 24,
which no kernel runs fast). This module removes most of the element-wise passes: bench/results/
esm_throughput.md has the measured effect.

Only the ESM-2 architecture is supported (rotary positions, no layer norm before the first layer,
encoder only); another ``model_type: esm`` checkpoint (ESM-1b) is refused with a clear error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bacflow.core.errors import InputError

if TYPE_CHECKING:
    import torch
    from transformers import EsmModel

#: ESM-2 was trained with 15 % of tokens selected and 80 % of those masked; at inference its embeddings
#: are scaled as though that share were dropped (transformers' EsmEmbeddings, "token dropout").
_MASK_RATIO_TRAIN = 0.15 * 0.8


class EsmEncoder:
    """``EsmModel.last_hidden_state`` of padded token batches, from the model's weights (not copied,
    except query/key/value, concatenated), on the model's device and in its dtype."""

    def __init__(self, model: EsmModel):
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
            # transformers turns query and key in float32 with cos/sin tables rounded to the model's
            # dtype; the same here, so that bfloat16 runs match theirs too.
            angles = torch.outer(
                torch.arange(config.max_position_embeddings, dtype=torch.float32),
                model.rotary_embeddings.inv_freq.float().cpu(),
            )
            self.cos = angles.cos().to(self.dtype).float().to(self.device)
            self.sin = angles.sin().to(self.dtype).float().to(self.device)

    def __call__(self, input_ids: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Last hidden states, (batch, positions, hidden), of `input_ids` (batch, positions) whose real
        tokens are where the boolean `real` (batch, positions) is true, the rest padding; both on the
        model's device."""
        import torch
        import torch.nn.functional as F

        batch, positions = input_ids.shape
        width, half = self.hidden_size, self.head_width // 2

        x = self.word_embeddings[input_ids]
        if self.token_dropout:
            masked = input_ids == self.mask_id
            observed = masked.sum(-1).float() / real.sum(-1)
            x = x.masked_fill(masked[..., None], 0.0)
            x = (x * (1 - _MASK_RATIO_TRAIN) / (1 - observed)[:, None, None]).to(self.dtype)
        x = (x * real[..., None]).view(batch * positions, width)

        cos = self.cos[:positions, None, None, :]  # broadcast over (query/key, head)
        sin = self.sin[:positions, None, None, :]
        attend = real[:, None, None, :]
        for layer in self.layers:
            h = F.layer_norm(x, (width,), *layer["norm1"], self.eps)
            qkv = F.linear(h, *layer["qkv"]).view(batch, positions, 3, self.heads, self.head_width)
            first, second = qkv[:, :, :2].float().split(half, dim=-1)
            query_key = torch.cat((first * cos - second * sin, second * cos + first * sin), dim=-1).to(self.dtype)
            query, key = (part.transpose(1, 2) for part in query_key.unbind(2))
            value = qkv[:, :, 2].transpose(1, 2)
            attended = F.scaled_dot_product_attention(query, key, value, attn_mask=attend, scale=1.0)
            residual(x, attended.transpose(1, 2).reshape(batch * positions, width), *layer["out"])
            h = F.layer_norm(x, (width,), *layer["norm2"], self.eps)
            residual(x, F.gelu(F.linear(h, *layer["up"])), *layer["down"])
        return F.layer_norm(x, (width,), *self.final_norm, self.eps).view(batch, positions, width)


def residual(stream: torch.Tensor, inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """stream += linear(inputs): the matrix product accumulates into the residual stream itself, saving
    two passes over it (inference only: autograd needs the stream as it was)."""
    stream.addmm_(inputs, weight.t()).add_(bias)
