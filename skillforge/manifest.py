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
import tomllib
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skillforge.errors import BadReference, EditError, ManifestError, NotFound
from skillforge.refs import check_name, check_version, version_key

MANIFEST_FILE = "skill.toml"
MAX_VALUE_CHARS = 200

FIELD_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]*$")
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
        err = _Reporter(source, None)
        if not isinstance(data, dict):
            raise err.fail(None, f"expected a manifest object, got {type(data).__name__}")
        _reject_unknown_keys(err, data, _DICT_KEYS, "manifest key", ())
        for key in ("name", "version", "template"):
            if key not in data:
                raise err.fail(None, f"missing required key {key!r}")
        template = _require_str(err, data, "template", ())
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
    toml_path = path / MANIFEST_FILE if path.is_dir() else path
    if not toml_path.is_file():
        if path.is_dir():
            raise NotFound(f"{_show(path)}: no {MANIFEST_FILE} in this folder; a skill folder needs one")
        raise NotFound(f"{_show(path)}: no such manifest file; give a skill folder or its {MANIFEST_FILE}")
    try:
        raw = toml_path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ManifestError(f"{_show(toml_path)}: the file is not valid UTF-8 ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise ManifestError(f"{_show(toml_path)}: cannot read the file ({e.strerror or e})") from None
    return _parse_toml(toml_path, raw)


def discover(root: Path) -> list[Manifest]:
    """All manifests under `root`: a skill folder, a skill.toml, or a folder of skill folders.

    Sorted by name (then version). Two manifests with the same name@version are an error.
    """
    root = Path(root)
    if not root.exists():
        raise NotFound(f"{_show(root)}: no such file or folder; give a skill folder, a {MANIFEST_FILE}, or a folder of skill folders")
    if root.is_file() or (root / MANIFEST_FILE).is_file():
        manifests = [load_manifest(root)]
    else:
        manifests = [load_manifest(p) for p in sorted(root.glob(f"*/{MANIFEST_FILE}")) if p.is_file()]
    seen: dict[str, Manifest] = {}
    for m in manifests:
        other = seen.get(m.ref)
        if other is not None:
            raise ManifestError(
                f"{_show(other.path)} and {_show(m.path)} both define {m.ref}; "
                "rename one skill or bump its version"
            )
        seen[m.ref] = m
    return sorted(manifests, key=lambda m: (m.name, version_key(m.version)))


# --------------------------------------------------------------------------------------------------
# Parsing and validation


class _Reporter:
    """Builds `ManifestError`s naming a file (and line) consistently."""

    def __init__(self, source: str, lines: dict[tuple[str, ...], int] | None):
        self.source = source
        self.lines = lines or {}

    def line(self, key: tuple[str, ...]) -> int | None:
        # The key's own line, else the nearest enclosing table's line.
        while key:
            if key in self.lines:
                return self.lines[key]
            key = key[:-1]
        return None

    def fail(self, key: tuple[str, ...] | int | None, message: str) -> ManifestError:
        lineno = key if isinstance(key, int) else (self.line(key) if key else None)
        where = f"{self.source}:{lineno}" if lineno else self.source
        return ManifestError(f"{where}: {message}")


def _parse_toml(toml_path: Path, raw: str) -> Manifest:
    err = _Reporter(_show(toml_path), None)
    try:
        data = tomllib.loads(raw)
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = re.search(r"\(at line (\d+), column (\d+)\)\s*$", msg)
        lineno = getattr(e, "lineno", None) or (int(m[1]) if m else None)
        colno = getattr(e, "colno", None) or (int(m[2]) if m else None)
        reason = getattr(e, "msg", None) or re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)\s*$", "", msg)
        _, unclosed = _scan_toml(raw)
        if unclosed is not None and (lineno is None or "end of document" in msg or lineno > raw.count("\n")):
            # The parser ran off the end: point at the multi-line string that never closes.
            raise err.fail(unclosed, f"invalid TOML: {reason}; the multi-line string that starts here is never closed") from None
        if lineno is None:
            lineno = raw.count("\n") + (0 if raw.endswith("\n") else 1)
        col = f" (column {colno})" if colno else ""
        raise err.fail(lineno, f"invalid TOML: {reason}{col}") from None
    err = _Reporter(_show(toml_path), _toml_key_lines(raw))

    _reject_unknown_keys(err, data, _TOP_KEYS, "top-level key", ())
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
        template = _require_str(err, data, "prompt", ())
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
        rel = _require_str(err, data, "prompt_file", ())
        if not rel.strip():
            raise err.fail(("prompt_file",), "prompt_file is empty; name a file next to skill.toml, e.g. prompt_file = \"prompt.md\"")
        folder = toml_path.parent
        if Path(rel).is_absolute():
            raise err.fail(("prompt_file",), f"prompt_file {rel!r} is absolute; give a path relative to the skill folder")
        prompt_path = folder / rel
        try:
            inside = prompt_path.resolve().is_relative_to(folder.resolve())
        except OSError:
            inside = False
        if not inside:
            raise err.fail(("prompt_file",), f"prompt_file {rel!r} points outside the skill folder; keep the prompt next to skill.toml")
        if not prompt_path.is_file():
            raise err.fail(("prompt_file",), f"prompt_file {rel!r} not found (looked for {_show(prompt_path)})")
        try:
            template = prompt_path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise err.fail(("prompt_file",), f"prompt_file {rel!r} is not valid UTF-8 ({e.reason} at byte {e.start})") from None
        except OSError as e:
            raise err.fail(("prompt_file",), f"cannot read prompt_file {rel!r} ({e.strerror or e})") from None
        template = _normalize_newlines(template)  # so offsets below match the text _build checks
        template_err = _Reporter(_show(prompt_path), None)

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
    err: _Reporter,
    data: dict,
    *,
    template: str,
    template_err: _Reporter,
    template_line: Callable[[int, str], int | None],
    path: Path,
) -> Manifest:
    """Validation shared by skill.toml files and manifests that arrive as dicts."""
    name = _require_str(err, data, "name", ())
    try:
        check_name(name)
    except BadReference as e:
        raise err.fail(("name",), str(e)) from None
    version = _require_str(err, data, "version", ())
    try:
        check_version(version)
    except BadReference as e:
        raise err.fail(("version",), str(e)) from None
    description = _require_str(err, data, "description", ()) if "description" in data else ""

    template = _normalize_newlines(template)
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


