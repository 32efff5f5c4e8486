"""Group the tokens a splice computes into forward passes, so early tokens do not pay for late keys.

The computed tokens of a splice are scattered: template pieces and a seam near the start, repaired
tokens inside the skills, the user turn at the end. Computed in one pass, every query attends over the
whole assembled cache (the mask hides what it must not see, but the kernel still multiplies it), so a
seam token at position 20 of an 8,000-token prompt costs as much attention as the last token. Passes
ordered by position keep causality (each pass sees the KV written by the earlier ones) and let a pass
attend only to the cache up to its last query. Attention is the dominant cost of a long splice on a
CPU: for the demo model, 49 queries over 8,033 keys take 0.49 s of a 1.35 s splice.

The split minimises sum(queries x keys) + one pass's fixed cost per pass, by dynamic programming over
the sorted positions (split points thinned to at most MAX_CANDIDATES so planning stays cheap).
"""

from __future__ import annotations

import torch

# Fixed cost of one extra forward pass, in query x key units. Demo model on a 2-core CPU: a forward of
# one token costs ~80 ms (reading 540 MB of float32 weights), one query over 8k keys ~10 ms across the
# 30 layers, so a pass is worth ~8 queries x 8k keys. On an accelerator attention is cheap and a pass
# is kernel launches, so splitting rarely pays there.
PASS_COST = {"cpu": 65_536, "accelerator": 4_000_000}
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
