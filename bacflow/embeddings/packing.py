"""Where an encoder batch's tokens are, and attention and rotary positions over them.

A batch arrives padded: token ids (batch, positions) and a boolean mask of the real tokens. An encoder
computes on rows of tokens (N, width); `TokenLayout` decides what the rows are:

* padded: all batch × positions rows, padding included, and attention masks the padding keys (PyTorch's
  fused ``scaled_dot_product_attention``);
* packed: only the real tokens, sequence after sequence, and attention runs on each sequence alone
  (FlashAttention's ``flash_attn_varlen_func`` when it is installed and the batch is on a GPU in 16-bit,
  else SDPA over a jagged nested tensor), so that no FLOP is spent on padding.

Packed is the default on CUDA, where padding costs FLOPs the kernels would otherwise skip; on the CPU
batches are short and length-sorted (little padding), and SDPA over nested tensors falls back to a loop
over sequences, so padded stays the default there (packed can be forced, which the tests do).

An encoder adopts this with three calls: ``layout = TokenLayout(real, packed)``, ``layout.pack`` of its
input embeddings (and ``layout.unpack`` of its output), and ``layout.attend`` in each layer; rotary
models also use `rotary_tables` and `rotate`.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@functools.cache
def flash_attn_varlen() -> Callable[..., torch.Tensor] | None:
    """FlashAttention 2's variable-length kernel, used for packed batches on a GPU; None where it is not installed."""
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        return None
    return flash_attn_varlen_func


def packed_by_default(device: torch.device) -> bool:
    return device.type == "cuda"


class TokenLayout:
    """The rows an encoder computes on for one batch whose real tokens are where `real` (batch, positions)
    is true: every position (padded) or the real tokens only (packed)."""

    def __init__(self, real: torch.Tensor, packed: bool):
        import torch

        self.real = real
        self.batch, self.positions = real.shape
        self.packed = packed
        if packed:
            lengths = real.sum(1)
            self.index = real.flatten().nonzero().squeeze(1)
            #: Each real token's column: its rotary position, as in the padded batch.
            self.position_ids = torch.arange(self.positions, device=real.device).expand_as(real)[real]
            self.offsets = torch.nn.functional.pad(lengths.cumsum(0), (1, 0))
            self.longest = int(lengths.max())

    @property
    def rows(self) -> int:
        return len(self.index) if self.packed else self.batch * self.positions

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        """(batch, positions, ...) to (rows, ...)."""
        flat = padded.flatten(0, 1)
        return flat[self.index] if self.packed else flat

    def unpack(self, rows: torch.Tensor) -> torch.Tensor:
        """(rows, ...) to (batch, positions, ...), zeros at padding when packed."""
        if not self.packed:
            return rows.view(self.batch, self.positions, *rows.shape[1:])
        padded = rows.new_zeros(self.batch * self.positions, *rows.shape[1:])
        padded[self.index] = rows
        return padded.view(self.batch, self.positions, *rows.shape[1:])

    def positional(self, table: torch.Tensor) -> torch.Tensor:
        """A per-position table (max positions, ...) as rows: (rows, ...) packed; (positions, ...) padded,
        broadcasting over the batch once rows are viewed as (batch, positions, ...) with `grid`."""
        return table[self.position_ids] if self.packed else table[: self.positions]

    def grid(self, rows: torch.Tensor) -> torch.Tensor:
        """Rows in the shape that `positional` tables broadcast against."""
        return rows if self.packed else rows.view(self.batch, self.positions, *rows.shape[1:])

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
        """Attention of (rows, heads, width) queries, keys and values within each sequence, padding keys
        excluded; (rows, heads × width)."""
        import torch
        import torch.nn.functional as F

        rows, heads, width = query.shape
        if not self.packed:
            query, key, value = (
                part.view(self.batch, self.positions, heads, width).transpose(1, 2) for part in (query, key, value)
            )
            mask = self.real[:, None, None, :]
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale)
            # The fused kernels lay their output out as (batch, positions, heads, width): a view, no copy.
            return out.transpose(1, 2).reshape(rows, heads * width)
        kernel = flash_attn_varlen() if query.is_cuda and query.dtype in (torch.bfloat16, torch.float16) else None
        if kernel is not None:
            offsets = self.offsets.to(torch.int32)
            out = kernel(query, key, value, offsets, offsets, self.longest, self.longest, softmax_scale=scale)
            return out.reshape(rows, heads * width)
        return self._nested_attention(query, key, value, scale).reshape(rows, heads * width)

    def _nested_attention(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float
    ) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        def jagged(part: torch.Tensor) -> torch.Tensor:
            # SDPA takes jagged tensors whose values are contiguous (rows, heads, width).
            flat = part.contiguous()
            return torch.nested.nested_tensor_from_jagged(flat, self.offsets, max_seqlen=self.longest).transpose(1, 2)

        nested = [jagged(part) for part in (query, key, value)]
        with warnings.catch_warnings():
            # The CPU fallback loops over sequences through the older nested layout, and warns that it exists.
            warnings.filterwarnings("ignore", message="The PyTorch API of nested tensors is in prototype stage")
            out = F.scaled_dot_product_attention(*nested, scale=scale)
        return out.transpose(1, 2).values()


def rotary_tables(inv_freq: torch.Tensor, positions: int, dtype: torch.dtype, device: torch.device):
    """(cos, sin), each (positions, len(inv_freq)) in `dtype`, of the rotary angles position × frequency."""
    import torch

    angles = torch.outer(torch.arange(positions, dtype=torch.float32), inv_freq.float().cpu())
    return angles.cos().to(dtype).to(device), angles.sin().to(dtype).to(device)


def rotate(query_key: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding ("rotate half" form) of queries and keys (..., 2, heads, head width), whose halves of
    each head are the pairs turned; `cos` and `sin` are (..., head width / 2), the leading dimensions
    broadcasting against the input's. Returns (2, ..., heads, head width), query then key, each contiguous.

    Three element-wise passes in the input's dtype, with no cast or concatenation: the product by cos,
    then each half gains its partner times ±sin.
    """
    import torch

    *lead, two, heads, width = query_key.shape
    halves = query_key.unflatten(-1, (2, width // 2)).movedim(-4, 0)  # (2, ..., heads, 2, half)
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)  # over heads
    out = torch.empty(halves.shape, dtype=query_key.dtype, device=query_key.device)
    torch.mul(halves, cos.unsqueeze(-2), out=out)
    first, second = halves.unbind(-2)
    out[..., 0, :].addcmul_(second, sin, value=-1)
    out[..., 1, :].addcmul_(first, sin)
    return out.flatten(-2)
