"""Editing a compiled skill's fields without re-prefilling it (the method from the research).

During prefill a model writes field-conditioned conclusions into the tokens *after* the field, so
rewriting the field's own KV alone leaves it acting on the old value. Modes:
  in-place       recompute the field's tokens in place (exact: they attend only to the unchanged
                 prefix); same token length only.
  erratum        keep the skill as compiled and append one salient override line after the skills.
  field+erratum  both (default); a value of another token length is re-rendered and its tokens
                 computed, the rest of the skill moves by re-rotation.
  recompute      re-prefill the skill with the new value (the oracle, for measurement).
  auto           in-place when its next-token decision equals field+erratum's, else field+erratum.
  contrast       field+erratum minus the erratum line's own effect. On the demo model an appended
                 line moves the next-token distribution about as much as the field does (KL ~0.02),
                 so the erratum's wording drowns the value it carries. Two more splices, the stale
                 skill and the stale skill with a *null* erratum (the same words with the compiled
                 value wherever the real one has a value, {old} included), and at every step
                 log p = log p(field+erratum) + log p(stale) - log p(null): the two errata differ only
                 in the value, so their difference keeps what the new value changes
                 (classifier-free-guidance arithmetic). Three splices, three decode streams; on the
                 24 demo edit contexts, recovery mean 0.59-0.62 (median 0.71) against field+erratum's
                 -16.9, decision agreement 21-22 of 24. A null erratum that swapped the two values
                 ("is now OLD, not NEW") argued for the old value instead of saying nothing: 11 of 24.
Only the current value gets an erratum: every splice starts again from the compiled artifact, so
changing a field twice never stacks history (A -> B -> A is just A, with no erratum at all).
This module plans one splice's edits (texts, errata, the recompute oracle's re-prefill) and counts
what they cost; auto and contrast, which combine several splices, are in runtime/policies.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from skillforge.artifact import FieldSpan
from skillforge.errors import ContextTooLong, EditError
from skillforge.manifest import Manifest, Rendered, validate_value
from skillforge.model.forward import prefill
from skillforge.model.loader import LoadedModel
from skillforge.prompt import Prompt, char_spans_to_tokens, tokenize_with_offsets
from skillforge.refs import parse_field_assignment
from skillforge.rope import rope_spec
from skillforge.runtime.splice import Resolved
from skillforge.sensitivity import prefill_recorded

MODES = ("auto", "field+erratum", "erratum", "in-place", "recompute", "contrast")
NULL_ERRATUM = "null-erratum"  # contrast's internal splice: the skill as compiled, an erratum stating its compiled value
ERRATUM_MODES = ("erratum", "field+erratum", "auto", "contrast", NULL_ERRATUM)
# Naming the old value lets the model find the conclusions the skill drew from it: on
# qwen2.5-coder-1.5b the research's wording ("{label} has changed to {value}; this overrides any
# earlier value ...") agreed with the recompute oracle on 7 of 8 gated decisions and missed the one
# whose question names the old value; this wording agrees on 8 of 8 and carries the new value in 12 of
# 12 value answers.
DEFAULT_ERRATUM = (
    "[STATE UPDATE] {label} is now {value}, not {old}. Wherever the text above says {old}, read {value}; "
    "this overrides any earlier conclusion."
)


def check_erratum_template(template: str) -> str:
    """A template must say the new value and may name only {label}, {value}, {field} and {old} (the
    value the skill was compiled with)."""
    try:
        sample = template.format(label="L", value="\x00", field="f", old="o")
    except (KeyError, IndexError, ValueError) as exc:
        raise EditError(f"bad erratum template {template!r}: {exc!r}; it may use {{label}}, {{value}}, {{field}} and {{old}}") from None
    if "\x00" not in sample:
        raise EditError(f"bad erratum template {template!r}: it must contain {{value}}, the field's new value")
    return template


@dataclass
class EditPlan:
    skills: list[Resolved]
    texts: list[str]
    errata: list[str] = field(default_factory=list)
    report: list[dict] = field(default_factory=list)


def group_assignments(assignments: dict[str, str]) -> dict[str, dict[str, str]]:
    """{"skill.field": value} -> {skill: {field: value}} (validated names)."""
    grouped: dict[str, dict[str, str]] = {}
    for key, value in assignments.items():
        skill, name, value = parse_field_assignment(f"{key}={value}")
        grouped.setdefault(skill, {})[name] = value
    return grouped


def plan_edits(lm: LoadedModel, resolved: list[Resolved], assignments: dict[str, str], mode: str,
               erratum_template: str = DEFAULT_ERRATUM) -> EditPlan:
    """Texts to place in the prompt, errata to append, and artifacts to use, for the requested edits."""
    if mode not in (*MODES, NULL_ERRATUM):
        raise EditError(f"unknown edit mode {mode!r}; choose one of {', '.join(MODES)}")
    plan = EditPlan(skills=list(resolved), texts=[r.meta.text for r in resolved])
    grouped = group_assignments(assignments)
    names = [r.meta.skill for r in resolved]
    for skill in grouped:
        if skill not in names:
            raise EditError(f"--set names skill {skill!r}, which is not in this context (skills: {', '.join(names) or 'none'})")
    tok = lm.tokenizer
    for i, r in enumerate(resolved):
        edits = grouped.get(r.meta.skill)
        if not edits:
            continue
        manifest = Manifest.from_dict(r.meta.extra["manifest"], source=f"{r.meta.skill}@{r.meta.version}")
        for name, value in edits.items():
            if name not in manifest.fields:
                raise EditError(f"skill {r.meta.skill} has no field {name!r} (fields: {', '.join(manifest.fields) or 'none'})")
            validate_value(r.meta.skill, name, value)
        changed = {k: v for k, v in edits.items() if v != r.meta.field_values.get(k)}
        if not changed:
            continue
        values = {**r.meta.field_values, **changed}
        rendered = manifest.render(values)
        new_text = rendered.text
        # the null erratum states the compiled value in the same words, old and new alike: the line's
        # own pull without any change of value
        stated = r.meta.field_values if mode == NULL_ERRATUM else values
        errata = [erratum_template.format(label=manifest.fields[k].label, value=stated[k], field=k,
                                          old=r.meta.field_values.get(k, "")) for k in changed]
        if mode == "in-place":
            _check_same_length(tok, r, changed)
        if mode == "recompute":
            plan.skills[i] = _recompute(lm, r, rendered)
            plan.texts[i] = new_text
        elif mode in ("in-place", "field+erratum", "auto", "contrast"):
            plan.texts[i] = new_text
        if mode in ERRATUM_MODES:
            plan.errata.extend(errata)
        spans = rendered.spans if mode not in ("erratum", NULL_ERRATUM) else []
        for n, (k, v) in enumerate(changed.items()):
            plan.report.append({
                "skill": r.meta.skill, "field": k, "old": r.meta.field_values.get(k), "new": v, "mode": mode,
                # resolved to token counts by the splice, which knows what it computed
                "_skill": i,
                "_spans": [(a, b) for name, a, b in spans if name == k] if mode != "recompute" else None,
                "_erratum": len(plan.errata) - len(errata) + n if mode not in ("in-place", "recompute") else None,
            })
    return plan


def count_edit_tokens(plan: EditPlan, prompt: Prompt, computed: Any) -> list[dict]:
    """Fill each report entry's tokens_computed from the prompt positions the splice computed."""
    out = []
    for entry in plan.report:
        i = entry["_skill"]
        if entry["_spans"] is None:
            n = len(plan.skills[i].meta.token_ids)
        else:
            base = prompt.skill_spans[i][0]
            n = 0
            for a, b in entry["_spans"]:
                n += sum(1 for p in prompt.tokens_overlapping(base + a, base + b) if computed[p])
            if entry["_erratum"] is not None:
                n += len(prompt.tokens_within(*prompt.errata_spans[entry["_erratum"]]))
        out.append({k: v for k, v in entry.items() if not k.startswith("_")} | {"tokens_computed": n})
    return out


