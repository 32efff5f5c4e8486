"""skillforge errors -> HTTP status and OpenAI's error shape: {"error": {message, type, param, code}}.

The server's own refusals (a missing API key, a full queue, an unknown served model) are
SkillforgeErrors too, so one table maps every error a client can see. Anything that is not a
SkillforgeError is a bug: the client gets a 500 with a fixed message and the log gets the traceback.
"""

from __future__ import annotations

from typing import Any

from skillforge.errors import (ArtifactMismatch, BadInput, BadReference, ContextTooLong, EditError, ManifestError,
                               NotFound, SkillforgeError)


class Unauthorized(SkillforgeError):
    """The request has no API key, or the wrong one."""


class ServerBusy(SkillforgeError):
    """The request queue is full, or the server is shutting down: retry later."""


class ModelNotServed(NotFound):
    """The request names a model this server does not serve."""


# (class, HTTP status, OpenAI error type, code); the first class the error is an instance of wins
_TABLE: list[tuple[type[SkillforgeError], int, str, str]] = [
    (Unauthorized, 401, "invalid_request_error", "invalid_api_key"),
    (ServerBusy, 503, "server_error", "server_busy"),
    (ModelNotServed, 404, "invalid_request_error", "model_not_found"),
    (NotFound, 404, "invalid_request_error", "not_found"),
    (ArtifactMismatch, 409, "invalid_request_error", "artifact_mismatch"),
    (ContextTooLong, 400, "invalid_request_error", "context_length_exceeded"),
    (EditError, 400, "invalid_request_error", "invalid_edit"),
    (BadReference, 400, "invalid_request_error", "invalid_value"),
    (ManifestError, 400, "invalid_request_error", "invalid_value"),
    (BadInput, 400, "invalid_request_error", "invalid_value"),
]
INTERNAL = "internal error while serving this request; the server log has the details"


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def classify(exc: BaseException, param: str | None = None) -> tuple[int, dict[str, Any]]:
    """(HTTP status, OpenAI error body) for `exc`; the message of a non-skillforge error never leaves."""
    if isinstance(exc, SkillforgeError):
        for cls, status, type_, code in _TABLE:
            if isinstance(exc, cls):
                return status, error_body(str(exc), type_, code, param or default_param(exc))
        return 500, error_body(str(exc), "server_error", type(exc).__name__)
    return 500, error_body(INTERNAL, "server_error", "internal_error")


def default_param(exc: SkillforgeError) -> str | None:
    """The request field an error raised while splicing is about, where the class says it."""
    if isinstance(exc, ModelNotServed):
        return "model"
    if isinstance(exc, (NotFound, ArtifactMismatch)):
        return "skills"
    if isinstance(exc, EditError):
        return "set"
    if isinstance(exc, ContextTooLong):
        return "messages"
    return None
