"""Async requests: accept now (committed to the database before the 202), run in the
background through the same dispatch as synchronous requests, fetch or cancel later."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp

from torpor.asyncreq.policy import Status, engine_body
from torpor.asyncreq.retention import Sweeper
from torpor.asyncreq.runner import Runner, RunnerPolicy
from torpor.asyncreq.store import AsyncStore
from torpor.asyncreq.tables import AsyncRequestRow
from torpor.asyncreq.views import accepted_view, request_view
from torpor.asyncreq.webhooks import (
    HttpPoster,
    WebhookPolicy,
    WebhookSender,
    WebhookUrlGuard,
    getaddrinfo_resolve,
)
from torpor.auth import ApiKey
from torpor.errors import BadRequest, Conflict, DeploymentUnavailable, Forbidden, NotFound
from torpor.gateway.dispatch import Dispatcher, UpstreamRequest
from torpor.settings import Settings
from torpor.spec import DeploymentSpec
from torpor.store import Store

MAX_LIST = 1000


class AsyncDisabled(Forbidden):
    code = "async_disabled"
    default_message = "Async requests are disabled for this deployment"


@dataclass(frozen=True)
class AsyncDeps:
    settings: Settings
    store: Store
    dispatcher: Callable[[], Dispatcher]
    spec_of: Callable[[str], DeploymentSpec | None]
    http: Callable[[], aiohttp.ClientSession]
    now: Callable[[], datetime]


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


def poll_url(row: AsyncRequestRow, via_deployment: bool) -> str:
    if via_deployment:
        return f"/deployment/{row.deployment}/requests/{row.id}"
    return f"/v1/requests/{row.id}"


class AsyncRequests:
    def __init__(self, deps: AsyncDeps):
        s = deps.settings
        self._spec_of = deps.spec_of
        self._now = deps.now
        self.store = AsyncStore(deps.store.engine)
        # Webhook URLs are checked at submit and again at delivery (the sender's own
        # session resolves through the same address check).
        self._webhook_guard = WebhookUrlGuard(
            getaddrinfo_resolve, s.webhook_allow_private, min(s.webhook_timeout_s, 5.0)
        )
        self.webhooks = WebhookSender(
            self.store,
            HttpPoster(s.webhook_timeout_s, s.webhook_allow_private),
            deps.now,
            WebhookPolicy(
                poll_interval_s=s.async_poll_interval_s,
                max_attempts=s.webhook_max_attempts,
                backoff_base_s=s.webhook_backoff_base_s,
                backoff_max_s=s.webhook_backoff_max_s,
                timeout_s=s.webhook_timeout_s,
            ),
        )
        self.runner = Runner(
            self.store,
            deps.dispatcher,
            deps.spec_of,
            deps.now,
            RunnerPolicy(
                poll_interval_s=s.async_poll_interval_s,
                stale_check_interval_s=s.async_sweep_interval_s,
                max_retries=s.async_max_retries,
                retry_backoff_base_s=s.async_retry_backoff_base_s,
                retry_backoff_max_s=s.async_retry_backoff_max_s,
            ),
            on_finished=self.webhooks.wake,
        )
        self.sweeper = Sweeper(self.store, deps.now, s.async_retention_s, s.async_sweep_interval_s)

    async def start(self) -> None:
        await self.runner.start()
        self.webhooks.start()
        self.sweeper.start()

    async def stop(self) -> None:
        await self.runner.stop()
        await self.webhooks.stop()
        await self.sweeper.stop()

    # -- submit ---------------------------------------------------------------------------

    async def submit(self, req: UpstreamRequest, webhook_url: str | None) -> AsyncRequestRow:
        """Store the request (committed before this returns), then wake the runner."""
        spec = self._spec_of(req.deployment)
        if spec is None:
            raise DeploymentUnavailable(
                f"Deployment not found or not running: no deployment named {req.deployment!r}"
            )
        if not spec.async_enabled:
            raise AsyncDisabled(f"Async requests are disabled for deployment {req.deployment!r}")
        if webhook_url is not None:
            refusal = await self._webhook_guard.refusal(webhook_url)
            if refusal is not None:
                raise BadRequest(f"webhook_url: {refusal}")
        now = self._now()
        row = AsyncRequestRow(
            id=new_request_id(),
            key_id=req.key.id,
            deployment=req.deployment,
            method=req.method,
            path=req.path,
            headers=dict(req.headers),
            body=engine_body(req.body, None),
            session_id=req.session_id,
            status=Status.PENDING.value,
            attempts=0,
            retries=0,
            created_at=now,
            webhook_url=webhook_url,
            webhook_attempts=0,
        )
        await self.store.insert(row)
        self.runner.wake()
        return row

    async def submit_post(
        self,
        key: ApiKey,
        deployment: str,
        path: str,
        body: bytes,
        headers: dict[str, str],
        session_id: str | None,
        webhook_url: str | None,
    ) -> AsyncRequestRow:
        """A JSON `POST path` for the deployment's workers, from the control API's submit
        route (which knows nothing of the data path's request type)."""
        req = UpstreamRequest(
            key=key,
            deployment=deployment,
            method="POST",
            path=path,
            body=body,
            headers=headers,
            stream=False,
            session_id=session_id,
        )
        return await self.submit(req, webhook_url)

    async def submit_openai(self, req: UpstreamRequest, webhook_url: str | None) -> dict[str, Any]:
        """The X-Async branch of the proxy: the 202 body."""
        row = await self.submit(req, webhook_url)
        return accepted_view(row, poll_url(row, via_deployment=False))

    # -- read, cancel, list ---------------------------------------------------------------

    async def visible(
        self, request_id: str, key: ApiKey, deployment: str | None = None
    ) -> AsyncRequestRow:
        """The request when this key may see it; 404 otherwise (other keys' requests are not
        acknowledged to exist). Admin keys see all."""
        row = await self.store.get(request_id)
        if (
            row is None
            or (not key.admin and row.key_id != key.id)
            or (deployment is not None and row.deployment != deployment)
        ):
            raise NotFound(f"Async request {request_id!r} not found")
        return row

    async def view(
        self, request_id: str, key: ApiKey, deployment: str | None = None
    ) -> dict[str, Any]:
        return request_view(await self.visible(request_id, key, deployment), request=True)

    async def cancel(
        self, request_id: str, key: ApiKey, deployment: str | None = None
    ) -> dict[str, Any]:
        row = await self.visible(request_id, key, deployment)
        cancelled = await self.store.cancel(request_id, self._now())
        if cancelled is None:
            current = await self.store.get(request_id)
            state = current.status if current is not None else row.status
            raise Conflict(f"Async request {request_id!r} already ended: {state}")
        self.runner.abort(request_id)
        if cancelled.webhook_url:
            self.webhooks.wake()
        return request_view(cancelled)

    async def listing(
        self, deployment: str, key: ApiKey, status: str | None, limit: int
    ) -> dict[str, Any]:
        if status is not None and status not in {s.value for s in Status}:
            raise BadRequest(
                f"status: must be one of {', '.join(s.value for s in Status)}, got {status!r}"
            )
        spec = self._spec_of(deployment)
        owner = None if key.admin else key.id
        rows = await self.store.list(deployment, status, owner, min(max(limit, 1), MAX_LIST))
        counts = await self.store.counts(deployment, owner)
        return {
            "deployment": deployment,
            "async_enabled": spec.async_enabled if spec is not None else False,
            "queue_depth": counts.get(Status.PENDING.value, 0),
            "processing": counts.get(Status.PROCESSING.value, 0),
            "counts": {s.value: counts.get(s.value, 0) for s in Status},
            "data": [request_view(r, result=False) for r in rows],
        }

    async def webhook_secret(self, key_id: str) -> str:
        return await self.store.webhook_secret(key_id, self._now())
