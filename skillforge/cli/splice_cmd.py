"""`skillforge splice`: compiled skills + system/user text -> generated answer."""

from __future__ import annotations

import typer

from skillforge.cli.common import DeviceOpt, DtypeOpt, ErratumOpt, EditModeOpt, JsonOpt, ModelOpt, RepairOpt, SeamOpt, emit, info, load, open_registry, open_store


def register(app: typer.Typer) -> None:
    @app.command()
    def splice(skill: list[str] = typer.Option([], "--skill", "-s", help="name, name@version or name@sha256:... (repeatable, in order)"),
               system: str = typer.Option("", "--system", help="system text, placed before the skills"),
               user: str = typer.Option(..., "--user", help="the user message"),
               model: str = ModelOpt, device: str = DeviceOpt, dtype: str = DtypeOpt,
               max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1),
               seam: int = SeamOpt,
               repair: str = RepairOpt,
               set_: list[str] = typer.Option([], "--set", help="skill.field=value (repeatable)"),
               edit_mode: str = EditModeOpt,
               erratum: str = ErratumOpt,
               raw: bool = typer.Option(False, "--raw", help="no chat template (base models)"),
               as_json: bool = JsonOpt) -> None:
        """Splice compiled skills into a new context and generate."""
        from skillforge.refs import SkillRef, parse_field_assignment
        from skillforge.runtime import Context, Repair, Runtime

        for ref in skill:  # bad input is refused before the model loads (seconds)
            SkillRef.parse(ref)
        repair_spec = Repair.parse(seam, repair)
        assignments = {}
        for item in set_:
            skill_name, field, value = parse_field_assignment(item)
            assignments[f"{skill_name}.{field}"] = value
        lm = load(model, device, dtype)
        rt = Runtime(lm, open_registry(), open_store(), repair=repair_spec, erratum=erratum)
        ctx = Context(skills=skill, system=system, user=user, raw=raw, set=assignments)
        result = rt.splice(ctx, edit_mode=edit_mode, extra_capacity=max_new_tokens + 1)
        tokens, ttft = rt.generate(result, max_new_tokens)
        text = lm.tokenizer.decode(tokens, skip_special_tokens=True)
        doc = {"text": text, "ttft_ms": round(ttft, 1), "tokens_reused": result.reused, "tokens_computed": result.computed,
               "seam_tokens": result.repaired, "artifacts": result.artifacts}
        guided = sum(g.computed for g, _ in result.guides)  # edit mode contrast's extra streams
        if result.guides:
            doc["guide_tokens_computed"] = guided
        if result.edits:
            doc["edits"] = result.edits
        extra = f" (+{guided} in {len(result.guides)} guide streams)" if result.guides else ""
        info(f"reused {result.reused} tokens, computed {result.computed}{extra}, time to first token {ttft:.0f} ms")
        emit(doc, as_json, text)
