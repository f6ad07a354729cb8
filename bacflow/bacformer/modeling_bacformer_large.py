"""Bacformer Large: a genome language model over ESM-C 300M protein vectors, as a Hugging Face modeling file.

A compatible re-implementation of the reference package's ``modeling_large.py`` (``bacformer==0.2.0``,
https://github.com/macwiatrak/Bacformer). State-dict keys and shapes are the reference's, so the published
checkpoints (``macwiatrak/bacformer-large-masked-MAG``, ``...-masked-complete-genomes``) load strictly, and
importing this module (or `bacflow.bacformer.modeling_bacformer`, which imports it) registers the classes with
the ``transformers`` Auto classes. Both families write ``model_type`` "bacformer"; ``BacformerConfig.from_dict``
hands a Large config.json to `BacformerLargeConfig` (`bacflow.bacformer.model_families.family_of_config`), so
``AutoModel.from_pretrained(folder)`` gives the right family without remote code.

Input: one token per protein, nothing else: its ESM-C vector (``protein_embeddings``, width ``hidden_size``),
``contig_ids`` (capped at ``max_token_type_embeddings - 1`` by the input builder) and ``attention_mask``;
``mlm_mask`` marks proteins whose vector is replaced by the learned mask vector. `bacflow.bacformer.inputs`
builds these tensors.

The architecture is ESM-C's block (pre-LN, LayerNorm-then-QKV projection, LayerNorms over all of q and k,
rotate-half RoPE per head, SwiGLU feed-forward, residual branches divided by sqrt(layers / 36), a final
LayerNorm without bias), with the reference's double normalisation before attention kept.

Deliberate differences:

- The rotary tables are not buffers (the reference's ``inv_freq`` is a non-persistent buffer that
  ``transformers`` 5 leaves uninitialised when it loads on the meta device, reference issue #33): they are
  computed from the geometry in fp32 at every forward pass, and the rotation runs in fp32 (the reference
  rounds the tables and the rotation to the model's dtype: the same in fp32, closer in bf16).
- A NaN in the encoder output or in the logits raises ``FloatingPointError`` instead of being returned.
- Attention weights (``return_attn_weights=True``), the unused pooler, and ``is_causal=True`` (which the
  reference accepts and silently ignores: Large has no causal mode) raise instead.
- Tuple outputs (``return_dict=False``, the config default) leave out ``None`` fields, as in
  `bacflow.bacformer.modeling_bacformer`: ``outputs[0]`` is ``last_hidden_state`` for the encoder, and the
  masked head without labels gives ``(logits, last_hidden_state)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoModel, AutoModelForMaskedLM, PretrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import can_return_tuple

from bacflow.bacformer.constants import IGNORE_INDEX, MAX_N_CONTIGS, MAX_N_PROTEINS, SPECIAL_TOKENS
from bacflow.bacformer.modeling_bacformer import BacformerOutput, genome_modelling_loss, raise_on_nan

# The reference's Large is ESM-C's block (its RotaryEmbedding formula, its SwiGLU width), so the same code.
from bacflow.embeddings.modeling_esmc import rotary_half_tables, swiglu_width


class BacformerLargeConfig(PretrainedConfig):
    """The reference's ``BacformerLargeConfig``: same keys and defaults (the published geometry: 30 layers,
    15 heads, width 960; 50,001 head classes, the families and END, although no input has an END token)."""

    model_type = "bacformer"
    #: Not a config key: a masked batch without targets gets a zero loss tied to the graph, as in the reference.
    zero_loss_without_labels = True

    def __init__(
        self,
        num_hidden_layers: int = 30,
        num_attention_heads: int = 15,
        hidden_size: int = 960,  # ESM-C 300M embedding size; protein vectors must have this size
        hidden_dropout_prob: float = 0.1,
        final_layer_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.1,  # unused, as in the reference: attention has no dropout
        max_position_embeddings: int = MAX_N_PROTEINS,  # informative only: RoPE has no table limit
        max_token_type_embeddings: int = MAX_N_CONTIGS,
        layer_norm_eps: float = 1e-12,
        initializer_range: float = 0.02,
        pad_token_id: int = SPECIAL_TOKENS["PAD"],
        mask_token_id: int = SPECIAL_TOKENS["MASK"],
        prot_emb_token_id: int = SPECIAL_TOKENS["PROT_EMB"],
        cls_token_id: int = SPECIAL_TOKENS["END"],  # the reference's default, kept for config.json fidelity
        end_token_id: int = SPECIAL_TOKENS["END"],
        num_special_tokens: int = len(SPECIAL_TOKENS),
        protein_clusters_vocab_size: int = 50001,  # head classes: the families and END
        num_labels: int = 1,
        is_causal_gm: bool = False,
        return_dict: bool = False,
        return_attn_weights: bool = False,
        gradient_checkpointing: bool = False,
        problem_type: str | None = "single_label_classification",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        # Set after super().__init__, as the reference does (see BacformerConfig).
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.hidden_size = hidden_size
        self.hidden_dropout_prob = hidden_dropout_prob
        self.final_layer_dropout_prob = final_layer_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.max_position_embeddings = max_position_embeddings
        self.max_token_type_embeddings = max_token_type_embeddings
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        self.pad_token_id = pad_token_id
        self.mask_token_id = mask_token_id
        self.cls_token_id = cls_token_id
        self.prot_emb_token_id = prot_emb_token_id
        self.end_token_id = end_token_id
        self.num_special_tokens = num_special_tokens
        self.protein_clusters_vocab_size = protein_clusters_vocab_size
        self.num_labels = num_labels
        self.is_causal_gm = is_causal_gm
        self.return_dict = return_dict
        self.return_attn_weights = return_attn_weights
        self.gradient_checkpointing = gradient_checkpointing
        self.problem_type = problem_type


def apply_rotate_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (batch, seq, heads, head_dim) in fp32, pairing dim j with dim j + head_dim/2 (non-interleaved)."""
    first, second = x.float().chunk(2, dim=-1)
    cos, sin = cos[:, None, :], sin[:, None, :]  # broadcast over heads
    return torch.cat((first * cos - second * sin, second * cos + first * sin), dim=-1).type_as(x)


