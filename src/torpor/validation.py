"""Validation shared by the API's request models: the bounds every number has, a check for
free-form JSON values, and one message that names each field and its rule."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import AfterValidator

# -- bounds ----------------------------------------------------------------------------------
# Integers must fit the column they land in: SQLite integers are 64-bit signed, PostgreSQL
# INTEGER 32-bit. Spec fields are stored as JSON, where 2**53 is the largest integer every
# client (the console's JavaScript included) reads exactly. Floats are always finite.

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
JSON_INT_MAX = 2**53

MAX_WORKERS = 1000  # min_workers and max_workers
MAX_CONCURRENCY = 10_000  # request slots per worker
MAX_QUEUE = 100_000  # waiting requests per deployment
MAX_GPUS = 64  # devices per worker
MAX_DURATION_S = 30 * 24 * 3600.0  # idle_timeout_s, wait_time_s: 30 days
MAX_STORAGE_GB = 1e6
MAX_PRICE_USD = 1e6  # any per-unit rate
MAX_BUDGET_USD = 1e12  # a monthly cap in USD
# A monthly token cap: a spec's is JSON; a key's is an INTEGER column (32-bit in PostgreSQL).
MAX_SPEC_TOKENS = JSON_INT_MAX
MAX_KEY_TOKENS = INT32_MAX
# Free-form JSON objects (engine options, playground settings, async inputs).
MAX_JSON_DEPTH = 32


def check_json_value(value: Any) -> Any:
    """A free-form JSON value as stored and echoed back: finite numbers only, integers in
    the 64-bit range, nested at most MAX_JSON_DEPTH deep. Raises ValueError naming where."""
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, where, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels{_at(where)}")
        if isinstance(item, bool) or item is None or isinstance(item, str):
            continue
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"numbers must be finite (no NaN or Infinity){_at(where)}")
        if isinstance(item, int) and not -INT64_MAX - 1 <= item <= INT64_MAX:
            raise ValueError(f"integers must fit in 64 bits{_at(where)}")
        if isinstance(item, dict):
            stack.extend(
                (v, f"{where}.{k}" if where else str(k), depth + 1) for k, v in item.items()
            )
        elif isinstance(item, list | tuple):
            stack.extend((v, f"{where}[{i}]", depth + 1) for i, v in enumerate(item))
    return value


def _at(where: str) -> str:
    return f" (at {where})" if where else ""


# A JSON object field whose values are checked by check_json_value.
JsonObject = Annotated[dict[str, Any], AfterValidator(check_json_value)]


# -- messages --------------------------------------------------------------------------------


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
