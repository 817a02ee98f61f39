"""The JSON shape of an async request, for the API and for webhooks."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from torpor.asyncreq.tables import AsyncRequestRow
from torpor.store.db import as_utc


def _ts(value: datetime | None) -> str | None:
    value = as_utc(value)
    return value.isoformat() if value is not None else None


def _decoded(data: bytes | None, content_type: str | None) -> Any:
    if data is None:
        return None
    if content_type is None or "json" in content_type:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return data.decode("utf-8", "replace")


def accepted_view(row: AsyncRequestRow, poll_url: str) -> dict[str, Any]:
    """The 202 answer to a submit."""
    return {
        "id": row.id,
        "object": "async_request",
        "status": row.status,
        "deployment": row.deployment,
        "created_at": _ts(row.created_at),
        "url": poll_url,
    }


def request_view(
    row: AsyncRequestRow, *, result: bool = True, webhook: bool = True, request: bool = False
) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": row.id,
        "object": "async_request",
        "deployment": row.deployment,
        "method": row.method,
        "path": row.path,
        "status": row.status,
        "created_at": _ts(row.created_at),
        "started_at": _ts(row.started_at),
        "finished_at": _ts(row.finished_at),
        "attempts": row.attempts,
        "status_code": row.status_code,
    }
    if request:  # the body as sent to the engine (GET of one request; not in webhooks)
        view["request"] = _decoded(row.body, None)
    if result:
        view["response"] = _decoded(row.response, row.response_type)
    view["error"] = row.error
    if webhook:
        view["webhook"] = (
            {
                "url": row.webhook_url,
                "state": row.webhook_state,
                "attempts": row.webhook_attempts,
                "last_error": row.webhook_error,
            }
            if row.webhook_url
            else None
        )
    return view
