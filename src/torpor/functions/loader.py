"""Loading an app file (`torpor deploy app.py`, `torpor run app.py::fn`): import it once
as a module named after the file, and find its `torpor.App` objects and functions."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from torpor.functions.app import App, Cls, Function


def load_module(path: Path) -> ModuleType:
    """Import `path` as the module `<stem>` (its directory first on sys.path, so it can
    import its neighbours). Errors in the file propagate."""
    path = path.resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no such app file: {path}")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def apps_in(module: ModuleType) -> list[App]:
    apps = [v for v in vars(module).values() if isinstance(v, App)]
    if not apps:
        raise LookupError(f"{module.__name__}: no torpor.App defined at module level")
    return apps


def target_in(module: ModuleType, name: str) -> Function[..., object] | Cls:
    """The function (or `Class.method`'s class) named `name` in the module."""
    value = getattr(module, name.split(".")[0], None)
    if not isinstance(value, Function | Cls):
        raise LookupError(f"{module.__name__}: no @app.function or @app.cls named {name!r}")
    return value
