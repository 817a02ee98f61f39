"""What a caller gets when the engine answers with an error: the engine's reason, in the
OpenAI envelope, with a status that says whether a retry can help.

Pure functions of (status, body, route): no I/O. The rules:

- an engine 4xx in the OpenAI envelope is relayed verbatim (the proxy does that);
- any other 4xx (FastAPI's `{"detail": ...}`, plain text `404: Not Found`) keeps its
  status and gets the envelope, with the engine's words as the message;
- a 5xx that is really a request-validation error (llama-cpp-python answers 500 to a body
  its pydantic models refuse) becomes a 400 naming the fields and the engine's reasons;
- any other 5xx stays 502 and carries the engine's message, trimmed, without paths or
  tracebacks; "please retry" is said only where a retry can help (503, 429-like answers).
"""

from __future__ import annotations

import ast
import re
from typing import Any

import orjson

from torpor.errors import BadRequest, EngineFailed, EngineRejected, TorporError

MAX_MESSAGE_CHARS = 400
_RETRYABLE = frozenset({429, 503})
# A Python traceback, or the "  File "...", line N" lines pydantic-based servers append.
_TRACEBACK = re.compile(r"\n\s*(?:Traceback \(most recent call last\)|File \")", re.DOTALL)
# An absolute path of two or more segments (no host paths reach callers).
_PATH = re.compile(r"(?<![\w.:/])/(?:[\w.@+-]+/)+[\w.@+-]*")
# Pydantic's summary line: "1 validation error" / "7 validation errors for X".
_VALIDATION = re.compile(r"^\s*(\d+) validation errors?\b", re.IGNORECASE)
_VALIDATION_LINE = re.compile(r"^\s*(\{.*\})\s*$")


def engine_error(status: int, body: bytes, route: str) -> TorporError | None:
    """The error for an engine answer of `status`; None when `body` goes out verbatim."""
    if status < 400:
        return None
    envelope = _envelope(body)
    if status < 500:
        if envelope is not None:
            return None  # already what an OpenAI client expects
        reason = _reason(body)
        if status in (404, 405):
            what = "is not served" if status == 404 else "does not take this method"
            return EngineRejected(
                status, f"Route {route} {what} by this deployment's engine ({reason})"
            )
        return EngineRejected(status, reason)
    message = envelope if envelope is not None else _reason(body)
    validation = validation_message(message)
    if validation is not None:
        return BadRequest(f"The engine refused the request: {validation}")
    clean = clean_message(message)
    if status in _RETRYABLE:
        return EngineFailed(f"Worker is overloaded ({clean}), please retry")
    return EngineFailed(f"Worker error: {clean}" if clean else "Worker error")


def validation_message(message: str) -> str | None:
    """'field: reason; ...' for a pydantic validation summary, else None."""
    head = _VALIDATION.match(message)
    if head is None:
        return None
    reasons: list[str] = []
    for line in message.splitlines()[1:]:
        m = _VALIDATION_LINE.match(line)
        if m is None:
            continue
        try:
            item = ast.literal_eval(m.group(1))
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            continue
        if not isinstance(item, dict):
            continue
        loc = [str(p) for p in item.get("loc", ()) if p != "body"]
        # Union members (model class names) say which variant was tried; keep the field path.
        loc = [p for p in loc if not p[:1].isupper()]
        reason = f"{'.'.join(loc)}: {item.get('msg', '')}" if loc else str(item.get("msg", ""))
        if reason not in reasons:
            reasons.append(reason)
    if not reasons:
        return clean_message(message)
    shown = "; ".join(reasons[:4])
    more = len(reasons) - 4
    return shown + (f" (and {more} more)" if more > 0 else "")


def clean_message(message: str) -> str:
    """The engine's message without tracebacks or host paths, on one line, bounded."""
    m = _TRACEBACK.search(message)
    if m is not None:
        message = message[: m.start()]
    message = _PATH.sub("<path>", message)
    message = " ".join(message.split())
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 1].rstrip() + "…"
    return message


def _envelope(body: bytes) -> str | None:
    """The message of an OpenAI error envelope, or None when the body is not one."""
    obj = _json(body)
    if isinstance(obj, dict):
        err = obj.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
    return None


def _reason(body: bytes) -> str:
    """Best words for a non-envelope error body: FastAPI's detail, a string, or the text."""
    obj = _json(body)
    if isinstance(obj, dict):
        for name in ("detail", "message", "error"):
            value = obj.get(name)
            if isinstance(value, str) and value:
                return clean_message(value)
            if isinstance(value, list) and value:
                return clean_message("; ".join(_detail_item(v) for v in value[:4]))
    text = body.decode("utf-8", "replace").strip()
    return clean_message(text) or "no reason given"


def _detail_item(item: Any) -> str:
    if isinstance(item, dict):
        loc = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
        return f"{loc}: {item.get('msg', '')}" if loc else str(item.get("msg", ""))
    return str(item)


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
