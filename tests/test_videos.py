"""Video generation as jobs through torpor (vLLM-Omni's Videos API): the official SDK
creates a job, polls it and downloads a real MP4 from the fake video engine (a separate
process); every call is metered with its route; jobs belong to the key that made them."""

from __future__ import annotations

import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import av
import httpx
import openai
import pytest
from pydantic import ValidationError

from tests.conftest import TorporServer
from tests.test_trust import make_key
from torpor.engines import engine_for
from torpor.engines.base import route_allowed
from torpor.gateway.videos import model_of, video_target
from torpor.modelstore import derive_catalog
from torpor.spec import DeploymentSpec

# The SDK warns that OpenAI's own video service (Sora) goes away; the API shape stays.
pytestmark = pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")


def video_spec(name: str, *, job_seconds: float = 1.0, **fields: Any) -> dict[str, Any]:
    """A deployment of the fake video engine (the custom framework, with the job routes
    declared for inference keys as the vllm-omni framework declares them)."""
    command = (
        f"{sys.executable} -m torpor.testing.fake_video_engine --port {{port}} "
        f"--job-seconds {job_seconds} --fail-prompt explode"
    )
    spec: dict[str, Any] = {
        "name": name,
        "framework": "custom",
        "options": {
            "command": command,
            "health_path": "/health",
            "routes": ["/v1/videos", "/v1/videos/*"],
        },
        "catalog": {"type": "video-generation"},
        "idle_timeout_s": 300,
    }
    spec.update(fields)
    return spec


def usage_rows(srv: TorporServer, deployment: str, count: int) -> list[tuple[str, int, str]]:
    """(route, status, session) of the deployment's usage records, once `count` are in."""
    deadline = time.monotonic() + 10
    rows: list[tuple[str, int, str]] = []
    while time.monotonic() < deadline:
        conn = sqlite3.connect(srv.data_dir / "torpor.db")
        try:
            rows = conn.execute(
                "SELECT route, status, session_id FROM usage_events WHERE deployment = ? "
                "ORDER BY id",
                (deployment,),
            ).fetchall()
        finally:
            conn.close()
        if len(rows) >= count:
            return rows
        time.sleep(0.1)
    raise AssertionError(f"expected {count} usage records, got {rows}")


def test_vllm_omni_command_line_routes_and_options() -> None:
    s = DeploymentSpec.model_validate(
        {
            "name": "wan",
            "framework": "vllm-omni",
            "model": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
            "gpus": 2,
            "options": {"tensor_parallel_size": 2, "vae_use_tiling": True, "enforce_eager": False},
        }
    )
    got = engine_for("vllm-omni").launch(s, Path("/m"))
    assert got.argv[1:] == (
        "serve", "/m", "--omni", "--host", "{host}", "--port", "{port}",
        "--served-model-name", "wan", "--tensor-parallel-size", "2", "--vae-use-tiling",
    )  # fmt: skip
    assert got.health_path == "/health" and got.served_model == "wan"
    engine = engine_for("vllm-omni")
    for route in ("/v1/videos", "/v1/videos/video_1", "/v1/videos/video_1/content"):
        assert route_allowed(route, engine.routes_for(s))
    assert not route_allowed("/sleep", engine.routes_for(s))
    with pytest.raises(ValidationError, match="tensor_parallel_size: 4 needs at least 4 gpus"):
        DeploymentSpec.model_validate({**s.model_dump(), "options": {"tensor_parallel_size": 4}})
    with pytest.raises(ValidationError, match="vae_use_tiling: must be true or false"):
        DeploymentSpec.model_validate({**s.model_dump(), "options": {"vae_use_tiling": "yes"}})
    with pytest.raises(ValidationError, match="model: vllm-omni needs"):
        DeploymentSpec.model_validate({**s.model_dump(), "model": ""})


def test_routes_and_forms_are_read_without_the_engine() -> None:
    assert video_target("POST", "/v1/videos") == (None, "/v1/videos")
    assert video_target("GET", "/v1/videos/video_1") == ("video_1", "/v1/videos/{video_id}")
    assert video_target("GET", "/v1/videos/video_1/content") == (
        "video_1",
        "/v1/videos/{video_id}/content",
    )
    assert video_target("POST", "/v1/videos/sync") == (None, "/v1/videos/sync")
    form = (
        b'--xyz\r\nContent-Disposition: form-data; name="prompt"\r\n\r\na fox\r\n'
        b'--xyz\r\nContent-Disposition: form-data; name="model"\r\n\r\nclips\r\n--xyz--\r\n'
    )
    assert model_of("multipart/form-data; boundary=xyz", form, "") == "clips"
    assert model_of("application/json", b'{"model": "m", "prompt": "p"}', "") == "m"
    assert model_of("application/x-www-form-urlencoded", b"prompt=p&model=u", "") == "u"
    assert (
        model_of("multipart/form-data; boundary=xyz", form.replace(b"model", b"other"), "") is None
    )
    assert model_of("", b"", "model=q") == "q"


