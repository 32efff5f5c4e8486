"""Eval case files: JSON Lines, one case per line (id, skills, user; optionally system, set, raw, note,
history: earlier {"role", "content"} turns between the skills and the user turn, expect: with `set`, a
string the answer must contain, for value-retrieval edits, see eval/values.py),
validated with the file and line named in every error."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from skillforge.errors import BadInput, NotFound
from skillforge.prompt import check_history

CASE_KEYS = ("id", "skills", "system", "user", "set", "raw", "note", "history", "expect")


class CaseError(BadInput):
    """An eval case file is malformed; the message names the file and line."""


@dataclass
class Case:
    id: str
    skills: list[str]
    user: str
    system: str = ""
    set: dict[str, str] = field(default_factory=dict)
    raw: bool = False
    note: str = ""
    history: list[dict[str, str]] = field(default_factory=list)
    expect: str = ""

    @classmethod
    def from_dict(cls, data: Any, where: str = "case") -> "Case":
        if not isinstance(data, dict):
            raise CaseError(f"{where}: expected a JSON object, got {type(data).__name__}")
        unknown = [k for k in data if k not in CASE_KEYS]
        if unknown:
            raise CaseError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(CASE_KEYS)})")
        for key in ("id", "skills", "user"):
            if key not in data:
                raise CaseError(f"{where}: missing required key {key!r}")
        cid, skills, user = data["id"], data["skills"], data["user"]
        if not isinstance(cid, str) or not cid:
            raise CaseError(f"{where}: 'id' must be a non-empty string")
        if not isinstance(skills, list) or not skills or not all(isinstance(s, str) and s for s in skills):
            raise CaseError(f"{where}: 'skills' must be a non-empty list of skill references")
        for key in ("user", "system", "note", "expect"):
            if key in data and not isinstance(data[key], str):
                raise CaseError(f"{where}: {key!r} must be a string")
        if not isinstance(data.get("raw", False), bool):
            raise CaseError(f"{where}: 'raw' must be true or false")
        assignments = data.get("set", {})
        if not isinstance(assignments, dict) or not all(isinstance(v, str) for v in assignments.values()):
            raise CaseError(f"{where}: 'set' must map \"skill.field\" to a string value")
        try:
            history = check_history(data.get("history", []))
        except BadInput as exc:
            raise CaseError(f"{where}: {exc}") from None
        if data.get("expect") is not None and not assignments:
            raise CaseError(f"{where}: 'expect' checks the value an edit sets; add 'set'")
        names = [s.split("@", 1)[0] for s in skills]
        for key in assignments:
            skill, dot, fname = key.partition(".")
            if not dot or not fname:
                raise CaseError(f"{where}: 'set' key {key!r} must look like skill.field")
            if skill not in names:
                raise CaseError(f"{where}: 'set' names skill {skill!r}, which is not in this case's skills ({', '.join(names)})")
        return cls(id=cid, skills=list(skills), user=user, system=data.get("system", ""), set=dict(assignments),
                   raw=data.get("raw", False), note=data.get("note", ""), history=list(history),
                   expect=data.get("expect", ""))


def parse_cases(lines: Iterable[str], source: str = "cases") -> list[Case]:
    """JSON Lines -> cases (blank lines skipped). Errors name `source:line`."""
    cases: list[Case] = []
    seen: dict[str, int] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{source}:{n}"
        try:
            data = json.loads(line)
        except ValueError as exc:
            raise CaseError(f"{where}: not valid JSON ({exc})") from None
        case = Case.from_dict(data, where)
        if case.id in seen:
            raise CaseError(f"{where}: duplicate case id {case.id!r} (first on line {seen[case.id]})")
        seen[case.id] = n
        cases.append(case)
    return cases


def load_cases(path: str | Path) -> list[Case]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise NotFound(f"cannot read eval cases {path}: {exc.strerror or exc}") from None
    return parse_cases(text.splitlines(), str(path))
