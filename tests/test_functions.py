"""Functions deployed from Python (torpor.App) against a real `torpor serve`, on the CPU:
an app file written by the test, its image a virtual environment built by the server."""

from __future__ import annotations

import json
import re
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from tests.conftest import TorporServer
from torpor.functions.builder import MARKER
from torpor.functions.loader import apps_in, load_module
from torpor.sdk import Client, FunctionError, PermissionDeniedError

# Tiny pure-Python packages from the package registry (pip caches them).
APP_SOURCE = """
import os

import torpor

app = torpor.App("demo")
image = torpor.Image.python().pip_install({packages})

ENTERED = []


@app.function(image=image, max_workers=2, concurrency=1, idle_timeout_s=1)
def predict(text: str, upper: bool = False) -> dict:
    import six  # from the image, not from torpor's environment

    return {{"text": text.upper() if upper else text, "pid": os.getpid(), "six": six.__name__}}


@app.function(image=image)
def explode(n: int) -> int:
    return helper_that_fails(n)


def helper_that_fails(n: int) -> int:
    raise ValueError(f"cannot handle {{n}}")


@app.cls(image=image, max_workers=1)
class Model:
    @torpor.enter()
    def load(self) -> None:
        ENTERED.append(os.getpid())

    @torpor.method()
    def generate(self, prompt: str) -> dict:
        return {{"out": prompt[::-1], "entered": len(ENTERED), "pid": os.getpid()}}
"""


def write_app(directory: Path, packages: list[str], name: str = "demo_app") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.py"
    quoted = ", ".join(repr(p) for p in packages)
    path.write_text(textwrap.dedent(APP_SOURCE.format(packages=quoted)))
    return path


def load(path: Path) -> ModuleType:
    sys.modules.pop(path.stem, None)
    return load_module(path)


def images_built(server: TorporServer) -> set[str]:
    root = server.data_dir / "images"
    return {p.name for p in root.iterdir() if (p / MARKER).is_file()} if root.exists() else set()


def wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_app_deploy_call_map_spawn_cls_errors_and_image_cache(
    server: TorporServer, tmp_path: Path
) -> None:
    module = load(write_app(tmp_path / "v1", ["six"]))
    (app,) = apps_in(module)
    client = Client(server.url, server.admin_key)
    logs: list[str] = []

    started = time.monotonic()
    deployments = app.deploy(client, on_log=logs.append)
    first_s = time.monotonic() - started
    assert {d.name for d in deployments} == {"demo-predict", "demo-explode", "demo-model"}
    assert any("built in" in line for line in logs), logs  # progress reached the caller
    assert len(images_built(server)) == 1

    # A cold start from zero, held for the call.
    assert client.get_deployment("demo-predict").ready_workers == 0
    assert module.predict.remote("hi", upper=True)["text"] == "HI"

    # 20 inputs across 2 workers (concurrency 1, max_workers 2).
    results = module.predict.map([f"x{i}" for i in range(20)])
    assert [r["text"] for r in results] == [f"x{i}" for i in range(20)]
    assert all(r["six"] == "six" for r in results)
    assert len({r["pid"] for r in results}) == 2

    call = module.predict.spawn("later")
    assert call.id.startswith("req_")
    assert call.get(timeout=60)["text"] == "later"

    # @app.cls: enter runs once per worker, before the first call.
    model = module.Model()
    outs = [model.generate.remote(p) for p in ("abc", "de", "f")]
    assert [o["out"] for o in outs] == ["cba", "ed", "f"]
    assert {o["entered"] for o in outs} == {1}
    assert len({o["pid"] for o in outs}) == 1

    # A user exception: typed, with the remote traceback.
    with pytest.raises(FunctionError) as err:
        module.explode.remote(7)
    assert err.value.remote_type == "ValueError"
    assert "cannot handle 7" in err.value.message
    assert "helper_that_fails" in err.value.remote_traceback
    assert "Traceback (most recent call last)" in err.value.remote_traceback

    # Metered: one usage event per call, with its duration.
    usage = client.usage_summary("1h", "demo-predict")
    assert usage.requests >= 22
    assert usage.avg_latency_ms > 0

    # Scale to zero after idle_timeout_s (1 s).
    wait(
        lambda: client.get_deployment("demo-predict").ready_workers == 0,
        30,
        "demo-predict to scale to zero",
    )

    # The unchanged app again: nothing is built, and the deploy is quick.
    logs.clear()
    started = time.monotonic()
    app.deploy(client, on_log=logs.append)
    second_s = time.monotonic() - started
    assert not any("built in" in line for line in logs), logs
    assert len(images_built(server)) == 1
    assert second_s < 0.1 * first_s, (first_s, second_s)

    # A changed pip_install list is another image, built once.
    changed = load(write_app(tmp_path / "v2", ["six", "idna"]))
    (app2,) = apps_in(changed)
    logs.clear()
    app2.deploy(client, on_log=logs.append)
    assert any("built in" in line for line in logs), logs
    assert len(images_built(server)) == 2
    assert changed.predict.remote("again")["text"] == "again"
    client.close()


