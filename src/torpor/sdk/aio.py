"""`torpor.AsyncClient`: the asyncio twin of `torpor.Client` (same calls, awaited)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import httpx

from torpor.funcproto.pickling import JSON_CODEC, Codec
from torpor.sdk import _ops as ops
from torpor.sdk.errors import TorporError
from torpor.sdk.models import (
    ApiKey,
    AsyncRequest,
    CreatedKey,
    Deployment,
    DeploymentPatch,
    DeploymentSpec,
    Event,
    Gpu,
    GpuNode,
    ImageInfo,
    UsageSummary,
)

T = TypeVar("T")


class AsyncClient:
    """See `torpor.Client`; every call is a coroutine, `logs` an async iterator."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        max_parallel: int = 16,
    ) -> None:
        self.url = ops.resolve_url(url)
        self.api_key = ops.resolve_key(api_key)
        self._http = httpx.AsyncClient(
            transport=transport, **ops.http_options(self.url, self.api_key, max_parallel)
        )
        self.max_parallel = max_parallel

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _run(self, op: ops.Op[T]) -> T:
        try:
            response = await self._http.request(op.method, op.path, **ops.request_args(op))
        except httpx.TransportError as exc:
            raise ops.transport_error(self.url, exc) from exc
        return ops.answer(op, response)

    async def _lines(
        self, method: str, path: str, *, params: Mapping[str, str] | None = None, json: Any = None
    ) -> AsyncIterator[str]:
        try:
            async with self._http.stream(
                method, path, params=params, json=json, timeout=ops.STREAM_TIMEOUT
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise ops.failure(response)
                async for line in response.aiter_lines():
                    yield line
        except httpx.TransportError as exc:
            raise ops.transport_error(self.url, exc) from exc

    # -- deployments ----------------------------------------------------------------------

    async def create_deployment(self, spec: DeploymentSpec | Mapping[str, Any]) -> Deployment:
        return await self._run(ops.create_deployment(spec))

    async def list_deployments(self) -> list[Deployment]:
        return await self._run(ops.list_deployments())

    async def get_deployment(self, name: str) -> Deployment:
        return await self._run(ops.get_deployment(name))

    async def update_deployment(
        self, name: str, changes: DeploymentPatch | Mapping[str, Any]
    ) -> Deployment:
        return await self._run(ops.update_deployment(name, changes))

    async def delete_deployment(self, name: str) -> None:
        await self._run(ops.delete_deployment(name))

    async def events(self, name: str) -> list[Event]:
        return await self._run(ops.events(name))

    async def wait_until_ready(
        self,
        name: str,
        timeout: float = 600.0,  # noqa: ASYNC109 (the same call as Client's)
        on_progress: Callable[[Deployment], None] | None = None,
    ) -> Deployment:
        deadline = time.monotonic() + timeout
        attempt = 0
        while True:
            dep = await self.get_deployment(name)
            if on_progress is not None:
                on_progress(dep)
            if ops.readiness(dep):
                return dep
            if time.monotonic() > deadline:
                raise TimeoutError(f"deployment {name} not ready after {timeout}s")
            await asyncio.sleep(ops.poll_delay(attempt))
            attempt += 1

    async def logs(
        self, name: str, worker: str | None = None, tail: int = 200, follow: bool = False
    ) -> AsyncIterator[str]:
        path, params = ops.logs_request(name, worker, tail, follow)
        async for line in self._lines("GET", path, params=params):
            yield line

    # -- keys, usage, gpus ----------------------------------------------------------------

    async def create_key(
        self,
        name: str,
        deployments: Sequence[str] | None = None,
        admin: bool = False,
        *,
        budget_usd_monthly: float | None = None,
        budget_tokens_monthly: int | None = None,
        plan_tokens: int | None = None,
    ) -> CreatedKey:
        return await self._run(
            ops.create_key(
                name, deployments, admin, budget_usd_monthly, budget_tokens_monthly, plan_tokens
            )
        )

    async def list_keys(self) -> list[ApiKey]:
        return await self._run(ops.list_keys())

    async def revoke_key(self, key_id: str) -> None:
        await self._run(ops.revoke_key(key_id))

    async def usage_summary(
        self, window: str = "24h", deployment: str | None = None
    ) -> UsageSummary:
        return await self._run(ops.usage_summary(window, deployment))

    async def usage_by_deployment(self, window: str = "24h") -> list[UsageSummary]:
        return await self._run(ops.usage_by_deployment(window))

    async def invoices(self, month: str | None = None) -> dict[str, Any]:
        return await self._run(ops.invoices(month))

    async def gpus(self) -> list[Gpu]:
        return await self._run(ops.gpus())

    async def gpu_nodes(self) -> list[GpuNode]:
        """Devices per node (node id, address, type, which worker holds each)."""
        return await self._run(ops.gpu_nodes())

    # -- async requests -------------------------------------------------------------------

    async def submit(self, deployment: str, path: str, body: Mapping[str, Any]) -> AsyncRequest:
        return await self._run(ops.submit(deployment, path, body))

    async def get_request(self, request_id: str) -> AsyncRequest:
        return await self._run(ops.get_request(request_id))

    async def cancel_request(self, request_id: str) -> AsyncRequest:
        return await self._run(ops.cancel_request(request_id))

    async def wait_request(
        self,
        request_id: str,
        timeout: float | None = None,  # noqa: ASYNC109 (the same call as Client's)
    ) -> AsyncRequest:
        deadline = None if timeout is None else time.monotonic() + timeout
        attempt = 0
        while True:
            req = await self.get_request(request_id)
            if req.done:
                return req
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"async request {request_id} not done after {timeout}s")
            await asyncio.sleep(ops.poll_delay(attempt))
            attempt += 1

    # -- functions and images -------------------------------------------------------------

    async def call_function(
        self,
        app: str,
        name: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        method: str | None = None,
        codec: Codec = JSON_CODEC,
    ) -> Any:
        return await self._run(ops.call_function(app, name, method, args, kwargs or {}, codec))

    async def map_function(
        self,
        app: str,
        name: str,
        inputs: Sequence[Any],
        method: str | None = None,
        codec: Codec = JSON_CODEC,
    ) -> list[Any]:
        limit = asyncio.Semaphore(self.max_parallel)

        async def one(x: Any) -> Any:
            async with limit:
                return await self._run(ops.call_function(app, name, method, [x], {}, codec))

        return list(await asyncio.gather(*(one(x) for x in inputs)))

    async def spawn_function(
        self,
        app: str,
        name: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        method: str | None = None,
        codec: Codec = JSON_CODEC,
    ) -> AsyncRequest:
        return await self._run(ops.spawn_function(app, name, method, args, kwargs or {}, codec))

    async def function_result(
        self,
        request_id: str,
        timeout: float | None = None,  # noqa: ASYNC109 (the same call as Client's)
        codec: Codec = JSON_CODEC,
    ) -> Any:
        return ops.function_result(await self.wait_request(request_id, timeout), codec)

    async def build_image(
        self,
        definition: Mapping[str, Any],
        on_log: Callable[[str], None] | None = None,
        contents: Mapping[str, str] | None = None,
    ) -> ImageInfo:
        path, body = ops.build_image(definition, contents)
        async for line in self._lines("POST", path, json=body):
            image = ops.image_event(line, on_log)
            if image is not None:
                return image
        raise TorporError(ops.NO_IMAGE, code="image_build_failed")
