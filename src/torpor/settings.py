"""One typed settings object, read from `TORPOR_*` environment variables once at start."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_data_dir() -> Path:
    return Path.home() / ".torpor"


class Settings(BaseSettings):
    """Process-wide settings; built in the CLI and passed down, never imported as a global."""

    model_config = SettingsConfigDict(env_prefix="TORPOR_", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir)
    # Empty means SQLite in WAL mode at <data_dir>/torpor.db.
    database_url: str = ""
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    # Bootstrap admin key; when unset one is generated on first start and saved as admin.key.
    admin_key: str | None = None
    # Controller loop period while nothing is starting; it wakes at once on demand.
    controller_idle_tick_s: float = Field(default=0.5, gt=0)
    # Readiness probe period while a worker is starting (fast, so cold starts are not padded).
    probe_interval_s: float = Field(default=0.05, gt=0)
    # Keep-alive SSE comment period for a streaming request held during a cold start.
    keepalive_interval_s: float = Field(default=5.0, gt=0)
    # Longest an engine may take to answer one request before the client gets 504.
    request_timeout_s: float = Field(default=600.0, gt=0)
    upstream_connect_timeout_s: float = Field(default=5.0, gt=0)
    # SIGTERM: requests on workers may finish for this long; queued ones get a 503 at once.
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    # Grace period for a worker to exit on SIGTERM before SIGKILL.
    worker_stop_grace_s: float = Field(default=5.0, gt=0)
    # A worker that is not ready after this long is failed and replaced.
    worker_start_timeout_s: float = Field(default=300.0, gt=0)
    # Consecutive worker failures after which a deployment shows `error` (crash loop).
    crash_loop_threshold: int = Field(default=3, ge=1)
    # Backoff between replacements of failed workers: base * 2**(failures-1), capped.
    restart_backoff_base_s: float = Field(default=0.5, ge=0)
    restart_backoff_max_s: float = Field(default=30.0, ge=0)
    # Where workers run: `local` (child processes on this host) or `ray` (actors on the
    # nodes of a Ray cluster; install with `pip install -e '.[ray]'`).
    runtime: Literal["local", "ray"] = "local"
    # The Ray cluster to join: `auto` (the cluster this host is part of) or `HOST:PORT`.
    ray_address: str = "auto"
    # On each Ray node: where worker actors keep logs and models fetched for that node.
    node_cache: Path = Path("/tmp/torpor-node")
    # A path mounted on every node (NFS, a shared volume): models are stored there once.
    shared_storage: Path | None = None
    # Declared accelerators for planning and tests, e.g. "4xA100-80GB"; empty means detect.
    gpus: str = ""
    # Create the embedded `smollm2` deployment on a fresh data dir.
    create_default_deployment: bool = True
    log_level: str = "info"

    # Metering. Flushes at least every second: a crash loses at most one interval.
    metering_enabled: bool = True
    metering_flush_interval_s: float = Field(default=0.5, gt=0, le=1.0)
    storage_sample_interval_s: float = Field(default=60.0, gt=0)
    usage_raw_retention_days: float = Field(default=30.0, gt=0)
    # Default prices in USD, editable per deployment (`prices` in the spec).
    price_prompt_per_mtok: float = Field(default=0.05, ge=0)
    price_completion_per_mtok: float = Field(default=0.10, ge=0)
    # Per device-hour by GPU model name as declared or detected ("A100-80GB"), or "default".
    gpu_hourly_usd: dict[str, float] = Field(default_factory=lambda: {"default": 2.0})
    storage_gb_month_usd: float = Field(default=0.10, ge=0)
    # Worker GPU time is accrued (budgets, chargeback) and open sessions' heartbeat written
    # this often; after a crash a session is billed up to its last heartbeat.
    gpu_heartbeat_s: float = Field(default=10.0, gt=0, le=60)
    # A deployment's context window when neither its spec nor its engine options name one.
    default_context_tokens: int = Field(default=32768, ge=1, le=2**31 - 1)
    # A budget reservation whose request never ended (a bug, a lost task) is released then.
    reservation_ttl_s: float = Field(default=6 * 3600.0, gt=0)
    # The clock of schedule windows and pre-warm history, for replaying a compressed trace
    # (bench ladder): it reads ladder_clock_start at the Unix time ladder_clock_real_start and
    # runs ladder_clock_speedup times faster. Unset: the real UTC time.
    ladder_clock_speedup: float = Field(default=1.0, gt=0, le=1e6)
    ladder_clock_start: datetime | None = None
    ladder_clock_real_start: float | None = None
    # Async requests: results (and the stored request) are deleted this long after they end.
    async_retention_s: float = Field(default=86400.0, gt=0)
    # Stored Responses (previous_response_id, GET /v1/responses/{id}) and video job records
    # are deleted this long after they were made.
    stored_state_retention_s: float = Field(default=30 * 86400.0, gt=0)
    # Period of the async runner's look for due work (it also wakes at once on new requests).
    async_poll_interval_s: float = Field(default=1.0, gt=0)
    async_sweep_interval_s: float = Field(default=60.0, gt=0)
    # An async request refused by admission (429, 503, 504) is queued again this many times.
    async_max_retries: int = Field(default=5, ge=0)
    async_retry_backoff_base_s: float = Field(default=1.0, ge=0)
    async_retry_backoff_max_s: float = Field(default=60.0, ge=0)
    # Webhook delivery of async results: attempts, backoff between them, timeout of each.
    webhook_max_attempts: int = Field(default=8, ge=1)
    webhook_backoff_base_s: float = Field(default=1.0, ge=0)
    webhook_backoff_max_s: float = Field(default=300.0, ge=0)
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    # Let webhooks reach loopback, private, link-local and reserved addresses (trusted
    # set-ups and tests only): off, torpor never connects there on a caller's say-so.
    webhook_allow_private: bool = False

    # Security. `/metrics` needs a key unless this is set (Prometheus scrapes with a bearer
    # token); `/docs` and `/openapi.json` always need one.
    public_metrics: bool = False
    # Body limits after authentication: the inference routes (`/v1`, `/openai/...`), the
    # async submit route (`/deployment/...`), and the control API (`/api`).
    max_inference_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    max_async_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    max_api_body_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    # Stored playground conversations per API key.
    max_conversations_per_key: int = Field(default=1000, ge=1)

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'torpor.db'}"

    @property
    def deployments_dir(self) -> Path:
        return self.data_dir / "deployments"
