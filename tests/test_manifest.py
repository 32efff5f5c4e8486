"""Skill manifests: parsing, validation errors (file and line), rendering, discovery, dict round trip."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from skillforge.errors import EditError, ManifestError, NotFound
from skillforge.manifest import FieldSpec, Manifest, Rendered, discover, load_manifest, validate_value

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "skills"

GOOD = """\
name = "refund-desk"
version = "2.1.0"
description = "Refund policy."
prompt = \"\"\"
The account role is {{account_role}}.
Only verified_admin may approve. Again: {{ account_role }}.
Limit: {{max_usd}} dollars.
\"\"\"

[fields.account_role]
default = "verified_admin"
description = "Who is asking."
label = "The account role"

[fields.max_usd]
default = "500"
"""


def write_skill(root: Path, toml: str, folder: str = "refund-desk", files: dict[str, str] | None = None) -> Path:
    skill = root / folder
    skill.mkdir(parents=True, exist_ok=True)
    (skill / "skill.toml").write_text(textwrap.dedent(toml), encoding="utf-8")
    for name, text in (files or {}).items():
        (skill / name).write_text(text, encoding="utf-8")
    return skill


def load_error(tmp_path: Path, toml: str, **kw) -> tuple[str, str]:
    """Write a skill, expect ManifestError, return (message, toml path as shown)."""
    skill = write_skill(tmp_path, toml, **kw)
    with pytest.raises(ManifestError) as info:
        load_manifest(skill)
    return str(info.value), str(skill / "skill.toml")


# --------------------------------------------------------------------------------------------------
# Loading a good manifest


def test_load_good_manifest(tmp_path):
    skill = write_skill(tmp_path, GOOD)
    m = load_manifest(skill)
    assert (m.name, m.version, m.description) == ("refund-desk", "2.1.0", "Refund policy.")
    assert m.path == (skill / "skill.toml").resolve()
    assert m.ref == "refund-desk@2.1.0"
    assert m.fields["account_role"] == FieldSpec("account_role", "verified_admin", "Who is asking.", "The account role")
    # Optional description and label: label defaults to the name with spaces.
    assert m.fields["max_usd"] == FieldSpec("max_usd", "500", "", "max usd")
    assert list(m.fields) == ["account_role", "max_usd"]
    # Loading the skill.toml itself is the same as loading its folder.
    assert load_manifest(skill / "skill.toml") == m


def test_prompt_file_and_folder_name_mismatch_allowed(tmp_path):
    skill = write_skill(
        tmp_path,
        """\
        name = "pirate-voice"
        version = "0.3.0"
        prompt_file = "prompt.md"
        """,
        folder="some-other-folder",
        files={"prompt.md": "Talk like a pirate.\n"},
    )
    m = load_manifest(skill)
    assert m.name == "pirate-voice"
    assert m.template == "Talk like a pirate.\n"
    assert m.description == "" and m.fields == {}


def test_crlf_prompt_normalized(tmp_path):
    skill = write_skill(tmp_path, 'name = "a"\nversion = "1.0.0"\nprompt_file = "p.md"\n')
    (skill / "p.md").write_bytes(b"line one\r\nline two\r\n")
    assert load_manifest(skill).template == "line one\nline two\n"


def test_lone_closing_braces_allowed(tmp_path):
    # Tool docs with nested JSON end in "}}" all the time; only "{{" is reserved.
    skill = write_skill(
        tmp_path,
        """\
        name = "tools"
        version = "1.0.0"
        prompt = '{"tool": "run", "arguments": {"sql": "{{dialect}}"}}'
        [fields.dialect]
        default = "postgresql"
        """,
    )
    assert load_manifest(skill).render().text == '{"tool": "run", "arguments": {"sql": "postgresql"}}'


def test_load_missing_path_is_not_found(tmp_path):
    with pytest.raises(NotFound, match="no skill.toml"):
        load_manifest(tmp_path)
    with pytest.raises(NotFound, match="no such manifest"):
        load_manifest(tmp_path / "nope" / "skill.toml")


def test_module_imports_no_torch():
    code = "import sys, skillforge.manifest; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.split() == ["False", "False"]


# --------------------------------------------------------------------------------------------------
# Errors: every one names the file, and the line where there is one


def test_error_message_style_relative_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_skill(
        tmp_path / "skills",
        """\
        name = "refund-desk"
        version = "2.1.0"
        description = "Refund policy."
        prompt = \"\"\"
        Policy text.

        The role is {{acount_role}}.
        \"\"\"

        [fields.account_role]
        default = "verified_admin"
        """,
    )
    with pytest.raises(ManifestError) as info:
        load_manifest(Path("skills/refund-desk"))
    assert str(info.value).startswith(
        "skills/refund-desk/skill.toml:7: placeholder {{acount_role}} is not declared; "
        "declare [fields.acount_role] or fix the name (declared: account_role)"
    )


def test_toml_syntax_error(tmp_path):
    msg, toml = load_error(tmp_path, 'name = "a"\nversion = "1.0.0"\nprompt = = "x"\n')
    assert msg.startswith(f"{toml}:3:")
    assert "invalid TOML" in msg and "column" in msg


def test_toml_duplicate_key_error(tmp_path):
    msg, toml = load_error(tmp_path, 'name = "a"\nversion = "1.0.0"\nname = "b"\nprompt = "x"\n')
    assert msg.startswith(f"{toml}:3:") and "invalid TOML" in msg


@pytest.mark.parametrize(
    "toml, needle",
    [
        ('version = "1.0.0"\nprompt = "x"\n', "missing required key 'name'"),
        ('name = "a"\nprompt = "x"\n', "missing required key 'version'"),
        ('name = "a"\nversion = "1.0.0"\n', "missing the prompt"),
    ],
)
def test_missing_required_keys(tmp_path, toml, needle):
    msg, path = load_error(tmp_path, toml)
    assert msg.startswith(f"{path}: ")
    assert needle in msg


def test_both_prompt_and_prompt_file(tmp_path):
    msg, toml = load_error(
        tmp_path,
        'name = "a"\nversion = "1.0.0"\nprompt = "x"\nprompt_file = "prompt.md"\n',
        files={"prompt.md": "y"},
    )
    assert msg.startswith(f"{toml}:4:")
    assert "both prompt and prompt_file" in msg


def test_prompt_file_missing(tmp_path):
    msg, toml = load_error(tmp_path, 'name = "a"\nversion = "1.0.0"\n\nprompt_file = "prompt.md"\n')
    assert msg.startswith(f"{toml}:4:")
    assert "prompt_file 'prompt.md' not found" in msg


def test_prompt_file_outside_folder(tmp_path):
    (tmp_path / "secret.md").write_text("x")
    msg, toml = load_error(tmp_path, 'name = "a"\nversion = "1.0.0"\nprompt_file = "../secret.md"\n')
    assert msg.startswith(f"{toml}:3:") and "outside the skill folder" in msg


def test_bad_name(tmp_path):
    msg, toml = load_error(tmp_path, '# a comment\nname = "Refund_Desk"\nversion = "1.0.0"\nprompt = "x"\n')
    assert msg.startswith(f"{toml}:2:")
    assert "invalid name 'Refund_Desk'" in msg


def test_bad_version(tmp_path):
    msg, toml = load_error(tmp_path, 'name = "a"\nversion = "2.1"\nprompt = "x"\n')
    assert msg.startswith(f"{toml}:2:")
    assert "invalid version '2.1'" in msg and "semantic version" in msg


def test_non_string_value(tmp_path):
    msg, toml = load_error(tmp_path, 'name = "a"\nversion = 1\nprompt = "x"\n')
    assert msg.startswith(f"{toml}:2:") and "must be a string" in msg


def test_unknown_placeholder_in_prompt_file(tmp_path):
    skill = write_skill(
        tmp_path,
        'name = "a"\nversion = "1.0.0"\nprompt_file = "prompt.md"\n[fields.role]\ndefault = "x"\n',
        files={"prompt.md": "line 1\nline 2 {{role}}\nline 3 {{ rol }}\n"},
    )
    with pytest.raises(ManifestError) as info:
        load_manifest(skill)
    msg = str(info.value)
    assert msg.startswith(f"{skill / 'prompt.md'}:3: placeholder {{{{ rol }}}} is not declared")
    assert "declare [fields.rol]" in msg and "(declared: role)" in msg and "did you mean {{role}}" in msg


def test_unknown_placeholder_without_fields(tmp_path):
    msg, toml = load_error(tmp_path, 'name = "a"\nversion = "1.0.0"\nprompt = "Hi {{who}}"\n')
    assert msg.startswith(f"{toml}:3:") and "(declared: none)" in msg


@pytest.mark.parametrize("bad", ["{{Role}}", "{{ role-x }}", "{{role", "{{}}", "{{ role\n}}"])
def test_malformed_placeholder(tmp_path, bad):
    toml = f'name = "a"\nversion = "1.0.0"\nprompt = """\nok\nsee {bad} here\n"""\n[fields.role]\ndefault = "x"\n'
    toml = toml.replace("see ", "see {{role}} and ")
    msg, path = load_error(tmp_path, toml)
    assert msg.startswith(f"{path}:5:") and "malformed placeholder" in msg


def test_declared_field_unused(tmp_path):
    msg, toml = load_error(
        tmp_path,
        'name = "a"\nversion = "1.0.0"\nprompt = "Hi {{who}}"\n\n[fields.who]\ndefault = "x"\n\n[fields.extra]\ndefault = "y"\n',
    )
    assert msg.startswith(f"{toml}:8:")
    assert "field 'extra' is declared but the prompt never uses {{extra}}" in msg


def test_field_without_default(tmp_path):
    msg, toml = load_error(
        tmp_path,
        'name = "a"\nversion = "1.0.0"\nprompt = "Hi {{who}}"\n[fields.who]\ndescription = "x"\n',
    )
    assert msg.startswith(f"{toml}:4:") and "field 'who' has no default" in msg


def test_field_without_default_inline_table(tmp_path):
    msg, toml = load_error(
        tmp_path,
        'name = "a"\nversion = "1.0.0"\nprompt = "Hi {{who}}"\n[fields]\nwho = { description = "x" }\n',
    )
    assert msg.startswith(f"{toml}:5:") and "has no default" in msg


@pytest.mark.parametrize(
    "default, needle",
    [
        ('""', "empty"),
        ('"' + "x" * 201 + '"', "201 characters"),
        ('"two\\nlines"', "line break"),
        ('"a {{b"', "reserved for placeholders"),
        ('"a }} b"', "reserved for placeholders"),
    ],
)
def test_default_value_invalid(tmp_path, default, needle):
    msg, toml = load_error(
        tmp_path,
        f'name = "a"\nversion = "1.0.0"\nprompt = "Hi {{{{who}}}}"\n[fields.who]\ndescription = "d"\ndefault = {default}\n',
    )
    assert msg.startswith(f"{toml}:6:")
    assert "default of field 'who' is invalid" in msg and needle in msg


def test_default_not_a_string(tmp_path):
    msg, toml = load_error(
        tmp_path, 'name = "a"\nversion = "1.0.0"\nprompt = "{{n}}"\n[fields.n]\ndefault = 500\n'
    )
    assert msg.startswith(f"{toml}:5:") and "must be a string" in msg and 'default = "500"' in msg


def test_unknown_top_level_key(tmp_path):
    msg, toml = load_error(tmp_path, 'name = "a"\nversion = "1.0.0"\ndescripton = "typo"\nprompt = "x"\n')
    assert msg.startswith(f"{toml}:3:")
    assert "unknown top-level key 'descripton'" in msg and "did you mean 'description'" in msg


def test_unknown_key_after_multiline_prompt(tmp_path):
    # A line inside the prompt that looks like a key must not be taken for one.
    msg, toml = load_error(
        tmp_path, 'name = "a"\nversion = "1.0.0"\nprompt = """\npromt = 1\n"""\npromt = "x"\n'
    )
    assert msg.startswith(f"{toml}:6:") and "unknown top-level key 'promt'" in msg


def test_unknown_field_key(tmp_path):
    msg, toml = load_error(
        tmp_path, 'name = "a"\nversion = "1.0.0"\nprompt = "{{n}}"\n[fields.n]\ndefault = "1"\nlable = "N"\n'
    )
    assert msg.startswith(f"{toml}:6:") and "unknown key in [fields.n] 'lable'" in msg and "did you mean 'label'" in msg


def test_bad_field_name(tmp_path):
    msg, toml = load_error(tmp_path, 'name = "a"\nversion = "1.0.0"\nprompt = "x"\n[fields.Role]\ndefault = "1"\n')
    assert msg.startswith(f"{toml}:4:") and "invalid field name 'Role'" in msg


@pytest.mark.parametrize("prompt", ['""', '"""\n   \n"""'])
def test_empty_inline_prompt(tmp_path, prompt):
    msg, toml = load_error(tmp_path, f'name = "a"\nversion = "1.0.0"\nprompt = {prompt}\n')
    assert msg.startswith(f"{toml}:3:") and "prompt is empty" in msg


def test_empty_prompt_file(tmp_path):
    skill = write_skill(tmp_path, 'name = "a"\nversion = "1.0.0"\nprompt_file = "p.md"\n', files={"p.md": "\n\n"})
    with pytest.raises(ManifestError) as info:
        load_manifest(skill)
    assert str(info.value).startswith(f"{skill / 'p.md'}: ") and "empty" in str(info.value)


# --------------------------------------------------------------------------------------------------
# Rendering


def test_render_defaults_and_spans(tmp_path):
    m = load_manifest(write_skill(tmp_path, GOOD))
    r = m.render()
    assert isinstance(r, Rendered)
    assert r.values == {"account_role": "verified_admin", "max_usd": "500"}
    assert r.text == (
        "The account role is verified_admin.\n"
        "Only verified_admin may approve. Again: verified_admin.\n"
        "Limit: 500 dollars.\n"
    )
    # Spans are the placeholder positions, in order; the literal "verified_admin" in the policy is not one.
    assert [name for name, _, _ in r.spans] == ["account_role", "account_role", "max_usd"]
    for name, start, end in r.spans:
        assert r.text[start:end] == r.values[name]
    assert r.spans[0][1] == len("The account role is ")
    starts = [s for _, s, _ in r.spans]
    assert starts == sorted(starts)
    import hashlib

    assert r.digest == "sha256:" + hashlib.sha256(r.text.encode("utf-8")).hexdigest()


def test_render_given_values(tmp_path):
    m = load_manifest(write_skill(tmp_path, GOOD))
    r = m.render({"account_role": "suspended_user"})
    assert r.values == {"account_role": "suspended_user", "max_usd": "500"}
    assert "verified_admin." not in r.text.splitlines()[0]
    assert [r.text[s:e] for _, s, e in r.spans] == ["suspended_user", "suspended_user", "500"]
    assert r.digest != m.render().digest
    # Values of different lengths shift later spans correctly.
    r2 = m.render({"account_role": "g", "max_usd": "1234567"})
    assert [r2.text[s:e] for _, s, e in r2.spans] == ["g", "g", "1234567"]
    # Same values, same text and digest.
    assert m.render({"account_role": "verified_admin"}) == m.render()


def test_render_unknown_field(tmp_path):
    m = load_manifest(write_skill(tmp_path, GOOD))
    with pytest.raises(EditError) as info:
        m.render({"acount_role": "guest"})
    msg = str(info.value)
    assert "refund-desk" in msg and "'acount_role'" in msg
    assert "account_role" in msg and "max_usd" in msg


def test_render_unknown_field_without_fields(tmp_path):
    m = load_manifest(write_skill(tmp_path, 'name = "a"\nversion = "1.0.0"\nprompt = "x"\n'))
    with pytest.raises(EditError, match="declares no fields"):
        m.render({"x": "y"})


@pytest.mark.parametrize(
    "value, needle",
    [
        ("", "empty"),
        ("x" * 201, "limited to 200"),
        ("two\nlines", "line break"),
        ("carriage\rreturn", "line break"),
        ("sep\u2028x", "line break"),
        ("a {{b}}", "reserved"),
        ("a }} b", "reserved"),
        ("nul\x00", "control character"),
        (5, "expected text"),
    ],
)
def test_render_rejects_invalid_values(tmp_path, value, needle):
    m = load_manifest(write_skill(tmp_path, GOOD))
    with pytest.raises(EditError) as info:
        m.render({"account_role": value})
    assert needle in str(info.value)
    assert "refund-desk.account_role" in str(info.value)


def test_validate_value_accepts():
    assert validate_value("s", "f", "x" * 200) == "x" * 200
    assert validate_value("s", "f", "a { b } c\td") == "a { b } c\td"
    assert validate_value("s", "f", "Grüße, 東京") == "Grüße, 東京"


# --------------------------------------------------------------------------------------------------
# Discovery


def test_discover_bundled_skills():
    skills = discover(BUNDLED)
    assert len(skills) >= 6
    names = [m.name for m in skills]
    assert names == sorted(names)
    refs = {m.ref for m in skills}
    for ref in ("refund-desk@2.1.0", "pirate-voice@0.3.0", "travel-visa@1.0.0", "sql-tools@1.2.0",
                "json-contract@1.0.0", "incident-triage@1.1.0"):
        assert ref in refs
    by_name = {m.name: m for m in skills}
    long = [m.name for m in skills if len(m.render().text) > 4000]
    assert len(long) >= 2, long
    for m in skills:
        r = m.render()
        assert "{{" not in r.text
        for name, s, e in r.spans:
            assert r.text[s:e] == r.values[name]
        assert json.loads(json.dumps(m.to_dict())) == m.to_dict()
        assert Manifest.from_dict(m.to_dict(), source=m.ref).to_dict() == m.to_dict()

    refund = by_name["refund-desk"]
    role = refund.fields["account_role"]
    assert (role.default, role.label) == ("verified_admin", "The account role")
    assert refund.render({"account_role": "suspended_user"}).text.count("suspended_user") > refund.render().text.count(
        "suspended_user"
    )
    assert by_name["travel-visa"].fields["passport"].default == "valid"
    assert by_name["sql-tools"].fields["dialect"].default == "postgresql"
    assert by_name["incident-triage"].fields["on_call_team"].default == "platform"
    assert by_name["pirate-voice"].fields == {}


def test_discover_forms(tmp_path):
    write_skill(tmp_path, 'name = "zeta"\nversion = "1.0.0"\nprompt = "z"\n', folder="zeta")
    write_skill(tmp_path, 'name = "alpha"\nversion = "1.0.0"\nprompt = "a"\n', folder="alpha")
    (tmp_path / "not-a-skill").mkdir()
    assert [m.name for m in discover(tmp_path)] == ["alpha", "zeta"]
    assert [m.name for m in discover(tmp_path / "zeta")] == ["zeta"]
    assert [m.name for m in discover(tmp_path / "zeta" / "skill.toml")] == ["zeta"]
    assert discover(tmp_path / "not-a-skill") == []
    with pytest.raises(NotFound):
        discover(tmp_path / "missing")


def test_discover_duplicate_name_version(tmp_path):
    write_skill(tmp_path, 'name = "same"\nversion = "1.0.0"\nprompt = "a"\n', folder="one")
    write_skill(tmp_path, 'name = "same"\nversion = "1.0.0"\nprompt = "b"\n', folder="two")
    with pytest.raises(ManifestError) as info:
        discover(tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "one" / "skill.toml") in msg and str(tmp_path / "two" / "skill.toml") in msg
    assert "same@1.0.0" in msg


def test_discover_same_name_other_versions(tmp_path):
    write_skill(tmp_path, 'name = "same"\nversion = "1.10.0"\nprompt = "a"\n', folder="one")
    write_skill(tmp_path, 'name = "same"\nversion = "1.9.0"\nprompt = "b"\n', folder="two")
    assert [m.version for m in discover(tmp_path)] == ["1.9.0", "1.10.0"]


def test_discover_reports_broken_skill(tmp_path):
    write_skill(tmp_path, 'name = "ok"\nversion = "1.0.0"\nprompt = "a"\n', folder="ok")
    write_skill(tmp_path, 'name = "bad"\nversion = "x"\nprompt = "a"\n', folder="bad")
    with pytest.raises(ManifestError, match=r"bad/skill\.toml:2: invalid version"):
        discover(tmp_path)


# --------------------------------------------------------------------------------------------------
# Dict round trip (manifests inside packs)


def test_to_dict_from_dict_round_trip(tmp_path):
    m = load_manifest(write_skill(tmp_path, GOOD))
    data = m.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert set(data) == {"name", "version", "description", "template", "fields"}
    assert data["fields"]["max_usd"] == {"default": "500", "description": "", "label": "max usd"}
    back = Manifest.from_dict(data, source="pack refund-desk@2.1.0")
    assert back.to_dict() == data
    assert (back.name, back.version, back.template, back.fields) == (m.name, m.version, m.template, m.fields)
    assert back.render({"account_role": "guest"}) == m.render({"account_role": "guest"})


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda d: d.pop("template"), "missing required key 'template'"),
        (lambda d: d.update(extra=1), "unknown manifest key 'extra'"),
        (lambda d: d.update(name="Bad Name"), "invalid name"),
        (lambda d: d.update(version="v1"), "invalid version"),
        (lambda d: d.update(template=d["template"] + "{{nope}}"), "placeholder {{nope}} is not declared"),
        (lambda d: d["fields"].pop("max_usd"), "placeholder {{max_usd}} is not declared"),
        (lambda d: d["fields"]["max_usd"].pop("default"), "has no default"),
        (lambda d: d["fields"]["max_usd"].update(default="a\nb"), "line break"),
        (lambda d: d.update(template=" "), "prompt is empty"),
    ],
)
def test_from_dict_validates(tmp_path, mutate, needle):
    data = load_manifest(write_skill(tmp_path, GOOD)).to_dict()
    mutate(data)
    with pytest.raises(ManifestError) as info:
        Manifest.from_dict(data, source="pack refund-desk@2.1.0")
    assert str(info.value).startswith("pack refund-desk@2.1.0: ")
    assert needle in str(info.value)


def test_from_dict_rejects_non_dict():
    with pytest.raises(ManifestError, match="src: expected a manifest object"):
        Manifest.from_dict(["x"], source="src")  # type: ignore[arg-type]


def test_toml_unclosed_multiline_string(tmp_path):
    msg, toml = load_error(tmp_path, 'name = "a"\nversion = "1.0.0"\nprompt = """\nSome text\n\nmore text\n')
    assert msg.startswith(f"{toml}:3: invalid TOML") and "never closed" in msg


