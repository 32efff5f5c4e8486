"""Field edits: token accounting per mode, in-place exactness, length changes, rejected input."""

from __future__ import annotations

import pytest
import torch

from skillforge.compile import compile_skill
from skillforge.errors import EditError
from skillforge.eval.cases import Case, CaseError
from skillforge.eval.values import mentions, value_check, value_summary
from skillforge.manifest import Manifest
from skillforge.model.forward import prefill
from skillforge.runtime import Context, Repair, Resolved, Runtime
from skillforge.runtime.edits import plan_edits

from tiny_models import build

POLICY = ("Refund policy. The account role is {{role}}. Only a verified_admin may approve refunds; any other "
          "role must be refused. Refunds over the limit need a manager. Always state the decision first.")
USER = "Can this account approve the refund? Answer yes or no."


@pytest.fixture(scope="module")
def setup(demo_tokenizer):
    lm = build("llama", demo_tokenizer)
    m = Manifest.from_dict({"name": "policy", "version": "1.0.0", "description": "", "template": POLICY,
                            "fields": {"role": {"default": "verified_admin", "description": "", "label": "The account role"}}},
                           source="test")
    meta, kv = compile_skill(lm, m)
    return lm, Runtime(lm, repair=Repair(seam=0, blend=0)), Resolved(meta, kv)


def splice(setup, value: str | None, mode: str, system: str = ""):
    lm, rt, skill = setup
    ctx = Context(skills=["policy"], system=system, user=USER, set={"policy.role": value} if value else {})
    return rt.splice(ctx, skills=[skill], edit_mode=mode)


def value_tokens(prompt, value: str) -> list[int]:
    start = prompt.text.index(value)
    return prompt.tokens_overlapping(start, start + len(value))


def test_in_place_recomputes_exactly_the_field_tokens(setup):
    # "verified_owner" has the same token length as "verified_admin" for this tokenizer
    lm, _, skill = setup
    result = splice(setup, "verified_owner", "in-place")
    field = value_tokens(result.prompt, "verified_owner")
    # same length, so positions line up with the artifact; tokens shared by both values (" verified", "_")
    # are reused, exactly as compiled, and only the differing ones are computed
    offset = result.prompt.tokens_within(*result.prompt.skill_spans[0])[0]
    changed = [p for p in field if result.prompt.ids[p] != skill.meta.token_ids[p - offset]]
    assert result.edits[0]["tokens_computed"] == len(changed) > 0
    assert "[STATE UPDATE]" not in result.prompt.text
    direct = prefill(lm.model, result.prompt.ids[:-1])
    for layer, (k, v) in enumerate(direct):
        cache = result.cache.layers[layer]
        torch.testing.assert_close(cache.keys[0][:, field], k[:, field], rtol=0, atol=1e-5)
        torch.testing.assert_close(cache.values[0][:, field], v[:, field], rtol=0, atol=1e-5)
    # the tokens after the field keep the stale conclusions: that is why in-place alone is not enough
    after = field[-1] + 5
    assert not torch.allclose(result.cache.layers[-1].keys[0][:, after], direct[-1][0][:, after], atol=1e-4)


def test_in_place_refuses_another_token_length(setup):
    with pytest.raises(EditError, match="same token length"):
        splice(setup, "suspended_user_with_a_much_longer_name", "in-place")


def test_erratum_keeps_the_skill_and_computes_only_the_erratum(setup):
    result = splice(setup, "guest", "erratum")
    lm, _, skill = setup
    assert skill.meta.text in result.prompt.text
    assert result.prompt.text.count("[STATE UPDATE] The account role is now guest, not verified_admin.") == 1
    erratum = result.prompt.tokens_within(*result.prompt.errata_spans[0])
    assert result.edits[0]["tokens_computed"] == len(erratum)
    assert result.reused == skill.meta.tokens  # the whole skill still comes from the artifact


def test_field_plus_erratum_handles_a_length_change(setup):
    result = splice(setup, "suspended_user", "field+erratum")
    lm, _, skill = setup
    field = value_tokens(result.prompt, "suspended_user")
    erratum = result.prompt.tokens_within(*result.prompt.errata_spans[0])
    assert len(erratum) < result.edits[0]["tokens_computed"] <= len(field) + len(erratum)
    messages = [{"role": "system", "content": POLICY.replace("{{role}}", "suspended_user") + "\n\n"
                 + result.prompt.text[result.prompt.errata_spans[0][0]:result.prompt.errata_spans[0][1]]},
                {"role": "user", "content": USER}]
    expected = lm.tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    assert result.prompt.ids == (expected if isinstance(expected, list) else expected["input_ids"])
    # the skill's tokens after the field moved and were still reused
    assert result.reused > skill.meta.tokens - len(field) - 4


def test_recompute_is_the_oracle(setup):
    lm, rt, _ = setup
    result = splice(setup, "guest", "recompute")
    assert result.edits[0]["tokens_computed"] == result.skill_tokens
    logits = rt.next_logits(result)
    with torch.no_grad():
        full = lm.model(input_ids=result.input_ids, logits_to_keep=1).logits[0, -1]
    assert (logits - full).abs().max() < 1e-4


