"""Which reused tokens to recompute against the real prefix, to recover what splicing loses.

A skill's cached KV never attended to what precedes it in the new context (system text, earlier
skills). Two repairs, combinable:
  seam K      recompute the first K tokens of each skill (EPIC's LegoLink, the paper's seam repair):
              they carry the most prefix-dependent state and act as false attention sinks.
  blend R     CacheBlend-style: recompute the fraction R of reused tokens whose keys deviate most
              from a true prefill at an early layer; measuring the deviation costs a forward of the
              first `probe_layer + 1` layers over the whole prompt.
Skills with nothing but the anchor before them are exact already (they were compiled behind the
same tokens), so repair is spent only on skills that follow other text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from transformers import DynamicCache

from skillforge.errors import BadReference

if TYPE_CHECKING:
    from skillforge.runtime.layout import Prompt


@dataclass(frozen=True)
class Repair:
    seam: int = 16
    blend: float = 0.0
    probe_layer: int = 1
    exact_skip: bool = True

    @classmethod
    def parse(cls, seam: int | None, repair: str | None) -> "Repair":
        """`--seam K` and `--repair none|seam|blend:0.15` -> Repair."""
        base = cls() if seam is None else cls(seam=seam)
        if not repair or repair == "seam":
            return base
        if repair == "none":
            return cls(seam=0 if seam is None else seam, blend=0.0)
        kind, _, arg = repair.partition(":")
        if kind == "blend":
            try:
                ratio = float(arg or 0.15)
            except ValueError:
                ratio = -1.0
            if not 0.0 <= ratio <= 1.0:
                raise BadReference(f"invalid --repair {repair!r}: blend ratio must be between 0 and 1")
            return cls(seam=base.seam if seam is not None else 0, blend=ratio)
        raise BadReference(f"invalid --repair {repair!r}: use none, seam or blend:<ratio>")

    def describe(self) -> str:
        parts = [f"seam={self.seam}"]
        if self.blend:
            parts.append(f"blend={self.blend:g}@layer{self.probe_layer}")
        return ",".join(parts)


class _Stop(Exception):
    pass


class _ProbeCache(DynamicCache):
    """Records one layer's fresh keys during a forward, then stops it (the rest is not needed)."""

    def __init__(self, layer: int):
        super().__init__()
        self.target = layer
        self.keys: torch.Tensor | None = None

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if layer_idx == self.target:
            self.keys = key_states
            raise _Stop
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)


def _needs_repair(prompt: "Prompt", skill_index: int, resolved: list[Any], exact_skip: bool) -> bool:
    """False when the skill sits right behind its anchor (nothing it did not see precedes it)."""
    if not exact_skip:
        return True
    cs = prompt.skill_spans[skill_index][0]
    before = [p for p, (a, b) in enumerate(prompt.offsets) if b <= cs and b > a]
    anchor = resolved[skill_index].meta.anchor_ids
    return [prompt.ids[p] for p in before] != anchor


def select_repair(runtime: Any, repair: Repair, prompt: "Prompt", resolved: list[Any], reuse: list, reused: torch.Tensor, cache: Any) -> set[int]:
    """Positions of reused tokens to recompute."""
    chosen: set[int] = set()
    candidates: list[int] = []
    for i, blocks in reuse:
        if not _needs_repair(prompt, i, resolved, repair.exact_skip):
            continue
        positions = [c + k for _, c, n in blocks for k in range(n)]
        chosen.update(positions[: repair.seam])
        candidates.extend(positions[repair.seam :])
    if repair.blend > 0 and candidates:
        budget = int(round(repair.blend * sum(n for _, blocks in reuse for _, _, n in blocks)))
        if budget:
            chosen.update(_deviating(runtime, repair.probe_layer, prompt, candidates, cache, budget))
    return chosen


@torch.no_grad()
def _deviating(runtime: Any, layer: int, prompt: "Prompt", candidates: list[int], cache: Any, budget: int) -> list[int]:
    model = runtime.lm.model
    L = len(prompt.ids)
    ids = torch.tensor([prompt.ids[: L - 1]], device=model.device)
    probe = _ProbeCache(layer)
    try:
        model(input_ids=ids, attention_mask=torch.ones_like(ids), cache=probe, use_cache=True, logits_to_keep=1)
    except _Stop:
        pass
    fresh = probe.keys[0]  # [heads, L-1, dim]
    idx = torch.tensor(candidates, device=fresh.device)
    spliced = cache.layers[layer].keys[0][:, idx]
    deviation = (fresh[:, idx].float() - spliced.float()).norm(dim=-1).sum(0)
    top = deviation.topk(min(budget, idx.numel())).indices
    return idx[top].tolist()