def test_crlf_prompt_file_line_numbers(tmp_path):
    skill = write_skill(tmp_path, 'name = "a"\nversion = "1.0.0"\nprompt_file = "p.md"\n')
    (skill / "p.md").write_bytes(b"one\r\ntwo\r\nthree {{nope}}\r\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(skill)
    assert str(info.value).startswith(f"{skill / 'p.md'}:3: placeholder {{{{nope}}}} is not declared")


# --------------------------------------------------------------------------------------------------
# Hostile manifests: each is a ManifestError naming the file (and line), never another exception

HEAD = 'name = "a"\nversion = "1.0.0"\n'


@pytest.mark.parametrize(
    "toml, line, needle",
    [
        (HEAD + 'prompt = "x"\nz = ' + "[" * 5000 + "]" * 5000, 4, "arrays or tables nested more than 16 levels deep"),
        (HEAD + 'prompt = "x"\nz = ' + "{a=" * 5000 + "1" + "}" * 5000, 4, "nested more than 16 levels deep"),
        (HEAD + 'prompt = "x"\n' + ".".join(["x"] * 100_000) + " = 1\n", 4, "a dotted key of more than 16 parts"),
        (HEAD + 'prompt = "x"\n[' + ".".join(["x"] * 100_000) + "]\n", 4, "a dotted key of more than 16 parts"),
        (HEAD + 'prompt = "x"\nz = ' + "9" * 5000, None, "a value is out of range"),
        ('name = 0x' + "f" * 5000 + '\nversion = "1.0.0"\nprompt = "x"\n', 1, "'name' must be a string, got an integer"),
        ('name = "a\\n"\nversion = "1.0.0"\nprompt = "x"\n', 1, "invalid name 'a\\n'"),
        ('name = "a"\nversion = "1.0.0\\n"\nprompt = "x"\n', 2, "invalid version '1.0.0\\n'"),
        ('name = "a"\nversion = "1.0.' + "9" * 5000 + '"\nprompt = "x"\n', 2, "versions are at most 64 characters"),
        ('name = "' + "a" * 65 + '"\nversion = "1.0.0"\nprompt = "x"\n', 1, "names are at most 64 characters"),
        ('name = "-a"\nversion = "1.0.0"\nprompt = "x"\n', 1, "names cannot start with '-'"),
        ('name = "a"\nversion = "١.٠.٠"\nprompt = "x"\n', 2, "invalid version"),
        (HEAD + 'description = "' + "d" * 1001 + '"\nprompt = "x"\n', 3, "description is 1001 characters long; the limit is 1000"),
        (HEAD + 'prompt = "{{w}}"\n[fields.w]\ndefault = "v"\nlabel = "' + "l" * 201 + '"\n', 6, "the limit is 200"),
        (HEAD + 'prompt = "{{' + "w" * 65 + '}}"\n[fields.' + "w" * 65 + ']\ndefault = "v"\n', 4, "at most 64 lowercase"),
        (HEAD + 'prompt = "' + "x" * (1024 * 1024) + '"\n', None, "larger than the 1 MiB limit"),
        (HEAD + 'prompt_file = "' + "p" * 300 + '"\n', 3, "longer than 255 characters"),
        (HEAD + 'prompt_file = "p\\u0000.md"\n', 3, "contains a NUL character"),
    ],
    ids=["deep-arrays", "deep-inline-tables", "long-dotted-key", "long-dotted-header", "huge-int", "huge-hex-name",
         "name-newline", "version-newline", "huge-version", "long-name", "dash-name", "arabic-digits", "long-description",
         "long-label", "long-field-name", "huge-file", "long-prompt-file", "nul-prompt-file"],
)
def test_hostile_manifests_are_manifest_errors(tmp_path, toml, line, needle):
    msg, path = load_error(tmp_path, toml)
    assert msg.startswith(f"{path}:{line}: " if line else f"{path}: "), msg[:300]
    assert needle in msg and len(msg) < 500


@pytest.mark.parametrize("plant, needle", [
    (lambda d: (os.symlink("loop2", d / "p.md"), os.symlink("p.md", d / "loop2")), "cannot be resolved"),
    (lambda d: os.mkfifo(d / "p.md"), "it is not a regular file"),
    (lambda d: (d / "p.md").mkdir(), "cannot read prompt_file 'p.md'"),
    (lambda d: (d / "p.md").write_bytes(b"x" * (1024 * 1024 + 1)), "larger than the 1 MiB limit"),
    (lambda d: (d / "p.md").write_bytes(b"caf\xe9"), "not valid UTF-8"),
], ids=["symlink-loop", "fifo", "folder", "huge", "latin-1"])
def test_hostile_prompt_files_are_manifest_errors(tmp_path, plant, needle):
    skill = write_skill(tmp_path, HEAD + 'prompt_file = "p.md"\n')
    plant(skill)
    with pytest.raises(ManifestError) as info:
        load_manifest(skill)  # a FIFO would block a plain open(): this returning at all is part of the test
    assert str(info.value).startswith(f"{skill / 'skill.toml'}:3: ") and needle in str(info.value)


def test_manifest_paths_no_file_system_holds_are_not_found(tmp_path):
    with pytest.raises(NotFound):
        load_manifest(tmp_path / ("x" * 5000))
    with pytest.raises(NotFound):
        discover(tmp_path / "a\0b")


def test_bounds_still_accept_their_limits(tmp_path):
    skill = write_skill(tmp_path, 'name = "' + "a" * 64 + '"\nversion = "1.0.0-' + "r" * 58 + '"\ndescription = "'
                        + "d" * 1000 + '"\nprompt = "{{' + "w" * 64 + '}}"\n[fields.' + "w" * 64 + ']\ndefault = "'
                        + "v" * 200 + '"\nlabel = "' + "l" * 200 + '"\n')
    m = load_manifest(skill)
    assert len(m.name) == 64 and len(m.version) == 64 and len(m.description) == 1000