def test_recompute_measures_the_edited_skills_sensitivity(setup):
    """A value of another token length behind a system text: the default repair ranks the re-prefilled
    skill's tokens by sensitivity, which must be the edited skill's own, as compiling it records."""
    lm, _, skill = setup
    edited = plan_edits(lm, [skill], {"policy.role": "guest"}, "recompute").skills[0]
    manifest = Manifest.from_dict(skill.meta.extra["manifest"], source="test")
    compiled, _ = compile_skill(lm, manifest, {"role": "guest"})
    assert len(edited.meta.token_ids) != len(skill.meta.token_ids)
    assert edited.meta.sensitivity == compiled.sensitivity
    ctx = Context(skills=["policy"], system="You answer billing questions for a shop.", user=USER,
                  set={"policy.role": "guest"})
    result = Runtime(lm).splice(ctx, skills=[skill], edit_mode="recompute")
    assert result.repaired > 16  # the seam and sensitive tokens of the edited skill

def test_auto_reports_its_choice(setup):
    result = splice(setup, "verified_owner", "auto")
    assert result.edits[0]["mode"] in ("auto:in-place", "auto:field+erratum")


@pytest.mark.parametrize("mode", ["auto", "contrast"])
def test_combining_modes_pass_rotation_and_capacity_to_every_splice(setup, mode):
    """auto and contrast splice several times; each splice gets the caller's rotate and extra_capacity
    (without rotation nothing is repaired, even behind a system text)."""
    lm, _, skill = setup
    rt = Runtime(lm, repair=Repair(seam=4, blend=0))
    ctx = Context(skills=["policy"], system="Be brief.", user=USER, set={"policy.role": "verified_owner"})
    result = rt.splice(ctx, skills=[skill], edit_mode=mode, rotate=False, extra_capacity=100)
    for r in [result, *(g for g, _ in result.guides)]:
        assert r.repaired == 0
        assert r.cache.layers[0].keys.shape[2] == len(r.prompt.ids) + 100
    assert rt.splice(ctx, skills=[skill], edit_mode=mode).repaired == 4
    assert result.cache.get_seq_length() == result.input_ids.shape[1] - 1


def test_one_erratum_for_the_current_value_only(setup):
    first = splice(setup, "guest", "field+erratum")
    second = splice(setup, "suspended_user", "field+erratum")
    assert "guest" not in second.prompt.text and second.prompt.text.count("[STATE UPDATE]") == 1
    back = splice(setup, "verified_admin", "field+erratum")  # A -> B -> A is just A
    assert "[STATE UPDATE]" not in back.prompt.text and back.edits == []
    assert first.prompt.text.count("[STATE UPDATE]") == 1


@pytest.mark.parametrize("key,value,message", [
    ("policy.rank", "x", "no field 'rank'"),
    ("other.role", "x", "not in this context"),
    ("policy.role", "two\nlines", "single line"),
    ("policy.role", "{{role}}", "{{"),
    ("policy.role", "", "empty"),
])
def test_bad_edits_are_rejected_clearly(setup, key, value, message):
    lm, rt, skill = setup
    with pytest.raises(EditError, match=message):
        rt.splice(Context(skills=["policy"], user=USER, set={key: value}), skills=[skill])


def test_unknown_mode_is_rejected(setup):
    with pytest.raises(EditError, match="unknown edit mode"):
        splice(setup, "guest", "rewrite")


def test_erratum_wording_is_configurable(setup):
    lm, _, skill = setup
    rt = Runtime(lm, repair=Repair(seam=0, blend=0), erratum="Note: {label} is now {value}.")
    result = rt.splice(Context(skills=["policy"], user=USER, set={"policy.role": "guest"}), skills=[skill], edit_mode="erratum")
    assert "Note: The account role is now guest." in result.prompt.text and "[STATE UPDATE]" not in result.prompt.text
    erratum = result.prompt.tokens_within(*result.prompt.errata_spans[0])
    assert result.edits[0]["tokens_computed"] == len(erratum)


def test_erratum_can_name_the_compiled_value(setup):
    lm, _, skill = setup
    rt = Runtime(lm, repair=Repair(seam=0, blend=0), erratum="{label} is {value}, not {old}.")
    result = rt.splice(Context(skills=["policy"], user=USER, set={"policy.role": "guest"}), skills=[skill], edit_mode="contrast")
    assert "The account role is guest, not verified_admin." in result.prompt.text
    null = result.guides[1][0]  # the null erratum: the same words, the compiled value in both places
    assert "The account role is verified_admin, not verified_admin." in null.prompt.text
    assert "guest" not in null.prompt.text


@pytest.mark.parametrize("template,message", [
    ("{label} changed.", "must contain {value}"),
    ("{label} is now {new}.", "'new'"),
    ("{value} {", "bad erratum template"),
])
def test_bad_erratum_template_is_rejected(setup, template, message):
    lm, _, _ = setup
    with pytest.raises(EditError, match=message):
        Runtime(lm, erratum=template)


