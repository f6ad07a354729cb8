"""Bacformer: a genome language model over ESM-2 protein embeddings, in the style of a Hugging Face modeling file.

A compatible re-implementation of the reference package (``bacformer==0.2.0``, ``modeling_base.py`` and
``modeling_pretraining.py``, https://github.com/macwiatrak/Bacformer). State-dict keys and shapes are the reference's,
so the published checkpoints (``macwiatrak/bacformer-masked-complete-genomes``, ``...-masked-MAG``) load
strictly, and importing this module registers the classes with the ``transformers`` Auto classes, so
``AutoModel.from_pretrained(folder)`` needs no remote code.

Input: one token per protein (its ESM-2 vector, token kind ``PROT_EMB``) plus special tokens (CLS,
separators, END, padding) that carry a learned vector instead; ``token_type_ids`` hold each token's contig
index. ``bacflow.bacformer.inputs`` builds these tensors.

Reference behaviour kept because the checkpoints were trained with it: post-LN layers whose LayerNorms use
torch's default eps 1e-5 (not ``layer_norm_eps``), no final LayerNorm, interleaved-pair RoPE with positions
counted from CLS, one dropout rate (``attention_probs_dropout_prob``) for every dropout in a layer, a learned
PAD vector, MASK replacing the protein vector, token type ``max_token_type_embeddings`` as a zero row,
key-only padding masks (``attention_mask=None`` attends to padding), and masked-GM logits computed only on
labelled rows when labels are given.

Deliberate differences:

- The rotary tables are not buffers. The reference registers them as non-persistent buffers, which
  ``transformers`` 5 materialises as uninitialised memory when it loads on the meta device (reference issue
  #33: NaN or wrong outputs), and which ``model.to(torch.bfloat16)`` rounds to bf16. Here they are computed
  from the config in fp32 (with the reference's formula, so they are bit-identical to its tables) when a
  forward pass needs them: no loading path can corrupt them.
- A masked- or causal-GM batch without any labelled position gets a loss of 0 that is still part of the
  graph (so backward and DDP work), where the reference returns NaN (genomes of fewer than 8 proteins get
  no masks at all). Switch: ``BacformerConfig.zero_loss_without_labels`` (``False``: the reference's NaN).
- A NaN in the encoder output or in the logits raises ``FloatingPointError`` instead of being returned.
- Attention weights (``return_attn_weights=True``) are not offered: the reference's path for them ignores
  the padding mask (wrong outputs for padded batches), and nothing in bacflow needs them. The config key is
  kept for config.json compatibility; setting it raises. The optional pooler (unused by the released
  checkpoints, and broken in the reference whenever a mask is given) is not offered either.
- Tuple outputs (``return_dict=False``, the reference's config default) follow the ``transformers``
  convention of leaving out ``None`` fields: ``outputs[0]`` is ``last_hidden_state`` for ``BacformerModel``
  as in the reference, but the GM heads without labels give ``(logits, last_hidden_state)`` where the
  reference gives ``(None, logits, ...)``. Pass ``return_dict=True`` to get named fields.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput, can_return_tuple

from bacflow.bacformer.constants import IGNORE_INDEX, MAX_N_CONTIGS, MAX_N_PROTEINS, SPECIAL_TOKENS


class BacformerConfig(PretrainedConfig):
    """The reference's ``BacformerConfig``: same keys and defaults, plus ``zero_loss_without_labels``.

    The released base checkpoints have 12 layers and hidden size 480; the number of heads is not pinned by
    their parameter count, so it must come from the checkpoint's config.json (``from_pretrained`` does that).
    """

    model_type = "bacformer"

    def __init__(
        self,
        num_hidden_layers: int = 6,
        num_attention_heads: int = 8,
        hidden_size: int = 480,  # ESM-2 t12 35M embedding size; protein vectors must have this size
        intermediate_size: int = 1280,
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.1,
        max_position_embeddings: int = MAX_N_PROTEINS,  # the rotary tables cover 1.5 times this many positions
        max_token_type_embeddings: int = MAX_N_CONTIGS,
        layer_norm_eps: float = 1e-12,
        initializer_range: float = 0.02,
        pad_token_id: int = SPECIAL_TOKENS["PAD"],
        mask_token_id: int = SPECIAL_TOKENS["MASK"],
        prot_emb_token_id: int = SPECIAL_TOKENS["PROT_EMB"],
        end_token_id: int = SPECIAL_TOKENS["END"],
        num_special_tokens: int = len(SPECIAL_TOKENS),
        protein_clusters_vocab_size: int = 50000,  # family ids 0..N-1; the GM head adds class N for END
        num_labels: int = 1,
        is_causal_gm: bool = False,
        return_dict: bool = False,
        return_attn_weights: bool = False,
        alpha_contrastive_loss: float = 0.5,
        problem_type: str = "single_label_classification",
        zero_loss_without_labels: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        # Set after super().__init__, as the reference does: transformers 5 rejects num_labels=1 together
        # with a single-label problem_type as constructor arguments, and these are the reference's defaults.
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.max_position_embeddings = max_position_embeddings
        self.max_token_type_embeddings = max_token_type_embeddings
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        self.pad_token_id = pad_token_id
        self.mask_token_id = mask_token_id
        self.prot_emb_token_id = prot_emb_token_id
        self.end_token_id = end_token_id
        self.num_special_tokens = num_special_tokens
        self.protein_clusters_vocab_size = protein_clusters_vocab_size
        self.num_labels = num_labels
        self.is_causal_gm = is_causal_gm
        self.return_dict = return_dict
        self.return_attn_weights = return_attn_weights
        self.alpha_contrastive_loss = alpha_contrastive_loss
        self.problem_type = problem_type
        self.zero_loss_without_labels = zero_loss_without_labels

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> PretrainedConfig:
        """The config; a Bacformer Large config.json (which shares model_type "bacformer") gives a
        ``BacformerLargeConfig`` when read through this class, so ``AutoConfig`` and the Auto model classes
        pick the right family."""
        from bacflow.bacformer.model_families import LARGE, family_of_config
        from bacflow.bacformer.modeling_bacformer_large import BacformerLargeConfig

        if cls is BacformerConfig and family_of_config(config_dict) is LARGE:
            return BacformerLargeConfig.from_dict(config_dict, **kwargs)
        return super().from_dict(config_dict, **kwargs)


@dataclass
class BacformerOutput(ModelOutput):
    """Outputs of all Bacformer classes (field names as in the reference's ``BacformerModelOutput``)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None


@functools.lru_cache(maxsize=8)
def rotary_tables(head_dim: int, n_positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE ``cos`` and ``sin`` of ``t * 10000^(-2j/head_dim)``, shape (n_positions, head_dim // 2), fp32, CPU.

    The reference's ``precompute_freqs_cis`` operation for operation, over the same number of positions, so
    the values are bit-identical to its tables (a shorter table could differ in the last bit, as torch's
    vectorised and scalar cosine loops do not always round alike). Built on the CPU, where the reference
    builds them, whatever device the model is on. Cached: the tables are constants of the geometry, and
    built outside inference mode, since a cached inference tensor would break every later backward pass.
    """
    with torch.inference_mode(False):
        inv_freq = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, device="cpu")[: head_dim // 2].float() / head_dim))
        angles = torch.outer(torch.arange(n_positions, device="cpu"), inv_freq).float()
        return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (batch, seq, heads, head_dim) in fp32, pairing dims (2j, 2j+1) as one complex number (LLaMA)."""
    real, imag = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[:, None, :], sin[:, None, :]  # broadcast over heads
    rotated = torch.stack((real * cos - imag * sin, real * sin + imag * cos), dim=-1)
    return rotated.flatten(-2).type_as(x)


def raise_on_nan(tensor: torch.Tensor, what: str) -> torch.Tensor:
    """Return ``tensor``; raise if it holds a NaN (corrupt weights or inputs must not pass silently)."""
    if torch.isnan(tensor).any():
        raise FloatingPointError(
            f"Bacformer produced NaN in its {what}: the weights or the inputs are corrupt "
            "(e.g. a NaN protein embedding, or a checkpoint that did not load)"
        )
    return tensor


class BacformerEmbeddings(nn.Module):
    """Protein vectors through a linear layer, learned vectors for special tokens, plus contig embeddings."""

    def __init__(self, config: BacformerConfig) -> None:
        super().__init__()
        self.linear = nn.Linear(config.hidden_size, config.hidden_size)
        # Row max_token_type_embeddings is the padding row: a zero vector (collate pads token types with it).
        self.token_type_embeddings = nn.Embedding(
            config.max_token_type_embeddings + 1, config.hidden_size, padding_idx=config.max_token_type_embeddings
        )
        # No padding_idx: PAD has a learned vector in the checkpoints.
        self.special_tokens_embeddings = nn.Embedding(config.num_special_tokens, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.prot_emb_token_id = config.prot_emb_token_id

    def forward(
        self,
        protein_embeddings: torch.Tensor,
        special_tokens_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self.linear(protein_embeddings.to(self.linear.weight.dtype))
        # Every token that is not PROT_EMB (including MASK, whose protein vector is still in the input) takes
        # its special-token vector.
        is_protein = (special_tokens_mask == self.prot_emb_token_id).unsqueeze(-1)
        x = torch.where(is_protein, x, self.special_tokens_embeddings(special_tokens_mask))
        if token_type_ids is not None:
            x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))


class BacformerSelfAttention(nn.Module):
    """Multi-head self-attention with RoPE on queries and keys, computed by torch's SDPA."""

    def __init__(self, config: BacformerConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.dropout = config.attention_probs_dropout_prob
        self.q = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.k = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.v = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.att_proj_linear = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, key_mask: torch.Tensor | None, is_causal: bool
    ) -> torch.Tensor:
        batch, seq_len, width = x.shape
        q, k, v = (proj(x).view(batch, seq_len, self.num_heads, -1) for proj in (self.q, self.k, self.v))
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            attn_mask=key_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal,
        )
        return self.att_proj_linear(out.transpose(1, 2).reshape(batch, seq_len, width))


class BacformerLayer(GradientCheckpointingLayer):
    """Post-LN transformer layer (BERT order): x = LN(h + attn(h)); out = LN(x + FFN(x))."""

    def __init__(self, config: BacformerConfig) -> None:
        super().__init__()
        self.self_mha = BacformerSelfAttention(config)
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        # torch's default eps (1e-5), not config.layer_norm_eps: the reference builds these norms that way.
        self.norm1 = nn.LayerNorm(config.hidden_size)
        self.norm2 = nn.LayerNorm(config.hidden_size)
        # The reference uses the attention dropout rate for all three dropouts of a layer.
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def forward(
        self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, key_mask: torch.Tensor | None, is_causal: bool
    ) -> torch.Tensor:
        x = self.norm1(hidden + self.dropout(self.self_mha(hidden, cos, sin, key_mask, is_causal)))
        return self.norm2(x + self.dropout(self.fc2(self.dropout(F.gelu(self.fc1(x))))))


class BacformerGMHead(nn.Module):
    """Genome-modelling head: logits over protein families 0..N-1 and END (class N)."""

    def __init__(self, config: BacformerConfig) -> None:
        super().__init__()
        n_classes = config.protein_clusters_vocab_size + 1
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, n_classes, bias=False)
        self.bias = nn.Parameter(torch.zeros(n_classes))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.layer_norm(F.gelu(self.dense(hidden)))) + self.bias


