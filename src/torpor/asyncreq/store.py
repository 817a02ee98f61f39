"""Database access for async requests: small typed methods, each one transaction."""

from __future__ import annotations

import secrets
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import case, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from torpor.asyncreq.policy import CANCELLABLE, TERMINAL, Outcome, Status, WebhookState
from torpor.asyncreq.tables import AsyncRequestRow, WebhookSecretRow
from torpor.auth import ApiKey, key_of_row
from torpor.store.tables import ApiKeyRow

CANCELLED_ERROR: dict[str, Any] = {
    "message": "Request cancelled",
    "type": "invalid_request_error",
    "code": "cancelled",
    "param": None,
}


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


class AsyncStore:
    def __init__(self, engine: AsyncEngine):
        self._session = async_sessionmaker(engine, expire_on_commit=False)

    # -- requests -------------------------------------------------------------------------

    async def insert(self, row: AsyncRequestRow) -> None:
        async with self._session.begin() as s:
            s.add(row)

    async def get(self, request_id: str) -> AsyncRequestRow | None:
        async with self._session() as s:
            return await s.get(AsyncRequestRow, request_id)

    async def pending_counts(self, now: datetime) -> dict[str, int]:
        """Pending requests that are due now, by deployment."""
        async with self._session() as s:
            q = (
                select(AsyncRequestRow.deployment, func.count())
                .where(AsyncRequestRow.status == Status.PENDING.value, _due(now))
                .group_by(AsyncRequestRow.deployment)
            )
            return {dep: int(n) for dep, n in (await s.execute(q)).all()}

    async def claim(self, deployment: str, limit: int, now: datetime) -> list[AsyncRequestRow]:
        """Mark the oldest due pending requests of a deployment processing; returns them.

        A conditional UPDATE, so a request cancelled in the meantime stays cancelled."""
        async with self._session() as s:
            q = (
                select(AsyncRequestRow.id)
                .where(
                    AsyncRequestRow.deployment == deployment,
                    AsyncRequestRow.status == Status.PENDING.value,
                    _due(now),
                )
                .order_by(AsyncRequestRow.created_at, AsyncRequestRow.id)
                .limit(limit)
            )
            ids = list((await s.scalars(q)).all())
        if not ids:
            return []
        async with self._session.begin() as s:
            await s.execute(
                update(AsyncRequestRow)
                .where(
                    AsyncRequestRow.id.in_(ids),
                    AsyncRequestRow.status == Status.PENDING.value,
                )
                .values(
                    status=Status.PROCESSING.value,
                    started_at=now,
                    attempts=AsyncRequestRow.attempts + 1,
                )
            )
            q2 = (
                select(AsyncRequestRow)
                .where(
                    AsyncRequestRow.id.in_(ids),
                    AsyncRequestRow.status == Status.PROCESSING.value,
                )
                .order_by(AsyncRequestRow.created_at, AsyncRequestRow.id)
            )
            return list((await s.scalars(q2)).all())

    async def finish(
        self,
        request_id: str,
        outcome: Outcome,
        response: bytes | None,
        response_type: str | None,
        now: datetime,
    ) -> bool:
        """Write the result of a request still processing (a cancel that came first wins)."""
        async with self._session.begin() as s:
            result = await s.execute(
                update(AsyncRequestRow)
                .where(
                    AsyncRequestRow.id == request_id,
                    AsyncRequestRow.status == Status.PROCESSING.value,
                )
                .values(
                    status=outcome.status.value,
                    status_code=outcome.status_code,
                    error=outcome.error,
                    response=response,
                    response_type=response_type,
                    finished_at=now,
                    webhook_state=_webhook_pending(),
                    webhook_next_at=now,
                )
            )
            return _rowcount(result) > 0

    async def requeue(self, request_id: str, retries: int, not_before: datetime) -> bool:
        async with self._session.begin() as s:
            result = await s.execute(
                update(AsyncRequestRow)
                .where(
                    AsyncRequestRow.id == request_id,
                    AsyncRequestRow.status == Status.PROCESSING.value,
                )
                .values(status=Status.PENDING.value, retries=retries, not_before=not_before)
            )
            return _rowcount(result) > 0

    async def release(self, request_ids: Collection[str]) -> None:
        """Hand requests interrupted by a shutdown back to the queue."""
        if not request_ids:
            return
        async with self._session.begin() as s:
            await s.execute(
                update(AsyncRequestRow)
                .where(
                    AsyncRequestRow.id.in_(list(request_ids)),
                    AsyncRequestRow.status == Status.PROCESSING.value,
                )
                .values(status=Status.PENDING.value)
            )

    async def cancel(self, request_id: str, now: datetime) -> AsyncRequestRow | None:
        """Cancel a pending or processing request; None when it had already ended."""
        async with self._session.begin() as s:
            result = await s.execute(
                update(AsyncRequestRow)
                .where(
                    AsyncRequestRow.id == request_id,
                    AsyncRequestRow.status.in_([st.value for st in CANCELLABLE]),
                )
                .values(
                    status=Status.CANCELLED.value,
                    finished_at=now,
                    error=CANCELLED_ERROR,
                    webhook_state=_webhook_pending(),
                    webhook_next_at=now,
                )
            )
            if _rowcount(result) == 0:
                return None
            return await s.get(AsyncRequestRow, request_id)

    async def release_stale(self, running: Collection[str]) -> int:
        """Requests marked processing that no task of this process runs go back to pending."""
        async with self._session.begin() as s:
            q = update(AsyncRequestRow).where(AsyncRequestRow.status == Status.PROCESSING.value)
            if running:
                q = q.where(AsyncRequestRow.id.not_in(list(running)))
            result = await s.execute(q.values(status=Status.PENDING.value))
            return _rowcount(result)

    async def list(
        self, deployment: str, status: str | None, key_id: str | None, limit: int
    ) -> Sequence[AsyncRequestRow]:
        async with self._session() as s:
            q = select(AsyncRequestRow).where(AsyncRequestRow.deployment == deployment)
            if status is not None:
                q = q.where(AsyncRequestRow.status == status)
            if key_id is not None:
                q = q.where(AsyncRequestRow.key_id == key_id)
            q = q.order_by(AsyncRequestRow.created_at.desc()).limit(limit)
            return (await s.scalars(q)).all()

    async def counts(self, deployment: str, key_id: str | None) -> dict[str, int]:
        async with self._session() as s:
            q = (
                select(AsyncRequestRow.status, func.count())
                .where(AsyncRequestRow.deployment == deployment)
                .group_by(AsyncRequestRow.status)
            )
            if key_id is not None:
                q = q.where(AsyncRequestRow.key_id == key_id)
            return {st: int(n) for st, n in (await s.execute(q)).all()}

    async def sweep(self, cutoff: datetime) -> int:
        """Delete ended requests older than the cutoff whose webhook is not still due."""
        async with self._session.begin() as s:
            result = await s.execute(
                delete(AsyncRequestRow).where(
                    AsyncRequestRow.status.in_([st.value for st in TERMINAL]),
                    AsyncRequestRow.finished_at < cutoff,
                    or_(
                        AsyncRequestRow.webhook_state.is_(None),
                        AsyncRequestRow.webhook_state != WebhookState.PENDING.value,
                    ),
                )
            )
            return _rowcount(result)

    # -- webhooks -------------------------------------------------------------------------

    async def due_webhooks(
        self, now: datetime, limit: int, busy: Collection[str]
    ) -> Sequence[AsyncRequestRow]:
        async with self._session() as s:
            q = select(AsyncRequestRow).where(
                AsyncRequestRow.webhook_state == WebhookState.PENDING.value,
                or_(
                    AsyncRequestRow.webhook_next_at.is_(None),
                    AsyncRequestRow.webhook_next_at <= now,
                ),
            )
            if busy:
                q = q.where(AsyncRequestRow.id.not_in(list(busy)))
            q = q.order_by(AsyncRequestRow.webhook_next_at).limit(limit)
            return (await s.scalars(q)).all()

    async def webhook_done(
        self,
        request_id: str,
        state: WebhookState,
        attempts: int,
        next_at: datetime | None,
        error: str | None,
    ) -> None:
        async with self._session.begin() as s:
            await s.execute(
                update(AsyncRequestRow)
                .where(AsyncRequestRow.id == request_id)
                .values(
                    webhook_state=state.value,
                    webhook_attempts=attempts,
                    webhook_next_at=next_at,
                    webhook_error=error,
                )
            )

    async def webhook_secret(self, key_id: str, now: datetime) -> str:
        """The key's webhook secret, created on first use."""
        async with self._session() as s:
            row = await s.get(WebhookSecretRow, key_id)
            if row is not None:
                return row.secret
        try:
            async with self._session.begin() as s:
                secret = "whsec_" + secrets.token_urlsafe(32)
                s.add(WebhookSecretRow(key_id=key_id, secret=secret, created_at=now))
            return secret
        except IntegrityError:
            async with self._session() as s:  # created at the same moment elsewhere
                row = await s.get(WebhookSecretRow, key_id)
                assert row is not None
                return row.secret

    # -- keys -----------------------------------------------------------------------------

    async def active_key(self, key_id: str) -> ApiKey | None:
        """The key that submitted a request, unless it was revoked since."""
        async with self._session() as s:
            row = await s.get(ApiKeyRow, key_id)
        if row is None or row.revoked_at is not None:
            return None
        return key_of_row(row)  # with its budgets: a request reserves when it runs


def _due(now: datetime) -> Any:
    return or_(AsyncRequestRow.not_before.is_(None), AsyncRequestRow.not_before <= now)


def _webhook_pending() -> Any:
    """pending when the request has a webhook URL, else left empty."""
    return case(
        (AsyncRequestRow.webhook_url.is_not(None), WebhookState.PENDING.value),
        else_=None,
    )
