"""Typed results of the client. Specs are the server's own models (`torpor.spec`); views
the server adds fields to over time are models that keep unknown fields (`extra="allow"`),
so a newer server never breaks an older client."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from torpor.spec import DeploymentPatch, DeploymentSpec

__all__ = [
    "ApiKey",
    "AsyncRequest",
    "CreatedKey",
    "Deployment",
    "DeploymentPatch",
    "DeploymentSpec",
    "Event",
    "Gpu",
    "ImageInfo",
    "UsageSummary",
    "Worker",
]


class _View(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class Worker(_View):
    id: str
    state: str
    started_at: str | None = None
    ready_at: str | None = None
    stopped_at: str | None = None
    restarts: int = 0
    reason: str | None = None
    exit_code: int | None = None
    pid: int | None = None
    inflight: int = 0


class Queue(_View):
    waiting: int = 0
    inflight: int = 0


class Deployment(_View):
    """A deployment as the server shows it to this key (admin keys see the whole spec)."""

    name: str
    framework: str = ""
    model: str | None = None
    description: str = ""
    state: str | None = None  # setup state (admin view)
    status: str = ""
    lifecycle: str | None = None
    reason: str | None = None
    endpoint: str = ""
    min_workers: int = 0
    max_workers: int = 1
    concurrency: int = 1
    idle_timeout_s: float = 0
    wait_time_s: float = 0
    max_queue: int | None = None
    gpus: int | None = None
    # Acceptable device models, comma-separated ("A100,H100"); None: any.
    gpu_type: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    env: dict[str, str] = Field(default_factory=dict)
    framework_args: list[str] = Field(default_factory=list)
    ready_workers: int = 0
    desired_workers: int = 0
    queue: Queue = Field(default_factory=Queue)
    last_error: dict[str, Any] | None = None
    download: dict[str, Any] | None = None
    storage: dict[str, Any] | None = None
    workers: list[Worker] = Field(default_factory=list)


class Event(_View):
    at: str
    kind: str
    state: str | None = None
    message: str | None = None


class ApiKey(_View):
    id: str
    name: str
    prefix: str = ""
    deployments: list[str] | None = None
    admin: bool = False
    created_at: str | None = None
    revoked_at: str | None = None
    budget_usd_monthly: float | None = None
    budget_tokens_monthly: int | None = None
    plan_tokens: int | None = None


class CreatedKey(ApiKey):
    """A new key: `key` is the secret, shown this once."""

    key: str


class UsageSummary(_View):
    deployment: str | None = None
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    avg_latency_ms: float = 0.0
    avg_ttft_ms: float = 0.0
    cost: float = 0.0


class Gpu(_View):
    kind: str
    index: int
    type: str | None = None
    memory_mb: int | None = None
    deployment: str | None = None
    worker: str | None = None


class NodeGpu(_View):
    index: int
    kind: str | None = None
    type: str | None = None
    worker: str | None = None
    deployment: str | None = None


class GpuNode(_View):
    """One node of the runtime (the host itself with the local runtime) and its devices."""

    node: str
    address: str | None = None
    alive: bool = True
    type: str | None = None
    gpus: list[NodeGpu] = []


class AsyncRequest(_View):
    id: str
    status: str
    deployment: str = ""
    url: str | None = None
    method: str | None = None
    path: str | None = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    attempts: int = 0
    status_code: int | None = None
    response: Any = None
    error: dict[str, Any] | None = None

    @property
    def done(self) -> bool:
        return self.status in ("completed", "failed", "cancelled")


class ImageInfo(_View):
    """A built (or already cached) image: its content hash and the interpreter to run."""

    id: str
    python: str
    built: bool = False
    seconds: float = 0.0
    # The container image's tag when docker or podman built it (a registry base).
    container: str | None = None
