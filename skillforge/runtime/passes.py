"""Group the tokens a splice computes by position, so early tokens do not pay for late keys.

The computed tokens of a splice are scattered: template pieces and a seam near the start, repaired
tokens inside the skills, the user turn at the end. With one attention call per layer, every query
attends over the whole assembled cache (the mask hides what it must not see, but the kernel still
multiplies it), so a seam token at position 20 of an 8,000-token prompt costs as much attention as the
last token. Attention is the dominant cost of a long splice on a CPU: for the demo model, 49 queries
over 8,033 keys took 0.49 s of a 1.35 s splice.

So the queries are split into position-ordered groups, and within the one forward pass each group
attends only to the cache up to its last token (`grouped_attention`). This is the same computation
as the full masked call minus blocks the mask zeroes: all new KV is written before attention runs,
and each group's slice of the mask keeps it causal. The split minimises sum(queries x keys) plus a
fixed cost per group (one more attention call per layer), by dynamic programming over the sorted
positions (split points thinned to at most MAX_CANDIDATES so planning stays cheap).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch

from skillforge.model.forward import wrapped_attention

# Fixed cost of one more group, in query x key units: an attention call per layer (~0.05 ms on a CPU,
# where one query over 8k keys costs ~0.3 ms per layer). On an accelerator attention over the cache
# is cheap next to a kernel launch, so splitting rarely pays there.
PASS_COST = {"cpu": 2_048, "accelerator": 1_000_000}
MAX_PASSES = 4
MAX_CANDIDATES = 256


def plan_passes(positions: torch.Tensor, pass_cost: int, max_passes: int = MAX_PASSES) -> list[torch.Tensor]:
    """Sorted positions -> consecutive groups (in order) minimising queries x keys + pass_cost per group."""
    pos = positions.tolist()
    m = len(pos)
    if m <= 1 or max_passes <= 1:
        return [positions] if m else []
    # candidate group ends: where the next position jumps (a gap), thinned evenly; the last always ends
    ends = [i for i in range(m - 1) if pos[i + 1] > pos[i] + 1]
    if len(ends) > MAX_CANDIDATES:
        step = len(ends) / MAX_CANDIDATES
        ends = [ends[int(k * step)] for k in range(MAX_CANDIDATES)]
    ends.append(m - 1)
    n = len(ends)
    count = torch.tensor([e + 1 for e in ends], dtype=torch.float64)  # queries up to and including end j
    keys = torch.tensor([pos[e] + 1 for e in ends], dtype=torch.float64)  # keys a group ending at j needs
    inf = float("inf")
    # best[p][j]: cheapest cost of covering queries 0..ends[j] with p + 1 groups
    best = [count * keys + pass_cost]
    back: list[torch.Tensor] = []
    for _ in range(1, max_passes):
        prev = best[-1]
        # a new last group runs from after ends[i] to ends[j] (i < j)
        cost = prev[:, None] + (count[None, :] - count[:, None]) * keys[None, :] + pass_cost
        cost = cost.masked_fill(torch.ones(n, n, dtype=torch.bool).tril(), inf)
        value, arg = cost.min(dim=0)
        best.append(value)
        back.append(arg)
    finals = torch.stack([b[-1] for b in best])
    p = int(finals.argmin())
    cuts, j = [], n - 1
    while p > 0:
        i = int(back[p - 1][j])
        cuts.append(ends[i] + 1)
        j, p = i, p - 1
    bounds = [0, *reversed(cuts), m]
    return [positions[a:b] for a, b in zip(bounds, bounds[1:])]


@contextmanager
def grouped_attention(model: Any, groups: list[torch.Tensor]) -> Iterator[None]:
    """For one forward over the concatenated `groups` (sorted positions): every attention layer runs
    one call per group, over the keys up to the group's last position and its rows of the mask."""
    if len(groups) <= 1:
        yield
        return
    bounds, start = [], 0
    for g in groups:
        bounds.append((start, start + g.numel(), int(g[-1]) + 1))
        start += g.numel()

    def split(original):
        def attention(module, query, key, value, attention_mask, **kwargs):
            outs = []
            for a, b, kv_len in bounds:
                mask = None if attention_mask is None else attention_mask[:, :, a:b, :kv_len]
                out, _ = original(module, query[:, :, a:b], key[:, :, :kv_len], value[:, :, :kv_len], mask, **kwargs)
                outs.append(out)
            return torch.cat(outs, dim=1), None  # [batch, queries, heads, dim]
        return attention

    with wrapped_attention(model, split):
        yield
