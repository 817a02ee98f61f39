"""custom: any command line serving HTTP; `{port}`, `{host}`, `{model}` are filled in."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from torpor.engines.base import EngineLaunch, refuse_unknown_options

if TYPE_CHECKING:
    from torpor.spec import DeploymentSpec

_OPTIONS = {"command", "health_path", "port"}


class CustomEngine:
    name = "custom"

    def needs_model(self, spec: DeploymentSpec) -> bool:
        return "{model}" in str(spec.options.get("command", ""))

    def validate(self, spec: DeploymentSpec) -> None:
        refuse_unknown_options(self.name, spec.options, _OPTIONS)
        command = spec.options.get("command")
        if not isinstance(command, str) or not command.strip():
            raise ValueError("options.command: custom needs a command line string")
        try:
            shlex.split(command)
        except ValueError as exc:
            raise ValueError(f"options.command: cannot be parsed: {exc}") from None
        port = spec.options.get("port")
        if port is not None:
            if not isinstance(port, int) or not 1 <= port <= 65535:
                raise ValueError("options.port: must be an integer from 1 to 65535")
            if "{port}" in command:
                raise ValueError("options.port: give either a fixed port or {port} in command")
            if spec.max_workers > 1:
                raise ValueError("options.port: a fixed port allows max_workers 1 only")
        elif "{port}" not in command:
            raise ValueError("options.command: must contain {port}, or set options.port")
        if self.needs_model(spec) and not spec.model:
            raise ValueError("model: options.command uses {model}, so model must be set")
        health = spec.options.get("health_path", "/health")
        if not isinstance(health, str) or not health.startswith("/"):
            raise ValueError("options.health_path: must be a path starting with /")

    def launch(self, spec: DeploymentSpec, model_path: Path | None) -> EngineLaunch:
        command = str(spec.options["command"])
        if model_path is not None:
            command = command.replace("{model}", shlex.quote(str(model_path)))
        argv = tuple(shlex.split(command)) + tuple(spec.framework_args)
        port = spec.options.get("port")
        return EngineLaunch(
            argv,
            health_path=str(spec.options.get("health_path", "/health")),
            fixed_port=int(port) if port is not None else None,
        )
