"""The deployment spec: what a user asks for, validated once at the API boundary."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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
        "catalog",
        "storage_gb",
    }
)
# Fields whose change needs new worker processes: workers are rolled over to the new spec.
ROLLING_FIELDS = frozenset(
    {"model", "framework", "framework_args", "env", "gpus", "options", "accelerator", "source"}
)

Accelerator = Literal["nvidia.com/gpu", "furiosa.ai/rngd"]
CatalogType = Literal["chat", "code", "embedding", "video-generation"]


class ModelSource(BaseModel):
    """Where exactly a Hugging Face model comes from (ignored for other sources)."""

    model_config = ConfigDict(extra="forbid")

    revision: str | None = Field(default=None, min_length=1, max_length=200)
    allow_patterns: list[str] = Field(default_factory=list)
    ignore_patterns: list[str] = Field(default_factory=list)


class Catalog(BaseModel):
    """How the deployment is listed; unset fields are derived from the model."""

    model_config = ConfigDict(extra="forbid")

    vendor: str | None = Field(default=None, max_length=200)
    display_name: str | None = Field(default=None, max_length=200)
    type: CatalogType | None = None


def validate_name(value: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(NAME_RULE)
    return value


class DeploymentPrices(BaseModel):
    """Per-deployment rates in USD; unset ones fall back to the settings' defaults."""

    model_config = ConfigDict(extra="forbid")

    prompt_per_mtok: float | None = Field(default=None, ge=0)
    completion_per_mtok: float | None = Field(default=None, ge=0)
    gpu_hourly: float | None = Field(default=None, ge=0)
    storage_gb_month: float | None = Field(default=None, ge=0)


class DeploymentSpec(BaseModel):
    """A deployment as the user declares it; names of fields are part of the public API."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = Field(default="", max_length=2000)
    framework: str = "llama.cpp"
    model: str = ""
    options: dict[str, Any] = Field(default_factory=dict)
    min_workers: int = Field(default=0, ge=0)
    max_workers: int = Field(default=1, ge=1)
    concurrency: int = Field(default=4, ge=1)
    idle_timeout_s: float = Field(default=300.0, ge=0)
    wait_time_s: float = Field(default=120.0, gt=0)
    max_queue: int = Field(default=100, ge=0)
    env: dict[str, str] = Field(default_factory=dict)
    framework_args: list[str] = Field(default_factory=list)
    gpus: int = Field(default=0, ge=0)
    # Accelerator kind of the `gpus` devices.
    accelerator: Accelerator = "nvidia.com/gpu"
    # Hugging Face source details: revision and file patterns.
    source: ModelSource = Field(default_factory=ModelSource)
    # The deployment's storage limit: the model must fit (checked before and while fetching).
    storage_gb: float = Field(default=100.0, gt=0)
    # Catalog entry; unset fields are derived from the model.
    catalog: Catalog = Field(default_factory=Catalog)
    # Accept async requests (X-Async, POST /deployment/{name}/...).
    async_enabled: bool = True
    # Metering: rates that override the settings' defaults, and monthly caps.
    prices: DeploymentPrices = Field(default_factory=DeploymentPrices)
    budget_usd_monthly: float | None = Field(default=None, ge=0)
    budget_tokens_monthly: int | None = Field(default=None, ge=0)

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
        from torpor.engines import engine_for

        engine_for(self.framework).validate(self)
        return self


class DeploymentPatch(BaseModel):
    """A partial spec for PATCH; unset fields keep their value."""

    model_config = ConfigDict(extra="forbid")

    description: str | None = None
    framework: str | None = None
    model: str | None = None
    options: dict[str, Any] | None = None
    min_workers: int | None = None
    max_workers: int | None = None
    concurrency: int | None = None
    idle_timeout_s: float | None = None
    wait_time_s: float | None = None
    max_queue: int | None = None
    env: dict[str, str] | None = None
    framework_args: list[str] | None = None
    gpus: int | None = None
    accelerator: Accelerator | None = None
    source: ModelSource | None = None
    storage_gb: float | None = None
    catalog: Catalog | None = None
    async_enabled: bool | None = None
    prices: DeploymentPrices | None = None
    budget_usd_monthly: float | None = None
    budget_tokens_monthly: int | None = None

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