@torch.no_grad()
def _full_logprobs(lm, ids: list[int]) -> torch.Tensor:
    return torch.log_softmax(lm.model(input_ids=torch.tensor([ids]), logits_to_keep=1).logits[0, -1].float(), -1)


def test_contrast_subtracts_the_erratum_line_from_field_plus_erratum(setup):
    """contrast decodes three streams, field+erratum + stale - null erratum (the same line stating the
    compiled value), each at its own positions. The stale and null streams are exact here (the skill
    sits behind its anchor), so full forwards stand in for them; field+erratum is its own splice."""
    lm, rt, skill = setup
    result = splice(setup, "guest", "contrast")
    (stale, w_stale), (null, w_null) = result.guides
    assert (w_stale, w_null) == (1.0, -1.0) and result.edits[0]["mode"] == "contrast"
    assert "is now guest, not verified_admin" in result.prompt.text and "[STATE UPDATE]" not in stale.prompt.text
    assert null.prompt.text.count("[STATE UPDATE] The account role is now verified_admin, not verified_admin.") == 1
    assert skill.meta.text in null.prompt.text and skill.meta.text in stale.prompt.text
    null_erratum = null.prompt.tokens_within(*null.prompt.errata_spans[0])
    plain = splice(setup, "guest", "field+erratum")
    assert plain.prompt.ids == result.prompt.ids
    assert result.edits[0]["tokens_computed"] == plain.edits[0]["tokens_computed"] + len(null_erratum)

    expected: list[int] = []
    main = torch.log_softmax(rt.next_logits(plain), -1)
    with torch.no_grad():
        for step in range(4):  # greedy over the guided sum; the exact streams re-run in full each step
            total = main + _full_logprobs(lm, stale.prompt.ids + expected) - _full_logprobs(lm, null.prompt.ids + expected)
            if not expected:
                torch.testing.assert_close(rt.next_logits(result), torch.log_softmax(total, -1), atol=1e-4, rtol=0)
            expected.append(int(total.argmax()))
            pos = torch.tensor([[len(plain.prompt.ids) + step]])
            out = lm.model(input_ids=torch.tensor([[expected[-1]]]), position_ids=pos, cache=plain.cache, use_cache=True)
            main = torch.log_softmax(out.logits[0, -1].float(), -1)
    tokens, _ = rt.generate(result, max_new_tokens=4)
    assert tokens == expected
    for guide in (stale, null):  # each stream's new tokens sit at its own positions (layer-0 keys carry them)
        n = len(guide.prompt.ids)
        direct = prefill(lm.model, guide.prompt.ids + expected[:-1])[0][0]
        torch.testing.assert_close(guide.cache.layers[0].keys[0][:, n:n + 3], direct[:, n:n + 3], atol=1e-5, rtol=0)
    rt.release(result)
    assert result.cache is None and stale.cache is None and null.cache is None


def test_contrast_without_a_change_is_a_plain_splice(setup):
    result = splice(setup, "verified_admin", "contrast")
    assert result.guides == [] and result.edits == [] and "[STATE UPDATE]" not in result.prompt.text


@pytest.mark.parametrize("text,value,found", [
    ("15", "15", True), ("You get 15 days.", "15", True), ("150", "15", False), ("1.5 days", "15", False),
    ("$0.75 per day", "0.75", True), ("$10.75", "0.75", False), ("Tarnside Gear", "tarnside gear", True),
    ("imperial.", "imperial", True), ("imperially", "imperial", False), ("", "15", False),
])
def test_value_mentions_match_whole_tokens(text, value, found):
    assert mentions(text, value) is found


def test_value_check_counts_new_and_stale_per_arm():
    row = value_check("15", ["25"], {"oracle": "15", "mode": "25 days, now 15", "stale": "25"})
    assert (row["oracle_new"], row["oracle_stale"]) == (True, False)
    assert (row["mode_new"], row["mode_stale"]) == (True, True)  # carrying both is counted as both
    assert (row["stale_new"], row["stale_stale"]) == (False, True)
    # a stale value inside the new one cannot be told apart, so it is not checked
    assert value_check("Platform Security", ["Security"], {a: "Platform Security" for a in ("oracle", "mode", "stale")})["mode_stale"] is False
    summary = value_summary([{"value": row}, {"value": None}])
    assert summary["value_cases"] == 1 and summary["value_mode_new"] == 1.0 and summary["value_stale_new"] == 0.0


def test_expect_needs_a_set_and_a_string():
    base = {"id": "v", "skills": ["policy"], "user": "What is the role?"}
    assert Case.from_dict({**base, "set": {"policy.role": "guest"}, "expect": "guest"}).expect == "guest"
    with pytest.raises(CaseError, match="add 'set'"):
        Case.from_dict({**base, "expect": "guest"})
    with pytest.raises(CaseError, match="must be a string"):
        Case.from_dict({**base, "set": {"policy.role": "guest"}, "expect": 15})
