"""`torpor.App`: Python functions and classes deployed as torpor deployments.

Each `@app.function` (or `@app.cls`) becomes a deployment of framework `function` named
`{app}-{name}`, served by a small function server in its workers; everything a deployment
has (scale to zero, held cold starts, queue, async requests, metering, logs) applies.

Standard library only at import time: worker processes import the user's module, and with
it this one, in the image's environment. The client side (deploy, remote calls) imports the
SDK when it is first used.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from torpor.funcproto.pickling import (
    SERIALIZATIONS,
    Codec,
    Serialization,
    installs_cloudpickle,
    requirement,
)
from torpor.funcproto.routes import MAX_SOURCE_BYTES, deployment_name, slug
from torpor.functions.gpu import parse_gpu
from torpor.functions.image import Image

if TYPE_CHECKING:
    from torpor.sdk.client import Client
    from torpor.sdk.models import AsyncRequest, Deployment

P = ParamSpec("P")
R = TypeVar("R")
C = TypeVar("C", bound=type)

ENTER_MARK = "__torpor_enter__"
METHOD_MARK = "__torpor_method__"


def enter() -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Mark a method of an `@app.cls` class to run once when a worker starts (load a model
    there); the worker is ready only after it returned."""

    def mark(fn: Callable[P, R]) -> Callable[P, R]:
        setattr(fn, ENTER_MARK, True)
        return fn

    return mark


def method() -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Mark a method of an `@app.cls` class as callable remotely."""

    def mark(fn: Callable[P, R]) -> Callable[P, R]:
        setattr(fn, METHOD_MARK, True)
        return fn

    return mark


def marked(cls: type, mark: str) -> list[str]:
    """Names of the methods of `cls` carrying `mark`, in definition order."""
    return [
        name
        for name, value in vars(cls).items()
        if callable(value) and getattr(value, mark, False) is True
    ]


@dataclass(frozen=True)
class Scaling:
    """How a function's deployment scales; the deployment spec's fields of the same names."""

    gpu: str | Sequence[str] | None = None
    min_workers: int = 0
    max_workers: int = 1
    concurrency: int = 1
    idle_timeout_s: float = 300.0
    wait_time_s: float = 300.0
    env: Mapping[str, str] = field(default_factory=dict)
    # "json" (any HTTP client can call) or "pickle" (cloudpickle: Python callers, any type;
    # whoever may call the function can run code in its worker).
    serialization: Serialization = "json"


class _Deployable:
    """What functions and classes share: naming, the spec, and the client to call with."""

    def __init__(self, app: App, attr: str, target: Any, image: Image, scaling: Scaling):
        self.app = app
        self.attr = attr
        self.name = slug(attr)
        if scaling.serialization not in SERIALIZATIONS:
            raise ValueError(f"serialization must be one of {', '.join(SERIALIZATIONS)}")
        if scaling.serialization == "pickle" and not installs_cloudpickle(image.packages):
            image = image.pip_install(requirement())  # the worker reads and writes pickles
        self.image = image
        self.scaling = scaling
        self._target = target
        parse_gpu(scaling.gpu)  # malformed GPU requests fail at decoration time

    @property
    def deployment(self) -> str:
        return deployment_name(self.app.name, self.attr)

    def codec(self) -> Codec:
        """How calls are sent and results read: pickled for `serialization="pickle"`, with
        classes of the worker's module (the file's name) read from this side's module."""
        if self.scaling.serialization != "pickle":
            return Codec()
        module = getattr(self._target, "__module__", None)
        stem = self.source_file().stem
        aliases = {stem: module} if module and module != stem else {}
        return Codec("pickle", aliases)

    def source_file(self) -> Path:
        """The file that defines the function (or the class's methods)."""
        target = self._target
        functions = [target] if not isinstance(target, type) else list(vars(target).values())
        for fn in functions:
            code = getattr(inspect.unwrap(fn), "__code__", None) if callable(fn) else None
            if code is not None and Path(code.co_filename).is_file():
                return Path(code.co_filename)
        raise ValueError(f"cannot find the source file of {self.attr}")

    def spec(
        self,
        python: str,
        kind: str,
        methods: Sequence[str] = (),
        container: str | None = None,
    ) -> dict[str, Any]:
        """The deployment spec for this function, its image built at `python` (in the
        container image `container` when one was built)."""
        file = self.source_file()
        source = file.read_text()
        if len(source.encode()) > MAX_SOURCE_BYTES:
            raise ValueError(
                f"{file}: larger than {MAX_SOURCE_BYTES // 1024} KiB; move code into a "
                "package installed by the image"
            )
        gpu = parse_gpu(self.scaling.gpu)
        s = self.scaling
        options: dict[str, Any] = {
            "app": self.app.name,
            "function": self.attr,
            "kind": kind,
            "module": file.stem,
            "source": source,
            "python": python,
            "image": self.image.id,
        }
        if methods:
            options["methods"] = list(methods)
        if s.serialization != "json":
            options["serialization"] = s.serialization
        if container:
            options["container"] = container
        return {
            "name": self.deployment,
            "framework": "function",
            "description": f"{self.app.name}.{self.attr} ({kind})",
            "options": options,
            "gpus": gpu.count,
            "gpu_type": gpu.gpu_type,
            "min_workers": s.min_workers,
            "max_workers": s.max_workers,
            "concurrency": s.concurrency,
            "idle_timeout_s": s.idle_timeout_s,
            "wait_time_s": s.wait_time_s,
            "env": {**dict(self.image.environment), **dict(s.env)},
        }

    def _client(self) -> Client:
        return self.app.client()


