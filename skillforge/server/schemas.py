"""The wire format: OpenAI's chat completion request and response, plus skillforge's extension fields.

A request is OpenAI's schema; the `openai` client sends the extensions through `extra_body`:
  skills     ["refund-desk", "pirate-voice@0.3.0", "json-contract@sha256:..."], spliced in order
             after the system message's text (the splice contract's `system` role)
  set        {"refund-desk.account_role": "guest"}: field edits
  edit_mode  how edits apply (runtime/edits.py), default field+erratum
  repair     auto[:<ratio>] | seam | none | blend:<ratio> (runtime/repair.py)
  ignore_eos keep decoding past the end-of-sequence token up to max_tokens (benchmarks, as vLLM)
Fields of OpenAI's schema this server cannot honour (tools, logprobs, n > 1, penalties) are refused
with a 400 rather than ignored, so no client mistakes another behaviour for the one it asked for.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from skillforge.errors import BadInput
from skillforge.refs import SkillRef, parse_field_assignment


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    """POST /v1/chat/completions. Defaults are OpenAI's (temperature 1: sampling unless asked otherwise)."""

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = None
    logprobs: bool | None = None
    tools: list[Any] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    # skillforge's extensions
    skills: list[str] = Field(default_factory=list)
    set: dict[str, str] = Field(default_factory=dict)
    edit_mode: str = "field+erratum"
    repair: str | None = None
    ignore_eos: bool = False

    def unsupported(self) -> tuple[str, str] | None:
        """(param, message) for the first field asking for something this server does not do."""
        if self.n not in (None, 1):
            return "n", "only n=1 is supported: send one request per completion"
        if self.logprobs:
            return "logprobs", "logprobs are not supported by this server"
        if self.tools:
            return "tools", "tool calls are not supported by this server"
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                return name, f"{name} is not supported by this server (send 0 or leave it out)"
        return None

    @property
    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


@dataclass
class Turns:
    """A request's messages in the splice contract's roles."""

    system: str
    history: list[dict[str, str]]  # earlier user/assistant turns, between the skills and the last user turn
    user: str

    def messages(self) -> list[dict[str, str]]:
        """The messages as a chat template takes them (system first, only when there is one)."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return [*head, *self.history, {"role": "user", "content": self.user}]


def split_turns(messages: list[Message]) -> Turns:
    """System text (one system or developer message, first), earlier turns, and the last user turn."""
    system = messages[0].text() if messages[0].role in ("system", "developer") else ""
    body = messages[1:] if messages[0].role in ("system", "developer") else messages
    if not body or body[-1].role != "user":
        raise BadInput("the last message must be the user's: this server answers the latest user turn")
    for m in body:
        if m.role in ("system", "developer"):
            raise BadInput("a system message may only come first, before every user and assistant turn")
    return Turns(system, [{"role": m.role, "content": m.text()} for m in body[:-1]], body[-1].text())


def check_skills(req: ChatRequest) -> None:
    """Every reference parses (the one parser, refs.py); whether it exists is the splice's business."""
    for ref in req.skills:
        SkillRef.parse(ref)


def check_set(req: ChatRequest) -> None:
    """Every edit is `skill.field`: value, as `--set skill.field=value` on the command line."""
    for key, value in req.set.items():
        parse_field_assignment(f"{key}={value}")
    if req.set and not req.skills:
        raise BadInput("`set` edits fields of skills: name the skills in `skills`")


def new_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int, cached: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens, "prompt_tokens_details": {"cached_tokens": cached}}


def completion(cid: str, model: str, text: str, finish_reason: str, use: dict[str, Any],
               extension: dict[str, Any]) -> dict[str, Any]:
    """A chat.completion object; `skillforge` says which artifacts were used and what was computed."""
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": finish_reason}],
            "usage": use, "skillforge": extension}


def chunk(cid: str, model: str, created: int, delta: dict[str, Any], finish_reason: str | None = None,
          with_usage: bool = False, **extra: Any) -> dict[str, Any]:
    """A chat.completion.chunk; with stream_options.include_usage every chunk carries `usage: null`
    but the last, as OpenAI's do."""
    out = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
           "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}], **extra}
    if with_usage:
        out["usage"] = None
    return out


def usage_chunk(cid: str, model: str, created: int, use: dict[str, Any]) -> dict[str, Any]:
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [], "usage": use}
