"""What every engine module provides."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from torpor.spec import DeploymentSpec


@dataclass(frozen=True)
class EngineLaunch:
    """The engine-specific part of a worker launch; `{port}`/`{host}` are filled later."""

    argv: tuple[str, ...]
    health_path: str
    env: dict[str, str] = field(default_factory=dict)
    fixed_port: int | None = None


class Engine(Protocol):
    name: str

    def needs_model(self, spec: DeploymentSpec) -> bool:
        """Whether the spec's `model` must resolve to local files before a worker starts."""
        ...

    def validate(self, spec: DeploymentSpec) -> None:
        """Raise ValueError naming the field and the rule when the spec does not fit."""
        ...

    def launch(self, spec: DeploymentSpec, model_path: Path | None) -> EngineLaunch: ...


def refuse_unknown_options(framework: str, options: dict[str, object], known: set[str]) -> None:
    unknown = sorted(set(options) - known)
    if unknown:
        allowed = ", ".join(sorted(known)) or "none"
        raise ValueError(
            f"options: {framework} has no option {', '.join(map(repr, unknown))} "
            f"(allowed: {allowed})"
        )