def test_json_call_over_plain_http_with_scoped_keys(server: TorporServer, tmp_path: Path) -> None:
    module = load(write_app(tmp_path, ["six"], name="scoped_app"))
    (app,) = apps_in(module)
    with Client(server.url, server.admin_key) as admin:
        app.deploy(admin, on_log=None)
        mine = admin.create_key("caller", deployments=["demo-predict"]).key
        other = admin.create_key("other", deployments=["demo-model"]).key

    def post(key: str, path: str, body: Any) -> httpx.Response:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            return c.post(path, json=body, headers={"Authorization": f"Bearer {key}"})

    r = post(mine, "/functions/demo/predict", {"args": ["plain"], "kwargs": {"upper": True}})
    assert r.status_code == 200, r.text
    assert r.json()["result"]["text"] == "PLAIN"

    r = post(other, "/functions/demo/predict", {"args": ["x"]})
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "forbidden"
    with Client(server.url, other) as c, pytest.raises(PermissionDeniedError):
        c.call_function("demo", "predict", ["x"])

    # The class's method through its own path; a bad body is the caller's error.
    r = post(other, "/functions/demo/Model/generate", {"kwargs": {"prompt": "ab"}})
    assert r.status_code == 200, r.text
    assert r.json()["result"]["out"] == "ba"
    r = post(mine, "/functions/demo/predict", {"args": "not-a-list"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "bad_request"
    assert post(mine, "/functions/demo", {}).status_code == 404


def test_cli_deploy_run_and_apps(server: TorporServer, tmp_path: Path) -> None:
    from tests.test_cli import server_env, torpor

    path = write_app(tmp_path, ["six"], name="cli_app")
    env = server_env(server)
    out = torpor("deploy", str(path), env=env).stdout
    assert "demo-predict" in out and "demo-model" in out

    out = torpor("run", f"{path}::predict", "hello", "--upper", "true", env=env).stdout
    assert json.loads(out)["text"] == "HELLO"
    out = torpor("run", f"{path}::Model.generate", "--prompt", "abc", env=env).stdout
    assert json.loads(out)["out"] == "cba"
    failed = torpor("run", f"{path}::explode", "3", env=env, check=1)
    assert "cannot handle 3" in failed.stderr
    assert "helper_that_fails" in failed.stderr  # the remote traceback

    listing = torpor("apps", "ls", env=env).stdout
    assert re.search(r"demo\s+predict\s+function\s+demo-predict", listing), listing
    assert re.search(r"demo\s+Model\s+cls\s+demo-model", listing), listing

    out = torpor("apps", "rm", "demo", "-y", env=env).stdout
    assert "deleted app demo" in out
    with Client(server.url, server.admin_key) as client:
        wait(
            lambda: not any(d.framework == "function" for d in client.list_deployments()),
            30,
            "the app's deployments to go",
        )
    assert torpor("apps", "rm", "demo", "-y", env=env, check=1).returncode == 1


def test_gpu_strings_and_image_ids(tmp_path: Path) -> None:
    from torpor.functions.gpu import GpuRequest, parse_gpu
    from torpor.functions.image import Image
    from torpor.gpus import matches_model

    assert parse_gpu(None) == GpuRequest(0)
    assert parse_gpu("L4") == GpuRequest(1, ("L4",))
    assert parse_gpu("H100:2") == GpuRequest(2, ("H100",))
    assert parse_gpu("any") == GpuRequest(1)
    assert parse_gpu(["A100", "H100"]) == GpuRequest(1, ("A100", "H100"))
    for bad in ("H100:0", "two gpus", ["any", "L4"], ["A100:2", "H100"], []):
        with pytest.raises(ValueError):
            parse_gpu(bad)
    assert parse_gpu(["A100", "H100"]).gpu_type == "A100,H100" and parse_gpu("any").gpu_type is None
    # The spec's gpu_type (a list is kept comma-separated) as the inventory matches it.
    assert matches_model("A100-80GB", "A100") and matches_model("A100-80GB", "H100,A100")
    assert matches_model("NVIDIA H100 80GB HBM3", "h100") and not matches_model("A100", "L4")
    assert not matches_model("L40S", "L4") and not matches_model("A100-80GB", "H100,L4")

    base = Image.python("3.11").pip_install("six")
    assert base.id == Image.python("3.11").pip_install("six").id  # content-addressed
    assert base.id != base.pip_install("idna").id
    assert base.id != Image.python("3.12").pip_install("six").id
    assert Image.from_definition(base.definition()) == base
    with pytest.raises(ValueError):
        Image.python("three")

    # Local files: identified by content and destination, not by where they come from.
    data = tmp_path / "a.txt"
    data.write_text("one")
    with_file = base.add_local_file(data, "data/a.txt")
    assert with_file.id != base.id
    assert with_file.id == base.add_local_file(data, "./data/a.txt").id
    assert with_file.id != base.add_local_file(data, "data/b.txt").id
    copy = tmp_path / "copy.txt"
    copy.write_text("one")
    assert with_file.id == base.add_local_file(copy, "data/a.txt").id
    assert Image.from_definition(with_file.definition()).id == with_file.id
    data.write_text("two")
    assert base.add_local_file(data, "data/a.txt").id != with_file.id
    with pytest.raises(ValueError, match="changed after"):
        with_file.contents()
    for bad in ("/etc/passwd", "../up", "code/x.py", ""):
        with pytest.raises(ValueError):
            base.add_local_file(copy, bad)


def test_function_server_answers_a_users_lookup_error_as_a_function_error() -> None:
    # The function server in this process, on loopback: a KeyError raised by user code is
    # the function's error (400 function_error), not "no such method" (404).
    import threading
    from http.server import ThreadingHTTPServer

    from torpor.functions.server import Target, make_handler

    def lookup(key: str) -> int:
        return {"a": 1}[key]

    module = ModuleType("lookups")
    module.lookup = lookup  # type: ignore[attr-defined]
    target = Target({"function": "lookup"}, module)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(target))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        assert httpx.post(f"{url}/call", json={"args": ["a"]}).json() == {"result": 1}
        r = httpx.post(f"{url}/call", json={"args": ["b"]})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "function_error"
        assert r.json()["error"]["exception"] == "KeyError"
        r = httpx.post(f"{url}/call/nope", json={})
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "not_found"
    finally:
        httpd.shutdown()
        httpd.server_close()
