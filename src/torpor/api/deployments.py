"""Deployments: create, list, read, change live or by rollout, delete; logs and events."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic import ValidationError

from torpor.api.deps import AdminDep, CallerDep, ServicesDep
from torpor.api.views import deployment_view
from torpor.controller import Deployment
from torpor.errors import InvalidSpec, NotFound
from torpor.logs import LogSource, atail_all, follow
from torpor.spec import DeploymentPatch, DeploymentSpec
from torpor.validation import format_errors

router = APIRouter(prefix="/api/deployments", tags=["deployments"])


def _visible(svc: ServicesDep, key: CallerDep, name: str) -> Deployment:
    dep = svc.controller.get(name)
    if not key.may_use(name):
        raise NotFound(f"Deployment {name!r} not found")
    return dep


@router.post("", status_code=201)
async def create(spec: DeploymentSpec, svc: ServicesDep, _: AdminDep) -> dict[str, Any]:
    dep = await svc.controller.create(spec)
    return deployment_view(svc.controller, dep, admin=True)


@router.get("")
async def list_all(svc: ServicesDep, key: CallerDep) -> dict[str, Any]:
    c = svc.controller
    deps = [d for name, d in sorted(c.deployments.items()) if key.may_use(name)]
    return {"data": [deployment_view(c, d, admin=key.admin) for d in deps]}


@router.get("/{name}")
async def get(name: str, svc: ServicesDep, key: CallerDep) -> dict[str, Any]:
    return deployment_view(svc.controller, _visible(svc, key, name), admin=key.admin)


@router.patch("/{name}")
async def patch(name: str, body: dict[str, Any], svc: ServicesDep, _: AdminDep) -> dict[str, Any]:
    svc.controller.get(name)
    if "name" in body and body["name"] != name:
        raise InvalidSpec("name: cannot be changed; create a new deployment instead")
    body.pop("name", None)
    try:
        change = DeploymentPatch.model_validate(body)
        dep = await svc.controller.update(name, change)
    except ValidationError as exc:
        raise InvalidSpec(format_errors(exc.errors())) from None
    return deployment_view(svc.controller, dep, admin=True)


@router.delete("/{name}")
async def delete(name: str, svc: ServicesDep, _: AdminDep) -> dict[str, Any]:
    await svc.controller.delete(name)
    return {"name": name, "deleted": True}


@router.get("/{name}/logs", response_model=None)
async def logs(
    name: str,
    svc: ServicesDep,
    _: AdminDep,
    worker: str | None = None,
    follow_: bool = Query(False, alias="follow"),
    tail: int = Query(200, ge=0, le=100_000),
) -> PlainTextResponse | StreamingResponse:
    dep = svc.controller.get(name)
    if worker is not None and worker not in dep.workers:
        raise NotFound(f"Worker {worker!r} not found in deployment {name!r}")

    def sources() -> list[LogSource]:
        workers = sorted(dep.workers.values(), key=lambda w: w.started_mono)
        return [LogSource(w.id, w.log_path) for w in workers if worker in (None, w.id)]

    if follow_:
        return StreamingResponse(follow(sources, tail), media_type="text/plain; charset=utf-8")
    lines = await atail_all(sources(), tail)
    return PlainTextResponse("".join(line + "\n" for line in lines))


@router.get("/{name}/events")
async def events(name: str, svc: ServicesDep, key: CallerDep) -> dict[str, Any]:
    _visible(svc, key, name)
    rows = await svc.store.list_events(name)
    # Messages name pids, paths and log lines: admin keys only.
    return {
        "data": [
            {
                "at": r.at.isoformat(),
                "kind": r.kind,
                "state": r.state,
                "message": r.message if key.admin else None,
            }
            for r in rows
        ]
    }


@router.get("/{name}/workers")
async def workers(name: str, svc: ServicesDep, key: CallerDep) -> dict[str, Any]:
    dep = _visible(svc, key, name)
    return {"data": deployment_view(svc.controller, dep, admin=key.admin)["workers"]}
