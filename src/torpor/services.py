"""Everything one torpor process runs, built once and passed down (no singletons)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import aiohttp

from torpor.admission import Admission
from torpor.asyncreq import AsyncDeps, AsyncRequests
from torpor.auth import ApiKey, KeyRing, bootstrap_admin
from torpor.controller import Controller
from torpor.datadir import prepare_data_dir
from torpor.engines import engine_for
from torpor.engines.base import Engine
from torpor.errors import ShuttingDown
from torpor.functions.builder import ImageBuilder
from torpor.gateway.dispatch import Dispatcher
from torpor.gateway.proxy import ProxyDeps
from torpor.gateway.state import StateSweeper, StoredState
from torpor.gpus import GpuPool, detect_devices, parse_declared
from torpor.metering.budget import Caps
from torpor.metering.meter import Meter
from torpor.metering.metrics import Metrics
from torpor.metering.pricing import Prices
from torpor.metering.queries import UsageHistory
from torpor.metering.reserve import context_limit
from torpor.models import BUNDLED_MODEL
from torpor.runtime import Runtime
from torpor.runtime.containers import instance_id
from torpor.runtime.local import LocalRuntime
from torpor.settings import Settings
from torpor.spec import DeploymentPrices, DeploymentSpec
from torpor.store import Store, open_store
from torpor.store.db import as_utc, utcnow

log = logging.getLogger(__name__)

DEFAULT_DEPLOYMENT = "smollm2"
_INITIALIZED_MARKER = ".initialized"


def default_deployment() -> DeploymentSpec:
    return DeploymentSpec(
        name=DEFAULT_DEPLOYMENT,
        description="SmolLM2-135M-Instruct (bundled GGUF) on llama.cpp, scaled to zero",
        framework="llama.cpp",
        model=BUNDLED_MODEL,
        min_workers=0,
        max_workers=1,
        # llama-cpp-python's server answers one request at a time: requests wait in
        # torpor's queue, where the autoscaler sees them.
        concurrency=1,
        idle_timeout_s=300,
    )


@dataclass
class Services:
    settings: Settings
    # Filled by start(); the app's lifespan calls it.
    store: Store = field(init=False)
    keys: KeyRing = field(init=False)
    admission: Admission = field(init=False)
    controller: Controller = field(init=False)
    runtime: Runtime = field(init=False)
    gpus: GpuPool = field(init=False)
    async_requests: AsyncRequests = field(init=False)
    metrics: Metrics = field(init=False)
    meter: Meter = field(init=False)
    images: ImageBuilder = field(init=False)
    state: StoredState = field(init=False)
    _sweeper: StateSweeper | None = field(default=None, init=False)
    _dispatcher: Dispatcher | None = field(default=None, init=False)
    _proxy_deps: ProxyDeps | None = field(default=None, init=False)
    _prices: dict[str, tuple[DeploymentSpec, Prices]] = field(default_factory=dict, init=False)
    _http: aiohttp.ClientSession | None = field(default=None, init=False)
    generated_admin_key: str | None = field(default=None, init=False)

    def http(self) -> aiohttp.ClientSession:
        assert self._http is not None, "services not started"
        return self._http

    async def start(self) -> None:
        s = self.settings
        for warning in prepare_data_dir(s.data_dir, s.resolved_database_url):
            log.warning("%s", warning)
        self._http = aiohttp.ClientSession(
            # One session per loop, pooled; no limit (admission bounds concurrency).
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=s.request_timeout_s, sock_connect=5),
        )
        self.store = await open_store(s.resolved_database_url)
        self.keys = KeyRing(self.store)
        await self.keys.load()
        self.state = StoredState(self.store.engine, utcnow)
        self.generated_admin_key = await bootstrap_admin(self.keys, s.admin_key, s.data_dir)
        self.gpus = GpuPool(parse_declared(s.gpus) if s.gpus else detect_devices())
        self.images = ImageBuilder(s.data_dir / "images", record_only=s.runtime != "local")
        self.admission = Admission(time.monotonic, self._on_demand)
        self.metrics = Metrics()
        self.meter = Meter(
            self.store,
            prices_for=self.prices_for,
            caps_for_deployment=self._caps_for,
            storage_dirs=self._storage_dirs,
            metrics=self.metrics,
            flush_interval_s=s.metering_flush_interval_s,
            storage_interval_s=s.storage_sample_interval_s,
            raw_retention_days=s.usage_raw_retention_days,
            context_for=self._context_for,
            heartbeat_s=s.gpu_heartbeat_s,
            reservation_ttl_s=s.reservation_ttl_s,
        )
        await self.meter.load()
        self.runtime = await self._runtime()
        self.controller = Controller(
            s,
            self.store,
            self.runtime,
            self.admission,
            self.gpus,
            time.monotonic,
            meter=self.meter,
            history=UsageHistory(self.store.engine),
            wall=self._ladder_wall(),
        )
        self.metrics.watch(self._queue_gauges, self._worker_gauges)
        self._dispatcher = Dispatcher(
            gate_for=self.admission.get,
            http=self.http,
            on_worker_broken=self.controller.wake,
            on_worker_timeout=self.controller.suspects.report,
            keepalive_interval_s=s.keepalive_interval_s,
            request_timeout_s=s.request_timeout_s,
            connect_timeout_s=s.upstream_connect_timeout_s,
            meter=self.meter if s.metering_enabled else None,
        )
        orphans = await self.controller.load()
        if orphans:
            log.warning("stopped %d orphan worker(s) left by an earlier run", orphans)
        marker = s.data_dir / _INITIALIZED_MARKER
        if not marker.exists():
            if (
                s.create_default_deployment
                and DEFAULT_DEPLOYMENT not in self.controller.deployments
            ):
                await self.controller.create(default_deployment())
            marker.write_text("torpor data dir\n")
        self.controller.start()
        self.meter.start()
        self.async_requests = AsyncRequests(
            AsyncDeps(s, self.store, lambda: self.dispatcher, self._spec_of, self.http, utcnow)
        )
        await self.async_requests.start()
        self._sweeper = StateSweeper(
            self.state, s.stored_state_retention_s, s.async_sweep_interval_s
        )
        self._sweeper.start()

    def begin_shutdown(self) -> None:
        """Stop taking work: every request still queued for a worker gets a 503 now (the
        proxy refuses new ones); requests on workers go on until the grace period ends."""
        error = ShuttingDown(headers={"Retry-After": "5"})
        for gate in list(self.admission.gates.values()):
            gate.blocked = error
            gate.fail_waiters(error)

    async def _runtime(self) -> Runtime:
        s = self.settings
        if s.runtime == "ray":
            from torpor.runtime.ray import RayRuntime

            ray = RayRuntime(
                self.http,
                s.ray_address,
                instance_id(s.data_dir),
                node_dir=s.node_cache,
                log_dir=s.deployments_dir / "_orphans",
            )
            await ray.connect()  # RayUnavailable: `torpor serve` exits with a clear error
            return ray
        return LocalRuntime(self.http, instance=instance_id(s.data_dir))

    async def stop(self) -> None:
        await self.async_requests.stop()  # first: interrupted requests stay accepted
        if self._sweeper is not None:
            await self._sweeper.stop()
        await self.controller.shutdown()
        close = getattr(self.runtime, "close", None)
        if close is not None:
            await close()
        await self.meter.close()  # after the controller: worker stops are billed too
        await self.store.close()
        if self._http is not None:
            await self._http.close()

    def _on_demand(self, _deployment: str) -> None:
        self.controller.wake()

    def proxy_deps(self) -> ProxyDeps:
        if self._proxy_deps is None:
            self._proxy_deps = ProxyDeps(
                keys=self.keys,
                model_ids=self._model_ids,
                dispatcher=self.dispatcher,
                async_submit=self.async_requests.submit_openai,
                routes_of=self.routes_of,
                max_body_bytes=self.settings.max_inference_body_bytes,
                engine_of=self.engine_of,
                responses_store=self.state.responses,
                video_jobs=self.state.videos,
            )
        return self._proxy_deps

    @property
    def dispatcher(self) -> Dispatcher:
        assert self._dispatcher is not None, "services not started"
        return self._dispatcher

    def prices_for(self, deployment: str) -> Prices:
        """Effective rates; recomputed only when the deployment's spec object changes."""
        dep = self.controller.deployments.get(deployment)
        cached = self._prices.get(deployment)
        if dep is not None and cached is not None and cached[0] is dep.spec:
            return cached[1]
        prices = self._compute_prices(deployment)
        if dep is not None:
            self._prices[deployment] = (dep.spec, prices)
        return prices

    def _ladder_wall(self) -> Callable[[], datetime]:
        """The clock of schedules and pre-warm history (sped up only to replay a trace)."""
        s = self.settings
        if s.ladder_clock_start is None and s.ladder_clock_speedup == 1.0:
            return utcnow
        start = as_utc(s.ladder_clock_start) or utcnow()
        real = s.ladder_clock_real_start if s.ladder_clock_real_start is not None else time.time()
        speed = s.ladder_clock_speedup
        return lambda: start + timedelta(seconds=(time.time() - real) * speed)

    def _compute_prices(self, deployment: str) -> Prices:
        s = self.settings
        dep = self.controller.deployments.get(deployment)
        override = dep.spec.prices if dep is not None else None
        gpu_rate = s.gpu_hourly_usd.get("default", 0.0)
        if dep is not None and dep.spec.gpus:
            models = [d.model for d in self.gpus.devices if d.kind == dep.spec.accelerator]
            if models:
                gpu_rate = s.gpu_hourly_usd.get(models[0], gpu_rate)

        o = override if override is not None else DeploymentPrices()

        def pick(value: float | None, default: float) -> float:
            return default if value is None else value

        return Prices(
            prompt_per_mtok=pick(o.prompt_per_mtok, s.price_prompt_per_mtok),
            completion_per_mtok=pick(o.completion_per_mtok, s.price_completion_per_mtok),
            gpu_hourly=pick(o.gpu_hourly, gpu_rate),
            storage_gb_month=pick(o.storage_gb_month, s.storage_gb_month_usd),
            gpu_hourly_sleeping=o.gpu_hourly_sleeping,
        )

    def _caps_for(self, deployment: str) -> Caps:
        dep = self.controller.deployments.get(deployment)
        if dep is None:
            return Caps()
        return Caps(dep.spec.budget_usd_monthly, dep.spec.budget_tokens_monthly)

    def _context_for(self, deployment: str) -> int:
        default = self.settings.default_context_tokens
        dep = self.controller.deployments.get(deployment)
        if dep is None:
            return default
        spec = dep.spec
        return context_limit(spec.context_tokens, spec.options, spec.framework_args, default)

    def _storage_dirs(self) -> dict[str, Path]:
        return {name: self.controller.storage_dir(name) for name in self.controller.deployments}

    def _queue_gauges(self) -> Iterator[tuple[str, int, int]]:
        for name, gate in list(self.admission.gates.items()):
            yield name, gate.waiting, gate.total_inflight

    def _worker_gauges(self) -> Iterator[tuple[str, str, int]]:
        for name, dep in list(self.controller.deployments.items()):
            counts: dict[str, int] = {}
            for w in dep.workers.values():
                counts[w.state.value] = counts.get(w.state.value, 0) + 1
            for state, n in counts.items():
                yield name, state, n

    def _spec_of(self, deployment: str) -> DeploymentSpec | None:
        dep = self.controller.deployments.get(deployment)
        return dep.spec if dep is not None else None

    def engine_of(self, deployment: str) -> Engine | None:
        dep = self.controller.deployments.get(deployment)
        return engine_for(dep.spec.framework) if dep is not None else None

    def routes_of(self, deployment: str) -> tuple[frozenset[str], frozenset[str]] | None:
        """The engine's (inference routes, control routes) for a deployment."""
        dep = self.controller.deployments.get(deployment)
        if dep is None:
            return None
        engine = engine_for(dep.spec.framework)
        return engine.routes_for(dep.spec), engine.control_routes

    def _model_ids(self, key: ApiKey) -> list[tuple[str, float]]:
        return [
            (name, dep.created_at.timestamp())
            for name, dep in sorted(self.controller.deployments.items())
            if key.may_use(name)
        ]
