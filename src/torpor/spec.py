"""The deployment spec: what a user asks for, validated once at the API boundary."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from torpor.validation import (
    MAX_BUDGET_USD,
    MAX_CONCURRENCY,
    MAX_DURATION_S,
    MAX_GPUS,
    MAX_PRICE_USD,
    MAX_QUEUE,
    MAX_SPEC_TOKENS,
    MAX_STORAGE_GB,
    MAX_WORKERS,
    JsonObject,
)

NAME_RULE = (
    "must be 1-63 characters of lowercase letters, digits and hyphens, "
    "and must not start or end with a hyphen"
)
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")

# Fields whose change applies to running workers at once.
LIVE_FIELDS = frozenset(
    {
        "description",
        "min_workers",
        "max_workers",
        "concurrency",
        "idle_timeout_s",
        "wait_time_s",
        "max_queue",
        "async_enabled",
        "prices",
        "budget_usd_monthly",
        "budget_tokens_monthly",
        "context_tokens",
        "catalog",
        "storage_gb",
        "sleep_after_s",
        "sleep_level",
        "priority",
        "buffer_workers",
        "schedule",
        "prewake",
    }
)
# Fields whose change needs new worker processes: workers are rolled over to the new spec.
ROLLING_FIELDS = frozenset(
    {
        "model",
        "framework",
        "framework_args",
        "env",
        "gpus",
        "options",
        "accelerator",
        "gpu_type",
        "source",
    }
)

Accelerator = Literal["nvidia.com/gpu", "furiosa.ai/rngd"]
CatalogType = Literal["chat", "code", "embedding", "video-generation"]

# Every number of a spec is bounded (limits in torpor.validation); floats are finite
# (each model sets allow_inf_nan=False). A patch takes the same types.
MinWorkers = Annotated[int, Field(ge=0, le=MAX_WORKERS)]
MaxWorkers = Annotated[int, Field(ge=1, le=MAX_WORKERS)]
Concurrency = Annotated[int, Field(ge=1, le=MAX_CONCURRENCY)]
IdleTimeout = Annotated[float, Field(ge=0, le=MAX_DURATION_S)]
WaitTime = Annotated[float, Field(gt=0, le=MAX_DURATION_S)]
QueueSize = Annotated[int, Field(ge=0, le=MAX_QUEUE)]
Gpus = Annotated[int, Field(ge=0, le=MAX_GPUS)]
StorageGb = Annotated[float, Field(gt=0, le=MAX_STORAGE_GB)]
Price = Annotated[float, Field(ge=0, le=MAX_PRICE_USD)]
BudgetUsd = Annotated[float, Field(ge=0, le=MAX_BUDGET_USD)]
BudgetTokens = Annotated[int, Field(ge=0, le=MAX_SPEC_TOKENS)]
ContextTokens = Annotated[int, Field(ge=1, le=MAX_SPEC_TOKENS)]
SleepAfter = Annotated[float, Field(ge=0, le=MAX_DURATION_S)]
SleepLevel = Literal[1, 2]
Priority = Annotated[int, Field(ge=-1000, le=1000)]
BufferWorkers = Annotated[int, Field(ge=0, le=MAX_WORKERS)]
Prewake = Literal["history"]
MAX_SCHEDULE_WINDOWS = 50


def _join_gpu_types(value: Any) -> Any:
    """A list of acceptable GPU types is kept as one comma-separated string."""
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return ",".join(v.strip() for v in value)
    return value


# One device model ("L4") or several acceptable ones ("A100,H100", or a JSON list of them).
GpuType = Annotated[
    str,
    BeforeValidator(_join_gpu_types),
    Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9._-]+(,[A-Za-z0-9._-]+)*$"),
]
_STRICT_NUMBERS = ConfigDict(extra="forbid", allow_inf_nan=False)


class ModelSource(BaseModel):
    """Where exactly a Hugging Face model comes from (ignored for other sources)."""

    model_config = _STRICT_NUMBERS

    revision: str | None = Field(default=None, min_length=1, max_length=200)
    allow_patterns: list[str] = Field(default_factory=list)
    ignore_patterns: list[str] = Field(default_factory=list)


class Catalog(BaseModel):
    """How the deployment is listed; unset fields are derived from the model."""

    model_config = _STRICT_NUMBERS

    vendor: str | None = Field(default=None, max_length=200)
    display_name: str | None = Field(default=None, max_length=200)
    type: CatalogType | None = None


class ScheduleWindow(BaseModel):
    """A window of provisioned concurrency: from each time `cron` matches (UTC; five fields,
    or six with seconds last), for `duration_s`, at least `min_workers` workers are up."""

    model_config = _STRICT_NUMBERS

    cron: str = Field(min_length=1, max_length=120)
    duration_s: Annotated[float, Field(gt=0, le=MAX_DURATION_S)]
    min_workers: MinWorkers = 1

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        from torpor.ladder import cron_valid

        if not cron_valid(value):
            raise ValueError("must be a cron expression such as '55 8 * * 1-5'")
        return value


def validate_name(value: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(NAME_RULE)
    return value


class DeploymentPrices(BaseModel):
    """Per-deployment rates in USD; unset ones fall back to the settings' defaults."""

    model_config = _STRICT_NUMBERS

    prompt_per_mtok: Price | None = None
    completion_per_mtok: Price | None = None
    gpu_hourly: Price | None = None
    # While a worker sleeps (holding its devices); unset: gpu_hourly.
    gpu_hourly_sleeping: Price | None = None
    storage_gb_month: Price | None = None