class BacformerPreTrainedModel(PreTrainedModel):
    """Weight initialisation and loading settings shared by the Bacformer classes."""

    config_class = BacformerConfig
    base_model_prefix = "bacformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["BacformerEmbeddings", "BacformerLayer"]

    def __init__(self, config: BacformerConfig, *args: Any, **kwargs: Any) -> None:
        # BacformerConfig.from_dict gives a Large config for a Large folder: say so rather than fail on a key.
        if not isinstance(config, BacformerConfig):
            raise TypeError(
                f"{type(self).__name__} takes a BacformerConfig, not a {type(config).__name__}: load Bacformer "
                "Large with the BacformerLarge classes or the Auto classes"
            )
        super().__init__(config, *args, **kwargs)

    def _init_weights(self, module: nn.Module) -> None:
        # The transformers default is the reference's scheme: Linear and Embedding N(0, initializer_range)
        # with zero biases and padding rows, LayerNorm weight 1 and bias 0. The head's bare bias starts at 0.
        super()._init_weights(module)
        if isinstance(module, BacformerGMHead):
            nn.init.zeros_(module.bias)


class BacformerModel(BacformerPreTrainedModel):
    """The encoder: embeddings and post-LN layers with RoPE; no final LayerNorm."""

    # The published checkpoints are genome-modelling models; AutoModel takes their encoder and drops the head.
    _keys_to_ignore_on_load_unexpected = [r"^gm_head\."]

    def __init__(self, config: BacformerConfig) -> None:
        super().__init__(config)
        if config.return_attn_weights:
            raise NotImplementedError(
                "return_attn_weights=True is not supported (the reference's attention-weights path ignores "
                "the padding mask); set it to False"
            )
        self.embeddings = BacformerEmbeddings(config)
        layers = nn.ModuleList(BacformerLayer(config) for _ in range(config.num_hidden_layers))
        # Nested twice to keep the reference's state-dict keys, encoder.encoder.layers.{i}.
        self.encoder = nn.ModuleDict({"encoder": nn.ModuleDict({"layers": layers})})
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        protein_embeddings: torch.Tensor,
        special_tokens_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> BacformerOutput:
        """Contextual token vectors (batch, seq, hidden).

        ``attention_mask`` (batch, seq), nonzero = real token, masks keys only: padded rows still get
        (finite, meaningless) outputs. Without it every token attends to padding too, as in the reference.
        With ``is_causal`` the mask is ignored: under a causal mask, right padding cannot reach earlier
        positions.
        """
        hidden = self.embeddings(protein_embeddings, special_tokens_mask, token_type_ids)
        seq_len = hidden.shape[1]
        n_positions = int(self.config.max_position_embeddings * 1.5)
        if seq_len > n_positions:
            raise ValueError(
                f"{seq_len} tokens exceed the model's {n_positions} rotary positions; split the genome into "
                "windows (bacflow.bacformer.stage, mode windowed) or truncate it"
            )
        head_dim = self.config.hidden_size // self.config.num_attention_heads
        cos, sin = (table[:seq_len].to(hidden.device) for table in rotary_tables(head_dim, n_positions))
        key_mask = None if is_causal or attention_mask is None else attention_mask.bool()[:, None, None, :]
        for layer in self.encoder.encoder.layers:
            hidden = layer(hidden, cos, sin, key_mask, is_causal)
        return BacformerOutput(last_hidden_state=raise_on_nan(hidden, "last hidden state"))


