"""torpor: self-hosted serverless inference.

`torpor.Client` / `torpor.AsyncClient` (the typed client) and `torpor.App`, `torpor.Image`,
`torpor.enter`, `torpor.method` (functions) are imported on first use, so `import torpor`
stays cheap for the CLI and inside function workers (which have only the standard library
and the user's packages).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from torpor.functions import App, Image, enter, method
    from torpor.sdk import AsyncClient, Client

_LAZY = {
    "Client": "torpor.sdk",
    "AsyncClient": "torpor.sdk",
    "App": "torpor.functions",
    "Image": "torpor.functions",
    "enter": "torpor.functions",
    "method": "torpor.functions",
}

__all__ = ["App", "AsyncClient", "Client", "Image", "__version__", "enter", "method"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'torpor' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