class SwiGLU(nn.Module):
    """silu(first half) * second half of the last dimension."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = x.chunk(2, dim=-1)
        return F.silu(gate) * value


class BacformerLargeEmbeddings(nn.Module):
    """Protein vectors through a linear layer, the mask vector at masked proteins, plus contig embeddings."""

    def __init__(self, config: BacformerLargeConfig) -> None:
        super().__init__()
        self.linear = nn.Linear(config.hidden_size, config.hidden_size)
        # Row max_token_type_embeddings is the padding row: a zero vector (collate pads contig ids with it).
        self.contig_embeddings = nn.Embedding(
            config.max_token_type_embeddings + 1, config.hidden_size, padding_idx=config.max_token_type_embeddings
        )
        self.mask_embed = nn.Parameter(torch.empty(config.hidden_size))
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self, protein_embeddings: torch.Tensor, contig_ids: torch.Tensor | None, mlm_mask: torch.Tensor | None
    ) -> torch.Tensor:
        x = self.linear(protein_embeddings.to(self.linear.weight.dtype))
        if mlm_mask is not None:
            x = torch.where(mlm_mask.bool().unsqueeze(-1), self.mask_embed.to(x.dtype), x)
        if contig_ids is not None:
            x = x + self.contig_embeddings(contig_ids.long())
        return self.dropout(self.norm1(x))


class BacformerLargeAttention(nn.Module):
    """ESM-C attention: LayerNorm and one QKV projection, LayerNorms on q and k, rotate-half RoPE, SDPA."""

    def __init__(self, config: BacformerLargeConfig) -> None:
        super().__init__()
        width = config.hidden_size
        self.num_heads = config.num_attention_heads
        # torch's default eps (1e-5) for every norm of a block, as the reference builds them.
        self.layernorm_qkv = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 3 * width, bias=False))
        self.out_proj = nn.Linear(width, width, bias=False)
        self.q_ln = nn.LayerNorm(width, bias=False)
        self.k_ln = nn.LayerNorm(width, bias=False)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, key_mask: torch.Tensor | None
    ) -> torch.Tensor:
        batch, seq_len, width = x.shape
        q, k, v = self.layernorm_qkv(x).chunk(3, dim=-1)
        q, k = self.q_ln(q).to(q.dtype), self.k_ln(k).to(q.dtype)
        q, k, v = (t.view(batch, seq_len, self.num_heads, -1) for t in (q, k, v))
        q, k = apply_rotate_half(q, cos, sin), apply_rotate_half(k, cos, sin)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=key_mask
        )
        return self.out_proj(out.transpose(1, 2).reshape(batch, seq_len, width))


class BacformerLargeLayer(GradientCheckpointingLayer):
    """Pre-LN block: x += attn(LN(x)) / s; x += FFN(x) / s, with s = sqrt(layers / 36) (the FFN has its own LN)."""

    def __init__(self, config: BacformerLargeConfig) -> None:
        super().__init__()
        width, ffn = config.hidden_size, swiglu_width(config.hidden_size)
        self.norm = nn.LayerNorm(width, bias=False)
        self.attn = BacformerLargeAttention(config)
        self.ffn = nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, 2 * ffn, bias=False), SwiGLU(), nn.Linear(ffn, width, bias=False)
        )
        self.scale = math.sqrt(config.num_hidden_layers / 36)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, key_mask: torch.Tensor | None
    ) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.norm(x), cos, sin, key_mask)) / self.scale
        return x + self.dropout(self.ffn(x)) / self.scale


class BacformerLargeEncoder(nn.Module):
    def __init__(self, config: BacformerLargeConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(BacformerLargeLayer(config) for _ in range(config.num_hidden_layers))
        self.final_ln = nn.LayerNorm(config.hidden_size, bias=False)


class BacformerLargePreTrainedModel(PreTrainedModel):
    """Weight initialisation and loading settings shared by the Bacformer Large classes."""

    config_class = BacformerLargeConfig
    base_model_prefix = "bacformer"
    main_input_name = "protein_embeddings"
    supports_gradient_checkpointing = True
    _no_split_modules = ["BacformerLargeEmbeddings", "BacformerLargeLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        # The transformers default is the reference's scheme for Linear, Embedding and LayerNorm; the bare mask
        # vector is drawn as the reference draws it.
        super()._init_weights(module)
        if isinstance(module, BacformerLargeEmbeddings):
            init.normal_(module.mask_embed, std=self.config.initializer_range)


class BacformerLargeModel(BacformerLargePreTrainedModel):
    """The encoder: embeddings, pre-LN ESM-C blocks with RoPE, and a final LayerNorm."""

    # The published checkpoints are masked-GM models; AutoModel takes their encoder and drops the head.
    _keys_to_ignore_on_load_unexpected = [r"^gm_head\."]

    def __init__(self, config: BacformerLargeConfig) -> None:
        super().__init__(config)
        if config.return_attn_weights or config.is_causal_gm:
            raise NotImplementedError(
                "Bacformer Large here offers neither attention weights (return_attn_weights) nor a causal mode "
                "(is_causal_gm; the reference has none either): set both to False"
            )
        self.embeddings = BacformerLargeEmbeddings(config)
        self.encoder = BacformerLargeEncoder(config)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        protein_embeddings: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        contig_ids: torch.Tensor | None = None,
        mlm_mask: torch.Tensor | None = None,
        return_attn_weights: bool = False,
        is_causal: bool = False,
    ) -> BacformerOutput:
        """Contextual protein vectors (batch, seq, hidden).

        ``attention_mask`` (batch, seq), nonzero = real protein, masks keys only: padded rows still get (finite,
        meaningless) outputs. Without it every protein attends to padding too, as in the reference.
        """
        if return_attn_weights or is_causal:
            raise NotImplementedError(
                "Bacformer Large here offers neither attention weights nor a causal mode (the reference ignores "
                "is_causal): pass return_attn_weights=False and is_causal=False"
            )
        hidden = self.embeddings(protein_embeddings, contig_ids, mlm_mask)
        head_dim = self.config.hidden_size // self.config.num_attention_heads
        cos, sin = rotary_half_tables(head_dim, hidden.shape[1], hidden.device)
        key_mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        for layer in self.encoder.layers:
            hidden = layer(hidden, cos, sin, key_mask)
        hidden = self.encoder.final_ln(hidden)
        return BacformerOutput(last_hidden_state=raise_on_nan(hidden, "last hidden state"))


class BacformerLargeForMaskedGM(BacformerLargePreTrainedModel):
    """Masked genome modelling: predict the family of masked proteins (the reference's only objective for Large)."""

    def __init__(self, config: BacformerLargeConfig) -> None:
        super().__init__(config)
        self.bacformer = BacformerLargeModel(config)
        width = config.hidden_size
        # Indices as in the reference's nn.Sequential (weights at 1, 3 and 4).
        self.gm_head = nn.Sequential(
            nn.Dropout(config.final_layer_dropout_prob),
            nn.Linear(width, 2 * width),
            nn.GELU(),
            nn.LayerNorm(2 * width),
            nn.Linear(2 * width, config.protein_clusters_vocab_size),
        )
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        protein_embeddings: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        contig_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        mlm_mask: torch.Tensor | None = None,
        return_attn_weights: bool = False,
        is_causal: bool = False,
    ) -> BacformerOutput:
        """Logits (batch, seq, classes); with ``labels``, only the labelled rows (n_labelled, classes) and the loss."""
        hidden = self.bacformer(
            protein_embeddings,
            attention_mask,
            contig_ids,
            mlm_mask,
            return_attn_weights=return_attn_weights,
            is_causal=is_causal,
            return_dict=True,
        ).last_hidden_state
        if labels is None:
            return BacformerOutput(logits=raise_on_nan(self.gm_head(hidden), "logits"), last_hidden_state=hidden)
        # The head (a 50,001-way projection) runs only where there is a target, as in the reference.
        labels = labels.to(hidden.device)
        labelled = labels != IGNORE_INDEX
        logits = raise_on_nan(self.gm_head(hidden[labelled]), "logits")
        loss = genome_modelling_loss(logits, labels[labelled], self.config)
        return BacformerOutput(loss=loss, logits=logits, last_hidden_state=hidden)


AutoModel.register(BacformerLargeConfig, BacformerLargeModel, exist_ok=True)
AutoModelForMaskedLM.register(BacformerLargeConfig, BacformerLargeForMaskedGM, exist_ok=True)
