"""Usage, spend and fleet views, scoped to what the caller's key may see."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse

from torpor.api.deps import CallerDep, ServicesDep
from torpor.auth import ApiKey
from torpor.errors import BadRequest, NotFound
from torpor.metering import chargeback, queries
from torpor.states import WorkerState, lifecycle

router = APIRouter(tags=["usage"])


def _scope(key: ApiKey, deployment: str | None) -> queries.Scope:
    if deployment is not None and not key.may_use(deployment):
        raise NotFound(f"Deployment {deployment!r} not found")
    if key.admin:
        return queries.Scope(deployment=deployment)
    return queries.Scope(deployments=key.deployments, key_id=key.id, deployment=deployment)


def _window(value: str, allowed: tuple[str, ...]) -> Any:
    if value not in allowed:
        raise BadRequest(f"window: must be one of {', '.join(allowed)}")
    return queries.WINDOWS[value]


@router.get("/api/usage/summary")
async def usage_summary(
    svc: ServicesDep, key: CallerDep, window: str = "24h", deployment: str | None = None
) -> dict[str, Any]:
    span = _window(window, ("1h", "6h", "24h", "7d", "30d"))
    scope, now = _scope(key, deployment), datetime.now(UTC)
    # Finished requests wait up to one flush interval in memory: reads merge them in.
    data = await svc.meter.read(
        lambda ev, _: queries.summary(svc.store.engine, scope, span, now, ev)
    )
    return {"window": window, "deployment": deployment, **data}


@router.get("/api/usage/by-deployment")
async def usage_by_deployment(
    svc: ServicesDep, key: CallerDep, window: str = "24h"
) -> dict[str, Any]:
    span = _window(window, ("1h", "6h", "24h", "7d", "30d"))
    scope, now = _scope(key, None), datetime.now(UTC)
    rows = await svc.meter.read(
        lambda ev, _: queries.by_deployment(svc.store.engine, scope, span, now, ev)
    )
    return {"window": window, "data": rows}


@router.get("/api/usage/timeseries")
async def usage_timeseries(
    svc: ServicesDep,
    key: CallerDep,
    window: str = "24h",
    step: str = "1h",
    deployment: str | None = None,
) -> dict[str, Any]:
    span = _window(window, ("1h", "6h", "24h", "7d", "30d"))
    if step not in queries.STEPS:
        raise BadRequest(f"step: must be one of {', '.join(queries.STEPS)}")
    width = queries.STEPS[step]
    if span / width > 2000:
        raise BadRequest("step: too small for this window (at most 2000 buckets)")
    scope, now = _scope(key, deployment), datetime.now(UTC)
    rows = await svc.meter.read(
        lambda ev, _: queries.timeseries(svc.store.engine, scope, span, width, now, ev)
    )
    return {"window": window, "step": step, "deployment": deployment, "data": rows}


@router.get("/api/deployments/{name}/metrics")
async def deployment_metrics(
    name: str, svc: ServicesDep, key: CallerDep, window: str = "1h"
) -> dict[str, Any]:
    svc.controller.get(name)
    span = _window(window, ("1h", "6h", "24h"))
    scope, now = _scope(key, name), datetime.now(UTC)
    data = await svc.meter.read(
        lambda ev, _: queries.deployment_metrics(svc.store.engine, scope, name, span, now, ev)
    )
    return {"deployment": name, "window": window, **data}


@router.get("/api/fleet")
async def fleet(svc: ServicesDep, key: CallerDep) -> dict[str, Any]:
    c = svc.controller
    rows = []
    for name, dep in sorted(c.deployments.items()):
        if not key.may_use(name):
            continue
        live = dep.live_workers()
        states = [w.state for w in live]
        status = c.status(dep)
        devices = [d for w in live for d in svc.gpus.devices_of(w.id)]
        rows.append(
            {
                "deployment": name,
                "lifecycle": lifecycle(status, states).value,
                "status": status.value,
                "gpu_kind": devices[0].model if devices else ("cpu" if not dep.spec.gpus else None),
                "gpus_per_worker": dep.spec.gpus,
                "gpu_memory_mb": sum(d.memory_mb or 0 for d in devices),
                "total_requests": svc.meter.total_requests.get(name, 0),
                "last_startup_s": svc.meter.last_startup_s.get(name),
                # Wakes from sleep since torpor started, and the last one's length.
                "wakes": dep.wakes,
                "last_wake_ms": (
                    round(dep.wake_seconds[-1] * 1000, 1) if dep.wake_seconds else None
                ),
                "workers": {
                    "ready": sum(1 for s in states if s is WorkerState.HEALTHY),
                    "starting": sum(1 for s in states if s is WorkerState.PROVISIONING),
                    "sleeping": sum(1 for s in states if s is WorkerState.SLEEPING),
                    "total": len(live),
                },
            }
        )
    return {"data": rows}


@router.get("/api/invoices", response_model=None)
async def invoices(
    svc: ServicesDep,
    key: CallerDep,
    month: str | None = None,
    format_: str = Query("json", alias="format"),
    deployment: str | None = None,
) -> dict[str, Any] | PlainTextResponse:
    now = datetime.now(UTC)
    month = month or now.strftime("%Y-%m")
    try:
        queries.month_bounds(month)
    except ValueError:
        raise BadRequest("month: must be YYYY-MM") from None
    if format_ not in ("json", "csv"):
        raise BadRequest("format: must be json or csv")
    names = {r.id: r.name for r in await svc.store.list_keys()}
    scope = _scope(key, deployment)
    lines = await svc.meter.read(
        lambda ev, gpu: queries.invoice(svc.store.engine, scope, month, names, now, ev, gpu)
    )
    if format_ == "csv":
        return PlainTextResponse(
            queries.invoice_csv(lines),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="torpor-{month}.csv"'},
        )
    total = queries.invoice_total(lines)  # the lines' rounded totals add up to it exactly
    return {"month": month, "data": lines, "total_cost": total}


@router.get("/api/usage/by-key")
async def usage_by_key(
    svc: ServicesDep, key: CallerDep, month: str | None = None, deployment: str | None = None
) -> dict[str, Any]:
    """Chargeback for a month: per key tokens, token cost, attributed GPU-seconds and GPU
    cost; for admins also each deployment's own GPU time (idle, start-up) and its workers'
    billed GPU-seconds (the keys' GPU-seconds plus the deployment's own add up to it)."""
    month = month or datetime.now(UTC).strftime("%Y-%m")
    try:
        queries.month_bounds(month)
    except ValueError:
        raise BadRequest("month: must be YYYY-MM") from None
    names = {r.id: r.name for r in await svc.store.list_keys()}
    return await chargeback.by_key(
        svc.meter, svc.store.engine, _scope(key, deployment), month, names
    )


@router.get("/api/me")
async def me(svc: ServicesDep, key: CallerDep) -> dict[str, Any]:
    spent = svc.meter.key_usage(key.id)
    return {
        "id": key.id,
        "name": key.name,
        "admin": key.admin,
        "deployments": sorted(key.deployments) if key.deployments is not None else None,
        "plan_tokens": key.plan_tokens,
        "budget_usd_monthly": key.budget_usd_monthly,
        "budget_tokens_monthly": key.budget_tokens_monthly,
        "budget_gpu_usd_monthly": key.budget_gpu_usd_monthly,
        "usage_month": {
            "tokens": spent.tokens,
            "cost": chargeback.money(spent.usd),
            "gpu_cost": chargeback.money(svc.meter.key_gpu_usd(key.id)),
        },
    }
