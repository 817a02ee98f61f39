"""The console's video view in Debian's Chromium: a clip generated as a job through
`/v1/videos` on the fake video engine (a separate process, a real H.264 MP4) plays in the
page's <video> element; progress, a failed job's error, and the reset when switching to a
deployment that is not a video model. No error may reach the browser console."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import expect

from tests.conftest import TorporServer
from tests.test_console import DIST, Console, browser, ui
from tests.test_videos import usage_rows, video_spec

# The browser and the signed-in page are test_console's; `srv` below is this module's own.
__all__ = ["browser", "ui"]


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorporServer]:
    assert (DIST / "index.html").is_file(), "console not built: run scripts/install"
    server = TorporServer(tmp_path_factory.mktemp("console-video") / "data").start()
    try:
        server.deploy(video_spec("clips", min_workers=1, job_seconds=2.5))
        server.wait_for("clips", lambda d: d["ready_workers"] >= 1)
        yield server
    finally:
        server.stop()
        assert server.survivors() == [], f"workers outlived torpor: {server.survivors()}"


PLAYING = """() => {
  const v = document.querySelector('video[data-testid=video-player]');
  return v !== null && v.readyState >= 2 && v.currentTime > 0.3 && !v.error;
}"""


def test_generated_clip_plays_in_the_video_view(ui: Console, srv: TorporServer) -> None:
    page = ui.open("/video/clips")
    expect(page.get_by_role("heading", name="clips")).to_be_visible()
    expect(page.get_by_test_id("not-video")).to_have_count(0)
    page.get_by_label("Video prompt").fill("A red fox running through fresh snow")
    page.get_by_label("Video length").select_option("2")
    page.get_by_role("button", name="Generate").click()

    # The job's progress shows while the engine works on it.
    status = page.get_by_test_id("video-status")
    expect(status).to_have_attribute("data-status", "in_progress", timeout=10_000)
    expect(status).to_contain_text("Generating")
    expect(page.get_by_test_id("video-progress")).to_be_visible()
    ui.shoot("video-progress")

    # The clip arrives and really plays: frames decoded and time advancing.
    page.wait_for_function(PLAYING, timeout=20_000)
    video = page.get_by_test_id("video-player")
    duration = video.evaluate("v => v.duration")
    assert 1.9 < duration < 2.2, duration
    assert video.evaluate("v => v.videoWidth") > 0
    expect(status).to_have_attribute("data-status", "completed")
    ui.shoot("video-playing")
    job_id = page.get_by_test_id("video-job").inner_text().strip(" ·")
    assert job_id.startswith("video_gen_")

    # It went through /v1/videos: the job's create, polls and download were metered.
    routes = [r[0] for r in usage_rows(srv, "clips", 3)]
    assert "/v1/videos" in routes and "/v1/videos/{video_id}/content" in routes


def test_failed_job_shows_the_engines_error(ui: Console) -> None:
    page = ui.open("/video/clips")
    page.get_by_label("Video prompt").fill("explode into pieces")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator(".error-box[role=alert]")).to_contain_text(
        "ran out of memory", timeout=15_000
    )
    expect(page.get_by_test_id("video-status")).to_have_attribute("data-status", "failed")
    expect(page.get_by_test_id("video-player")).to_have_count(0)
    expect(page.get_by_role("button", name="Generate")).to_be_enabled()


def test_switching_to_a_chat_model_resets_and_says_so(ui: Console) -> None:
    page = ui.open("/video/clips")
    page.get_by_label("Video prompt").fill("a boat on a lake")
    page.get_by_role("button", name="Generate").click()
    expect(page.get_by_test_id("video-status")).to_be_visible()
    page.evaluate("location.hash = '#/video/smollm2'")
    expect(page.get_by_role("heading", name="smollm2")).to_be_visible()
    expect(page.get_by_test_id("not-video")).to_contain_text("not a video-generation")
    expect(page.get_by_label("Video prompt")).to_have_value("")
    expect(page.get_by_test_id("video-status")).to_have_count(0)
    expect(page.get_by_test_id("video-player")).to_have_count(0)
    page.get_by_label("Video prompt").fill("anything")
    expect(page.get_by_role("button", name="Generate")).to_be_disabled()
