"""Carry the drift the repair measures to the reused tokens it leaves alone.

A skill spliced after text it never attended to moves as a whole: every one of its tokens now also
attends to that text, so its keys and values shift by a component they largely share. The repair
(runtime/repair.py) recomputes a share of the skill's tokens and leaves the rest as compiled. In the
splice's last pass, at every layer before attention reads the cache, this takes the change the pass
made to the recomputed tokens of each such skill (keys un-rotated to position 0 first: RoPE would
make one change look different at every position), averages it, and adds the average to the skill's
other reused tokens (keys rotated to each slot). The recomputed tokens then attend over the moved
cache at that layer, and so do the user turn and every decoded token after it.

The recomputed tokens are the skill's most sensitive ones (repair ranks them by compile-time
sensitivity), whose change is larger than the rest's, so the average is scaled by the mean sensitivity
of the tokens it moves over that of the tokens it was measured on; a skill whose artifact records no
sensitivity is left as it is. Chosen on 25 dev contexts with something to repair (compositions,
skills after a system text, multi-turn; never the test split), against the repair alone: smollm2-135m
KL 0.0038 -> 0.0020, top-1 0.76 -> 0.96, greedy-16 0.44 -> 0.68; qwen2.5-coder-0.5b KL 0.0202 ->
0.0131, top-1 0.96 -> 1.00. The plain average overshoots (demo KL 0.0036; skills after a system text
0.0011 -> 0.0048); the values' change alone does nothing on qwen2.5-coder-0.5b (0.0202); the true
average, from a full prefill, reaches 0.0010 on the demo model: the estimate gets most of it.
Only tokens within the skill's horizon move (repair.reach: as deep as the unseen text reaches), so
a long skill's cost stays bounded; moved slots no longer hold their artifact's bytes, so a pooled
cache forgets them (runtime/cache.py).
"""

from __future__ import annotations

from typing import Any

import torch

from skillforge.model.forward import AttentionFn
from skillforge.prompt import Prompt
from skillforge.rope import RopeSpec
from skillforge.runtime.cache import SpliceCache
from skillforge.runtime.repair import Repair, block_positions, reach, sensitivity_at, unseen_tokens


def drifting(repair: Repair, prompt: Prompt, resolved: list[Any], reuse: list) -> list[list[int]]:
    """The reused positions of each skill after unseen text within its reach (repair.reach), when every
    artifact records sensitivity (the only repair whose ranking pass writes no more than the seams)."""
    if not repair.drift or not all(resolved[i].meta.sensitivity is not None for i, _ in reuse):
        return []
    spans = []
    for i, blocks in reuse:
        missed = unseen_tokens(prompt, i, resolved[i].meta.anchor_ids)
        positions = block_positions(blocks)
        if missed and positions:
            spans.append(positions[: min(len(positions), reach(repair, missed))])
    return spans


class Drift:
    """One splice's drifting skills: for each, the positions its last pass recomputes (`measured`),
    their K/V as spliced (captured before any pass writes them), the positions it moves, and by how
    much (the sensitivity ratio)."""

    def __init__(self, rope: RopeSpec, cache: SpliceCache, spans: list[list[int]], resolved: list[Any], reuse: list,
                 seam: int):
        self.rope, self.cache, self.spans = rope, cache, spans
        self.sensitivity = sensitivity_at(resolved, reuse)
        self.kept: list[int] = []  # positions whose spliced K/V `spliced` holds, in its column order
        self.spliced: list[tuple[torch.Tensor, torch.Tensor]] = [(l.keys[0][:, :0].float(), l.values[0][:, :0].float())
                                                                 for l in cache.layers]
        self.groups: list[tuple[torch.Tensor, torch.Tensor, float, list[tuple[torch.Tensor, torch.Tensor]]]] = []
        self.keep([p for span in spans for p in span[:seam]])

    def keep(self, positions: list[int]) -> None:
        """Record the spliced K/V at `positions` before a pass overwrites them (the ranking pass
        computes the seams; the last pass everything else)."""
        known = set(self.kept)
        new = [p for p in positions if p not in known]
        if not new:
            return
        idx = torch.tensor(new, device=self.cache.layers[0].keys.device)
        self.spliced = [(torch.cat([k, l.keys[0][:, idx].float()], 1), torch.cat([v, l.values[0][:, idx].float()], 1))
                        for (k, v), l in zip(self.spliced, self.cache.layers)]
        self.kept += new

    def plan(self, chosen: set[int]) -> None:
        """Split each skill's positions into those its last pass recomputes (`chosen`) and those it moves."""
        self.keep([p for span in self.spans for p in span if p in chosen])
        column = {p: j for j, p in enumerate(self.kept)}
        device = self.cache.layers[0].keys.device
        for span in self.spans:
            measured = [p for p in span if p in chosen]
            moved = [p for p in span if p not in chosen]
            if not measured or not moved:
                continue
            ratio = float(self.sensitivity[moved].mean() / self.sensitivity[measured].mean().clamp_min(1e-12))
            cols = torch.tensor([column[p] for p in measured], device=device)
            before = [(k[:, cols], v[:, cols]) for k, v in self.spliced]
            self.groups.append((torch.tensor(measured, device=device), torch.tensor(moved, device=device), ratio, before))
            self.cache.contents.clear(torch.tensor(moved))  # they will no longer hold their artifact's bytes

    def carry(self, original: AttentionFn) -> AttentionFn:
        """The attention wrapper of the last pass: move each group's other tokens before attending."""
        trig: dict[tuple[int, int], tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] = {}

        def attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: Any, **kwargs: Any):
            layer = module.layer_idx
            keys, values = self.cache.layers[layer].keys[0], self.cache.layers[layer].values[0]
            freq = id(self.rope.layers[layer].inv_freq)
            for g, (measured, moved, ratio, before) in enumerate(self.groups):
                if (g, freq) not in trig:  # rotations to position 0 and back, per set of frequencies
                    trig[(g, freq)] = (self.rope.angle_delta(layer, measured, torch.zeros_like(measured), wide=True),
                                       self.rope.angle_delta(layer, torch.zeros_like(moved), moved, wide=True))
                (to_zero, to_slots), (k0, v0) = trig[(g, freq)], before[layer]
                dk = self.rope.shift(layer, keys[:, measured].float() - k0, *to_zero).mean(1, keepdim=True)
                dk = self.rope.shift(layer, dk.expand(-1, moved.numel(), -1).contiguous(), *to_slots)
                keys.index_add_(1, moved, (ratio * dk).to(keys.dtype))
                dv = (values[:, measured].float() - v0).mean(1, keepdim=True) * ratio
                values.index_add_(1, moved, dv.expand(-1, moved.numel(), -1).to(values.dtype))
            return original(module, query, key, value, mask, **kwargs)

        return attention
