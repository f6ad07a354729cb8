"""ESM-C (ESM Cambrian) in the style of a Hugging Face modeling file, for ESM++ checkpoints without remote code.

Synthyra's ESM++ repositories (``Synthyra/ESMplusplus_small`` is ESM-C 300M) hold EvolutionaryScale's ESM-C
weights under ESM-C's own state-dict keys, with a ``config.json`` of ``model_type`` "ESMplusplus"; their
modeling code is remote code. This file is a compatible re-implementation: `ESMCModel` has exactly those keys
(``embed``, ``transformer.blocks.{i}``, ``transformer.norm``, ``sequence_head``), so the checkpoints load
strictly, and importing it registers `ESMplusplusConfig` and `ESMCModel` with the ``transformers`` Auto
classes, so ``AutoModel.from_pretrained(folder)`` needs no ``trust_remote_code``.

The architecture (``esm.models.esmc.ESMC`` of the ``esm`` package): a token embedding, then pre-LN blocks
whose residual branches are divided by sqrt(n_layers / 36); attention takes query, key and value from one
LayerNorm + bias-free projection, normalises query and key (LayerNorm over the full width, no bias), turns
them with rotary positions (rotate-half, base 10000, per head) and attends with the padding keys masked;
the feed-forward branch is LayerNorm + SwiGLU (hidden width 8/3 of the model's, rounded up to a multiple
of 256); a bias-free LayerNorm ends the stack. The sequence head (the masked-LM head) is loaded but only
computed when logits are asked for.

Deliberate differences from ESM++'s remote code: the rotary tables are not buffers (ESM++ keeps
``inv_freq`` as a non-persistent buffer, which loading can leave uninitialised or rounded to bf16); they
are computed from the config in float32 on every forward pass. Attention is always PyTorch's
``scaled_dot_product_attention`` (ESM++'s exact "sdpa" backend); ``attn_backend`` is accepted and kept in
the config, but not used. Only padding *keys* are masked: rows of padding positions hold finite values
that nothing reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput


class ESMplusplusConfig(PretrainedConfig):
    """ESM++'s config keys and defaults (those of ESM-C 300M); the FFN width and head width follow from them."""

    model_type = "ESMplusplus"

    def __init__(
        self,
        vocab_size: int = 64,
        hidden_size: int = 960,
        num_attention_heads: int = 15,
        num_hidden_layers: int = 30,
        pad_token_id: int = 1,
        mask_token_id: int = 32,
        initializer_range: float = 0.02,
        attn_backend: str = "sdpa",
        tie_word_embeddings: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
        if hidden_size % num_attention_heads:
            raise ValueError(
                f"hidden_size {hidden_size} is not a multiple of num_attention_heads {num_attention_heads}"
            )
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.num_hidden_layers = num_hidden_layers
        self.pad_token_id = pad_token_id
        self.mask_token_id = mask_token_id
        self.initializer_range = initializer_range
        self.attn_backend = attn_backend


@dataclass
class ESMCOutput(ModelOutput):
    last_hidden_state: torch.Tensor | None = None
    logits: torch.Tensor | None = None  #: the sequence head's, only when asked for


def swiglu_width(hidden_size: int) -> int:
    """ESM-C's SwiGLU hidden width: 8/3 of the model width, rounded up to a multiple of 256."""
    return int((8 / 3 * hidden_size + 255) // 256 * 256)


def rotary_half_tables(head_dim: int, positions: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of ``t * 10000^(-2j/head_dim)`` for positions 0..positions-1, (positions, head_dim // 2),
    float32, as ESM-C (and Bacformer Large, its geometry) computes them."""
    inv_freq = 1 / (10000.0 ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(positions, device=device, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def rotary_tables(head_dim: int, positions: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The half tables written twice, (positions, head_dim), as rotate-half pairs dimension j with j + head_dim/2."""
    return tuple(table.repeat(1, 2) for table in rotary_half_tables(head_dim, positions, device))


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary positions on x (batch, positions, heads, head_dim), rotate-half style."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-second, first), dim=-1) * sin


class ESMCAttention(nn.Module):
    def __init__(self, config: ESMplusplusConfig) -> None:
        super().__init__()
        width = config.hidden_size
        self.heads = config.num_attention_heads
        self.layernorm_qkv = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 3 * width, bias=False))
        self.q_ln = nn.LayerNorm(width, bias=False)
        self.k_ln = nn.LayerNorm(width, bias=False)
        self.out_proj = nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor, attend: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        query, key, value = self.layernorm_qkv(x).chunk(3, dim=-1)
        query, key = self.q_ln(query).to(x.dtype), self.k_ln(key).to(x.dtype)
        query, key, value = (part.unflatten(-1, (self.heads, -1)) for part in (query, key, value))
        query, key = rotate(query, cos, sin), rotate(key, cos, sin)
        context = F.scaled_dot_product_attention(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask=attend
        )
        return self.out_proj(context.transpose(1, 2).flatten(-2))


class SwiGLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up


class ESMCBlock(nn.Module):
    def __init__(self, config: ESMplusplusConfig) -> None:
        super().__init__()
        width, inner = config.hidden_size, swiglu_width(config.hidden_size)
        self.attn = ESMCAttention(config)
        self.ffn = nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, 2 * inner, bias=False), SwiGLU(), nn.Linear(inner, width, bias=False)
        )
        self.residual_scale = (config.num_hidden_layers / 36) ** 0.5

    def forward(self, x: torch.Tensor, attend: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x, attend, cos, sin) / self.residual_scale
        return x + self.ffn(x) / self.residual_scale


class ESMCTransformer(nn.Module):
    def __init__(self, config: ESMplusplusConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(ESMCBlock(config) for _ in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_size, bias=False)


class ESMCPreTrainedModel(PreTrainedModel):
    config_class = ESMplusplusConfig
    base_model_prefix = "esmc"  # no such submodule: checkpoint keys are used as they are
    _no_split_modules = ["ESMCBlock"]
    _supports_sdpa = True


class ESMCModel(ESMCPreTrainedModel):
    """ESM-C: the encoder's last hidden state, and optionally the sequence head's logits."""

    def __init__(self, config: ESMplusplusConfig) -> None:
        super().__init__(config)
        width = config.hidden_size
        self.embed = nn.Embedding(config.vocab_size, width)
        self.transformer = ESMCTransformer(config)
        self.sequence_head = nn.Sequential(
            nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width), nn.Linear(width, config.vocab_size)
        )
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, output_logits: bool = False
    ) -> ESMCOutput:
        """`input_ids` (batch, positions); `attention_mask` true (or 1) on real tokens, false on padding."""
        x = self.embed(input_ids)
        if attention_mask is None:
            attention_mask = input_ids != self.config.pad_token_id
        attend = attention_mask.bool()[:, None, None, :]  # (batch, heads, queries, keys)
        head_dim = self.config.hidden_size // self.config.num_attention_heads
        # Broadcast over heads; rounded to the model's dtype, as ESM-C rotates in it.
        cos, sin = (table[:, None, :].to(x.dtype) for table in rotary_tables(head_dim, x.shape[1], x.device))
        for block in self.transformer.blocks:
            x = block(x, attend, cos, sin)
        hidden = self.transformer.norm(x)
        return ESMCOutput(last_hidden_state=hidden, logits=self.sequence_head(hidden) if output_logits else None)


AutoConfig.register(ESMplusplusConfig.model_type, ESMplusplusConfig, exist_ok=True)
AutoModel.register(ESMplusplusConfig, ESMCModel, exist_ok=True)
