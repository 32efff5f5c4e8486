"""The one parser for references: `name`, `name@1.2.0`, `name@sha256:<hex>`, and pack URLs.

Nothing else in the code base splits these strings by hand. Names, versions and field names become
file names, index rows and S3 object keys (1,024 bytes at most, with a prefix and a digest beside
them), so each is bounded: names and field names 64 characters, versions 64. Every pattern is anchored
with \\A ... \\Z, not ^ ... $: `$` also matches before a trailing newline, which let "1.0.0\\n" in.
A name may not start with `-`: on the command line it would read as an option (put references that
start with `-` after `--` to reach this parser, which then says why they are invalid).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from skillforge.errors import BadReference

MAX_NAME_CHARS = 64
MAX_VERSION_CHARS = 64
MAX_FIELD_NAME_CHARS = 64
NAME_RE = re.compile(rf"\A[a-z0-9][a-z0-9-]{{0,{MAX_NAME_CHARS - 1}}}\Z")
FIELD_NAME_RE = re.compile(rf"\A[a-z_][a-z0-9_]{{0,{MAX_FIELD_NAME_CHARS - 1}}}\Z")
VERSION_RE = re.compile(
    r"\A(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?\Z",
    re.ASCII,  # \d is ASCII digits only: "١.٠.٠" is not a version
)
DIGEST_RE = re.compile(r"\Asha256:[0-9a-f]{64}\Z")
_SHOWN_CHARS = 80  # how much of a rejected string an error message repeats


def shown(text: object) -> str:
    """`repr` of a rejected value, cut short: a hostile 1 MB reference must not become a 1 MB message."""
    r = repr(text)
    return r if len(r) <= _SHOWN_CHARS else f"{r[:_SHOWN_CHARS]}... ({len(r)} characters)"


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise BadReference(f"invalid {what} {shown(value)}: expected text, got {type(value).__name__}")
    return value


def check_name(name: str) -> str:
    """Return `name` if it is a valid skill or pack name (also safe as a path component)."""
    if NAME_RE.match(_text(name, "name")):
        return name
    if name.startswith("-"):
        why = "names cannot start with '-' (on the command line it reads as an option)"
    elif len(name) > MAX_NAME_CHARS:
        why = f"names are at most {MAX_NAME_CHARS} characters"
    else:
        why = "use lowercase letters, digits and '-', starting with a letter or digit"
    raise BadReference(f"invalid name {shown(name)}: {why}")


def check_field_name(field: str) -> str:
    """Return `field` if it is a valid field name (`{{ field }}` placeholders, `--set skill.field=...`)."""
    if not FIELD_NAME_RE.match(_text(field, "field name")):
        raise BadReference(
            f"invalid field name {shown(field)}: use at most {MAX_FIELD_NAME_CHARS} lowercase letters, digits "
            "and '_', not starting with a digit"
        )
    return field


def _match_version(version: str) -> re.Match[str]:
    # The length bound comes first: it also keeps int() below far from Python's 4,300-digit limit.
    if len(_text(version, "version")) > MAX_VERSION_CHARS:
        raise BadReference(f"invalid version {shown(version)}: versions are at most {MAX_VERSION_CHARS} characters")
    m = VERSION_RE.match(version)
    if m is None:
        raise BadReference(f"invalid version {shown(version)}: use a semantic version such as 1.0.0")
    return m


def check_version(version: str) -> str:
    """Return `version` if it is a semantic version (1.2.3, 1.2.3-rc.1) of at most 64 characters."""
    _match_version(version)
    return version


def version_key(version: str) -> tuple:
    """Sort key implementing semver precedence (pre-releases sort before the release)."""
    m = _match_version(version)
    major, minor, patch, pre = int(m[1]), int(m[2]), int(m[3]), m[4]
    if pre is None:
        return (major, minor, patch, 1, ())
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
    return (major, minor, patch, 0, parts)


@dataclass(frozen=True)
class SkillRef:
    """`name`, `name@version` or `name@sha256:<hex>` (an exact artifact digest)."""

    name: str
    version: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> "SkillRef":
        name, sep, rest = _text(text, "skill reference").strip().partition("@")
        check_name(name)
        if not sep:
            return cls(name)
        if rest.startswith("sha256:"):
            if not DIGEST_RE.match(rest):
                raise BadReference(f"invalid digest in {shown(text)}: expected sha256: and 64 hex digits")
            return cls(name, digest=rest)
        return cls(name, version=check_version(rest))

    def __str__(self) -> str:
        if self.digest:
            return f"{self.name}@{self.digest}"
        return f"{self.name}@{self.version}" if self.version else self.name


@dataclass(frozen=True)
class PackRef:
    """A pack inside a bucket prefix: `s3://bucket/prefix/name@version` (version optional for listing)."""

    root: str
    name: str
    version: str | None

    @classmethod
    def parse(cls, url: str) -> "PackRef":
        root, slash, last = _text(url, "pack reference").rstrip("/").rpartition("/")
        if not slash or "@" not in last:
            raise BadReference(f"invalid pack reference {shown(url)}: expected <store-url>/<name>@<version>")
        name, _, version = last.partition("@")
        return cls(root, check_name(name), check_version(version))

    def __str__(self) -> str:
        return f"{self.root}/{self.name}@{self.version}"


def parse_field_assignment(text: str) -> tuple[str, str, str]:
    """`skill.field=value` -> (skill, field, value), as given to `--set` (the value is checked where it is used)."""
    key, eq, value = _text(text, "--set").partition("=")
    skill, dot, field = key.strip().partition(".")
    if not eq or not dot or not field:
        raise BadReference(f"invalid --set {shown(text)}: expected <skill>.<field>=<value>")
    return check_name(skill), check_field_name(field), value


def digest_hex(digest: str) -> str:
    """`sha256:<hex>` -> `<hex>`, refusing anything else (digests become file and object names)."""
    if not DIGEST_RE.match(_text(digest, "digest")):
        raise BadReference(f"invalid digest {shown(digest)}: expected sha256: and 64 hex digits")
    return digest[len("sha256:"):]