def _recompute(lm: LoadedModel, r: Resolved, rendered: Rendered) -> Resolved:
    """The skill re-prefilled with its new values behind its artifact's own anchor (the oracle): what
    compiling the edited manifest gives, without leaving the runtime. Its tokens changed, so their
    sensitivity is recorded again, of the artifact's kind (as compile does), where it had one: a value
    of another length would otherwise leave the repair reading past the old list."""
    ids, offsets = tokenize_with_offsets(lm.tokenizer, rendered.text)
    anchor = list(r.meta.anchor_ids)
    if len(anchor) + len(ids) > lm.max_positions:
        raise ContextTooLong(f"skill {r.meta.skill} with the new values is {len(anchor) + len(ids)} tokens with its anchor; "
                             f"{lm.name} allows {lm.max_positions}")
    fields = [FieldSpan(name, rendered.values[name], s, e) for name, s, e in char_spans_to_tokens(offsets, rendered.spans)]
    extra = dict(r.meta.extra)
    if r.meta.sensitivity is None:
        kv = prefill(lm.model, anchor + ids, start=len(anchor))
    else:
        kv, extra["sensitivity"] = prefill_recorded(lm, rope_spec(lm.model), rendered.text, ids, anchor, r.meta.sensitivity_kind)
    meta = replace(r.meta, text=rendered.text, text_digest=rendered.digest, field_values=dict(rendered.values),
                   token_ids=ids, offset=len(anchor), fields=fields, extra=extra)
    return Resolved(meta, kv, None)


def _check_same_length(tok: Any, r: Resolved, changed: dict[str, str]) -> None:
    for k, v in changed.items():
        old = r.meta.field_values[k]
        n_old = len(tok(" " + old, add_special_tokens=False)["input_ids"])
        n_new = len(tok(" " + v, add_special_tokens=False)["input_ids"])
        if n_old != n_new:
            raise EditError(
                f"in-place edit of {r.meta.skill}.{k} needs a value of the same token length: "
                f"{old!r} is {n_old} tokens, {v!r} is {n_new}; use --edit-mode field+erratum"
            )
