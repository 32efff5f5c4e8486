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

Each artifact also records every token's *sensitivity*: how far its state moves when a generic
system text precedes the skill (sensitivity.py). The tokens that move most are the ends of code
blocks, paragraph breaks and sentence ends, which gather their section like attention sinks; after
unseen text, repair recomputes those the user turn reads (runtime/repair.py). Measured (the default)
it costs one more prefill of the skill; estimated from the compile's own forward
(`sensitivity="estimate"`) it costs ~6% more than one, at some fidelity (sensitivity.py).
"""

from __future__ import annotations

from datetime import datetime, timezone

from skillforge.artifact import SENSITIVITY_KINDS, ArtifactMeta, FieldSpan
from skillforge.errors import BadInput, ContextTooLong
from skillforge.manifest import Manifest
from skillforge.model.forward import KV
from skillforge.model.loader import LoadedModel
from skillforge.prompt import char_spans_to_tokens, resolve_anchor, tokenize_with_offsets
from skillforge.rope import rope_spec
from skillforge.sensitivity import prefill_recorded


def check_sensitivity_kind(kind: str) -> str:
    """A sensitivity kind, or BadInput naming the valid ones (before any model is loaded)."""
    if kind not in SENSITIVITY_KINDS:
        raise BadInput(f"unknown sensitivity {kind!r}; choose one of {', '.join(SENSITIVITY_KINDS)}")
    return kind


def compile_skill(lm: LoadedModel, manifest: Manifest, values: dict[str, str] | None = None, anchor: str | list[int] = "template",
                  sensitivity: str = "measured") -> tuple[ArtifactMeta, KV]:
    """Prefill one skill behind its anchor; return metadata and the KV of the skill's own tokens, with
    its sensitivity of the kind asked for (`measured` or `estimate`)."""
    check_sensitivity_kind(sensitivity)
    spec = rope_spec(lm.model)  # refuses models whose keys cannot be moved, before any work
    rendered = manifest.render(values)
    anchor_ids = resolve_anchor(lm.tokenizer, anchor)
    ids, offsets = tokenize_with_offsets(lm.tokenizer, rendered.text)
    total = len(anchor_ids) + len(ids)
    if total > lm.max_positions:
        raise ContextTooLong(f"skill {manifest.name}@{manifest.version} is {total} tokens with its anchor; {lm.name} allows {lm.max_positions}")
    n = len(anchor_ids)
    layers, sens = prefill_recorded(lm, spec, rendered.text, ids, anchor_ids, sensitivity)
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
               "sensitivity": sens, "sensitivity_kind": sensitivity},
    )
    return meta, layers

