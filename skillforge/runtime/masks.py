"""Attention masks for computing scattered positions against an assembled cache.

The computed tokens of a splice (gaps, seams, repaired tokens) are not contiguous, so transformers'
own causal mask (which assumes the new tokens follow the cache) does not apply. Each query attends
to every slot at or before its own position, and within the window on sliding-window layers: the
cache keeps every token and the mask enforces the window.
"""

from __future__ import annotations

from typing import Any

import torch


def _mask(q_pos: torch.Tensor, kv_len: int, window: int | None, dtype: torch.dtype) -> torch.Tensor:
    j = torch.arange(kv_len, device=q_pos.device)
    allowed = j[None, :] <= q_pos[:, None]
    if window:
        allowed &= j[None, :] > q_pos[:, None] - window
    # one pass over [queries, keys] (zeros then masked_fill is two): it is built for every splice
    zero = torch.zeros((), dtype=dtype, device=q_pos.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)[None, None]


def scattered_mask(cfg: Any, q_pos: torch.Tensor, kv_len: int, dtype: torch.dtype) -> torch.Tensor | dict[str, torch.Tensor]:
    """A 4D additive mask, or one per layer type for models that mix full and sliding layers."""
    window = getattr(cfg, "sliding_window", None)
    layer_types = getattr(cfg, "layer_types", None)
    if layer_types:
        return {lt: _mask(q_pos, kv_len, window if lt == "sliding_attention" else None, dtype) for lt in set(layer_types)}
    if getattr(cfg, "use_sliding_window", True) is False:
        window = None
    return _mask(q_pos, kv_len, window, dtype)
