"""Run a transformers model with its attention function wrapped, for one forward.

transformers (v5) dispatches every attention layer through a registry keyed by
`config._attn_implementation`; each call receives the post-RoPE queries, the keys and values from the
cache, and the mask. Wrapping that entry lets the splice skip masked-out blocks and lets repair read a
layer's queries, for any architecture, without patching model code. The entry is restored on exit.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

AttentionFn = Callable[..., Any]


@contextmanager
def wrapped_attention(model: Any, wrap: Callable[[AttentionFn], AttentionFn]) -> Iterator[None]:
    """Install `wrap(original)` as the model's attention function until the block exits. A model on
    `eager` attention is wrapped around SDPA, which computes the same thing."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    name = model.config._attn_implementation or "sdpa"
    before = ALL_ATTENTION_FUNCTIONS._local_mapping.get(name)
    ALL_ATTENTION_FUNCTIONS[name] = wrap(ALL_ATTENTION_FUNCTIONS.get(name, sdpa_attention_forward))
    try:
        yield
    finally:
        if before is None:
            del ALL_ATTENTION_FUNCTIONS[name]
        else:
            ALL_ATTENTION_FUNCTIONS[name] = before
