"""Value-retrieval edit cases: after a field edit, does the answer carry the field's new value?

A decision question only shows whether the model acted on the new value; a user who asks for the
value itself ("How many days of annual leave do I get?") reads it in the answer, so an edit mode that
lets the stale value through is wrong there even when the next-token distribution is close. A case
with `expect` (the string the answer must contain, usually the `set` value) gets, for each arm (the
oracle, the edit mode, the stale splice), whether its greedy answer carries the expected value and
whether it carries the compiled (stale) value. Matching is case-insensitive on whole tokens, so "15"
is not found in "150" or "1.5" and "0.25" is not found in "10.25".
"""

from __future__ import annotations

import re

from skillforge.eval.metrics import mean

ARMS = ("oracle", "mode", "stale")


def mentions(text: str, value: str) -> bool:
    """Does `text` contain `value` as a whole token (not inside a longer word or number)?"""
    if not value:
        return False
    return re.search(r"(?<![\w.])" + re.escape(value.lower()) + r"(?![\w]|\.\d)", text.lower()) is not None


def value_check(expect: str, stale: list[str], texts: dict[str, str]) -> dict:
    """Per arm: does its answer carry the expected value (`ARM_new`) and any stale value (`ARM_stale`)?
    A stale value that the expected one contains (or the reverse) is not checked: it cannot be told apart."""
    stale = [s for s in stale if s and s.lower() not in expect.lower() and expect.lower() not in s.lower()]
    row: dict = {"expect": expect, "stale_values": stale}
    for arm in ARMS:
        row[f"{arm}_new"] = mentions(texts[arm], expect)
        row[f"{arm}_stale"] = any(mentions(texts[arm], s) for s in stale)
    return row


def value_summary(rows: list[dict]) -> dict:
    """Over the edit rows that have a value check: the share of answers that carry the new value and the
    share that carry the stale one, per arm (None without value cases)."""
    checks = [r["value"] for r in rows if r.get("value")]
    out: dict = {"value_cases": len(checks)}
    for arm in ARMS:
        out[f"value_{arm}_new"] = mean([float(c[f"{arm}_new"]) for c in checks])
        out[f"value_{arm}_stale"] = mean([float(c[f"{arm}_stale"]) for c in checks])
    return out