def test_sdk_creates_polls_and_downloads_a_playable_clip(
    server: TorporServer, tmp_path: Any
) -> None:
    server.deploy(video_spec("clips", min_workers=1))
    server.wait_for("clips", lambda d: d["ready_workers"] >= 1)
    client = server.openai(timeout=60)

    job = client.videos.create(model="clips", prompt="A red fox in the snow", seconds="2")
    assert job.status in ("queued", "in_progress") and job.object == "video"
    seen = {job.status}
    progress = [job.progress]
    deadline = time.monotonic() + 30
    while job.status not in ("completed", "failed"):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
        job = client.videos.retrieve(job.id)  # no model: torpor knows where the job is
        seen.add(job.status)
        progress.append(job.progress)
    assert job.status == "completed" and job.progress == 100
    assert "in_progress" in seen and progress == sorted(progress)

    content = client.videos.download_content(job.id)
    path = tmp_path / "clip.mp4"
    path.write_bytes(content.content)
    assert content.response.headers["content-type"] == "video/mp4"
    with av.open(str(path)) as box:
        stream = box.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert sum(1 for _ in box.decode(stream)) == 24  # 2 s at 12 frames per second

    # Listed, then deleted (the engine forgets it, and so does torpor).
    listed = httpx.get(
        server.url + "/openai/clips/v1/videos",
        headers={"Authorization": f"Bearer {server.admin_key}"},
    )
    assert [v["id"] for v in listed.json()["data"]] == [job.id]
    deleted = client.videos.delete(job.id)
    assert deleted.deleted is True
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(job.id)

    # A failed generation is a job that ends `failed` with the engine's error.
    bad = client.videos.create_and_poll(model="clips", prompt="explode now", poll_interval_ms=100)
    assert bad.status == "failed" and bad.error is not None
    assert "ran out of memory" in bad.error.message

    # Every call is one usage record naming its route without the id.
    rows = usage_rows(server, "clips", 5)
    routes = [r[0] for r in rows]
    assert routes[0] == "/v1/videos" and rows[0][1] == 200
    assert routes.count("/v1/videos/{video_id}/content") == 1
    assert "/v1/videos/{video_id}" in routes
    assert routes.count("/v1/videos") >= 3  # two creates and the list
    assert all(job.id not in r for r in routes)
    # Polls of one job carry it as their session (they go to the worker that holds it).
    assert f"video:{job.id}" in {r[2] for r in rows}


def test_jobs_belong_to_the_key_that_made_them(server: TorporServer) -> None:
    server.deploy(video_spec("clips", min_workers=1, job_seconds=0.2))
    server.deploy(video_spec("other", min_workers=0))
    server.wait_for("clips", lambda d: d["ready_workers"] >= 1)
    alice = server.openai(make_key(server, ["clips"]))
    bob = server.openai(make_key(server, ["clips"]))
    carol = server.openai(make_key(server, ["other"]))

    job = alice.videos.create_and_poll(model="clips", prompt="a boat", poll_interval_ms=100)
    assert job.status == "completed"
    assert len(alice.videos.download_content(job.id).content) > 1000
    for stranger in (bob, carol):
        with pytest.raises(openai.NotFoundError) as err:
            stranger.videos.retrieve(job.id)
        assert "No video job" in str(err.value)
        with pytest.raises(openai.NotFoundError):
            stranger.videos.download_content(job.id)
        with pytest.raises(openai.NotFoundError):
            stranger.videos.delete(job.id)
    # Creating on a deployment the key may not use is refused before any engine sees it.
    with pytest.raises(openai.PermissionDeniedError):
        carol.videos.create(model="clips", prompt="a boat")
    # A listing shows a key its own jobs only.
    bob_job = bob.videos.create(model="clips", prompt="a car")
    assert [v.id for v in bob.videos.list(extra_query={"model": "clips"})] == [bob_job.id]
    assert [v.id for v in alice.videos.list(extra_query={"model": "clips"})] == [job.id]
    # The engine's own refusal reaches the caller in the envelope.
    with pytest.raises(openai.BadRequestError) as err:
        alice.videos.create(model="clips", prompt="a boat", size="wide")  # type: ignore[arg-type]
    assert "size" in str(err.value)
    # A poll without a job id torpor knows, and a model-less create, are clear errors.
    with pytest.raises(openai.NotFoundError):
        alice.videos.retrieve("video_gen_unknown")
    r = httpx.post(
        server.url + "/v1/videos",
        data={"prompt": "no model"},
        headers={"Authorization": f"Bearer {server.admin_key}"},
    )
    assert r.status_code == 400 and "'model' is required" in r.json()["error"]["message"]


def test_a_job_on_a_stopped_worker_is_a_clear_404(server: TorporServer) -> None:
    server.deploy(video_spec("clips", min_workers=1, job_seconds=0.2))
    server.wait_for("clips", lambda d: d["ready_workers"] >= 1)
    client = server.openai()
    job = client.videos.create_and_poll(model="clips", prompt="a kite", poll_interval_ms=100)
    server.patch("clips", {"min_workers": 0, "idle_timeout_s": 1})
    server.wait_for("clips", lambda d: d["ready_workers"] == 0, timeout=30)
    with pytest.raises(openai.NotFoundError) as err:
        client.videos.retrieve(job.id)
    assert "which has stopped" in str(err.value)


def test_vllm_omni_deployments_are_listed_as_video_models() -> None:
    spec = DeploymentSpec.model_validate(
        {"name": "gen", "framework": "vllm-omni", "model": "org/some-diffusion-model"}
    )
    assert derive_catalog(spec)["type"] == "video-generation"
