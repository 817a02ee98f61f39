"""`torpor.Client`: the synchronous, typed client of a torpor server."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
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


class Client:
    """A torpor server's REST API, typed. `url` and `api_key` default to `TORPOR_URL` and
    `TORPOR_API_KEY`, else http://127.0.0.1:8000 and this machine's admin key. Failures
    raise the typed exceptions of `torpor.sdk.errors`."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        max_parallel: int = 16,
    ) -> None:
        self.url = ops.resolve_url(url)
        self.api_key = ops.resolve_key(api_key)
        self._http = httpx.Client(
            transport=transport, **ops.http_options(self.url, self.api_key, max_parallel)
        )
        self.max_parallel = max_parallel

    # -- plumbing -------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self, op: ops.Op[T]) -> T:
        try:
            response = self._http.request(op.method, op.path, **ops.request_args(op))
        except httpx.TransportError as exc:
            raise ops.transport_error(self.url, exc) from exc
        return ops.answer(op, response)

    def _lines(
        self, method: str, path: str, *, params: Mapping[str, str] | None = None, json: Any = None
    ) -> Iterator[str]:
        try:
            with self._http.stream(
                method, path, params=params, json=json, timeout=ops.STREAM_TIMEOUT
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ops.failure(response)
                yield from response.iter_lines()
        except httpx.TransportError as exc:
            raise ops.transport_error(self.url, exc) from exc

    # -- deployments ----------------------------------------------------------------------

    def create_deployment(self, spec: DeploymentSpec | Mapping[str, Any]) -> Deployment:
        return self._run(ops.create_deployment(spec))

    def list_deployments(self) -> list[Deployment]:
        return self._run(ops.list_deployments())

    def get_deployment(self, name: str) -> Deployment:
        return self._run(ops.get_deployment(name))

    def update_deployment(
        self, name: str, changes: DeploymentPatch | Mapping[str, Any]
    ) -> Deployment:
        return self._run(ops.update_deployment(name, changes))

    def delete_deployment(self, name: str) -> None:
        self._run(ops.delete_deployment(name))

    def events(self, name: str) -> list[Event]:
        return self._run(ops.events(name))

    def wait_until_ready(
        self,
        name: str,
        timeout: float = 600.0,
        on_progress: Callable[[Deployment], None] | None = None,
    ) -> Deployment:
        """Poll until the setup is done (`running`); `on_progress` sees every view. Raises
        DeploymentFailedError when it failed, TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        attempt = 0
        while True:
            dep = self.get_deployment(name)
            if on_progress is not None:
                on_progress(dep)
            if ops.readiness(dep):
                return dep
            if time.monotonic() > deadline:
                raise TimeoutError(f"deployment {name} not ready after {timeout}s")
            time.sleep(ops.poll_delay(attempt))
            attempt += 1

    def logs(
        self, name: str, worker: str | None = None, tail: int = 200, follow: bool = False
    ) -> Iterator[str]:
        """Log lines ("[worker-id] text"); with follow=True new lines until closed."""
        path, params = ops.logs_request(name, worker, tail, follow)
        yield from self._lines("GET", path, params=params)

    # -- keys, usage, gpus ----------------------------------------------------------------

    def create_key(
        self,
        name: str,
        deployments: Sequence[str] | None = None,
        admin: bool = False,
        *,
        budget_usd_monthly: float | None = None,
        budget_tokens_monthly: int | None = None,
        plan_tokens: int | None = None,
    ) -> CreatedKey:
        return self._run(
            ops.create_key(
                name, deployments, admin, budget_usd_monthly, budget_tokens_monthly, plan_tokens
            )
        )

    def list_keys(self) -> list[ApiKey]:
        return self._run(ops.list_keys())

    def revoke_key(self, key_id: str) -> None:
        self._run(ops.revoke_key(key_id))

    def usage_summary(self, window: str = "24h", deployment: str | None = None) -> UsageSummary:
        return self._run(ops.usage_summary(window, deployment))

    def usage_by_deployment(self, window: str = "24h") -> list[UsageSummary]:
        return self._run(ops.usage_by_deployment(window))

    def invoices(self, month: str | None = None) -> dict[str, Any]:
        return self._run(ops.invoices(month))

    def gpus(self) -> list[Gpu]:
        return self._run(ops.gpus())

    def gpu_nodes(self) -> list[GpuNode]:
        """Devices per node (node id, address, type, which worker holds each)."""
        return self._run(ops.gpu_nodes())

    # -- async requests -------------------------------------------------------------------

    def submit(self, deployment: str, path: str, body: Mapping[str, Any]) -> AsyncRequest:
        """Queue `POST {path}` with JSON `body` on the deployment's workers."""
        return self._run(ops.submit(deployment, path, body))

    def get_request(self, request_id: str) -> AsyncRequest:
        return self._run(ops.get_request(request_id))

    def cancel_request(self, request_id: str) -> AsyncRequest:
        return self._run(ops.cancel_request(request_id))

    def wait_request(self, request_id: str, timeout: float | None = None) -> AsyncRequest:
        """Poll until the request ended; TimeoutError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        attempt = 0
        while True:
            req = self.get_request(request_id)
            if req.done:
                return req
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"async request {request_id} not done after {timeout}s")
            time.sleep(ops.poll_delay(attempt))
            attempt += 1

    # -- functions and images -------------------------------------------------------------

    def call_function(
        self,
        app: str,
        name: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        method: str | None = None,
        codec: Codec = JSON_CODEC,
    ) -> Any:
        """Call a deployed function (or a method of a class), with JSON arguments unless
        `codec` pickles them (functions deployed with `serialization="pickle"`)."""
        return self._run(ops.call_function(app, name, method, args, kwargs or {}, codec))

    def map_function(
        self,
        app: str,
        name: str,
        inputs: Sequence[Any],
        method: str | None = None,
        codec: Codec = JSON_CODEC,
    ) -> list[Any]:
        """One call per input (up to `max_parallel` at once), results in input order."""
        with ThreadPoolExecutor(max_workers=self.max_parallel) as pool:
            futures = [
                pool.submit(self._run, ops.call_function(app, name, method, [x], {}, codec))
                for x in inputs
            ]
            return [f.result() for f in futures]

    def spawn_function(
        self,
        app: str,
        name: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        method: str | None = None,
        codec: Codec = JSON_CODEC,
    ) -> AsyncRequest:
        """Queue a call as an async request; read it with `function_result`."""
        return self._run(ops.spawn_function(app, name, method, args, kwargs or {}, codec))

    def function_result(
        self, request_id: str, timeout: float | None = None, codec: Codec = JSON_CODEC
    ) -> Any:
        """Wait for a spawned call and return its value (or raise its typed error)."""
        return ops.function_result(self.wait_request(request_id, timeout), codec)

    def build_image(
        self,
        definition: Mapping[str, Any],
        on_log: Callable[[str], None] | None = None,
        contents: Mapping[str, str] | None = None,
    ) -> ImageInfo:
        """Build an image on the server (or find it built): progress lines go to `on_log`;
        `contents` carries its local files (`Image.contents()`)."""
        path, body = ops.build_image(definition, contents)
        for line in self._lines("POST", path, json=body):
            image = ops.image_event(line, on_log)
            if image is not None:
                return image
        raise TorporError(ops.NO_IMAGE, code="image_build_failed")
