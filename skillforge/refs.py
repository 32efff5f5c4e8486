"""The one parser for references: `name`, `name@1.2.0`, `name@sha256:<hex>`, and pack URLs.

Nothing else in the code base splits these strings by hand.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from skillforge.errors import BadReference

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
VERSION_RE = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


def check_name(name: str) -> str:
    """Return `name` if it is a valid skill or pack name (also safe as a path component)."""
    if not NAME_RE.match(name):
        raise BadReference(f"invalid name {name!r}: use lowercase letters, digits and '-', starting with a letter or digit")
    return name


def check_version(version: str) -> str:
    """Return `version` if it is a semantic version (1.2.3, 1.2.3-rc.1)."""
    if not VERSION_RE.match(version):
        raise BadReference(f"invalid version {version!r}: use a semantic version such as 1.0.0")
    return version


def version_key(version: str) -> tuple:
    """Sort key implementing semver precedence (pre-releases sort before the release)."""
    m = VERSION_RE.match(version)
    if not m:
        raise BadReference(f"invalid version {version!r}")
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
        name, sep, rest = text.strip().partition("@")
        check_name(name)
        if not sep:
            return cls(name)
        if rest.startswith("sha256:"):
            if not DIGEST_RE.match(rest):
                raise BadReference(f"invalid digest in {text!r}: expected sha256: and 64 hex digits")
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
        root, slash, last = url.rstrip("/").rpartition("/")
        if not slash or "@" not in last:
            raise BadReference(f"invalid pack reference {url!r}: expected <store-url>/<name>@<version>")
        name, _, version = last.partition("@")
        return cls(root, check_name(name), check_version(version))

    def __str__(self) -> str:
        return f"{self.root}/{self.name}@{self.version}"


def parse_field_assignment(text: str) -> tuple[str, str, str]:
    """`skill.field=value` -> (skill, field, value), as given to `--set`."""
    key, eq, value = text.partition("=")
    skill, dot, field = key.strip().partition(".")
    if not eq or not dot or not field:
        raise BadReference(f"invalid --set {text!r}: expected <skill>.<field>=<value>")
    return check_name(skill), field, value


def digest_hex(digest: str) -> str:
    """`sha256:<hex>` -> `<hex>`, refusing anything else (digests become file and object names)."""
    if not DIGEST_RE.match(digest):
        raise BadReference(f"invalid digest {digest!r}: expected sha256: and 64 hex digits")
    return digest[len("sha256:"):]
