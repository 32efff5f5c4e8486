"""The one seam to transformers' forward pass: every model call, every DynamicCache, the decode loop.

Compile, the runtime and the eval drive the model only through these functions, so a change in
transformers' calling conventions (cache keyword, logits_to_keep, the attention registry) is fixed here:
  run            one forward of token ids, optionally over a cache, at explicit positions, with a mask
  prefill        a plain prefill of a token list -> per-layer (K, V) [kv_heads, tokens, head_dim]
  new_cache      the DynamicCache a plain prefill fills (full layers that keep every token)
  layer_shapes   (kv_heads, key_dim, value_dim) per layer, from a one-token forward
  greedy         the greedy decode loop, over any step function (one stream, or guided streams)
  eos_ids        the token ids that end a generation
  wrapped_attention  the model's attention function wrapped for one block (grouped passes, repair probe)
  grouped_scores     query heads against their shared KV head (grouped-query attention), no copies

TRANSFORMERS_SDPA_FORCE_GQA: `run` sets it to 1 unless the environment already sets it, so SDPA
attends over the cache's KV heads directly instead of repeating them per query head (transformers
otherwise copies the whole cache per layer whenever a mask is given, as every splice passes one); the
math is the same. transformers reads it on every attention call, so setting it at the first forward
covers every forward after it; a user who exports it (e.g. `0`) keeps their value.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

KV = list[tuple[torch.Tensor, torch.Tensor]]
AttentionFn = Callable[..., Any]
GQA_ENV = "TRANSFORMERS_SDPA_FORCE_GQA"


def new_cache() -> Any:
    """An empty DynamicCache with no config: full layers that keep every token, even for sliding-window
    models (a splice, a reference and a compile all need every key)."""
    from transformers import DynamicCache

    return DynamicCache()


@torch.no_grad()
def run(model: Any, ids: torch.Tensor, cache: Any = None, positions: torch.Tensor | None = None,
        mask: torch.Tensor | dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """One forward of `ids` [1, n] -> logits [vocab] (float32) after the last token.

    With a `cache` the new KV goes into it (use_cache); without one nothing is kept. `positions` [1, n]
    places the tokens (default: after the cache); `mask` is an attention mask, 2-D of ones or an additive
    4-D one (or one per layer type) for tokens that are not contiguous."""
    os.environ.setdefault(GQA_ENV, "1")  # see the module docstring
    kwargs: dict[str, Any] = {"input_ids": ids, "logits_to_keep": 1, "use_cache": cache is not None}
    if cache is not None:
        kwargs["cache"] = cache
    if positions is not None:
        kwargs["position_ids"] = positions
    if mask is not None:
        kwargs["attention_mask"] = mask
    return model(**kwargs).logits[0, -1].float()


def prefill(model: Any, ids: list[int], start: int = 0) -> KV:
    """Plain prefill of `ids` at positions 0.. -> per-layer (K, V) [kv_heads, tokens, head_dim] of the
    tokens from `start` on, copied out of the cache (so the memory of the tokens before is freed)."""
    x = torch.tensor([ids], device=model.device)
    cache = new_cache()
    run(model, x, cache=cache, mask=torch.ones_like(x))
    return [(layer.keys[0][:, start:].clone(), layer.values[0][:, start:].clone()) for layer in cache.layers]


def layer_shapes(model: Any, token_id: int) -> list[tuple[int, int, int]]:
    """(kv_heads, key_dim, value_dim) per layer, read from a one-token forward of `token_id`."""
    cache = new_cache()
    run(model, torch.tensor([[token_id]], device=model.device), cache=cache)
    return [(l.keys.shape[1], l.keys.shape[3], l.values.shape[3]) for l in cache.layers]


def eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """Token ids that end a generation: the generation config's and the tokenizer's."""
    return set(_as_list(model.generation_config.eos_token_id) + _as_list(tokenizer.eos_token_id))


@dataclass(frozen=True)
class Greedy:
    """A greedy continuation; `margins[i]` is the top-1 minus top-2 logit at step i (how close a call)."""

    tokens: list[int]
    margins: list[float]


@torch.no_grad()
def greedy(first: torch.Tensor, step: Callable[[int, int], torch.Tensor], max_new_tokens: int, eos: set[int]) -> Greedy:
    """Greedy decoding from the logits `first`: `step(token, i)` feeds the i-th chosen token to the
    model(s) and returns the next logits. Stops after an end token or `max_new_tokens` tokens."""
    tokens: list[int] = []
    margins: list[float] = []
    logits = first
    for i in range(max_new_tokens):
        top2 = logits.float().topk(2).values
        margins.append(float(top2[0] - top2[1]))
        tok = int(logits.argmax())
        tokens.append(tok)
        if tok in eos or i == max_new_tokens - 1:
            break
        logits = step(tok, i)
    return Greedy(tokens, margins)


def grouped_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """q [heads, n, dim] against k [kv_heads, L, dim] -> unscaled scores [heads, n, L], the query heads
    that share a KV head (grouped-query attention) in one matmul each instead of copying the keys for
    every query head (at 8k keys those copies were most of the attention ranking's cost above its forward)."""
    heads, n = q.shape[:2]
    return (q.reshape(k.shape[0], heads // k.shape[0] * n, -1) @ k.transpose(-1, -2)).view(heads, n, -1)


@contextmanager
def wrapped_attention(model: Any, wrap: Callable[[AttentionFn], AttentionFn]) -> Iterator[None]:
    """Install `wrap(original)` as the model's attention function until the block exits.

    transformers (v5) dispatches every attention layer through a registry keyed by
    `config._attn_implementation`; each call receives the post-RoPE queries, the keys and values from
    the cache, and the mask. Wrapping that entry lets the splice skip masked-out blocks and lets repair
    read a layer's queries, for any architecture, without patching model code. A model on `eager`
    attention is wrapped around SDPA, which computes the same thing. The entry is restored on exit."""
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


def _as_list(x: Any) -> list[int]:
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [int(x)]
