"""Serialization of function calls: JSON (the default, any HTTP client can call) or, opted in
per function with `serialization="pickle"`, cloudpickle for arguments and results of any
Python type between Python callers and workers.

Whoever may call a pickle function can run code in its worker (unpickling runs code), so it
is opt-in per function and refused by the others: a pickled call carries its payload as
`{"pickle": "<base64>"}`, which a JSON function answers with 400. The payload stays inside a
JSON body, so the gateway, async requests and metering treat both the same way.

Standard library only at import time (the function server imports this module in the
image's environment); cloudpickle is imported where pickles are made or read.
"""

from __future__ import annotations

import base64
import importlib.metadata
import io
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Serialization = Literal["json", "pickle"]
SERIALIZATIONS: tuple[Serialization, ...] = ("json", "pickle")
PICKLE_KEY = "pickle"
PACKAGE = "cloudpickle"


def requirement() -> str:
    """The cloudpickle a pickle function's image installs: the caller's version when the
    caller has one, so both ends read each other's pickles."""
    try:
        return f"{PACKAGE}=={importlib.metadata.version(PACKAGE)}"
    except importlib.metadata.PackageNotFoundError:
        return PACKAGE


def installs_cloudpickle(packages: Sequence[str]) -> bool:
    """Whether a pip package list already names cloudpickle (pinned or not)."""
    return any(
        re.split(r"[\s<>=!~;\[]", p.strip(), maxsplit=1)[0].lower() == PACKAGE for p in packages
    )


def _dumps(value: Any) -> str:
    import cloudpickle  # type: ignore[import-untyped]

    return base64.b64encode(cloudpickle.dumps(value)).decode()


class _Unpickler(pickle.Unpickler):
    """Reads classes of module `a` from module `b` for each alias a → b: the worker imports
    the app file under its file name, while the caller may know it as `__main__`."""

    def __init__(self, data: bytes, aliases: Mapping[str, str]):
        super().__init__(io.BytesIO(data))
        self.aliases = aliases

    def find_class(self, module: str, name: str) -> Any:
        return super().find_class(self.aliases.get(module, module), name)


def _loads(text: Any, aliases: Mapping[str, str] | None = None) -> Any:
    if not isinstance(text, str):
        raise ValueError(f'"{PICKLE_KEY}" must hold a base64 string')
    try:
        data = base64.b64decode(text, validate=True)
    except ValueError:
        raise ValueError(f'"{PICKLE_KEY}" is not valid base64') from None
    import cloudpickle  # noqa: F401  (pickles of by-value functions and classes need it)

    return _Unpickler(data, aliases or {}).load()


def pickle_call(args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The body of a pickled call."""
    return {PICKLE_KEY: _dumps((tuple(args), dict(kwargs)))}


def unpickle_call(payload: Mapping[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """The arguments of a pickled call (in the worker); ValueError when malformed."""
    value = _loads(payload[PICKLE_KEY])
    if not (isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], dict)):
        raise ValueError("a pickled call must hold (args, kwargs)")
    return list(value[0]), value[1]


def pickle_result(value: Any) -> dict[str, Any]:
    return {PICKLE_KEY: _dumps(value)}


@dataclass(frozen=True)
class Codec:
    """How one function's calls are written and its results read on the caller's side."""

    serialization: Serialization = "json"
    # Module aliases for reading results (see _Unpickler).
    aliases: Mapping[str, str] = field(default_factory=dict)

    def body(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        if self.serialization == "pickle":
            return pickle_call(args, kwargs)
        return {"args": list(args), "kwargs": dict(kwargs)}

    def result(self, data: Any) -> Any:
        if not isinstance(data, dict):
            return None
        if PICKLE_KEY in data and "result" not in data:
            if self.serialization != "pickle":
                # Unpickling runs code: a JSON caller never reads a worker's pickle.
                raise ValueError("a pickled answer to a JSON call: not read")
            return _loads(data[PICKLE_KEY], self.aliases)
        return data.get("result")


JSON_CODEC = Codec()
