"""Turn pydantic validation errors into one message that names each field and its rule."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def format_errors(errors: Sequence[Any]) -> str:
    parts = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        msg = str(err.get("msg", "invalid"))
        msg = msg.removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            msg = "unknown field"
        elif err.get("type") == "missing":
            msg = "field required"
        field = ".".join(loc)
        # Our own validators already name the field ("options.port: ...").
        head = msg.split(":", 1)[0]
        names_field = ":" in msg and " " not in head
        parts.append(msg if not field or names_field else f"{field}: {msg}")
    return "; ".join(parts) or "invalid request"