class FunctionCall:
    """A spawned call: an async request on the server; `get()` waits for its value."""

    def __init__(self, client: Client, request: AsyncRequest, codec: Codec | None = None):
        self._client = client
        self._codec = codec or Codec()
        self.request = request
        self.id = request.id

    def get(self, timeout: float | None = None) -> Any:
        """The return value (or the call's typed error, FunctionError for user code)."""
        return self._client.function_result(self.id, timeout, self._codec)

    def cancel(self) -> None:
        self._client.cancel_request(self.id)


class Function(_Deployable, Generic[P, R]):
    """A deployed function: `.remote(...)` calls it in a worker, `.map(inputs)` once per
    input in parallel, `.spawn(...)` queues it; calling it directly runs it here."""

    def __init__(self, app: App, fn: Callable[P, R], image: Image, scaling: Scaling):
        super().__init__(app, fn.__name__, fn, image, scaling)
        self.fn = fn

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def local(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def remote(self, *args: P.args, **kwargs: P.kwargs) -> R:
        codec = self.codec()
        client = self._client()
        result: R = client.call_function(self.app.name, self.attr, args, kwargs, codec=codec)
        return result

    def map(self, inputs: Iterable[Any]) -> list[R]:
        codec = self.codec()
        return self._client().map_function(self.app.name, self.attr, list(inputs), codec=codec)

    def spawn(self, *args: P.args, **kwargs: P.kwargs) -> FunctionCall:
        client, codec = self._client(), self.codec()
        req = client.spawn_function(self.app.name, self.attr, args, kwargs, codec=codec)
        return FunctionCall(client, req, codec)

    def deploy_spec(self, python: str, container: str | None = None) -> dict[str, Any]:
        return self.spec(python, "function", container=container)


class RemoteMethod:
    """`Model().generate`: `.remote(...)`, `.map(inputs)`, `.spawn(...)` of one method."""

    def __init__(self, owner: Cls, method: str):
        self._owner, self._method = owner, method

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        o, m = self._owner, self._method
        client = o._client()
        return client.call_function(o.app.name, o.attr, args, kwargs, method=m, codec=o.codec())

    def map(self, inputs: Iterable[Any]) -> list[Any]:
        o = self._owner
        return o._client().map_function(o.app.name, o.attr, list(inputs), self._method, o.codec())

    def spawn(self, *args: Any, **kwargs: Any) -> FunctionCall:
        o, codec = self._owner, self._owner.codec()
        client = o._client()
        req = client.spawn_function(
            o.app.name, o.attr, args, kwargs, method=self._method, codec=codec
        )
        return FunctionCall(client, req, codec)


class RemoteInstance:
    """What `Model()` returns on the caller's side: its methods are remote methods."""

    def __init__(self, owner: Cls):
        self._owner = owner

    def __getattr__(self, name: str) -> RemoteMethod:
        if name not in self._owner.methods:
            raise AttributeError(f"{self._owner.attr} has no @torpor.method() named {name!r}")
        return RemoteMethod(self._owner, name)


class Cls(_Deployable):
    """A deployed class: one instance per worker, `@torpor.enter()` methods run once at
    start, `@torpor.method()` methods are called as `Model().generate.remote(...)`."""

    def __init__(self, app: App, cls: type, image: Image, scaling: Scaling):
        super().__init__(app, cls.__name__, cls, image, scaling)
        self.cls = cls
        self.methods = marked(cls, METHOD_MARK)
        if not self.methods:
            raise ValueError(f"@app.cls {cls.__name__}: mark at least one @torpor.method()")

    def __call__(self) -> RemoteInstance:
        return RemoteInstance(self)

    def deploy_spec(self, python: str, container: str | None = None) -> dict[str, Any]:
        return self.spec(python, "cls", self.methods, container)


class App:
    """A named group of functions and classes, deployed together with `deploy()`."""

    def __init__(self, name: str, *, image: Image | None = None):
        if not slug(name):
            raise ValueError(f"invalid app name {name!r}")
        self.name = slug(name)
        self.image = image or Image.python()
        self.functions: dict[str, Function[Any, Any] | Cls] = {}
        self._bound: Client | None = None

    def client(self) -> Client:
        """The client calls go through: the one given to `deploy`, else `torpor.Client()`
        (TORPOR_URL, TORPOR_API_KEY)."""
        if self._bound is None:
            from torpor.sdk.client import Client

            self._bound = Client()
        return self._bound

    def bind(self, client: Client) -> App:
        self._bound = client
        return self

    def function(
        self,
        *,
        gpu: str | Sequence[str] | None = None,
        image: Image | None = None,
        min_workers: int = 0,
        max_workers: int = 1,
        concurrency: int = 1,
        idle_timeout_s: float = 300.0,
        wait_time_s: float = 300.0,
        env: Mapping[str, str] | None = None,
        serialization: Serialization = "json",
    ) -> Callable[[Callable[P, R]], Function[P, R]]:
        """Deploy a function. `serialization="pickle"` lets Python callers pass and get back
        any picklable object (cloudpickle, installed into the image); JSON otherwise."""
        scaling = Scaling(
            gpu,
            min_workers,
            max_workers,
            concurrency,
            idle_timeout_s,
            wait_time_s,
            env or {},
            serialization,
        )

        def register(fn: Callable[P, R]) -> Function[P, R]:
            f = Function(self, fn, image or self.image, scaling)
            self._add(f)
            return f

        return register

    def cls(
        self,
        *,
        gpu: str | Sequence[str] | None = None,
        image: Image | None = None,
        min_workers: int = 0,
        max_workers: int = 1,
        concurrency: int = 1,
        idle_timeout_s: float = 300.0,
        wait_time_s: float = 300.0,
        env: Mapping[str, str] | None = None,
        serialization: Serialization = "json",
    ) -> Callable[[type], Cls]:
        scaling = Scaling(
            gpu,
            min_workers,
            max_workers,
            concurrency,
            idle_timeout_s,
            wait_time_s,
            env or {},
            serialization,
        )

        def register(cls: type) -> Cls:
            c = Cls(self, cls, image or self.image, scaling)
            self._add(c)
            return c

        return register

    def _add(self, item: Function[Any, Any] | Cls) -> None:
        if item.name in {f.name for f in self.functions.values()}:
            raise ValueError(f"app {self.name}: two functions named {item.name!r}")
        self.functions[item.attr] = item

    def deploy(
        self,
        client: Client | None = None,
        *,
        on_log: Callable[[str], None] | None = print,
        timeout: float = 600.0,
    ) -> list[Deployment]:
        """Build the images (each once; an unchanged one is not built again), then create or
        update one deployment per function and wait until each is set up."""
        from torpor.functions.deploy import deploy_app

        if client is not None:
            self._bound = client
        return deploy_app(self, self.client(), on_log, timeout)

    def delete(self, client: Client | None = None) -> list[str]:
        """Delete the deployments of this app's functions; their names."""
        from torpor.functions.deploy import delete_app

        return delete_app(self.name, client or self.client())
