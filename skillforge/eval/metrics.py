"""Metrics that compare two next-token distributions (float64, on 1-D logit vectors), and the
aggregates the eval reports them with."""

from __future__ import annotations

import re
import statistics
from typing import Any

import torch


def logit_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two logit vectors."""
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    return float(torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-300))


def kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> float:
    """KL(softmax(p) || softmax(q)) in nats, computed in float64."""
    lp = torch.log_softmax(p_logits.detach().double().flatten(), dim=-1)
    lq = torch.log_softmax(q_logits.detach().double().flatten(), dim=-1)
    return max(0.0, float((lp.exp() * (lp - lq)).sum()))


def top1(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Do both vectors pick the same next token?"""
    return int(a.argmax()) == int(b.argmax())


def recovery(kl_mode: float, kl_stale: float) -> float:
    """1 - kl_mode / kl_stale: share of the stale splice's divergence that the edit mode removes."""
    if kl_stale == 0:
        return 1.0 if kl_mode == 0 else 0.0
    return 1.0 - kl_mode / kl_stale


def word_token_ids(tokenizer: Any, word: str) -> list[int]:
    """The single tokens a generation can start `word` with (any case, with or without a leading space)."""
    ids = set()
    for form in {word, word.lower(), word.capitalize(), word.upper()}:
        for v in (form, " " + form):
            t = tokenizer(v, add_special_tokens=False)["input_ids"]
            if len(t) == 1:
                ids.add(t[0])
    return sorted(ids)


def answer_logits(logits: torch.Tensor, a_ids: list[int], b_ids: list[int]) -> torch.Tensor:
    """Two answers' next-token log-probability mass (a's tokens, b's tokens) as a 2-way logit vector:
    softmax, `kl` and `top1` on it compare the split between the answers alone."""
    lp = torch.log_softmax(logits.detach().double().flatten(), dim=-1)
    return torch.stack([lp[a_ids].logsumexp(0), lp[b_ids].logsumexp(0)])


def first_word(text: str) -> str:
    """The first word of a generation, lowercased, punctuation stripped ("No." -> "no")."""
    for word in text.split():
        w = re.sub(r"[^\w]", "", word.lower())
        if w:
            return w
    return ""


def median(xs: list[float]) -> float | None:
    """Median rounded to 2 places (timings), None for no values."""
    return round(statistics.median(xs), 2) if xs else None


def mean(xs: list[float]) -> float | None:
    return statistics.fmean(xs) if xs else None


def ratio(rows: list[dict], num: str, den: str) -> float | None:
    """sum(num) / sum(den) over the rows (a pooled fraction, not a mean of fractions)."""
    d = sum(r[den] for r in rows)
    return sum(r[num] for r in rows) / d if d else None
