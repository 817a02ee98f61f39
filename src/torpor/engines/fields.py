"""Request fields per engine: what an engine reads under another name, and what it would
silently ignore. Declared by each engine as `request_fields`; applied by the proxy before
a body leaves for a worker (pure: a dict in, the same dict changed or a BadRequest out).

The point is honesty: `max_completion_tokens` (what current clients send) must cap the
answer on an engine that only reads `max_tokens`, and `n: 3` must not be billed as one
answer on an engine that returns one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torpor.errors import BadRequest

# Routes whose bodies are completion requests.
COMPLETION_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions"})


@dataclass(frozen=True)
class RequestFields:
    """How an engine reads the OpenAI completion request fields."""

    # (field the engine does not read, the field it reads for the same thing)
    renames: tuple[tuple[str, str], ...] = ()
    # (field, largest value the engine honours): larger values are refused.
    maxima: tuple[tuple[str, int], ...] = ()
    # `response_format: {"type": "json_schema", ...}` sent as llama.cpp's equivalent,
    # `{"type": "json_object", "schema": ...}` (a grammar built from the schema).
    json_schema_as_json_object: bool = False


NATIVE = RequestFields()


def request_fields_of(engine: object) -> RequestFields:
    """The engine's declared fields; engines that declare none take the OpenAI names."""
    fields = getattr(engine, "request_fields", None)
    return fields if isinstance(fields, RequestFields) else NATIVE


def normalise(payload: dict[str, Any], route: str, fields: RequestFields) -> bool:
    """Rewrite `payload` for the engine in place; True when anything changed."""
    if route not in COMPLETION_ROUTES or fields == NATIVE:
        return False
    for name, limit in fields.maxima:
        value = payload.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadRequest(f"'{name}' must be an integer")
        if value > limit:
            raise BadRequest(
                f"'{name}' = {value} is not supported by this deployment's engine "
                f"(at most {limit}); send {limit} and repeat the request instead",
            )
    changed = False
    for source, target in fields.renames:
        if source not in payload:
            continue
        value = payload.pop(source)
        if payload.get(target) is None:
            payload[target] = value
        changed = True
    if fields.json_schema_as_json_object:
        changed |= _json_schema_as_json_object(payload)
    return changed


def _json_schema_as_json_object(payload: dict[str, Any]) -> bool:
    fmt = payload.get("response_format")
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return False
    spec = fmt.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        raise BadRequest("'response_format.json_schema.schema' must be a JSON schema object")
    payload["response_format"] = {"type": "json_object", "schema": schema}
    return True