class DeploymentSpec(BaseModel):
    """A deployment as the user declares it; names of fields are part of the public API."""

    model_config = _STRICT_NUMBERS

    name: str
    description: str = Field(default="", max_length=2000)
    framework: str = "llama.cpp"
    model: str = ""
    options: JsonObject = Field(default_factory=dict)
    min_workers: MinWorkers = 0
    max_workers: MaxWorkers = 1
    concurrency: Concurrency = 4
    idle_timeout_s: IdleTimeout = 300.0
    wait_time_s: WaitTime = 120.0
    max_queue: QueueSize = 100
    env: dict[str, str] = Field(default_factory=dict)
    framework_args: list[str] = Field(default_factory=list)
    gpus: Gpus = 0
    # Accelerator kind of the `gpus` devices.
    accelerator: Accelerator = "nvidia.com/gpu"
    # A device model the workers must get ("H100", "A100-80GB"), or acceptable ones
    # ("A100,H100"); None takes any. Matched against the local inventory, or Ray's
    # `accelerator_type:` resources on a cluster (the first listed type there).
    gpu_type: GpuType | None = None
    # Hugging Face source details: revision and file patterns.
    source: ModelSource = Field(default_factory=ModelSource)
    # The deployment's storage limit: the model must fit (checked before and while fetching).
    storage_gb: StorageGb = 100.0
    # Catalog entry; unset fields are derived from the model.
    catalog: Catalog = Field(default_factory=Catalog)
    # Accept async requests (X-Async, POST /deployment/{name}/...).
    async_enabled: bool = True
    # Metering: rates that override the settings' defaults, and monthly caps.
    prices: DeploymentPrices = Field(default_factory=DeploymentPrices)
    budget_usd_monthly: BudgetUsd | None = None
    budget_tokens_monthly: BudgetTokens | None = None
    # The model's context window in tokens: bounds what one request may generate (and so
    # what it reserves against budgets). Unset: taken from the engine's options where they
    # name it (max_model_len, --n_ctx, --context-length), else TORPOR_DEFAULT_CONTEXT_TOKENS.
    context_tokens: ContextTokens | None = None
    # The sleep/wake ladder (torpor.ladder): idle this long, a worker sleeps (None: never);
    # the engine's sleep level where it has levels (vLLM).
    sleep_after_s: SleepAfter | None = None
    sleep_level: SleepLevel = 1
    # GPU residency: under pressure, idle workers of lower priority are evicted first.
    priority: Priority = 0
    # Idle workers kept awake above current demand (a warm pool).
    buffer_workers: BufferWorkers = 0
    # Windows that raise min_workers (and wake sleeping workers a little ahead).
    schedule: list[ScheduleWindow] = Field(default_factory=list, max_length=MAX_SCHEDULE_WINDOWS)
    # "history": wake ahead of the hour of the week when requests usually start.
    prewake: Prewake | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return validate_name(value)

    @field_validator("framework")
    @classmethod
    def _framework(cls, value: str) -> str:
        from torpor.engines import FRAMEWORKS

        if value not in FRAMEWORKS:
            raise ValueError(f"must be one of {', '.join(sorted(FRAMEWORKS))}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> DeploymentSpec:
        if self.max_workers < self.min_workers:
            raise ValueError("max_workers: must be greater than or equal to min_workers")
        for i, window in enumerate(self.schedule):
            if window.min_workers > self.max_workers:
                raise ValueError(
                    f"schedule[{i}].min_workers: must be at most max_workers ({self.max_workers})"
                )
        from torpor.engines import engine_for
        from torpor.engines.describe import default_concurrency

        if "concurrency" not in self.model_fields_set:
            # The engine's default (llama.cpp serves one request at a time).
            self.concurrency = default_concurrency(self.framework)
        engine_for(self.framework).validate(self)
        return self


class DeploymentPatch(BaseModel):
    """A partial spec for PATCH; unset fields keep their value."""

    model_config = _STRICT_NUMBERS

    description: str | None = None
    framework: str | None = None
    model: str | None = None
    options: JsonObject | None = None
    min_workers: MinWorkers | None = None
    max_workers: MaxWorkers | None = None
    concurrency: Concurrency | None = None
    idle_timeout_s: IdleTimeout | None = None
    wait_time_s: WaitTime | None = None
    max_queue: QueueSize | None = None
    env: dict[str, str] | None = None
    framework_args: list[str] | None = None
    gpus: Gpus | None = None
    accelerator: Accelerator | None = None
    gpu_type: GpuType | None = None
    source: ModelSource | None = None
    storage_gb: StorageGb | None = None
    catalog: Catalog | None = None
    async_enabled: bool | None = None
    prices: DeploymentPrices | None = None
    budget_usd_monthly: BudgetUsd | None = None
    budget_tokens_monthly: BudgetTokens | None = None
    context_tokens: ContextTokens | None = None
    sleep_after_s: SleepAfter | None = None
    sleep_level: SleepLevel | None = None
    priority: Priority | None = None
    buffer_workers: BufferWorkers | None = None
    schedule: list[ScheduleWindow] | None = Field(default=None, max_length=MAX_SCHEDULE_WINDOWS)
    prewake: Prewake | None = None

    def apply(self, spec: DeploymentSpec) -> DeploymentSpec:
        """The merged spec, validated again as a whole (raises pydantic.ValidationError)."""
        merged = spec.model_dump() | self.model_dump(exclude_unset=True)
        if self.catalog is not None:
            # A catalog patch changes only the catalog fields it names.
            merged["catalog"] = spec.catalog.model_dump() | self.catalog.model_dump(
                exclude_unset=True
            )
        return DeploymentSpec.model_validate(merged)


def needs_rollout(old: DeploymentSpec, new: DeploymentSpec) -> bool:
    return any(getattr(old, f) != getattr(new, f) for f in ROLLING_FIELDS)


def load_stored_spec(data: dict[str, Any]) -> tuple[DeploymentSpec, list[str]]:
    """A spec read back from the database, validated as today's rules say.

    A spec stored by an older torpor may break a rule added since (a bound, a removed
    option). Refusing it would stop torpor from starting, and lose the deployment; instead
    each offending top-level field goes back to its default and the returned notes say
    which (the caller logs them). Raises ValidationError only when that cannot help.
    """
    current = dict(data)
    notes: list[str] = []
    while True:
        try:
            return DeploymentSpec.model_validate(current), notes
        except ValidationError as exc:
            fields = {str(e["loc"][0]) for e in exc.errors() if e["loc"]}
            fixable = sorted(f for f in fields & set(current) if f != "name")
            if not fixable:
                raise
            for name in fixable:
                notes.append(f"{name}: stored value {current.pop(name)!r} no longer valid")