def genome_modelling_loss(logits: torch.Tensor, labels: torch.Tensor, config: BacformerConfig) -> torch.Tensor:
    """Mean cross-entropy over the labelled positions (label != -100) of flat logits (n, classes), labels (n,)."""
    if not config.zero_loss_without_labels:
        return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)  # reference: NaN if nothing is labelled
    # Sum over the labelled positions / their number (at least 1): the same mean when there are labels, and a
    # zero that still depends on the parameters when there are none.
    total = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (labels != IGNORE_INDEX).sum().clamp(min=1)


class BacformerGenomeModelling(BacformerPreTrainedModel):
    """The encoder and the protein-family head, the same modules under the same keys for both objectives."""

    def __init__(self, config: BacformerConfig) -> None:
        super().__init__(config)
        self.bacformer = BacformerModel(config)
        self.gm_head = BacformerGMHead(config)
        self.post_init()


class BacformerForMaskedGM(BacformerGenomeModelling):
    """Masked genome modelling: predict the family of masked proteins."""

    @can_return_tuple
    def forward(
        self,
        protein_embeddings: torch.Tensor,
        special_tokens_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> BacformerOutput:
        """Logits (batch, seq, classes); with ``labels``, only the labelled rows (n_labelled, classes) and the loss."""
        hidden = self.bacformer(
            protein_embeddings, special_tokens_mask, token_type_ids, attention_mask, return_dict=True
        ).last_hidden_state
        if labels is None:
            return BacformerOutput(logits=raise_on_nan(self.gm_head(hidden), "logits"), last_hidden_state=hidden)
        # The head (a 50001-way projection) runs only where there is a target, as in the reference.
        labels = labels.to(hidden.device)
        labelled = labels != IGNORE_INDEX
        logits = raise_on_nan(self.gm_head(hidden[labelled]), "logits")
        loss = genome_modelling_loss(logits, labels[labelled], self.config)
        return BacformerOutput(loss=loss, logits=logits, last_hidden_state=hidden)


class BacformerForCausalGM(BacformerGenomeModelling):
    """Causal genome modelling: predict each next protein's family (END, class N, after the last)."""

    @can_return_tuple
    def forward(
        self,
        protein_embeddings: torch.Tensor,
        special_tokens_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> BacformerOutput:
        """Logits (batch, seq, classes); loss of position t's logits against label t+1.

        ``attention_mask`` is accepted (trainers pass it) and ignored: the causal mask already keeps right
        padding away from real tokens, as in the reference.
        """
        hidden = self.bacformer(
            protein_embeddings, special_tokens_mask, token_type_ids, is_causal=True, return_dict=True
        ).last_hidden_state
        logits = raise_on_nan(self.gm_head(hidden), "logits")
        loss = None
        if labels is not None:
            loss = genome_modelling_loss(
                logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten().to(logits.device), self.config
            )
        return BacformerOutput(loss=loss, logits=logits, last_hidden_state=hidden)


AutoConfig.register(BacformerConfig.model_type, BacformerConfig, exist_ok=True)
AutoModel.register(BacformerConfig, BacformerModel, exist_ok=True)
AutoModelForMaskedLM.register(BacformerConfig, BacformerForMaskedGM, exist_ok=True)
AutoModelForCausalLM.register(BacformerConfig, BacformerForCausalGM, exist_ok=True)

# Bacformer Large shares model_type "bacformer": its module registers its classes with the Auto model classes.
import bacflow.bacformer.modeling_bacformer_large  # noqa: E402, F401
