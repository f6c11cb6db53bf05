"""What a failed model call means, whatever the provider: can it heal, and how long to wait before trying again.

The call layer (`agents.calls`) asks `classify(exc)` and never looks at a provider's exception types itself.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["CallError", "Failure", "ModelUnavailable", "classify"]

Kind = Literal["auth", "not_found", "context", "bad_request", "rate", "server", "transport", "timeout", "answer", "other"]

_LASTING: frozenset[str] = frozenset({"auth", "not_found", "context", "bad_request", "answer"})
"""Errors a retry cannot heal: a refused key, an unknown model, a prompt too long, a malformed request."""


@dataclass(frozen=True)
class Failure:
    """A classified call failure: its kind, whether a retry can help, and the server's requested wait."""

    kind: Kind
    message: str
    status: int | None = None
    retry_after: float | None = None

    @property
    def retryable(self) -> bool:
        return self.kind not in _LASTING

    @property
    def unreachable(self) -> bool:
        """The model could not be reached at all (as opposed to answering with an error)."""
        return self.kind in ("transport", "timeout")


class CallError(RuntimeError):
    """A call that failed for good: its classification, the tokens spent and the last answer, if any."""

    def __init__(self, failure: Failure, usage: Any = None, raw_text: str | None = None) -> None:
        super().__init__(failure.message)
        self.failure = failure
        self.usage = usage
        self.raw_text = raw_text


class ModelUnavailable(RuntimeError):
    """A model that cannot be reached: an error of the run, not of a document. The run stops and can be resumed."""

    def __init__(self, spec_name: str, cause: str) -> None:
        super().__init__(f"model {spec_name!r} cannot be reached: {cause}")
        self.spec_name = spec_name
        self.cause = cause


def _retry_after(headers: Any) -> float | None:
    """Seconds from a Retry-After (or retry-after-ms) header: a number or an HTTP date."""
    if headers is None:
        return None
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return max(0.0, float(ms) / 1000.0)
        value = headers.get("retry-after")
    except Exception:
        return None
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed is not None else None


def status_kind(status: int, text: str) -> Kind:
    lowered = text.lower()
    if status in (401, 403):
        return "auth"
    if status == 404 or "not found" in lowered and "model" in lowered:
        return "not_found"
    if status in (400, 413) and ("context" in lowered and ("length" in lowered or "window" in lowered)
                                 or "too long" in lowered or "maximum context" in lowered):
        return "context"
    if status == 429:
        return "rate"
    if status >= 500 or status in (408, 409):
        return "server"
    return "bad_request"


def classify(exc: BaseException) -> Failure:
    """The kind of a failed call: openai and ollama client errors, httpx transport errors, timeouts."""
    name = type(exc).__name__
    text = f"{name}: {exc}"[:500]
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)) or name in ("APITimeoutError", "ReadTimeout",
                                                                         "ConnectTimeout", "WriteTimeout", "PoolTimeout"):
        return Failure("timeout", text)
    status = getattr(exc, "status_code", None)
    response = getattr(exc, "response", None)
    if status is None and response is not None:
        status = getattr(response, "status_code", None)
    if isinstance(status, int) and status < 400:  # an answer came, but the client could not read it
        return Failure("server", text, status)
    if isinstance(status, int):
        body = str(getattr(exc, "body", "") or "") + " " + str(getattr(exc, "error", "") or "") + " " + str(exc)
        headers = getattr(response, "headers", None)
        return Failure(status_kind(status, body), text, status, _retry_after(headers))
    if name in ("APIConnectionError", "ConnectError", "RemoteProtocolError", "ReadError", "WriteError",
                "ConnectionError", "ConnectionRefusedError", "ConnectionResetError", "IncompleteRead",
                "ServerDisconnectedError", "NetworkError", "ProtocolError") or isinstance(exc, ConnectionError):
        return Failure("transport", text)
    if name in ("LengthFinishReasonError", "ContentFilterFinishReasonError"):
        return Failure("answer", text)
    if name in ("JSONDecodeError", "APIResponseValidationError", "ValidationError"):
        return Failure("server", text)  # the server's response itself was malformed (not the model's answer)
    cause = exc.__cause__ or exc.__context__
    if cause is not None and cause is not exc:
        inner = classify(cause)
        if inner.kind != "other":
            return Failure(inner.kind, text, inner.status, inner.retry_after)
    return Failure("other", text)
