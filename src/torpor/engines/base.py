"""What every engine module provides."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from torpor.spec import DeploymentSpec


@dataclass(frozen=True)
class HttpCall:
    """One engine control call torpor makes itself (never reachable through the gateway)."""

    method: str
    path: str
    body: dict[str, Any] | None = None

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


@dataclass(frozen=True)
class SleepMode:
    """How a worker of an engine sleeps and wakes, and what sleeping frees.

    `http`: the engine's own calls, in order; `freeze`: the worker's process group is
    stopped (SIGSTOP) and continued (SIGCONT) by torpor.
    """

    kind: Literal["http", "freeze"]
    frees: str
    sleep_calls: tuple[HttpCall, ...] = ()
    wake_calls: tuple[HttpCall, ...] = ()
    # Whether the worker still holds its devices while asleep (billed at the GPU rate by
    # default, and evictable under pressure).
    holds_devices: bool = True


FREEZE = SleepMode("freeze", "CPU time (the process is frozen; its memory stays held)")


def vllm_sleep(level: int) -> SleepMode:
    """vLLM's sleep mode (`--enable-sleep-mode`). Level 1 offloads the weights to CPU RAM
    and drops the KV cache; level 2 drops both, so waking reloads the weights from disk and
    the prefix cache must be reset."""
    if level == 1:
        return SleepMode(
            "http",
            "GPU memory: weights offloaded to CPU RAM, KV cache dropped",
            (HttpCall("POST", "/sleep?level=1"),),
            (HttpCall("POST", "/wake_up"),),
        )
    return SleepMode(
        "http",
        "GPU memory: weights and KV cache dropped (reloaded from disk on wake)",
        (HttpCall("POST", "/sleep?level=2"),),
        (
            HttpCall("POST", "/wake_up?tags=weights"),
            HttpCall("POST", "/collective_rpc", {"method": "reload_weights"}),
            HttpCall("POST", "/wake_up?tags=kv_cache"),
            HttpCall("POST", "/reset_prefix_cache"),
        ),
    )


@dataclass(frozen=True)
class EngineLaunch:
    """The engine-specific part of a worker launch; `{port}`/`{host}` are filled later."""

    argv: tuple[str, ...]
    health_path: str
    env: dict[str, str] = field(default_factory=dict)
    fixed_port: int | None = None
    # The model id the engine answers to (always the deployment's name: no rewriting).
    served_model: str = ""
    # How a worker sleeps and wakes (torpor.ladder); None: it cannot sleep (it stops).
    sleep: SleepMode | None = None


# What every OpenAI-compatible engine serves. Inference keys reach only the routes their
# engine declares (`Engine.routes`); an entry ending in "/*" covers the paths below it.
OPENAI_ROUTES = frozenset(
    {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models"}
)


def route_allowed(path: str, routes: frozenset[str]) -> bool:
    """Whether `path` (no query string) is one of `routes` or below a "/*" entry."""
    if path in routes:
        return True
    return any(r.endswith("/*") and path.startswith(r[:-1]) for r in routes)


class Engine(Protocol):
    name: str
    # The inference routes callers with a non-admin key may reach on a worker.
    routes: frozenset[str]
    # Engine control routes (sleep, wake, pull, delete, ...): torpor calls them itself;
    # nobody reaches them through the gateway, admin keys included.
    control_routes: frozenset[str]

    def routes_for(self, spec: DeploymentSpec) -> frozenset[str]:
        """`routes` plus what the spec declares (custom servers list their own)."""
        ...

    def needs_model(self, spec: DeploymentSpec) -> bool:
        """Whether the spec's `model` must resolve to local files before a worker starts."""
        ...

    def validate(self, spec: DeploymentSpec) -> None:
        """Raise ValueError naming the field and the rule when the spec does not fit."""
        ...

    def launch(self, spec: DeploymentSpec, model_path: Path | None) -> EngineLaunch: ...


def flag(name: str) -> str:
    """`tensor_parallel_size` -> `--tensor-parallel-size`."""
    return "--" + name.replace("_", "-")


def check_int(options: dict[str, Any], key: str, low: int = 1) -> None:
    value = options.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
        raise ValueError(f"options.{key}: must be an integer >= {low}")


def check_str(options: dict[str, Any], key: str, choices: frozenset[str] | None = None) -> None:
    value = options.get(key)
    if value is None:
        return
    if not isinstance(value, str) or not value:
        raise ValueError(f"options.{key}: must be a non-empty string")
    if choices is not None and value not in choices:
        raise ValueError(f"options.{key}: must be one of {', '.join(sorted(choices))}")


def check_fraction(options: dict[str, Any], key: str) -> None:
    value = options.get(key)
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1
    ):
        raise ValueError(f"options.{key}: must be a number greater than 0 and at most 1")


def check_bool(options: dict[str, Any], key: str) -> None:
    value = options.get(key)
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"options.{key}: must be true or false")


def refuse_unknown_options(framework: str, options: dict[str, object], known: set[str]) -> None:
    unknown = sorted(set(options) - known)
    if unknown:
        allowed = ", ".join(sorted(known)) or "none"
        raise ValueError(
            f"options: {framework} has no option {', '.join(map(repr, unknown))} "
            f"(allowed: {allowed})"
        )


# The typed options vLLM and SGLang share (each adds one switch of its own).
DTYPES = frozenset({"auto", "half", "float16", "bfloat16", "float", "float32"})


def validate_model_server(
    framework: str, spec: DeploymentSpec, known: set[str], switch: str
) -> None:
    """Checks common to vLLM and SGLang: a model, only known options, typed values, and no
    more tensor-parallel ranks than the worker has GPUs."""
    if not spec.model:
        raise ValueError(
            f"model: {framework} needs a Hugging Face repo id or a local model directory"
        )
    options = spec.options
    refuse_unknown_options(framework, options, known)
    check_int(options, "tensor_parallel_size")
    check_int(options, "max_model_len")
    check_str(options, "dtype", DTYPES)
    check_str(options, "quantization")
    check_fraction(options, "gpu_memory_utilization")
    check_bool(options, switch)
    tp = options.get("tensor_parallel_size")
    if tp is not None and spec.gpus and tp > spec.gpus:
        raise ValueError(
            f"options.tensor_parallel_size: {tp} needs at least {tp} gpus per worker "
            f"(gpus is {spec.gpus})"
        )
