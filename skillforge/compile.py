"""Manifest + model -> KV artifact (tensors and metadata). No storage code here.

A skill is tokenized on its own and prefilled behind an *anchor*: the tokens the model's chat template
puts before the system content (`<|im_start|>system\\n` for the demo model), or the tokenizer's own
prefix (BOS) without a template. Without it, the skill's first token becomes a false attention sink;
measured on the demo model, anchoring lifted next-token agreement with a full recompute from 0.73 to
0.83 at no cost. Only the skill's own tokens are stored; the anchor's ids are recorded because the
artifact is valid only for them.

A deployment whose system text is fixed can compile behind it (`prompt.system_anchor`, `compile --system`):
the anchor is then every token a context with that system text has before the skill, so the skill
splices there exactly, with no repair, and after it (behind earlier skills) only what follows the
system text is unseen.

Each artifact also records every token's *sensitivity*: how far its keys and values move when the
skill is prefilled behind a generic system text (SENSITIVITY_LEAD) instead of its anchor, summed over
layers. The tokens that move most are the ends of code blocks, paragraph breaks and sentence ends,
which gather their section like attention sinks; after a short unseen text, repair recomputes those
rather than a longer seam (runtime/repair.py). It costs one more prefill of the skill at compile time.
"""

from __future__ import annotations

from datetime import datetime, timezone

import torch

from skillforge.artifact import ArtifactMeta, FieldSpan
from skillforge.errors import ContextTooLong
from skillforge.manifest import Manifest
from skillforge.model.forward import KV, prefill
from skillforge.model.loader import LoadedModel
from skillforge.prompt import char_spans_to_tokens, has_chat_template, resolve_anchor, system_anchor, tokenize_with_offsets
from skillforge.rope import RopeSpec, rope_spec

# the system text a skill is prefilled behind once more at compile time, to measure its tokens'
# sensitivity to what precedes them; generic on purpose (written for this, not taken from any eval set)
SENSITIVITY_LEAD = ("You are a helpful, careful assistant. Answer the user's questions accurately and concisely. "
                    "Use the reference material below when it applies to the user's request.")


def compile_skill(lm: LoadedModel, manifest: Manifest, values: dict[str, str] | None = None, anchor: str | list[int] = "template") -> tuple[ArtifactMeta, KV]:
    """Prefill one skill behind its anchor; return metadata and the KV of the skill's own tokens."""
    spec = rope_spec(lm.model)  # refuses models whose keys cannot be moved, before any work
    rendered = manifest.render(values)
    anchor_ids = resolve_anchor(lm.tokenizer, anchor)
    ids, offsets = tokenize_with_offsets(lm.tokenizer, rendered.text)
    total = len(anchor_ids) + len(ids)
    if total > lm.max_positions:
        raise ContextTooLong(f"skill {manifest.name}@{manifest.version} is {total} tokens with its anchor; {lm.name} allows {lm.max_positions}")
    n = len(anchor_ids)
    layers = prefill(lm.model, anchor_ids + ids, start=n)
    fields = [FieldSpan(name, rendered.values[name], s, e) for name, s, e in char_spans_to_tokens(offsets, rendered.spans)]
    meta = ArtifactMeta(
        skill=manifest.name,
        version=manifest.version,
        text=rendered.text,
        text_digest=rendered.digest,
        template=manifest.template,
        field_values=dict(rendered.values),
        token_ids=ids,
        anchor_ids=anchor_ids,
        offset=n,
        fields=fields,
        fingerprint=lm.fingerprint.digest,
        fingerprint_parts=lm.fingerprint.parts,
        dtype=lm.dtype,
        rope=spec.params,
        num_layers=len(layers),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        extra={"manifest": manifest.to_dict(), "labels": {f.name: f.label for f in manifest.fields.values()},
               "sensitivity": sensitivity(lm, spec, rendered.text, ids, n, layers)},
    )
    return meta, layers


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
