"""The prompt contract, torch-free: how a context is laid out, what a skill is compiled behind, and
where each skill's tokens land in the real prompt.

Layout: the prompt is exactly what a plain transformers user gets from `apply_chat_template` on the
messages (system = system text, then each skill's text, then any errata, joined by a blank line;
then the earlier turns of a multi-turn history, as they are; then user = the user text), or for a
`raw` prompt (no template) those texts, the history's texts and the user text joined by a blank line
after the tokenizer's prefix. Everything after the skills and errata is computed, never reused. Pieces tokenized separately do not give the same tokens (the
demo model tokenizes `"\\n\\nYou"` differently in context), so the whole rendered prompt is tokenized
once, each skill's character span is located, and the skill's artifact tokens are aligned with the
context tokens inside that span: matched tokens are reused from the artifact, everything else is
computed.

Anchors: a skill is compiled behind the tokens the template puts before the system content
(`<|im_start|>system\\n` for the demo model), or the tokenizer's own prefix (BOS) without a template,
or (`system_anchor`) every token a context with a deployment's fixed system text has before the skill.

compile.py and runtime/ both import this module and neither imports the other; the eval checks the
contract against transformers' own tokenization without using it.
"""

from __future__ import annotations

from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Any

from skillforge.errors import BadInput, BadReference

ANCHORS = ("template", "none")
_SENTINEL = "\u2063SKILLFORGE\u2063"


@dataclass(frozen=True)
class Block:
    """`length` artifact tokens from `art_start` reused at context positions from `ctx_start`."""

    art_start: int
    ctx_start: int
    length: int


@dataclass
class Prompt:
    """The tokenized prompt and the character span of each skill (and erratum) in its text."""

    text: str
    ids: list[int]
    offsets: list[tuple[int, int]]
    skill_spans: list[tuple[int, int]]
    errata_spans: list[tuple[int, int]]

    def tokens_within(self, start: int, end: int) -> list[int]:
        """Positions of tokens whose characters lie inside [start, end)."""
        return [i for i, (a, b) in enumerate(self.offsets) if a >= start and b <= end and b > a]

    def ids_before(self, start: int) -> list[int]:
        """Ids of the tokens before character `start` (what a skill there follows): every token up to
        the first that ends after it. A special token the tokenizer adds without characters (a raw
        prompt's BOS, offsets (0, 0)) counts where it stands: it is part of what the skill follows."""
        end = next((i for i, (_, b) in enumerate(self.offsets) if b > start), len(self.ids))
        return self.ids[:end]

    def tokens_overlapping(self, start: int, end: int) -> list[int]:
        """Positions of tokens that share at least one character with [start, end)."""
        return [i for i, (a, b) in enumerate(self.offsets) if a < end and b > start]


def system_content(system: str, texts: list[str]) -> str:
    """The system message: the system text, then each skill (and erratum) text, by blank lines."""
    return "\n\n".join([t for t in [system, *texts] if t])


HISTORY_ROLES = ("user", "assistant")


def check_history(history: list[dict[str, str]]) -> list[dict[str, str]]:
    """Earlier turns of a conversation: {"role": "user" | "assistant", "content": text} each (BadInput otherwise)."""
    if not isinstance(history, list):
        raise BadInput("history must be a list of {'role', 'content'} turns")
    for n, turn in enumerate(history):
        if (not isinstance(turn, dict) or set(turn) != {"role", "content"} or turn["role"] not in HISTORY_ROLES
                or not isinstance(turn["content"], str)):
            raise BadInput(f"history turn {n} must be {{'role': 'user' or 'assistant', 'content': text}}, got {turn!r:.120}")
    return history


def build_prompt(tokenizer: Any, system: str, skill_texts: list[str], user: str, raw: bool = False,
                 errata: list[str] | None = None, history: list[dict[str, str]] | None = None) -> Prompt:
    """Render and tokenize the prompt; locate every skill's text in it. Errata follow the skills; the
    `history` turns (earlier user and assistant messages) follow the system message."""
    content = system_content(system, [*skill_texts, *(errata or [])])
    turns = check_history(history or [])
    if raw:
        text = "\n\n".join(t for t in [content, *(h["content"] for h in turns), user] if t)
        enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
        base = 0
    else:
        if not has_chat_template(tokenizer):
            raise BadInput("this model's tokenizer has no chat template (a base model): use a raw prompt "
                           "(--raw, Context(raw=True)), which joins the texts by blank lines after the tokenizer's prefix")
        messages = ([{"role": "system", "content": content}] if content else []) + turns + [{"role": "user", "content": user}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        base = text.find(content) if content else 0
    spans = []
    cursor = base + (len(system) + 2 if system else 0)
    for t in [*skill_texts, *(errata or [])]:
        spans.append((cursor, cursor + len(t)))
        cursor += len(t) + 2
    n = len(skill_texts)
    return Prompt(text, list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]], spans[:n], spans[n:])


