"""Everything one torpor process runs, built once and passed down (no singletons)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import aiohttp

from torpor.admission import Admission
from torpor.auth import ApiKey, KeyRing, bootstrap_admin
from torpor.controller import Controller
from torpor.gateway.dispatch import Dispatcher
from torpor.gateway.proxy import ProxyDeps
from torpor.gpus import GpuPool, detect_nvidia, parse_declared
from torpor.models import BUNDLED_MODEL
from torpor.runtime.local import LocalRuntime
from torpor.settings import Settings
from torpor.spec import DeploymentSpec
from torpor.store import Store, open_store

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
        concurrency=4,
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
    gpus: GpuPool = field(init=False)
    _http: aiohttp.ClientSession | None = field(default=None, init=False)
    generated_admin_key: str | None = field(default=None, init=False)

    def http(self) -> aiohttp.ClientSession:
        assert self._http is not None, "services not started"
        return self._http

    async def start(self) -> None:
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        self._http = aiohttp.ClientSession(
            # One session per loop, pooled; no limit (admission bounds concurrency).
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=s.request_timeout_s, sock_connect=5),
        )
        self.store = await open_store(s.resolved_database_url)
        self.keys = KeyRing(self.store)
        await self.keys.load()
        self.generated_admin_key = await bootstrap_admin(self.keys, s.admin_key, s.data_dir)
        self.gpus = GpuPool(parse_declared(s.gpus) if s.gpus else detect_nvidia())
        self.admission = Admission(time.monotonic, self._on_demand)
        self.controller = Controller(
            s, self.store, LocalRuntime(self.http), self.admission, self.gpus, time.monotonic
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

    async def stop(self) -> None:
        await self.controller.shutdown()
        await self.store.close()
        if self._http is not None:
            await self._http.close()

    def _on_demand(self, _deployment: str) -> None:
        self.controller.wake()

    def proxy_deps(self) -> ProxyDeps:
        return ProxyDeps(keys=self.keys, model_ids=self._model_ids, dispatcher=self.dispatcher)

    @property
    def dispatcher(self) -> Dispatcher:
        return Dispatcher(
            gate_for=self.admission.get,
            http=self.http,
            on_worker_broken=self.controller.wake,
            keepalive_interval_s=self.settings.keepalive_interval_s,
            request_timeout_s=self.settings.request_timeout_s,
            connect_timeout_s=self.settings.upstream_connect_timeout_s,
        )

    def _model_ids(self, key: ApiKey) -> list[tuple[str, float]]:
        return [
            (name, dep.created_at.timestamp())
            for name, dep in sorted(self.controller.deployments.items())
            if key.may_use(name)
        ]
