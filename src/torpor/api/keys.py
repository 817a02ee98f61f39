"""API keys: create (secret shown once), list, revoke. Admin only."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from torpor.api.deps import AdminDep, ServicesDep
from torpor.errors import NotFound
from torpor.store.tables import ApiKeyRow
from torpor.validation import MAX_BUDGET_USD, MAX_KEY_TOKENS

# Limits of a key: finite, and integers fit the INTEGER columns (32-bit in PostgreSQL).
BudgetUsd = Annotated[float, Field(ge=0, le=MAX_BUDGET_USD)]
Tokens = Annotated[int, Field(ge=0, le=MAX_KEY_TOKENS)]

router = APIRouter(prefix="/api/keys", tags=["keys"])


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(min_length=1, max_length=200)
    deployments: list[str] | None = None
    admin: bool = False
    budget_usd_monthly: BudgetUsd | None = None
    budget_tokens_monthly: Tokens | None = None
    plan_tokens: Tokens | None = None


class KeyPatch(BaseModel):
    """Fields to change; an explicit null removes a limit or a scope."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str | None = Field(default=None, min_length=1, max_length=200)
    deployments: list[str] | None = None
    budget_usd_monthly: BudgetUsd | None = None
    budget_tokens_monthly: Tokens | None = None
    plan_tokens: Tokens | None = None


def key_view(row: ApiKeyRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "prefix": row.prefix,
        "deployments": row.deployments,
        "admin": row.admin,
        "created_at": row.created_at.isoformat(),
        "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
        "budget_usd_monthly": row.budget_usd_monthly,
        "budget_tokens_monthly": row.budget_tokens_monthly,
        "plan_tokens": row.plan_tokens,
    }


@router.post("", status_code=201)
async def create(body: KeyCreate, svc: ServicesDep, _: AdminDep) -> dict[str, Any]:
    limits = body.model_dump(include={"budget_usd_monthly", "budget_tokens_monthly", "plan_tokens"})
    row, secret = await svc.keys.create(
        body.name, admin=body.admin, deployments=body.deployments, limits=limits
    )
    return {**key_view(row), "key": secret}


@router.get("")
async def list_keys(svc: ServicesDep, _: AdminDep) -> dict[str, Any]:
    return {"data": [key_view(r) for r in await svc.store.list_keys()]}


@router.patch("/{key_id}")
async def update(key_id: str, body: KeyPatch, svc: ServicesDep, _: AdminDep) -> dict[str, Any]:
    changes = body.model_dump(exclude_unset=True)
    if "name" in changes and changes["name"] is None:
        del changes["name"]
    if changes.get("deployments") is not None:
        changes["deployments"] = sorted(set(changes["deployments"]))
    row = await svc.keys.update(key_id, changes)
    if row is None:
        raise NotFound(f"API key {key_id!r} not found")
    return key_view(row)


@router.delete("/{key_id}")
async def revoke(key_id: str, svc: ServicesDep, _: AdminDep) -> dict[str, Any]:
    if not await svc.keys.revoke(key_id):
        raise NotFound(f"API key {key_id!r} not found or already revoked")
    return {"id": key_id, "revoked": True}
