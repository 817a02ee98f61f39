"""Request paths: one check before routing, and which worker routes a key may reach.

Paths are refused, never resolved: a dot segment, an encoded slash or dot, a backslash or
an empty segment has no meaning on any route torpor serves, and resolving it is how a
`/v1/../stats` reaches an engine route that was never meant to be public (the HTTP client
that forwards to the worker would normalise it away after the route was checked).
"""

from __future__ import annotations

import re

from torpor.auth import ApiKey
from torpor.engines.base import route_allowed
from torpor.errors import BadRequest, Forbidden

# Percent-encoded dot, slash, backslash and NUL, in either case.
_ENCODED = re.compile(rb"%(2e|2f|5c|00)", re.IGNORECASE)


def check_path(path: str, raw_path: bytes | None) -> None:
    """Raise BadRequest when the path (decoded, and raw as it came) is not in normal form."""
    if raw_path is not None and _ENCODED.search(raw_path):
        raise BadRequest("Request path contains an encoded '.', '/', '\\' or NUL; not allowed")
    if "\\" in path or "\x00" in path:
        raise BadRequest("Request path contains a backslash or NUL; not allowed")
    if not path.startswith("/"):
        raise BadRequest("Request path must start with '/'")
    segments = path.split("/")[1:]
    # A trailing slash leaves one empty last segment; any other empty one is a '//'.
    for segment in segments[:-1]:
        if segment == "":
            raise BadRequest("Request path contains '//'; not allowed")
    if any(segment in (".", "..") for segment in segments):
        raise BadRequest("Request path contains a '.' or '..' segment; not allowed")


def check_route(
    key: ApiKey,
    deployment: str,
    route: str,
    routes: frozenset[str],
    control_routes: frozenset[str],
) -> None:
    """Who may reach `route` (no query string) on a worker of `deployment`.

    Engine control routes (sleep, wake, pull, ...) are torpor's alone; the inference
    routes the engine declares are open to every key allowed on the deployment; anything
    else on a worker is for admin keys.
    """
    if route_allowed(route, control_routes):
        raise Forbidden(f"Route {route} is an engine control route; torpor calls it itself")
    if key.admin or route_allowed(route, routes):
        return
    raise Forbidden(
        f"Route {route} of deployment {deployment!r} needs an admin key; "
        f"inference keys reach {', '.join(sorted(routes))}"
    )
