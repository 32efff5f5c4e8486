"""The file side of skill manifests: read their files safely, parse TOML, find the line of each key.

Split from manifest.py, which validates what this returns. A manifest names paths and holds text an
attacker may choose (a shared skills folder is a trust boundary), so:

- `read_text`, `probe` and `prompt_path` turn names with NUL bytes or too long for the file system,
  symlink loops, FIFOs, folders and huge files into `Unreadable` (phrased by manifest.py as a
  `ManifestError` naming the file), never OSError, ValueError or RuntimeError, and never a read that
  blocks.

- `parse_toml` guards `tomllib` against hostile files before calling it. tomllib recurses once per
  nesting level of arrays and inline tables (a few thousand `[` raise RecursionError) and its work grows
  with the square of a dotted key's length (`x.x.x...` of 100,000 parts exhausted memory). A linear
  scan refuses more than `MAX_NESTING` levels or `MAX_KEY_PARTS` dotted parts first; a manifest needs 2
  and 3. Every failure, tomllib's own included (integers over 4,300 digits), is a `ManifestError` that
  names the file and, where known, the line.
- `key_lines` maps key paths to lines: tomllib does not report where keys are, so scan the raw text:
  table headers and `key = value` lines outside multi-line strings. Only used to point at lines in
  error messages; if the scan misses something the message simply has no line number.
"""

from __future__ import annotations

import difflib
import os
import re
import stat
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from skillforge.errors import ManifestError
from skillforge.refs import shown

MAX_PROMPT_FILE_CHARS = 255  # a prompt_file name (one file system name: 255 bytes on most)
MAX_NESTING = 16
MAX_KEY_PARTS = 16

# Tokens of the guard's scan: strings and comments (skipped whole, brackets inside them are text), and
# the characters that nest, separate or join keys. A multi-line string may end in up to two extra quotes.
_GUARD_TOKEN_RE = re.compile(
    r'"""(?:[^\\]|\\.)*?"""(?!")|' r"'''.*?'''(?!')|" r'"(?:[^"\\\n]|\\.)*"|' r"'[^'\n]*'|#[^\n]*|[\[\]{}=,.\n]",
    re.S,
)


_PATH_ERRORS = (OSError, ValueError, RuntimeError)  # RuntimeError: Path.resolve() on a symlink loop (3.11)


class Unreadable(Exception):
    """Why a manifest's file cannot be read or named; manifest.py phrases it as a ManifestError."""


def show(path: Path) -> str:
    """A path as the user would type it: relative to the working folder when inside it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except _PATH_ERRORS:
        return str(path)


def probe(path: Path, test: Callable[[Path], bool]) -> bool:
    """`test(path)` (Path.is_file and friends), False where the path itself is invalid (NUL, too long, loop)."""
    try:
        return test(path)
    except _PATH_ERRORS:
        return False


def read_text(path: Path, limit: int) -> str:
    """A regular file's UTF-8 text (a BOM dropped), refusing files over `limit` bytes. Opened without
    blocking, so a FIFO planted as the prompt is refused instead of waiting for a writer."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise Unreadable("it is not a regular file")
            data = fh.read(limit + 1)
    except _PATH_ERRORS as e:
        raise Unreadable(getattr(e, "strerror", None) or str(e)) from None
    if len(data) > limit:
        raise Unreadable(f"it is larger than the {limit // 1024 ** 2} MiB limit")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise Unreadable(f"the file is not valid UTF-8 ({e.reason} at byte {e.start})") from None


def prompt_path(folder: Path, rel: str) -> Path:
    """`prompt_file` -> its path, refusing names no file system holds and paths outside the skill folder."""
    if len(rel) > MAX_PROMPT_FILE_CHARS:
        raise Unreadable(f"prompt_file {shown(rel)} is longer than {MAX_PROMPT_FILE_CHARS} characters; use a short name")
    if "\0" in rel:
        raise Unreadable(f"prompt_file {shown(rel)} contains a NUL character; name a file next to skill.toml")
    if Path(rel).is_absolute():
        raise Unreadable(f"prompt_file {shown(rel)} is absolute; give a path relative to the skill folder")
    path = folder / rel
    try:
        inside = path.resolve().is_relative_to(folder.resolve())
    except _PATH_ERRORS as e:
        raise Unreadable(f"prompt_file {shown(rel)} cannot be resolved ({getattr(e, 'strerror', None) or e})") from None
    if not inside:
        raise Unreadable(f"prompt_file {shown(rel)} points outside the skill folder; keep the prompt next to skill.toml")
    if not probe(path, Path.exists):
        raise Unreadable(f"prompt_file {shown(rel)} not found (looked for {show(path)})")
    return path



def parse_toml(raw: str, source: str) -> dict[str, Any]:
    """`raw` TOML -> data, or a `ManifestError` naming `source` (and the line where one is known)."""
    _check_complexity(raw, source)
    try:
        return tomllib.loads(raw)
    except tomllib.TOMLDecodeError as e:
        raise _decode_error(raw, source, e) from None
    except RecursionError:
        raise _fail(source, None, f"invalid TOML: nested more than {MAX_NESTING} levels deep") from None
    except ValueError as e:  # int() past Python's digit limit, inside tomllib
        raise _fail(source, None, f"invalid TOML: a value is out of range ({e})") from None


def key_lines(raw: str) -> dict[tuple[str, ...], int]:
    """Line of each key path (table headers, `key = value`, keys of one-line inline tables)."""
    return _scan(raw)[0]


