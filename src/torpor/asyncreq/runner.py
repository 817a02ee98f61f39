"""The runner: one loop that claims pending async requests from the database and runs each
through the same dispatch (admission, retries, metering) as a synchronous request.

Claimed requests are marked `processing` before they run; a crash leaves them so, and the
next start (and a periodic check) hands them back to `pending`. A request ends `completed`,
`failed` or `cancelled`, and only a conditional write moves it there, so a cancel that came
first is never overwritten by a late result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from torpor.asyncreq.policy import (
    Outcome,
    backoff_s,
    free_slots,
    in_flight_limit,
    is_transient,
    outcome_of,
    outcome_of_error,
)
from torpor.asyncreq.store import AsyncStore
from torpor.asyncreq.tables import AsyncRequestRow
from torpor.errors import TorporError, Unauthorized
from torpor.gateway.dispatch import BufferedResponse, Dispatcher, UpstreamRequest
from torpor.loops import tick_forever
from torpor.spec import DeploymentSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunnerPolicy:
    poll_interval_s: float
    stale_check_interval_s: float
    max_retries: int
    retry_backoff_base_s: float
    retry_backoff_max_s: float


class Runner:
    def __init__(
        self,
        store: AsyncStore,
        dispatcher: Callable[[], Dispatcher],
        spec_of: Callable[[str], DeploymentSpec | None],
        now: Callable[[], datetime],
        policy: RunnerPolicy,
        on_finished: Callable[[], None],
    ):
        self._store = store
        self._dispatcher = dispatcher
        self._spec_of = spec_of
        self._now = now
        self._policy = policy
        self._on_finished = on_finished
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._deployment_of: dict[str, str] = {}
        self._last_stale_check = 0.0

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        released = await self._store.release_stale(())
        if released:
            log.warning(
                "%d async request(s) interrupted by the last stop are queued again", released
            )
        self._last_stale_check = time.monotonic()
        self._loop = asyncio.create_task(self._run(), name="torpor-async-runner")

    async def stop(self) -> None:
        """Stop claiming and interrupt running requests; they stay accepted and run again
        after the next start."""
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
        interrupted = list(self._tasks)
        for task in self._tasks.values():
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        try:
            await self._store.release(interrupted)
        except Exception:
            log.exception("could not requeue interrupted async requests (the next start will)")

    def wake(self) -> None:
        self._wake.set()

    def abort(self, request_id: str) -> bool:
        """Cancel the task running a request (the upstream request is dropped with it)."""
        task = self._tasks.get(request_id)
        if task is None or task.done():
            return False
        task.cancel()
        return True

    def running(self) -> Counter[str]:
        return Counter(self._deployment_of.values())

    # -- the loop -------------------------------------------------------------------------

    async def _run(self) -> None:
        await tick_forever(self.tick, self._wake, self._policy.poll_interval_s, "async runner tick")

    async def tick(self) -> None:
        if time.monotonic() - self._last_stale_check >= self._policy.stale_check_interval_s:
            self._last_stale_check = time.monotonic()
            stale = await self._store.release_stale(set(self._tasks))
            if stale:
                log.warning("%d async request(s) were stuck processing; queued again", stale)
        now = self._now()
        pending = await self._store.pending_counts(now)
        if not pending:
            return
        limits = {dep: self._limit(dep) for dep in pending}
        for deployment, n in free_slots(pending, self.running(), limits).items():
            for row in await self._store.claim(deployment, n, now):
                self._launch(row)

    def _limit(self, deployment: str) -> int:
        spec = self._spec_of(deployment)
        if spec is None:
            return 1  # gone: dispatch fails these one by one with a 404
        return in_flight_limit(spec.max_workers, spec.concurrency, spec.max_queue)

    def _launch(self, row: AsyncRequestRow) -> None:
        task = asyncio.create_task(self._execute(row), name=f"torpor-async-{row.id}")
        self._tasks[row.id] = task
        self._deployment_of[row.id] = row.deployment

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.pop(row.id, None)
            self._deployment_of.pop(row.id, None)
            if not t.cancelled() and t.exception() is not None:
                log.error("async request %s: %r", row.id, t.exception())
            self._wake.set()

        task.add_done_callback(done)

    # -- one request ----------------------------------------------------------------------

    async def _execute(self, row: AsyncRequestRow) -> None:
        key = await self._store.active_key(row.key_id)
        if key is None:
            exc = Unauthorized("The API key that submitted this request was revoked")
            await self._finish(row, outcome_of_error(exc), None, None)
            return
        req = UpstreamRequest(
            key=key,
            deployment=row.deployment,
            method=row.method,
            path=row.path,
            body=row.body,
            headers=dict(row.headers),
            stream=False,
            session_id=row.session_id,
        )
        sink = BufferedResponse()
        try:
            await self._dispatcher().dispatch(req, sink)
        except TorporError as exc:
            if is_transient(exc) and row.retries < self._policy.max_retries:
                retries = row.retries + 1
                delay = backoff_s(
                    retries, self._policy.retry_backoff_base_s, self._policy.retry_backoff_max_s
                )
                log.info(
                    "async request %s refused (%s); retry %d in %.1fs", row.id, exc, retries, delay
                )
                await self._store.requeue(row.id, retries, self._now() + timedelta(seconds=delay))
                return
            await self._finish(row, outcome_of_error(exc), None, None)
            return
        except Exception:
            log.exception("async request %s failed", row.id)
            await self._finish(row, outcome_of_error(TorporError()), None, None)
            return
        content_type = next(
            (v.decode("latin-1") for k, v in sink.headers if k.lower() == b"content-type"), None
        )
        body = sink.content
        await self._finish(row, outcome_of(sink.status, body), body, content_type)

    async def _finish(
        self,
        row: AsyncRequestRow,
        outcome: Outcome,
        body: bytes | None,
        content_type: str | None,
    ) -> None:
        written = await self._store.finish(row.id, outcome, body, content_type, self._now())
        if written and row.webhook_url:
            self._on_finished()