def align(artifact_ids: list[int], context_ids: list[int]) -> list[Block]:
    """Matching runs between the artifact's tokens and the context tokens of the skill's span.

    The common case is identical sequences; otherwise boundaries differ (merged separators) or a field
    value changed, so the common prefix and suffix are taken directly and only the middle is diffed.
    """
    if artifact_ids == context_ids:
        return [Block(0, 0, len(artifact_ids))] if artifact_ids else []
    n_a, n_c = len(artifact_ids), len(context_ids)
    p = 0
    while p < min(n_a, n_c) and artifact_ids[p] == context_ids[p]:
        p += 1
    s = 0
    while s < min(n_a, n_c) - p and artifact_ids[n_a - 1 - s] == context_ids[n_c - 1 - s]:
        s += 1
    blocks = [Block(0, 0, p)] if p else []
    mid_a, mid_c = artifact_ids[p : n_a - s], context_ids[p : n_c - s]
    if mid_a and mid_c:
        for m in SequenceMatcher(None, mid_a, mid_c, autojunk=False).get_matching_blocks():
            if m.size:
                blocks.append(Block(p + m.a, p + m.b, m.size))
    if s:
        blocks.append(Block(n_a - s, n_c - s, s))
    return blocks


def has_chat_template(tokenizer: Any) -> bool:
    """Whether the tokenizer can render chat messages: base models (gemma-3-270m) ship without a template,
    so their prompts are raw text."""
    return bool(getattr(tokenizer, "chat_template", None))


def raw_prefix(tokenizer: Any) -> list[int]:
    """Token ids a raw prompt starts with: the tokenizer's own prefix (BOS for gemma, none for SmolLM2)."""
    return list(tokenizer("", add_special_tokens=True)["input_ids"])


def template_anchor(tokenizer: Any) -> list[int]:
    """Token ids a chat prompt has before the system message's content (the raw prefix without a template)."""
    if has_chat_template(tokenizer):
        text = tokenizer.apply_chat_template([{"role": "system", "content": _SENTINEL}], tokenize=False)
        prefix = text[: text.index(_SENTINEL)]
        return tokenizer(prefix, add_special_tokens=False)["input_ids"]
    return raw_prefix(tokenizer)


def check_anchor(anchor: str) -> str:
    """An anchor name, or BadInput naming the valid ones (before any model is loaded)."""
    if anchor not in ANCHORS:
        raise BadInput(f"unknown anchor {anchor!r}; choose one of {', '.join(ANCHORS)}")
    return anchor


def resolve_anchor(tokenizer: Any, anchor: str | list[int]) -> list[int]:
    """`template` (default), `none` (what a raw prompt starts with: the tokenizer's prefix, so a skill
    compiled so sits exactly where a raw prompt puts it), or explicit token ids (to reproduce an artifact's anchor)."""
    if isinstance(anchor, list):
        return anchor
    return template_anchor(tokenizer) if check_anchor(anchor) == "template" else raw_prefix(tokenizer)


def system_anchor(tokenizer: Any, system: str, text: str, raw: bool = False) -> list[int]:
    """The tokens a chat prompt (or a `raw` one) with system text `system` has before a skill `text`
    that follows it (the layout's rendering, tokenized as a whole: the separator's tokens depend on the
    skill's first characters)."""
    if not raw and not getattr(tokenizer, "chat_template", None):
        raise BadReference("compiling behind a system text needs a chat template; this tokenizer has none")
    prompt = build_prompt(tokenizer, system, [text], "", raw=raw)
    return prompt.ids_before(prompt.skill_spans[0][0])


def tokenize_with_offsets(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """A skill's text on its own (no special tokens) -> token ids and each token's character span."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def char_spans_to_tokens(offsets: list[tuple[int, int]], spans: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    """Char spans -> token spans [start, end) of the tokens that overlap them."""
    out = []
    for name, cs, ce in spans:
        idx = [i for i, (a, b) in enumerate(offsets) if a < ce and b > cs]
        if idx:
            out.append((name, idx[0], idx[-1] + 1))
    return out
