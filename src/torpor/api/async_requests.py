"""Async request routes: fetch and cancel by id, submit to a route of a deployment, the
per-deployment listing, and the per-key webhook secret.

`/v1/requests/...` is routed here (not to the proxy) by the app; everything else of `/v1`
stays on the proxy, where `X-Async: true` submits any request.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from torpor.api.deps import CallerDep, ServicesDep
from torpor.asyncreq.policy import engine_body
from torpor.asyncreq.service import poll_url
from torpor.asyncreq.views import accepted_view
from torpor.errors import Forbidden, NotFound
from torpor.paths import check_route
from torpor.validation import JsonObject

router = APIRouter(tags=["async"])

_FORWARD = ("x-session-id", "x-request-id")


class Submit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Finite numbers, 64-bit integers: it is stored and sent on as JSON (orjson).
    input: JsonObject
    webhook_url: str | None = None


@router.get("/v1/requests/{request_id}")
async def get_request(request_id: str, svc: ServicesDep, key: CallerDep) -> dict[str, Any]:
    return await svc.async_requests.view(request_id, key)


@router.delete("/v1/requests/{request_id}")
async def cancel_request(request_id: str, svc: ServicesDep, key: CallerDep) -> dict[str, Any]:
    return await svc.async_requests.cancel(request_id, key)


@router.get("/deployment/{name}/requests/{request_id}")
async def get_deployment_request(
    name: str, request_id: str, svc: ServicesDep, key: CallerDep
) -> dict[str, Any]:
    return await svc.async_requests.view(request_id, key, name)


@router.delete("/deployment/{name}/requests/{request_id}")
async def cancel_deployment_request(
    name: str, request_id: str, svc: ServicesDep, key: CallerDep
) -> dict[str, Any]:
    return await svc.async_requests.cancel(request_id, key, name)


@router.post("/deployment/{name}/{route:path}", status_code=202)
async def submit(
    name: str, route: str, body: Submit, request: Request, svc: ServicesDep, key: CallerDep
) -> JSONResponse:
    """Submit `input` as the JSON body of `POST /{route}` on the deployment's workers."""
    if not key.may_use(name):
        raise Forbidden(f"This API key may not use deployment {name!r}")
    svc.dispatcher.gate(name)  # unknown deployment: 404
    if svc.dispatcher.meter is not None:
        svc.dispatcher.meter.check(key, name)  # over budget: refused now, not after a 202
    path = "/" + route
    routes = svc.routes_of(name)
    if routes is not None:
        check_route(key, name, path, *routes)
    if request.url.query:
        path = f"{path}?{request.url.query}"
    openai_route = path.startswith("/v1/")
    payload = engine_body(orjson.dumps(body.input), name if openai_route else None)
    headers = {"content-type": "application/json"}
    headers.update({h: v for h in _FORWARD if (v := request.headers.get(h)) is not None})
    row = await svc.async_requests.submit_post(
        key, name, path, payload, headers, request.headers.get("x-session-id"), body.webhook_url
    )
    return JSONResponse(accepted_view(row, poll_url(row, via_deployment=True)), status_code=202)


@router.get("/api/deployments/{name}/async")
async def list_async(
    name: str,
    svc: ServicesDep,
    key: CallerDep,
    status: str | None = None,
    limit: int = Query(100, ge=1, le=1000),
) -> dict[str, Any]:
    """Requests of a deployment (newest first; a key sees its own, admin keys all), with the
    queue depth and the number processing."""
    svc.controller.get(name)
    if not key.may_use(name):
        raise NotFound(f"Deployment {name!r} not found")
    return await svc.async_requests.listing(name, key, status, limit)


@router.get("/api/keys/{key_id}/webhook-secret")
async def webhook_secret(key_id: str, svc: ServicesDep, key: CallerDep) -> dict[str, Any]:
    """The secret that signs this key's webhooks; `me` names the caller's own key. A key
    reads its own secret, admin keys any."""
    target = key.id if key_id == "me" else key_id
    if target != key.id:
        key.require_admin()
        if not any(r.id == target for r in await svc.store.list_keys()):
            raise NotFound(f"API key {target!r} not found")
    secret = await svc.async_requests.webhook_secret(target)
    return {"key_id": target, "secret": secret, "algorithm": "HMAC-SHA256"}
