"""Skill manifests: `skills/<name>/skill.toml`, parsed, validated and rendered.

A manifest names a skill (`name`, `version`), carries its prompt (inline `prompt = ...` or
`prompt_file = "prompt.md"` next to the toml) and declares every `{{ field }}` placeholder the prompt
uses under `[fields.<field>]` with a default value. Rendering substitutes values and records where
each value landed in the text, so later stages can map fields to token spans and edit them in place.

Every problem in a manifest is a `ManifestError` that names the file and, where one is known, the
line (`skills/refund-desk/skill.toml:7: ...`). This module imports neither torch nor transformers.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skillforge.errors import BadReference, EditError, ManifestError, NotFound
from skillforge.manifest_io import (Reporter, Unreadable, key_lines, optional_text, parse_toml, probe, prompt_path, read_text,
                                    reject_unknown_keys, require_str, show)
from skillforge.refs import check_field_name, check_name, check_version, shown, version_key

MANIFEST_FILE = "skill.toml"
# Bounds: every string here ends up in index rows, pack indexes and error messages; the prompt is
# tokenized whole. A 1 MiB prompt is ~250k tokens, past any context a skill is spliced into.
MAX_VALUE_CHARS = 200
MAX_LABEL_CHARS = 200
MAX_DESCRIPTION_CHARS = 1000
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_PROMPT_BYTES = 1024 * 1024

# A placeholder: `{{name}}` or `{{ name }}` (spaces and tabs only, no line breaks inside).
PLACEHOLDER_RE = re.compile(r"\{\{[ \t]*([a-z_][a-z0-9_]*)[ \t]*\}\}")

_TOP_KEYS = ("name", "version", "description", "prompt", "prompt_file", "fields")
_FIELD_KEYS = ("default", "description", "label")
_DICT_KEYS = ("name", "version", "description", "template", "fields")
# Every character str.splitlines() breaks on.
_LINE_BREAKS = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


# --------------------------------------------------------------------------------------------------
# Public data types


@dataclass(frozen=True)
class FieldSpec:
    """One declared field: its default value, what it means, and the label used in edit errata."""

    name: str
    default: str
    description: str
    label: str


@dataclass(frozen=True)
class Rendered:
    """A rendered prompt and where each field's value sits in it.

    `spans` lists `(field, start, end)` character ranges, in text order, one per placeholder
    occurrence: `text[start:end] == values[field]` for each. Copies of a value that the template
    wrote out literally (not through a placeholder) are not spans: they do not change on an edit.
    """

    text: str
    values: dict[str, str]
    spans: list[tuple[str, int, int]]

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Manifest:
    """A validated skill manifest. `path` is the skill.toml it came from (or the source of a dict)."""

    name: str
    version: str
    description: str
    template: str
    fields: dict[str, FieldSpec]
    path: Path

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def render(self, values: Mapping[str, str] | None = None) -> Rendered:
        """Substitute `values` (defaults for fields not given) into the template."""
        given = dict(values or {})
        unknown = sorted(k for k in given if k not in self.fields)
        if unknown:
            raise EditError(_unknown_fields_message(self.name, unknown, list(self.fields)))
        used = {
            name: (validate_value(self.name, name, given[name]) if name in given else spec.default)
            for name, spec in self.fields.items()
        }
        return _substitute(self.template, used)

    def to_dict(self) -> dict:
        """The manifest as plain JSON-able data (the prompt inlined as `template`)."""
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "template": self.template,
            "fields": {
                f.name: {"default": f.default, "description": f.description, "label": f.label}
                for f in self.fields.values()
            },
        }

    @classmethod
    def from_dict(cls, data: dict, source: str) -> "Manifest":
        """Inverse of `to_dict`, validated like a skill.toml; errors name `source` (e.g. a pack)."""
        err = Reporter(source, None)
        if not isinstance(data, dict):
            raise err.fail(None, f"expected a manifest object, got {type(data).__name__}")
        reject_unknown_keys(err, data, _DICT_KEYS, "manifest key", ())
        for key in ("name", "version", "template"):
            if key not in data:
                raise err.fail(None, f"missing required key {key!r}")
        template = require_str(err, data, "template", ())
        return _build(
            err,
            data,
            template=template,
            template_err=err,
            template_line=lambda start, text: None,
            path=Path(source),
        )


# --------------------------------------------------------------------------------------------------
# Public functions


def validate_value(skill: str, field: str, value: str) -> str:
    """Return `value` if it may be a field value; otherwise an `EditError` saying why."""
    where = f"invalid value for {skill}.{field}"
    if not isinstance(value, str):
        raise EditError(f"{where}: expected text, got {type(value).__name__}")
    if not value:
        raise EditError(f"{where}: the value is empty; give at least one character")
    if len(value) > MAX_VALUE_CHARS:
        raise EditError(
            f"{where}: the value is {len(value)} characters long; field values are limited to "
            f"{MAX_VALUE_CHARS} characters (put longer text in the prompt itself)"
        )
    if any(c in _LINE_BREAKS for c in value):
        raise EditError(f"{where}: the value contains a line break; field values must be a single line")
    bad = next((c for c in value if c != "\t" and unicodedata.category(c) == "Cc"), None)
    if bad is not None:
        raise EditError(f"{where}: the value contains the control character {bad!r}; remove it")
    if "{{" in value or "}}" in value:
        raise EditError(f"{where}: the value contains '{{{{' or '}}}}', which are reserved for placeholders")
    return value


def load_manifest(path: Path) -> Manifest:
    """Load and validate one manifest; `path` is a skill.toml or the folder holding one."""
    path = Path(path)
    toml_path = path / MANIFEST_FILE if probe(path, Path.is_dir) else path
    if not probe(toml_path, Path.is_file):
        if probe(path, Path.is_dir):
            raise NotFound(f"{show(path)}: no {MANIFEST_FILE} in this folder; a skill folder needs one")
        raise NotFound(f"{show(path)}: no such manifest file; give a skill folder or its {MANIFEST_FILE}")
    try:
        raw = read_text(toml_path, MAX_MANIFEST_BYTES)
    except Unreadable as e:
        raise ManifestError(f"{show(toml_path)}: {e}") from None
    return _parse_toml(toml_path, raw)


def discover(root: Path) -> list[Manifest]:
    """All manifests under `root`: a skill folder, a skill.toml, or a folder of skill folders.

    Sorted by name (then version). Two manifests with the same name@version are an error.
    """
    root = Path(root)
    if not probe(root, Path.exists):
        raise NotFound(f"{show(root)}: no such file or folder; give a skill folder, a {MANIFEST_FILE}, or a folder of skill folders")
    if probe(root, Path.is_file) or probe(root / MANIFEST_FILE, Path.is_file):
        manifests = [load_manifest(root)]
    else:
        manifests = [load_manifest(p) for p in sorted(root.glob(f"*/{MANIFEST_FILE}")) if probe(p, Path.is_file)]
    seen: dict[str, Manifest] = {}
    for m in manifests:
        other = seen.get(m.ref)
        if other is not None:
            raise ManifestError(
                f"{show(other.path)} and {show(m.path)} both define {m.ref}; "
                "rename one skill or bump its version"
            )
        seen[m.ref] = m
    return sorted(manifests, key=lambda m: (m.name, version_key(m.version)))


# --------------------------------------------------------------------------------------------------
# Parsing and validation


def _parse_toml(toml_path: Path, raw: str) -> Manifest:
    data = parse_toml(raw, show(toml_path))
    err = Reporter(show(toml_path), key_lines(raw))

    reject_unknown_keys(err, data, _TOP_KEYS, "top-level key", ())
    for key in ("name", "version"):
        if key not in data:
            raise err.fail(None, f"missing required key {key!r}; add {key} = \"...\" at the top of the file")
    has_prompt, has_file = "prompt" in data, "prompt_file" in data
    if has_prompt and has_file:
        second = max(("prompt", "prompt_file"), key=lambda k: err.lines.get((k,), 0))
        raise err.fail(
            (second,),
            "both prompt and prompt_file are set; keep exactly one (inline prompt = \"\"\"...\"\"\" or prompt_file = \"prompt.md\")",
        )
    if not has_prompt and not has_file:
        raise err.fail(None, "missing the prompt; add prompt = \"\"\"...\"\"\" or prompt_file = \"prompt.md\"")

    if has_prompt:
        template = require_str(err, data, "prompt", ())
        template_err = err
        prompt_line = err.lines.get(("prompt",))
        raw_lines = raw.splitlines()

        def template_line(start: int, text: str) -> int | None:
            # Find the placeholder's text in the raw toml, at or after the `prompt =` line.
            first = (prompt_line or 1) - 1
            for i in range(first, len(raw_lines)):
                if text in raw_lines[i]:
                    return i + 1
            return prompt_line
    else:
        rel = require_str(err, data, "prompt_file", ())
        if not rel.strip():
            raise err.fail(("prompt_file",), "prompt_file is empty; name a file next to skill.toml, e.g. prompt_file = \"prompt.md\"")
        try:
            prompt = prompt_path(toml_path.parent, rel)
        except Unreadable as e:
            raise err.fail(("prompt_file",), str(e)) from None
        try:
            template = read_text(prompt, MAX_PROMPT_BYTES)
        except Unreadable as e:
            raise err.fail(("prompt_file",), f"cannot read prompt_file {shown(rel)}: {e}") from None
        template = _normalize_newlines(template)  # so offsets below match the text _build checks
        template_err = Reporter(show(prompt), None)

        def template_line(start: int, text: str) -> int | None:
            return template.count("\n", 0, start) + 1

    return _build(
        err,
        data,
        template=template,
        template_err=template_err,
        template_line=template_line,
        path=toml_path.resolve(),
    )


def _build(
    err: Reporter,
    data: dict,
    *,
    template: str,
    template_err: Reporter,
    template_line: Callable[[int, str], int | None],
    path: Path,
) -> Manifest:
    """Validation shared by skill.toml files and manifests that arrive as dicts."""
    name = require_str(err, data, "name", ())
    try:
        check_name(name)
    except BadReference as e:
        raise err.fail(("name",), str(e)) from None
    version = require_str(err, data, "version", ())
    try:
        check_version(version)
    except BadReference as e:
        raise err.fail(("version",), str(e)) from None
    description = optional_text(err, data, "description", (), MAX_DESCRIPTION_CHARS)

    template = _normalize_newlines(template)
    if len(template.encode("utf-8", "surrogatepass")) > MAX_PROMPT_BYTES:
        raise template_err.fail(None, f"the prompt is longer than {MAX_PROMPT_BYTES // 1024 ** 2} MiB; split the skill")
    if not template.strip():
        if template_err is err:
            raise err.fail(("prompt",), "the prompt is empty; write the skill's text")
        raise template_err.fail(None, "the prompt file is empty; write the skill's text")

    fields = _parse_fields(err, name, data.get("fields", {}))

    # Placeholders: every one declared, nothing that looks like a broken one.
    used: list[str] = []
    for m in PLACEHOLDER_RE.finditer(template):
        field = m[1]
        if field not in fields:
            declared = ", ".join(fields) if fields else "none"
            hint = difflib.get_close_matches(field, list(fields), n=1)
            mean = f"; did you mean {{{{{hint[0]}}}}}?" if hint else ""
            raise template_err.fail(
                template_line(m.start(), m[0]),
                f"placeholder {m[0]} is not declared; declare [fields.{field}] or fix the name "
                f"(declared: {declared}){mean}",
            )
        if field not in used:
            used.append(field)
    # A `{{` that does not open a valid placeholder is a typo (`{{Account_Role}}`, `{{ a-b }}`, an
    # unclosed `{{name`). A lone `}}` is fine: nested JSON in tool docs ends with it all the time.
    masked = PLACEHOLDER_RE.sub(lambda m: "\0" * len(m[0]), template)
    pos = masked.find("{{")
    if pos != -1:
        snippet = template[pos : pos + 30].split("\n")[0]
        raise template_err.fail(
            template_line(pos, snippet),
            f"malformed placeholder near {snippet!r}: placeholders look like {{{{field_name}}}} "
            "(lowercase letters, digits and '_'), and '{{' may not appear otherwise",
        )
    for field in fields:
        if field not in used:
            raise err.fail(
                ("fields", field),
                f"field {field!r} is declared but the prompt never uses {{{{{field}}}}}; "
                f"use it in the prompt or remove [fields.{field}]",
            )
    return Manifest(name=name, version=version, description=description, template=template, fields=fields, path=path)


def _parse_fields(err: Reporter, skill: str, raw_fields: Any) -> dict[str, FieldSpec]:
    if not isinstance(raw_fields, dict):
        raise err.fail(("fields",), "fields must be a table: declare each field as [fields.<name>] with a default")
    fields: dict[str, FieldSpec] = {}
    for fname, spec in raw_fields.items():
        key = ("fields", fname)
        try:
            check_field_name(fname)
        except BadReference as e:
            raise err.fail(key, str(e)) from None
        if not isinstance(spec, dict):
            raise err.fail(key, f"field {fname!r} must be a table; write [fields.{fname}] with default = \"...\"")
        reject_unknown_keys(err, spec, _FIELD_KEYS, f"key in [fields.{fname}]", key)
        if "default" not in spec:
            raise err.fail(key, f"field {fname!r} has no default; add default = \"...\" under [fields.{fname}]")
        default = require_str(err, spec, "default", key)
        try:
            validate_value(skill, fname, default)
        except EditError as e:
            raise err.fail(key + ("default",), f"default of field {fname!r} is invalid: {_after_colon(str(e))}") from None
        description = optional_text(err, spec, "description", key, MAX_DESCRIPTION_CHARS)
        if "label" in spec:
            label = optional_text(err, spec, "label", key, MAX_LABEL_CHARS)
            if not label.strip() or any(c in _LINE_BREAKS for c in label):
                raise err.fail(key + ("label",), f"label of field {fname!r} must be a non-empty single line")
        else:
            label = fname.replace("_", " ")
        fields[fname] = FieldSpec(name=fname, default=default, description=description, label=label)
    return fields


def _substitute(template: str, values: Mapping[str, str]) -> Rendered:
    parts: list[str] = []
    spans: list[tuple[str, int, int]] = []
    pos = 0
    length = 0
    for m in PLACEHOLDER_RE.finditer(template):
        literal = template[pos : m.start()]
        parts.append(literal)
        length += len(literal)
        value = values[m[1]]
        spans.append((m[1], length, length + len(value)))
        parts.append(value)
        length += len(value)
        pos = m.end()
    parts.append(template[pos:])
    return Rendered(text="".join(parts), values=dict(values), spans=spans)


def _normalize_newlines(text: str) -> str:
    """CRLF and CR become LF, so a checkout's line endings never change a skill's text or digest."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _unknown_fields_message(skill: str, unknown: list[str], known: list[str]) -> str:
    names = ", ".join(repr(u) for u in unknown)
    noun = "field" if len(unknown) == 1 else "fields"
    if not known:
        return f"skill {skill} has no {noun} {names}: it declares no fields at all"
    hint = difflib.get_close_matches(unknown[0], known, n=1)
    mean = f"; did you mean {hint[0]!r}?" if hint else ""
    return f"skill {skill} has no {noun} {names} (known fields: {', '.join(known)}){mean}"


def _after_colon(message: str) -> str:
    return message.split(": ", 1)[1] if ": " in message else message