def _fail(source: str, lineno: int | None, message: str) -> ManifestError:
    return ManifestError(f"{source}:{lineno}: {message}" if lineno else f"{source}: {message}")


def _check_complexity(raw: str, source: str) -> None:
    depth = parts = 0
    for m in _GUARD_TOKEN_RE.finditer(raw):
        t = m[0]
        if t in "[{":
            depth, parts = depth + 1, 0
            if depth > MAX_NESTING:
                line = raw.count("\n", 0, m.start()) + 1
                raise _fail(source, line, f"invalid TOML: arrays or tables nested more than {MAX_NESTING} levels deep")
        elif t in "]}":
            depth -= 1
        elif t == ".":
            parts += 1
            if parts >= MAX_KEY_PARTS:
                line = raw.count("\n", 0, m.start()) + 1
                raise _fail(source, line, f"invalid TOML: a dotted key of more than {MAX_KEY_PARTS} parts")
        elif t in "=,\n":
            parts = 0


def _decode_error(raw: str, source: str, e: tomllib.TOMLDecodeError) -> ManifestError:
    msg = str(e)
    m = re.search(r"\(at line (\d+), column (\d+)\)\s*$", msg)
    lineno = getattr(e, "lineno", None) or (int(m[1]) if m else None)
    colno = getattr(e, "colno", None) or (int(m[2]) if m else None)
    reason = getattr(e, "msg", None) or re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)\s*$", "", msg)
    _, unclosed = _scan(raw)
    if unclosed is not None and (lineno is None or "end of document" in msg or lineno > raw.count("\n")):
        # The parser ran off the end: point at the multi-line string that never closes.
        return _fail(source, unclosed, f"invalid TOML: {reason}; the multi-line string that starts here is never closed")
    if lineno is None:
        lineno = raw.count("\n") + (0 if raw.endswith("\n") else 1)
    col = f" (column {colno})" if colno else ""
    return _fail(source, lineno, f"invalid TOML: {reason}{col}")


# Possessive quantifiers (`++`, `*+`): on a hostile 1 MiB line, backtracking would make the scan quadratic.
_KEY_PART = r"""(?:[A-Za-z0-9_-]++|"[^"\n]*+"|'[^'\n]*+')"""
_INLINE_SCAN_CHARS = 4096  # inline-table keys are looked for this far into a line (line numbers only)
_KEY_PATH = rf"{_KEY_PART}(?:[ \t]*\.[ \t]*{_KEY_PART})*"
_HEADER_RE = re.compile(rf"^[ \t]*\[[ \t]*({_KEY_PATH})[ \t]*\]")
_KEYVAL_RE = re.compile(rf"^[ \t]*({_KEY_PATH})[ \t]*=[ \t]*(.*)$")
_INLINE_KEY_RE = re.compile(rf"({_KEY_PATH})[ \t]*=")


def _split_key(path: str) -> tuple[str, ...]:
    return tuple(p[1:-1] if p[:1] in "\"'" else p for p in re.findall(_KEY_PART, path))


def _scan(raw: str) -> tuple[dict[tuple[str, ...], int], int | None]:
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
                for m in _INLINE_KEY_RE.finditer(value, 0, _INLINE_SCAN_CHARS):
                    lines.setdefault(key + _split_key(m[1]), lineno)
    return lines, open_line


def _closes(text: str, start: int, delim: str) -> bool:
    i = text.find(delim, start)
    while i != -1:
        if delim == "'''":
            return True
        j = i
        while j > start and text[j - 1] == "\\":
            j -= 1
        if (i - j) % 2 == 0:  # not escaped
            return True
        i = text.find(delim, i + 1)
    return False


# --------------------------------------------------------------------------------------------------
# Validating parsed TOML tables, with errors that name the file and line


class Reporter:
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


def require_str(err: Reporter, table: dict, key: str, parent: tuple[str, ...]) -> str:
    value = table.get(key)
    if not isinstance(value, str):
        table_name = "".join(f"[{p}]" if i == 0 else f".{p}" for i, p in enumerate(parent))
        where = f"{key!r} in {table_name}" if parent else repr(key)
        # Only a short number is worth repeating (str() of a 5,000-digit hex integer raises, too).
        short = type(value) in (int, float) and abs(value) < 1e15
        hint = f'; quote it: {key} = "{value}"' if short else ""
        raise err.fail(parent + (key,), f"{where} must be a string, got {toml_type(value)}{hint}")
    return value


def optional_text(err: Reporter, table: dict, key: str, parent: tuple[str, ...], limit: int) -> str:
    """An optional string of at most `limit` characters ("" when absent)."""
    if key not in table:
        return ""
    value = require_str(err, table, key, parent)
    if len(value) > limit:
        raise err.fail(parent + (key,), f"{key} is {len(value)} characters long; the limit is {limit}")
    return value


def reject_unknown_keys(err: Reporter, table: dict, allowed: tuple[str, ...], what: str, parent: tuple[str, ...]) -> None:
    for key in table:
        if key not in allowed:
            hint = difflib.get_close_matches(key, allowed, n=1)
            mean = f"did you mean {hint[0]!r}? " if hint else ""
            raise err.fail(parent + (key,), f"unknown {what} {shown(key)}; {mean}(allowed: {', '.join(allowed)})")


def toml_type(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", dict: "a table", list: "an array"}.get(
        type(value), "nothing" if value is None else type(value).__name__
    )
