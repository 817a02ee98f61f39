"""The function server: what a worker of a `function` deployment runs.

`python -m torpor.functions.server --port P` reads the deployment's code and target from
`FUNCTION_SERVER_SPEC` (base64 JSON: module name, source, attribute, kind, serialization), writes the source
to `./code/` (the worker runs in the deployment's storage directory), imports it once,
creates the class instance and runs its `@torpor.enter()` methods, then answers:

- `GET /health`: 200 once ready (the readiness probe);
- `POST /call` (a function) or `POST /call/{method}` (a class's method) with the JSON body
  `{"args": [...], "kwargs": {...}}`: 200 `{"result": ...}`, or 400 with the error envelope,
  code `function_error`, the exception's type and the traceback text. A function deployed
  with `serialization="pickle"` also takes `{"pickle": "<base64 cloudpickle of (args,
  kwargs)>"}` and answers those with `{"pickle": "<base64 cloudpickle of the result>"}`;
  the others refuse a pickled call with 400 (see torpor.funcproto.pickling).

Standard library only: it runs in the image's environment, where the user's packages, not
torpor's dependencies, are installed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from torpor.funcproto.pickling import PICKLE_KEY, pickle_result, unpickle_call
from torpor.funcproto.routes import CALL_PATH, HEALTH_PATH, SPEC_ENV, decode_spec
from torpor.functions.image import FILES_DIR

MAX_BODY = 64 * 1024 * 1024


class CallError(Exception):
    """A request the server refuses before user code runs (400, invalid_request_error).

    Defined here, not in torpor.errors: the worker imports the standard library only."""


class NoSuchCall(Exception):
    """A call to a method the deployment does not have (404). Not LookupError: the user's
    KeyError or IndexError is the function's error."""


def load_module(spec: dict[str, Any], workdir: Path) -> Any:
    """Write the deployment's source next to the worker and import it (once)."""
    code = workdir / "code"
    code.mkdir(parents=True, exist_ok=True)
    module = str(spec["module"])
    target = code / f"{module}.py"
    tmp = code / f".{module}.{os.getpid()}.tmp"
    tmp.write_text(str(spec["source"]))
    os.replace(tmp, target)  # workers of one deployment write the same text
    sys.path.insert(0, str(code))
    return importlib.import_module(module)


def link_files(files: Path, workdir: Path) -> list[str]:
    """Link each top-level entry of the image's local files (`<image>/files/`, see
    torpor.functions.builder) into the working directory, where the function opens (and,
    being on sys.path, imports) them; names it could not link because something else is
    there."""
    skipped: list[str] = []
    if not files.is_dir():
        return skipped
    for entry in sorted(files.iterdir()):
        link = workdir / entry.name
        if link.is_symlink() and os.readlink(link) == str(entry):
            continue
        if link.exists() and not link.is_symlink():
            skipped.append(entry.name)
            continue
        tmp = workdir / f".{entry.name}.{os.getpid()}.link"
        tmp.unlink(missing_ok=True)
        os.symlink(entry, tmp)
        os.replace(tmp, link)  # workers of one deployment link the same targets
    return skipped


class Target:
    """The user's function, or an instance of the user's class, ready to be called."""

    def __init__(self, spec: dict[str, Any], module: Any):
        obj = getattr(module, str(spec["function"]))
        self.kind = str(spec.get("kind", "function"))
        self.serialization = str(spec.get("serialization", "json"))
        self.calls: dict[str | None, Callable[..., Any]] = {}
        if self.kind == "cls":
            from torpor.functions.app import ENTER_MARK, METHOD_MARK, marked

            cls = getattr(obj, "cls", obj)
            instance = cls()
            for name in marked(cls, ENTER_MARK):
                getattr(instance, name)()
            for name in marked(cls, METHOD_MARK):
                self.calls[name] = getattr(instance, name)
        else:
            self.calls[None] = getattr(obj, "fn", obj)

    def call(self, method: str | None, body: bytes) -> Any:
        fn = self.calls.get(method)
        if fn is None:
            what = f"method {method!r}" if method else "a plain call (name a method)"
            raise NoSuchCall(f"this deployment has no {what}")
        try:
            payload = json.loads(body or b"{}")
        except ValueError as exc:
            raise CallError(f"Malformed JSON in request body: {exc}") from None
        if not isinstance(payload, dict):
            raise CallError('The body must be a JSON object: {"args": [...], "kwargs": {...}}')
        if PICKLE_KEY in payload:
            if self.serialization != "pickle":
                raise CallError(
                    "This function takes JSON arguments only: pickled calls are refused "
                    "(deploy it with serialization='pickle' to accept them)"
                )
            try:
                args, kwargs = unpickle_call(payload)
            except Exception as exc:
                raise CallError(f"Cannot unpickle the call: {type(exc).__name__}: {exc}") from None
            return Pickled(fn(*args, **kwargs))
        args, kwargs = payload.get("args") or [], payload.get("kwargs") or {}
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise CallError("args must be a JSON array and kwargs a JSON object")
        return fn(*args, **kwargs)


class Pickled:
    """The result of a pickled call: answered pickled."""

    def __init__(self, value: Any):
        self.value = value


def error_body(message: str, kind: str, code: str, **extra: Any) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": kind, "code": code, "param": None, **extra}}
    ).encode()


def make_handler(target: Target) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per call would drown the worker's own log

        def _send(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path.partition("?")[0] == HEALTH_PATH:
                self._send(200, b'{"status":"ok"}')
            else:
                self._send(404, error_body("Not found", "invalid_request_error", "not_found"))

        def do_POST(self) -> None:
            path = self.path.partition("?")[0]
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._send(413, error_body("Body too large", "invalid_request_error", "too_large"))
                return
            body = self.rfile.read(length)
            if path != CALL_PATH and not path.startswith(CALL_PATH + "/"):
                self._send(404, error_body("Not found", "invalid_request_error", "not_found"))
                return
            method = path[len(CALL_PATH) + 1 :] or None
            try:
                result = target.call(method, body)
                reply = (
                    pickle_result(result.value)
                    if isinstance(result, Pickled)
                    else {"result": result}
                )
                data = json.dumps(reply).encode()
            except NoSuchCall as exc:
                self._send(404, error_body(str(exc), "invalid_request_error", "not_found"))
                return
            except CallError as exc:
                self._send(400, error_body(str(exc), "invalid_request_error", "bad_request"))
                return
            except Exception as exc:
                text = traceback.format_exc()
                sys.stderr.write(text)
                message = f"{type(exc).__name__}: {exc}"
                self._send(
                    HTTPStatus.BAD_REQUEST,
                    error_body(
                        message,
                        "function_error",
                        "function_error",
                        exception=type(exc).__name__,
                        traceback=text,
                    ),
                )
                return
            self._send(200, data)

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="torpor.functions.server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    spec = decode_spec(os.environ[SPEC_ENV])
    for name in link_files(Path(sys.prefix) / FILES_DIR, Path.cwd()):
        print(f"torpor function server: image file {name!r} not linked: {name} exists here")
    module = load_module(spec, Path.cwd())
    target = Target(spec, module)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(target))
    server.daemon_threads = True
    print(f"torpor function server: {spec['module']}.{spec['function']} on port {args.port}")
    sys.stdout.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