def _parse_fields(err: _Reporter, skill: str, raw_fields: Any) -> dict[str, FieldSpec]:
    if not isinstance(raw_fields, dict):
        raise err.fail(("fields",), "fields must be a table: declare each field as [fields.<name>] with a default")
    fields: dict[str, FieldSpec] = {}
    for fname, spec in raw_fields.items():
        key = ("fields", fname)
        if not FIELD_NAME_RE.match(fname):
            raise err.fail(key, f"invalid field name {fname!r}: use lowercase letters, digits and '_', not starting with a digit")
        if not isinstance(spec, dict):
            raise err.fail(key, f"field {fname!r} must be a table; write [fields.{fname}] with default = \"...\"")
        _reject_unknown_keys(err, spec, _FIELD_KEYS, f"key in [fields.{fname}]", key)
        if "default" not in spec:
            raise err.fail(key, f"field {fname!r} has no default; add default = \"...\" under [fields.{fname}]")
        default = _require_str(err, spec, "default", key)
        try:
            validate_value(skill, fname, default)
        except EditError as e:
            raise err.fail(key + ("default",), f"default of field {fname!r} is invalid: {_after_colon(str(e))}") from None
        description = _require_str(err, spec, "description", key) if "description" in spec else ""
        if "label" in spec:
            label = _require_str(err, spec, "label", key)
            if not label.strip() or any(c in _LINE_BREAKS for c in label):
                raise err.fail(key + ("label",), f"label of field {fname!r} must be a non-empty single line")
        else:
            label = fname.replace("_", " ")
        fields[fname] = FieldSpec(name=fname, default=default, description=description, label=label)
    return fields


