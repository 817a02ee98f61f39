"""custom: any command line serving HTTP; `{port}`, `{host}`, `{model}` are filled in.

With `image`, the command runs in a container (docker or podman, whichever is on PATH) on
the host's network, so `{port}` and `health_path` mean the same; the model directory is
mounted read-only at /model and `{model}` names it there. The container is named after the
worker and labelled (see `torpor.runtime.containers`), sees only the worker's GPUs, and gets
the spec's env by name, never the rest of torpor's environment.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from torpor.engines.base import (
    FREEZE,
    OPENAI_ROUTES,
    EngineLaunch,
    SleepMode,
    check_str,
    refuse_unknown_options,
    vllm_sleep,
)
from torpor.engines.describe import option_names
from torpor.gpus import FURIOSA, NVIDIA, VISIBLE_DEVICES_ENV
from torpor.runtime.containers import GPU_IDS, container_runtime, run_options
from torpor.runtime.workerenv import DEFAULTS, WORKER_ID_ENV, reserved

if TYPE_CHECKING:
    from torpor.spec import DeploymentSpec

_OPTIONS = option_names("custom")  # the described options (torpor.engines.describe)
CONTAINER_MODEL_DIR = "/model"
CUDA_ENV = VISIBLE_DEVICES_ENV[NVIDIA]
FURIOSA_ENV = VISIBLE_DEVICES_ENV[FURIOSA]


SLEEP_APIS = frozenset({"freeze", "vllm", "none"})


def sleep_mode(spec: DeploymentSpec) -> SleepMode | None:
    """`options.sleep_api`: "freeze" (default: SIGSTOP/SIGCONT), "vllm" (the server speaks
    vLLM's /sleep and /wake_up) or "none"."""
    api = spec.options.get("sleep_api", "freeze")
    if api == "vllm":
        return vllm_sleep(spec.sleep_level)
    return FREEZE if api == "freeze" else None


class CustomEngine:
    name = "custom"
    # The OpenAI routes; `options.routes` declares more (exact paths or "/prefix/*").
    routes = OPENAI_ROUTES
    control_routes: frozenset[str] = frozenset()

    def routes_for(self, spec: DeploymentSpec) -> frozenset[str]:
        extra = spec.options.get("routes") or []
        return self.routes | frozenset(str(r) for r in extra)

    def needs_model(self, spec: DeploymentSpec) -> bool:
        return "{model}" in str(spec.options.get("command", ""))

    def validate(self, spec: DeploymentSpec) -> None:
        refuse_unknown_options(self.name, spec.options, _OPTIONS)
        check_str(spec.options, "image")
        check_str(spec.options, "sleep_api", SLEEP_APIS)
        image = spec.options.get("image")
        if image is not None and container_runtime() is None:
            raise ValueError(
                "options.image: running a container image needs docker or podman on PATH"
            )
        command = spec.options.get("command")
        if image is None and (not isinstance(command, str) or not command.strip()):
            raise ValueError("options.command: custom needs a command line string (or an image)")
        if command is not None and not isinstance(command, str):
            raise ValueError("options.command: must be a string")
        command = command or ""
        try:
            shlex.split(command)
        except ValueError as exc:
            raise ValueError(f"options.command: cannot be parsed: {exc}") from None
        port = spec.options.get("port")
        if port is not None:
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise ValueError("options.port: must be an integer from 1 to 65535")
            if "{port}" in command:
                raise ValueError("options.port: give either a fixed port or {port} in command")
            if spec.max_workers > 1:
                raise ValueError("options.port: a fixed port allows max_workers 1 only")
        elif "{port}" not in command:
            raise ValueError("options.command: must contain {port}, or set options.port")
        if self.needs_model(spec) and not spec.model:
            raise ValueError("model: options.command uses {model}, so model must be set")
        routes = spec.options.get("routes")
        if routes is not None and (
            not isinstance(routes, list)
            or not all(isinstance(r, str) and r.startswith("/v1/") for r in routes)
        ):
            raise ValueError("options.routes: must be a list of paths starting with /v1/")
        health = spec.options.get("health_path", "/health")
        if not isinstance(health, str) or not health.startswith("/"):
            raise ValueError("options.health_path: must be a path starting with /")

    def launch(self, spec: DeploymentSpec, model_path: Path | None) -> EngineLaunch:
        command = str(spec.options.get("command") or "")
        image = spec.options.get("image")
        port = spec.options.get("port")
        health = str(spec.options.get("health_path", "/health"))
        fixed = int(port) if port is not None else None
        if image is None:
            if model_path is not None:
                command = command.replace("{model}", shlex.quote(str(model_path)))
            argv = tuple(shlex.split(command)) + tuple(spec.framework_args)
            return EngineLaunch(
                argv,
                health_path=health,
                fixed_port=fixed,
                served_model=spec.name,
                sleep=sleep_mode(spec),
            )
        runtime = container_runtime() or "docker"
        run = [runtime, "run", *run_options()]
        # The container gets these variables by name from the environment of the command
        # line, which the runtime builds (allowlisted host variables, spec env, devices).
        names = {*spec.env, WORKER_ID_ENV, *DEFAULTS, FURIOSA_ENV}
        if spec.gpus and spec.accelerator == NVIDIA:
            # Only the worker's devices. Inside they are numbered from 0, so the worker's
            # CUDA_VISIBLE_DEVICES (host numbering) must not follow them in.
            run += ["--gpus", f"device={GPU_IDS}"]
        else:
            # No GPU: hidden even where the default container runtime is nvidia's.
            names.add(CUDA_ENV)
            run += ["-e", "NVIDIA_VISIBLE_DEVICES=void"]
        for key in sorted(n for n in names if not reserved(n) or n == WORKER_ID_ENV):
            run += ["-e", key]
        if model_path is not None:
            run += ["-v", f"{model_path}:{CONTAINER_MODEL_DIR}:ro"]
            command = command.replace("{model}", CONTAINER_MODEL_DIR)
        run.append(str(image))
        argv = (*run, *shlex.split(command), *spec.framework_args)
        # Freezing the container CLI would not freeze the container: HTTP sleep only.
        http = sleep_mode(spec)
        return EngineLaunch(
            argv,
            health_path=health,
            fixed_port=fixed,
            served_model=spec.name,
            sleep=http if http is not None and http.kind == "http" else None,
        )
