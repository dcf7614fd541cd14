"""Banded attention for ModernBERT's local layers: the same result without the far keys.

ModernBERT's local layers let position ``i`` see only keys with ``|i − j| ≤ local_attention/2``,
but transformers' ``sdpa`` path runs scaled-dot-product attention over the whole sequence with
a mask that removes the far keys: at CM3P's 2000 tokens and a 128-wide window, about 15 of every
16 scores it computes are thrown away. :func:`banded_attention` cuts the queries into blocks of
:data:`BLOCK` positions and gives each block only the keys its window can reach (the block
widened by the window on both sides) and the matching slice of transformers' own mask, then
runs one scaled-dot-product attention over all blocks at once. Keys it leaves out are masked in
the full computation, so the result is the same up to float rounding (a different summation
order). Global layers, sequences no longer than a block plus its margins, and masks other than
transformers' boolean ``sdpa`` masks go through transformers' ``sdpa`` function unchanged.

It is registered with transformers' ``AttentionInterface`` and ``AttentionMaskInterface`` under
:data:`BANDED_ATTENTION` (masks built exactly as for ``sdpa``); ModernBERT dispatches its
attention through that interface from transformers 5 on.
"""

from __future__ import annotations

from typing import Any

from beatmap_fid.errors import ExtractorError

BANDED_ATTENTION = "beatmap_fid_banded_sdpa"
BLOCK = 128
"""Query positions per block (measured on CPU: 128 is faster than 64 or 256 at 2000 tokens)."""


def banded_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """transformers attention function: (batch, heads, length, head_dim) query/key/value and
    a (batch, 1, length, length) mask in, (batch, length, heads, head_dim) out."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    length = query.shape[2]
    if (
        sliding_window is None
        or attention_mask is None
        or attention_mask.dtype != torch.bool
        or attention_mask.ndim != 4
        or key.shape[2] != length
        or length <= BLOCK + 2 * sliding_window
    ):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    batch, heads, _, head_dim = query.shape
    margin = int(sliding_window)
    blocks = -(-length // BLOCK)
    padded = blocks * BLOCK
    span = BLOCK + 2 * margin  # keys one block of queries can reach

    def query_blocks(x):  # (B, H, L, D) -> (B * blocks, H, BLOCK, D)
        x = torch.nn.functional.pad(x, (0, 0, 0, padded - length))
        x = x.view(batch, heads, blocks, BLOCK, head_dim).transpose(1, 2)
        return x.reshape(batch * blocks, heads, BLOCK, head_dim)

    def key_blocks(x):  # (B, H, L, D) -> (B * blocks, H, span, D)
        x = torch.nn.functional.pad(x, (0, 0, margin, padded - length + margin))
        x = x.unfold(2, span, BLOCK).permute(0, 2, 1, 4, 3)
        return x.reshape(batch * blocks, heads, span, head_dim)

    mask = _band_mask(attention_mask, batch, margin)
    output = torch.nn.functional.scaled_dot_product_attention(
        query_blocks(query),
        key_blocks(key),
        key_blocks(value),
        attn_mask=mask,
        dropout_p=dropout,
        scale=scaling,
    )
    output = output.view(batch, blocks, heads, BLOCK, head_dim).transpose(2, 3)
    return output.reshape(batch, padded, heads, head_dim)[:, :length].contiguous(), None


_last_band_mask: list[Any] = []  # [source mask, margin, band mask]: one per forward pass


def _band_mask(attention_mask: Any, batch: int, margin: int) -> Any:
    """The (batch * blocks, 1 or heads, BLOCK, span) slices of ``attention_mask`` that
    :func:`banded_attention` needs; the mask of the last call is reused, as every local layer
    of a forward pass gets the same mask."""
    import torch

    cached = _last_band_mask
    if cached and cached[0] is attention_mask and cached[1] == margin:
        return cached[2]
    length = attention_mask.shape[-1]
    blocks = -(-length // BLOCK)
    padded = blocks * BLOCK
    span = BLOCK + 2 * margin
    mask = attention_mask.expand(batch, -1, length, length)
    mask = torch.nn.functional.pad(
        mask, (margin, padded - length + margin, 0, padded - length), value=False
    )
    mask = mask.view(batch, mask.shape[1], blocks, BLOCK, padded + 2 * margin)
    mask = mask.unfold(4, span, BLOCK).diagonal(dim1=2, dim2=4)  # (B, h, BLOCK, span, blocks)
    mask = mask.permute(0, 4, 1, 2, 3).reshape(batch * blocks, -1, BLOCK, span)
    cached[:] = [attention_mask, margin, mask]
    return mask


def register_banded_attention() -> str:
    """Register :func:`banded_attention` with transformers (once); returns its name.

    Needs transformers 5 or newer, whose ModernBERT dispatches attention through the registry.
    """
    import transformers
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    if int(transformers.__version__.split(".")[0]) < 5:
        raise ExtractorError(
            f"attention='banded' needs transformers 5 or newer (found {transformers.__version__})"
        )
    AttentionInterface.register(BANDED_ATTENTION, banded_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(BANDED_ATTENTION, sdpa_mask)
    return BANDED_ATTENTION
