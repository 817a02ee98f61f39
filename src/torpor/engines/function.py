"""function: Python code deployed with `torpor.App` (`@app.function`, `@app.cls`).

The worker runs torpor's function server (`torpor.functions.server`) with the image's
interpreter (`options.python`, a virtual environment built once per image definition); the
deployment's source, module and target travel in the worker's environment. Callers reach
`POST /call[/{method}]` through the gateway's `/functions/{app}/{name}[/{method}]`.
"""

from __future__ import annotations

import shlex
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torpor.engines.base import EngineLaunch, check_str, refuse_unknown_options
from torpor.engines.custom import CustomEngine
from torpor.funcproto.pickling import SERIALIZATIONS
from torpor.funcproto.routes import (
    CALL_ROUTES,
    HEALTH_PATH,
    MAX_SOURCE_BYTES,
    SPEC_ENV,
    encode_spec,
)

if TYPE_CHECKING:
    from torpor.spec import DeploymentSpec

_OPTIONS = {
    "app", "function", "kind", "module", "source", "python", "image", "methods",
    "serialization", "container",
}  # fmt: skip
_KINDS = frozenset({"function", "cls"})


def _check_list(options: dict[str, Any], key: str) -> None:
    value = options.get(key)
    if value is not None and (
        not isinstance(value, list) or not all(isinstance(v, str) and v for v in value)
    ):
        raise ValueError(f"options.{key}: must be a list of non-empty strings")


class FunctionEngine:
    name = "function"
    routes = CALL_ROUTES
    control_routes: frozenset[str] = frozenset()

    def routes_for(self, spec: DeploymentSpec) -> frozenset[str]:
        return self.routes

    def needs_model(self, spec: DeploymentSpec) -> bool:
        return False

    def validate(self, spec: DeploymentSpec) -> None:
        o = spec.options
        refuse_unknown_options(self.name, o, _OPTIONS)
        for key in ("app", "function", "module", "source", "python"):
            if not isinstance(o.get(key), str) or not o[key]:
                raise ValueError(f"options.{key}: function deployments need it (a string)")
        check_str(o, "kind", _KINDS)
        check_str(o, "image")
        check_str(o, "container")
        _check_list(o, "methods")
        check_str(o, "serialization", frozenset(SERIALIZATIONS))
        if not str(o["module"]).isidentifier():
            raise ValueError("options.module: must be a Python module name")
        if not str(o["function"]).isidentifier():
            raise ValueError("options.function: must be a Python name")
        if len(str(o["source"]).encode()) > MAX_SOURCE_BYTES:
            raise ValueError(f"options.source: at most {MAX_SOURCE_BYTES} bytes")
        if not o.get("container") and not Path(str(o["python"])).is_absolute():
            raise ValueError("options.python: must be an absolute path to an interpreter")
        if o.get("kind") == "cls" and not o.get("methods"):
            raise ValueError("options.methods: a class needs at least one method")

    def launch(self, spec: DeploymentSpec, model_path: Path | None) -> EngineLaunch:
        o = spec.options
        target = {
            "module": o["module"],
            "source": o["source"],
            "function": o["function"],
            "kind": o.get("kind", "function"),
            "serialization": o.get("serialization", "json"),
        }
        argv = (
            str(o["python"]), "-m", "torpor.functions.server",
            "--host", "{host}", "--port", "{port}", *spec.framework_args,
        )  # fmt: skip
        env = {SPEC_ENV: encode_spec(target), "PYTHONUNBUFFERED": "1"}
        if o.get("container"):
            return container_launch(spec, str(o["container"]), argv, env)
        return EngineLaunch(argv, health_path=HEALTH_PATH, env=env, served_model=spec.name)


def node_image(spec: DeploymentSpec) -> str | None:
    """The image a function worker runs as a virtual environment (built on the worker's node
    where workers run on other nodes); None for other engines and container images."""
    o = spec.options
    if spec.framework != FunctionEngine.name or o.get("container") or not o.get("image"):
        return None
    return str(o["image"])


def with_python(spec: DeploymentSpec, python: str) -> DeploymentSpec:
    """The spec with its worker's interpreter replaced (the image's on the worker's node)."""
    return spec.model_copy(update={"options": {**spec.options, "python": python}})


def container_launch(
    spec: DeploymentSpec, tag: str, argv: tuple[str, ...], env: dict[str, str]
) -> EngineLaunch:
    """The worker in its container image, started as the custom engine starts a container
    (named and labelled after the worker, only its GPUs, the host's network); the function
    server's variables reach the container by name."""
    as_custom = spec.model_copy(
        update={
            "options": {"image": tag, "command": shlex.join(argv), "health_path": HEALTH_PATH},
            "env": {**spec.env, **env},
            "framework_args": [],
        }
    )
    launch = CustomEngine().launch(as_custom, None)
    return replace(launch, env={**launch.env, **env}, sleep=None)
