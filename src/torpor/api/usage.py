"""Usage, spend and fleet views, scoped to what the caller's key may see."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse

from torpor.api.deps import CallerDep, ServicesDep
from torpor.auth import ApiKey
from torpor.errors import BadRequest, NotFound
from torpor.metering import queries
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


async def _fresh(svc: ServicesDep) -> None:
    # Finished requests are buffered for up to one flush interval; reads see them all.
    await svc.meter.flush()


@router.get("/api/usage/summary")
async def usage_summary(
    svc: ServicesDep, key: CallerDep, window: str = "24h", deployment: str | None = None
) -> dict[str, Any]:
    span = _window(window, ("1h", "6h", "24h", "7d", "30d"))
    await _fresh(svc)
    data = await queries.summary(svc.store.engine, _scope(key, deployment), span, datetime.now(UTC))
    return {"window": window, "deployment": deployment, **data}


@router.get("/api/usage/by-deployment")
async def usage_by_deployment(
    svc: ServicesDep, key: CallerDep, window: str = "24h"
) -> dict[str, Any]:
    span = _window(window, ("1h", "6h", "24h", "7d", "30d"))
    await _fresh(svc)
    rows = await queries.by_deployment(svc.store.engine, _scope(key, None), span, datetime.now(UTC))
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
    await _fresh(svc)
    rows = await queries.timeseries(
        svc.store.engine, _scope(key, deployment), span, width, datetime.now(UTC)
    )
    return {"window": window, "step": step, "deployment": deployment, "data": rows}


@router.get("/api/deployments/{name}/metrics")
async def deployment_metrics(
    name: str, svc: ServicesDep, key: CallerDep, window: str = "1h"
) -> dict[str, Any]:
    svc.controller.get(name)
    span = _window(window, ("1h", "6h", "24h"))
    await _fresh(svc)
    data = await queries.deployment_metrics(
        svc.store.engine, _scope(key, name), name, span, datetime.now(UTC)
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
                "workers": {
                    "ready": sum(1 for s in states if s is WorkerState.HEALTHY),
                    "starting": sum(1 for s in states if s is WorkerState.PROVISIONING),
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
    await _fresh(svc)
    names = {r.id: r.name for r in await svc.store.list_keys()}
    lines = await queries.invoice(svc.store.engine, _scope(key, deployment), month, names, now)
    if format_ == "csv":
        return PlainTextResponse(
            queries.invoice_csv(lines),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="torpor-{month}.csv"'},
        )
    total = sum(ln["total_cost"] for ln in lines)
    return {"month": month, "data": lines, "total_cost": total}


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
        "usage_month": {"tokens": spent.tokens, "cost": round(spent.usd, 10)},
    }
