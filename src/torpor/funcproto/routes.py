"""How functions are named and reached: `POST /functions/{app}/{name}[/{method}]` on the
gateway goes to the deployment `{app}-{name}` and to `/call[/{method}]` on its workers; and
how a worker learns what to serve (its spec in `FUNCTION_SERVER_SPEC`).

Pure and standard library only: the gateway, the SDK, the function engine and the function
server in the worker (in the image's environment) all use it.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

PREFIX = "/functions/"
CALL_PATH = "/call"
# What a function server serves to callers (the engine's `routes`).
CALL_ROUTES = frozenset({CALL_PATH, CALL_PATH + "/*"})
HEALTH_PATH = "/health"
# The function server's spec in a worker's environment (TORPOR_* never reaches a worker);
# its presence tells code that it runs in a worker.
SPEC_ENV = "FUNCTION_SERVER_SPEC"
# The most source one function deployment carries (it travels in the worker's environment).
MAX_SOURCE_BYTES = 64 * 1024

_SLUG_RE = re.compile(r"[^a-z0-9-]+")


def slug(name: str) -> str:
    """A Python or app name as a piece of a deployment name: `Predict_Text` → `predict-text`."""
    return _SLUG_RE.sub("-", name.lower().replace("_", "-")).strip("-")


def deployment_name(app: str, name: str) -> str:
    """The deployment that serves function (or class) `name` of app `app`."""
    return f"{slug(app)}-{slug(name)}"


def function_path(app: str, name: str, method: str | None = None) -> str:
    """The gateway path that calls a function, or a method of a class."""
    path = f"{PREFIX}{slug(app)}/{slug(name)}"
    return f"{path}/{method}" if method else path


def upstream_path(method: str | None) -> str:
    return f"{CALL_PATH}/{method}" if method else CALL_PATH


def split_function_path(path: str) -> tuple[str, str] | None:
    """`/functions/{app}/{name}[/{method}]` → (deployment, worker path); None when `path`
    is not of that shape (the caller answers 404)."""
    if not path.startswith(PREFIX):
        return None
    parts = path[len(PREFIX) :].split("/")
    if len(parts) not in (2, 3) or not all(parts):
        return None
    app, name = parts[0], parts[1]
    method = parts[2] if len(parts) == 3 else None
    if method is not None and not method.isidentifier():
        return None
    return deployment_name(app, name), upstream_path(method)


def encode_spec(spec: dict[str, Any]) -> str:
    """The function server's spec as the value of `SPEC_ENV` (base64 JSON)."""
    return base64.b64encode(json.dumps(spec).encode()).decode()


def decode_spec(value: str) -> dict[str, Any]:
    spec = json.loads(base64.b64decode(value))
    if not isinstance(spec, dict):
        raise ValueError(f"{SPEC_ENV} must hold a JSON object")
    return spec
