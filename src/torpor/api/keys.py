"""API keys: create (secret shown once), list, revoke. Admin only."""

from __future__ import annotations

import contextlib
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from torpor.api.deps import AdminDep, ServicesDep
from torpor.auth import hash_key
from torpor.errors import NotFound
from torpor.metering import queries
from torpor.metering.records import money
from torpor.services import Services
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
    # Cap on the GPU cost attributed to the key's requests (chargeback).
    budget_gpu_usd_monthly: BudgetUsd | None = None


class KeyPatch(BaseModel):
    """Fields to change; an explicit null removes a limit or a scope."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str | None = Field(default=None, min_length=1, max_length=200)
    deployments: list[str] | None = None
    budget_usd_monthly: BudgetUsd | None = None
    budget_tokens_monthly: Tokens | None = None
    plan_tokens: Tokens | None = None
    # Cap on the GPU cost attributed to the key's requests (chargeback).
    budget_gpu_usd_monthly: BudgetUsd | None = None


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
        "budget_gpu_usd_monthly": row.budget_gpu_usd_monthly,
    }


@router.post("", status_code=201)
async def create(body: KeyCreate, svc: ServicesDep, _: AdminDep) -> dict[str, Any]:
    limits = body.model_dump(
        include={
            "budget_usd_monthly",
            "budget_tokens_monthly",
            "plan_tokens",
            "budget_gpu_usd_monthly",
        }
    )
    row, secret = await svc.keys.create(
        body.name, admin=body.admin, deployments=body.deployments, limits=limits
    )
    return {**key_view(row), "key": secret}


def bootstrap_hashes(admin_key: str | None, data_dir: Path) -> frozenset[str]:
    """Hashes of the bootstrap admin key (TORPOR_ADMIN_KEY, or the generated admin.key):
    the key torpor re-activates at every start, so revoking it in the console is pointless."""
    secrets = [admin_key or ""]
    with contextlib.suppress(OSError):
        secrets.append((data_dir / "admin.key").read_text().strip())
    return frozenset(hash_key(s) for s in secrets if s)


async def _activity(svc: Services) -> tuple[frozenset[str], dict[str, datetime]]:
    boot = bootstrap_hashes(svc.settings.admin_key, svc.settings.data_dir)
    # Reads never write: requests not yet flushed are merged in.
    return boot, await svc.meter.read(lambda ev, _: queries.last_used(svc.store.engine, ev))


def listed_view(
    row: ApiKeyRow, svc: Services, boot: frozenset[str], used: dict[str, datetime]
) -> dict[str, Any]:
    """A key in the listing: its view plus month-to-date spend and tokens (what the budgets
    are checked against), when it last made a request, and whether it is the bootstrap key."""
    spent = svc.meter.key_usage(row.id)
    last = used.get(row.id)
    return {
        **key_view(row),
        "spend_month_usd": money(spent.usd),
        "tokens_month": spent.tokens,
        "gpu_spend_month_usd": money(svc.meter.key_gpu_usd(row.id)),
        "last_used_at": last.isoformat() if last else None,
        "bootstrap": row.key_hash in boot,
    }


@router.get("")
async def list_keys(svc: ServicesDep, _: AdminDep) -> dict[str, Any]:
    boot, used = await _activity(svc)
    return {"data": [listed_view(r, svc, boot, used) for r in await svc.store.list_keys()]}


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
