"""How far each skill token's keys and values move when other text precedes the skill.

compile records it in every artifact (one more prefill of the skill, behind SENSITIVITY_LEAD), the
repair ranks the tokens to recompute by it (runtime/repair.py), and an edit that re-prefills a skill
measures it again (runtime/edits.py); it lives below both because compile and the runtime never
import each other. The tokens that move most are the ends of code blocks, paragraph breaks and
sentence ends, which gather their section like attention sinks.
"""

from __future__ import annotations

import torch

from skillforge.model.forward import KV, prefill
from skillforge.model.loader import LoadedModel
from skillforge.prompt import has_chat_template, system_anchor
from skillforge.rope import RopeSpec

# the system text a skill is prefilled behind once more at compile time, to measure its tokens'
# sensitivity to what precedes them; generic on purpose (written for this, not taken from any eval set)
SENSITIVITY_LEAD = ("You are a helpful, careful assistant. Answer the user's questions accurately and concisely. "
                    "Use the reference material below when it applies to the user's request.")


def lead_anchor(lm: LoadedModel, text: str, lead: str = SENSITIVITY_LEAD) -> list[int]:
    """The tokens before skill `text` when `lead` is the system text before it (a raw prompt's layout
    on a model without a chat template)."""
    return system_anchor(lm.tokenizer, lead, text, raw=not has_chat_template(lm.tokenizer))


@torch.no_grad()
def kv_behind_lead(lm: LoadedModel, spec: RopeSpec, text: str, ids: list[int], offset: int,
                   lead: str = SENSITIVITY_LEAD) -> KV:
    """The skill's K/V prefilled behind `lead` (float32), keys rotated to the positions a compile behind
    an anchor of `offset` tokens puts them at, so the two compare token by token."""
    anchor = lead_anchor(lm, text, lead)
    src = torch.arange(len(anchor), len(anchor) + len(ids))
    dst = torch.arange(offset, offset + len(ids))
    out = []
    for layer, (k, v) in enumerate(prefill(lm.model, anchor + ids, start=len(anchor))):
        cos, sin = spec.angle_delta(layer, src, dst, wide=True)
        out.append((spec.shift(layer, k.float(), cos.to(k.device), sin.to(k.device)), v.float()))
    return out


@torch.no_grad()
def sensitivity(lm: LoadedModel, spec: RopeSpec, text: str, ids: list[int], offset: int, kv: KV,
                lead: str = SENSITIVITY_LEAD) -> list[float]:
    """Per skill token: the relative distance of its keys and values (averaged over KV heads, summed
    over layers) between `kv`, prefilled behind the anchor at `offset`, and a prefill behind `lead`
    (kv_behind_lead). Rounded to 4 decimals (metadata is JSON)."""
    score = torch.zeros(len(ids))
    for (k, v), (k2, v2) in zip(kv, kv_behind_lead(lm, spec, text, ids, offset, lead)):
        k, v = k.float(), v.float()
        score += ((k - k2).norm(dim=-1) / k.norm(dim=-1).clamp_min(1e-6)).mean(0).cpu()
        score += ((v - v2).norm(dim=-1) / v.norm(dim=-1).clamp_min(1e-6)).mean(0).cpu()
    return [round(x, 4) for x in score.tolist()]
