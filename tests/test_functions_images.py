"""Functions (torpor.App) against a real `torpor serve`, on the CPU: GPU requests matched by
type against a declared inventory, opt-in cloudpickle calls, and local files in images."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from tests.conftest import TorporServer
from tests.test_functions import images_built, wait
from torpor.funcproto.pickling import Codec
from torpor.functions.loader import apps_in, load_module
from torpor.sdk import BadRequestError, Client, NoCapacityError

GPU_APP = """
import os

import torpor

app = torpor.App("gpus")


@app.function(gpu="L4", wait_time_s=2)
def on_l4() -> str:
    return os.environ.get("CUDA_VISIBLE_DEVICES", "?")


@app.function(gpu=["H100", "A100"], wait_time_s=2)
def on_h100_or_a100() -> str:
    return os.environ.get("CUDA_VISIBLE_DEVICES", "?")


@app.function(gpu="H100:2", wait_time_s=2)
def on_two_h100() -> str:
    return os.environ.get("CUDA_VISIBLE_DEVICES", "?")
"""

PICKLE_APP = """
import dataclasses
import os

import torpor

app = torpor.App("pickles")


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int


@app.function(serialization="pickle")
def shift(p: Point, tags: set, by: int = 1) -> tuple:
    return Point(p.x + by, p.y + by), tags | {"seen"}, frozenset({os.getpid()})


@app.function(serialization="pickle")
def bump(p: Point) -> Point:
    return Point(p.x + 1, p.y + 1)


@app.function()
def plain(x: int) -> int:
    return x + 1
"""

FILES_APP = """
import pathlib

import torpor

HERE = pathlib.Path(__file__).parent
image = (
    torpor.Image.python()
    .add_local_file(HERE / "words.txt", "data/words.txt")
    .add_local_dir(HERE / "helpers", "helpers")
)
app = torpor.App("files", image=image)


@app.function()
def read() -> dict:
    import helpers  # a local package placed by the image

    return {"words": pathlib.Path("data/words.txt").read_text(), "shout": helpers.shout("hi")}
"""


def write(directory: Path, name: str, source: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return path


def load(path: Path) -> ModuleType:
    sys.modules.pop(path.stem, None)
    return load_module(path)


def test_gpu_types_matched_against_the_declared_inventory(
    server_factory: Callable[..., TorporServer], tmp_path: Path
) -> None:
    server = server_factory(env={"TORPOR_GPUS": "2xA100-80GB,1xL4"})
    module = load(write(tmp_path, "gpu_app", GPU_APP))
    (app,) = apps_in(module)
    with Client(server.url, server.admin_key) as client:
        app.deploy(client, on_log=None)
        dep = client.get_deployment("gpus-on-h100-or-a100")
        assert (dep.gpus, dep.gpu_type) == (1, "H100,A100")

        # Declared devices are numbered per kind: A100s 0 and 1, the L4 2.
        assert module.on_l4.remote() == "2"
        assert module.on_h100_or_a100.remote() in {"0", "1"}

        # No H100 here: the call waits wait_time_s, then 503; the deployment says why.
        with pytest.raises(NoCapacityError):
            module.on_two_h100.remote()
        dep = client.get_deployment("gpus-on-two-h100")
        assert dep.ready_workers == 0
        assert dep.reason == "waiting for GPUs of type H100 (none in the inventory)", dep
        # The worker holding the L4 is the L4 function's.
        gpus = {g.index: g for g in client.gpus()}
        assert gpus[2].type == "L4" and gpus[2].deployment == "gpus-on-l4", gpus


def test_pickle_calls_and_local_files(server: TorporServer, tmp_path: Path) -> None:
    module = load(write(tmp_path / "p", "pickle_app", PICKLE_APP))
    (app,) = apps_in(module)
    assert any(p.startswith("cloudpickle") for p in module.shift.image.packages)
    with Client(server.url, server.admin_key) as client:
        app.deploy(client, on_log=None)

        # Non-JSON types both ways: a dataclass, a set, a tuple, a frozenset.
        point, tags, pids = module.shift.remote(module.Point(1, 2), {"a"}, by=10)
        assert point == module.Point(11, 12) and isinstance(point, module.Point)
        assert tags == {"a", "seen"} and isinstance(pids, frozenset)
        assert module.shift.spawn(module.Point(0, 0), set()).get(timeout=60)[0] == module.Point(
            1, 1
        )
        assert module.bump.map([module.Point(i, i) for i in range(3)]) == [
            module.Point(i + 1, i + 1) for i in range(3)
        ]

        # A pickled call to a JSON function is refused before anything is unpickled.
        with pytest.raises(BadRequestError) as refused:
            client.call_function("pickles", "plain", [1], codec=Codec("pickle"))
        assert refused.value.status == 400
        assert "JSON arguments only" in refused.value.message
        assert module.plain.remote(1) == 2
        # JSON callers still reach a pickle function (JSON in, JSON out).
        r = httpx.post(
            f"{server.url}/functions/pickles/shift",
            json={"args": [1]},
            headers={"Authorization": f"Bearer {server.admin_key}"},
            timeout=60,
        )
        assert r.status_code == 400 and r.json()["error"]["code"] == "function_error"

    # Local files: placed where the function reads them, content-addressed into the id.
    app_dir = tmp_path / "f"
    (app_dir / "helpers").mkdir(parents=True)
    (app_dir / "helpers" / "__init__.py").write_text("def shout(s):\n    return s.upper()\n")
    (app_dir / "words.txt").write_text("one two")
    path = write(app_dir, "files_app", FILES_APP)
    files = load(path)
    (fapp,) = apps_in(files)
    with Client(server.url, server.admin_key) as client:
        logs: list[str] = []
        fapp.deploy(client, on_log=logs.append)
        assert any("built in" in line for line in logs), logs
        assert files.read.remote() == {"words": "one two", "shout": "HI"}
        built = images_built(server)

        # Unchanged: the same image, nothing built.
        logs.clear()
        apps_in(load(path))[0].deploy(client, on_log=logs.append)
        assert not any("built in" in line for line in logs), logs
        assert images_built(server) == built

        # A changed file: another image, and the function reads the new content.
        (app_dir / "words.txt").write_text("three")
        changed = load(path)
        assert changed.image.id != files.image.id
        logs.clear()
        apps_in(changed)[0].deploy(client, on_log=logs.append)
        assert any("built in" in line for line in logs), logs
        assert len(images_built(server)) == len(built) + 1
        wait(lambda: changed.read.remote()["words"] == "three", 30, "the new file's content")


_RAN: list[str] = []


def _ran(what: str) -> None:
    _RAN.append(what)


class _RunsOnUnpickle:
    def __reduce__(self) -> tuple[Callable[..., object], tuple[object, ...]]:
        return (_ran, ("unpickled",))


def test_a_json_caller_never_unpickles_a_workers_answer() -> None:
    # Unpickling runs code: only a caller that opted into pickle reads a pickled answer,
    # so a function's worker cannot run code on a JSON caller's machine.
    from torpor.funcproto.pickling import pickle_result

    answer = pickle_result(_RunsOnUnpickle())
    with pytest.raises(ValueError, match="not read"):
        Codec().result(answer)
    assert _RAN == []
    Codec("pickle").result(answer)
    assert _RAN == ["unpickled"]