def _require_str(err: _Reporter, table: dict, key: str, parent: tuple[str, ...]) -> str:
    value = table.get(key)
    if not isinstance(value, str):
        shown = "".join(f"[{p}]" if i == 0 else f".{p}" for i, p in enumerate(parent))
        where = f"{key!r} in {shown}" if parent else repr(key)
        hint = f'; quote it: {key} = "{value}"' if type(value) in (int, float) else ""
        raise err.fail(parent + (key,), f"{where} must be a string, got {_toml_type(value)}{hint}")
    return value


def _reject_unknown_keys(err: _Reporter, table: dict, allowed: tuple[str, ...], what: str, parent: tuple[str, ...]) -> None:
    for key in table:
        if key not in allowed:
            hint = difflib.get_close_matches(key, allowed, n=1)
            mean = f"did you mean {hint[0]!r}? " if hint else ""
            raise err.fail(parent + (key,), f"unknown {what} {key!r}; {mean}(allowed: {', '.join(allowed)})")


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


def _toml_type(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", dict: "a table", list: "an array"}.get(
        type(value), "nothing" if value is None else type(value).__name__
    )


def _show(path: Path) -> str:
    """A path as the user would type it: relative to the working folder when inside it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


# --------------------------------------------------------------------------------------------------
# Line numbers for semantic errors. tomllib does not report where keys are, so scan the raw text:
# table headers and `key = value` lines outside multi-line strings. Only used to point at lines in
# error messages; if the scan misses something the message simply has no line number.

_KEY_PART = r"""(?:[A-Za-z0-9_-]+|"[^"\n]*"|'[^'\n]*')"""
_KEY_PATH = rf"{_KEY_PART}(?:[ \t]*\.[ \t]*{_KEY_PART})*"
_HEADER_RE = re.compile(rf"^[ \t]*\[[ \t]*({_KEY_PATH})[ \t]*\]")
_KEYVAL_RE = re.compile(rf"^[ \t]*({_KEY_PATH})[ \t]*=[ \t]*(.*)$")
_INLINE_KEY_RE = re.compile(rf"({_KEY_PATH})[ \t]*=")


def _split_key(path: str) -> tuple[str, ...]:
    return tuple(p[1:-1] if p[:1] in "\"'" else p for p in re.findall(_KEY_PART, path))


def _toml_key_lines(raw: str) -> dict[tuple[str, ...], int]:
    return _scan_toml(raw)[0]


def _scan_toml(raw: str) -> tuple[dict[tuple[str, ...], int], int | None]:
    """(line of each key path, line where a multi-line string opens and never closes, or None)."""
    lines: dict[tuple[str, ...], int] = {}
    open_line: int | None = None
    table: tuple[str, ...] = ()
    open_delim: str | None = None
    for lineno, line in enumerate(raw.splitlines(), start=1):
        if open_delim is not None:
            if _closes(line, 0, open_delim):
                open_delim, open_line = None, None
            continue
        header = _HEADER_RE.match(line)
        if header:
            table = _split_key(header[1])
            lines.setdefault(table, lineno)
            continue
        kv = _KEYVAL_RE.match(line)
        if not kv:
            continue
        key = table + _split_key(kv[1])
        for i in range(1, len(key) + 1):
            lines.setdefault(key[:i], lineno)
        value = kv[2]
        for delim in ('"""', "'''"):
            if value.startswith(delim):
                if not _closes(value, 3, delim):
                    open_delim, open_line = delim, lineno
                break
        else:
            if value.startswith("{"):
                for m in _INLINE_KEY_RE.finditer(value):
                    lines.setdefault(key + _split_key(m[1]), lineno)
    return lines, open_line


def _closes(text: str, start: int, delim: str) -> bool:
    i = text.find(delim, start)
    while i != -1:
        if delim == "'''":
            return True
        backslashes = len(text[:i]) - len(text[:i].rstrip("\\"))
        if backslashes % 2 == 0:
            return True
        i = text.find(delim, i + 1)
    return False
