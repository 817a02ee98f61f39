"""Browser tests of the web console: Playwright drives Debian's headless Chromium against a
real `torpor serve`. Every page is checked at 1280 px and 390 px wide (screenshots go to
artifacts/console/), and no page may log an error to the browser console.

Needs the built console (console/dist: `scripts/install` builds it) and /usr/bin/chromium
(`scripts/test` installs it).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Route, expect, sync_playwright

from tests.conftest import REPO, TorporServer, fake_spec

CHROMIUM = "/usr/bin/chromium"
DIST = REPO / "console" / "dist"
ARTIFACTS = REPO / "artifacts" / "console"
WIDTHS = (1280, 390)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorporServer]:
    assert (DIST / "index.html").is_file(), "console not built: run scripts/install"
    server = TorporServer(tmp_path_factory.mktemp("console") / "data").start()
    try:
        yield server
    finally:
        server.stop()
        assert server.survivors() == [], f"workers outlived torpor: {server.survivors()}"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} missing: scripts/test installs chromium"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        # launch() gives the browser a fresh, temporary user-data-dir of its own.
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class Console:
    """A page plus the errors its browser console and scripts reported."""

    def __init__(self, page: Page, srv: TorporServer):
        self.page = page
        self.srv = srv
        self.errors: list[str] = []
        page.on("console", self._on_console)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))

    def _on_console(self, msg: ConsoleMessage) -> None:
        if msg.type == "error":
            self.errors.append(f"console: {msg.text} ({msg.location.get('url', '')})")

    def open(self, route: str) -> Page:
        self.page.goto(f"{self.srv.url}/#{route}")
        return self.page

    def shoot(self, name: str, ready: Callable[[Page], Any] | None = None) -> None:
        """Screenshots at both widths; the narrow page must not scroll sideways."""
        for width in WIDTHS:
            self.page.set_viewport_size({"width": width, "height": 900})
            if ready is not None:
                ready(self.page)
            self.page.wait_for_timeout(150)
            self.page.screenshot(path=str(ARTIFACTS / f"{name}-{width}.png"), full_page=True)
            overflow = self.page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 1, f"{name} scrolls sideways by {overflow}px at {width}px"
        self.page.set_viewport_size({"width": 1280, "height": 900})

    def assert_clean(self) -> None:
        assert self.errors == [], "\n".join(self.errors)


@pytest.fixture
def ui(browser: Browser, srv: TorporServer) -> Iterator[Console]:
    """A signed-in page (the key is put in session storage, as the sign-in form does)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_init_script(f"window.sessionStorage.setItem('torpor.apiKey', {srv.admin_key!r})")
    c = Console(context.new_page(), srv)
    try:
        yield c
        c.assert_clean()
    finally:
        context.close()


def engine_stats(srv: TorporServer, name: str) -> dict[str, Any]:
    port = srv.get(name)["workers"][0]["port"]
    return dict(httpx.get(f"http://127.0.0.1:{port}/stats", timeout=5).json())


def wait_until(check: Callable[[], bool], timeout: float = 10, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def pump_until(page: Page, check: Callable[[], bool], what: str, timeout: float = 10) -> None:
    """Wait for something a Playwright event handler records (handlers run while the page
    waits, so this polls through the page rather than time.sleep)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        page.wait_for_timeout(50)


def send(page: Page, text: str) -> None:
    page.fill("#prompt", text)
    page.get_by_role("button", name="Send").click()


# ------------------------------------------------------------------------------------------


def test_sign_in_and_find_smollm2_in_catalog(browser: Browser, srv: TorporServer) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    c = Console(context.new_page(), srv)
    try:
        page = c.open("/catalog")
        expect(page.get_by_role("button", name="Sign in")).to_be_visible()
        c.shoot("signin")
        page.fill("input[name=key]", srv.admin_key)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", name="Catalog")).to_be_visible()
        assert page.evaluate("sessionStorage.getItem('torpor.apiKey')") == srv.admin_key

        page.get_by_label("Search").fill("smollm2")
        card = page.locator(".card[data-deployment=smollm2]")
        expect(card).to_be_visible()
        expect(page.locator(".card")).to_have_count(1)
        expect(card.get_by_test_id("type")).to_have_text("chat")
        expect(card.get_by_test_id("lifecycle")).to_be_visible()
        expect(card.get_by_test_id("usage-bar")).to_be_visible()
        card.get_by_role("button", name="API snippet").click()
        snippet = card.get_by_test_id("snippet-curl")
        expect(snippet).to_contain_text(f"{srv.url}/v1/chat/completions")
        expect(snippet).to_contain_text('"model": "smollm2"')
        card.get_by_role("button", name="Python").click()
        expect(card.get_by_test_id("snippet-python")).to_contain_text(f'base_url="{srv.url}/v1"')
        c.shoot("catalog")

        # The type filter: smollm2 is a chat model, not an embedding model.
        page.get_by_label("Search").fill("")
        page.locator(".chip[data-type=embedding]").click()
        expect(page.locator(".card[data-deployment=smollm2]")).to_have_count(0)
        page.locator(".chip[data-type=chat]").click()
        expect(page.locator(".card[data-deployment=smollm2]")).to_have_count(1)
        c.assert_clean()

        # A wrong key is refused (the 401 it gets is the only console error allowed here).
        page.get_by_role("button", name="Sign out").click()
        page.fill("input[name=key]", "tp-wrong")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("alert")).to_contain_text("Sign-in failed")
    finally:
        context.close()


@pytest.mark.llama
def test_playground_streams_smollm2(ui: Console) -> None:
    page = ui.open("/playground/smollm2")
    expect(page.locator("select[aria-label=Model]")).to_have_value("smollm2")
    # Record every change of the answer while it streams.
    page.evaluate(
        """() => {
        window.__snaps = [];
        new MutationObserver(() => {
          const m = document.querySelector('.msg.assistant:last-of-type');
          if (m) window.__snaps.push([m.dataset.streaming, m.querySelector('.answer')?.textContent ?? '']);
        }).observe(document.body, {subtree: true, childList: true, characterData: true, attributes: true});
    }"""
    )
    page.get_by_label("Max tokens").fill("40")
    send(page, "Count from one to ten.")
    answer = page.locator(".msg.assistant").last
    expect(answer).to_have_attribute("data-streaming", "false", timeout=60_000)
    final = answer.locator(".answer").inner_text().strip()
    assert final, "empty answer"
    snaps: list[list[str]] = page.evaluate("window.__snaps")
    partial = [
        t for streaming, t in snaps if streaming == "true" and 0 < len(t.strip()) < len(final)
    ]
    assert len({t for t in partial}) >= 2, f"tokens did not arrive one by one: {snaps[:20]}"
    # The conversation was saved and shows in the sidebar.
    expect(page.locator(".conv-item")).to_have_count(1)
    ui.shoot("playground")
    page.get_by_role("tab", name="JSON").click()
    expect(page.get_by_test_id("json-request")).to_contain_text('"max_tokens": 40')
    # The exact response: the server-sent events as they arrived.
    expect(page.get_by_test_id("json-response")).to_contain_text("data: {")
    expect(page.get_by_test_id("json-response")).to_contain_text("data: [DONE]")
    ui.shoot("playground-json")


def test_stop_cancels_generation_at_the_engine(ui: Console, srv: TorporServer) -> None:
    srv.deploy(
        fake_spec("slow-chat", engine_args="--tokens 300 --token-delay-ms 100", min_workers=1)
    )
    srv.wait_for("slow-chat", lambda d: d["status"] == "ready")
    page = ui.open("/playground/slow-chat")
    expect(page.locator("select[aria-label=Model]")).to_have_value("slow-chat")
    send(page, "Tell me a long story")
    answer = page.locator(".msg.assistant").last
    expect(answer.locator(".answer")).to_contain_text("tok3", timeout=15_000)
    assert engine_stats(srv, "slow-chat")["disconnected"] == 0
    page.get_by_role("button", name="Stop").click()
    expect(answer).to_have_attribute("data-stopped", "true")
    wait_until(
        lambda: engine_stats(srv, "slow-chat")["disconnected"] == 1, 5, "the engine's disconnect"
    )
    stats = engine_stats(srv, "slow-chat")
    assert stats["completed"] == 0 and stats["active"] == 0
    expect(page.get_by_role("button", name="Send")).to_be_visible()


def test_think_block_collapsed_and_only_answer_saved(ui: Console, srv: TorporServer) -> None:
    srv.deploy(fake_spec("thinker", engine_args="--think --tokens 5", min_workers=1))
    srv.wait_for("thinker", lambda d: d["status"] == "ready")
    page = ui.open("/playground/thinker")
    expect(page.locator("select[aria-label=Model]")).to_have_value("thinker")
    send(page, "Why is the sky blue?")
    answer = page.locator(".msg.assistant").last
    expect(answer).to_have_attribute("data-streaming", "false", timeout=15_000)
    think = answer.get_by_test_id("think")
    expect(think).to_have_count(1)
    expect(think).not_to_have_attribute("open", "")
    assert not think.locator(".think-body").is_visible()  # collapsed
    expect(answer.locator(".answer")).to_have_text("tok0 tok1 tok2 tok3 tok4")
    ui.shoot("playground-think")

    item = page.locator(".conv-item").filter(has_text="thinker")
    expect(item).to_have_count(1)
    conv_id = item.get_attribute("data-id")
    with srv.api() as c:
        conv = c.get(f"/api/conversations/{conv_id}").json()
    assert [m["role"] for m in conv["messages"]] == ["user", "assistant"]
    assert conv["messages"][1]["content"] == "tok0 tok1 tok2 tok3 tok4"

    # Reopened from the sidebar: the saved messages, with no reasoning left in them.
    page.get_by_role("button", name="+ New chat").click()
    expect(page.locator(".msg")).to_have_count(0)
    item.locator("a").click()
    expect(page.locator(".msg.user")).to_have_text(["YouWhy is the sky blue?"])
    expect(page.locator(".msg.assistant .answer")).to_have_text("tok0 tok1 tok2 tok3 tok4")
    expect(page.get_by_test_id("think")).to_have_count(0)


def test_create_deployment_with_wizard(ui: Console, srv: TorporServer) -> None:
    page = ui.open("/deployments/new")
    name = page.locator("input[name=name]")
    nxt = page.get_by_role("button", name="Next")
    name.fill("Bad_Name")
    expect(page.get_by_test_id("name-error")).to_be_visible()
    expect(nxt).to_be_disabled()
    name.fill("-bad")
    expect(page.get_by_test_id("name-error")).to_contain_text("hyphen")
    name.fill("smollm2")
    expect(page.get_by_test_id("name-error")).to_contain_text("already exists")
    ui.shoot("wizard-invalid-name")
    name.fill("wiz-fake")
    expect(page.get_by_test_id("name-error")).to_have_count(0)
    page.locator("textarea[name=description]").fill("made by the wizard")
    page.locator("input[name=display_name]").fill("Wizard Fake")
    page.locator("select[name=type]").select_option("code")
    nxt.click()

    page.locator("select[name=framework]").select_option("custom")
    command = fake_spec("x")["options"]["command"]
    page.locator("input[name=option-command]").fill(command)
    page.locator("input[name=option-health_path]").fill("/health")
    page.locator("input[name=min_workers]").fill("1")
    ui.shoot("wizard-step2")
    page.get_by_role("button", name="Next").click()

    expect(page.get_by_test_id("review-spec")).to_contain_text('"name": "wiz-fake"')
    ui.shoot("wizard-review")
    page.get_by_role("button", name="Deploy").click()
    page.wait_for_url("**/#/deployments/wiz-fake")
    expect(page.get_by_role("heading", name="wiz-fake")).to_be_visible()
    dep = srv.wait_for("wiz-fake", lambda d: d["status"] == "ready", timeout=30)
    assert dep["framework"] == "custom" and dep["description"] == "made by the wizard"
    assert dep["catalog"]["display_name"] == "Wizard Fake" and dep["catalog"]["type"] == "code"
    expect(page.get_by_test_id("status")).to_have_text("Ready", timeout=10_000)
    ui.shoot("deployment-overview")


def test_dashboard_matches_usage_summary(ui: Console, srv: TorporServer) -> None:
    srv.deploy(fake_spec("metered", engine_args="--tokens 7", min_workers=1))
    srv.wait_for("metered", lambda d: d["status"] == "ready")
    client = srv.openai()
    for _ in range(3):
        client.chat.completions.create(
            model="metered", messages=[{"role": "user", "content": "one two three"}]
        )

    def summary(window: str) -> dict[str, Any]:
        with srv.api() as c:
            r = c.get("/api/usage/summary", params={"window": window})
            assert r.status_code == 200, f"GET /api/usage/summary: {r.status_code} {r.text}"
            return dict(r.json())

    # Usage is written in batches: wait until these requests are counted.
    wait_until(lambda: summary("1h")["requests"] >= 3, 15, "the usage summary")
    time.sleep(1.5)
    want = {w: summary(w) for w in ("1h", "24h")}
    page = ui.open("/dashboard")
    for w, s in want.items():
        expect(page.get_by_test_id(f"sum-{w}-requests")).to_have_attribute(
            "data-value", str(s["requests"])
        )
        expect(page.get_by_test_id(f"sum-{w}-tokens")).to_have_attribute(
            "data-value", str(s["total_tokens"])
        )
        cost = float(page.get_by_test_id(f"sum-{w}-cost").get_attribute("data-value") or "nan")
        assert cost == pytest.approx(s["cost"])
    expect(page.locator("[data-testid=fleet] tr[data-deployment=metered]")).to_be_visible()
    expect(page.locator("[data-testid=cost-breakdown] tr[data-deployment=metered]")).to_be_visible()
    ui.shoot("dashboard")


def test_failing_worker_first_with_reason(ui: Console, srv: TorporServer) -> None:
    srv.deploy(fake_spec("flaky", min_workers=1))
    srv.wait_for("flaky", lambda d: d["status"] == "ready")
    # A rollout to a spec whose engine crashes on start: the old worker keeps serving.
    bad = fake_spec("flaky", engine_args="--fail-mode crash-on-start")["options"]
    srv.patch("flaky", {"options": bad})
    srv.wait_for("flaky", lambda d: any(w["state"] == "failed" for w in d["workers"]))

    page = ui.open("/deployments/flaky/workers")
    rows = page.locator("[data-testid=workers] tr.worker")
    expect(rows.first).to_have_attribute("data-state", "failed")
    expect(rows.first.get_by_test_id("reason")).not_to_have_text("\u2013")
    expect(page.locator("[data-testid=workers] tr.worker[data-state=healthy]")).to_have_count(1)
    reason = rows.first.get_by_test_id("reason").inner_text()
    assert reason.strip()
    ui.shoot("deployment-workers")

    # The list's status popover names the failing worker and links to its logs.
    page = ui.open("/deployments")
    row = page.locator("tr[data-deployment=flaky]")
    row.get_by_test_id("status").click()
    pop = page.get_by_test_id("status-popover")
    expect(pop).to_contain_text("Failing workers")
    expect(pop.get_by_role("link", name="logs").first).to_be_visible()
    ui.shoot("deployments-popover")
    page.keyboard.press("Escape")
    row.get_by_test_id("status").click()
    row.get_by_role("button", name="Connect").click()
    expect(page.get_by_test_id("endpoint-url")).to_contain_text(f"{srv.url}/openai/flaky/v1")
    ui.shoot("deployments-connect")


def test_other_pages_render(ui: Console, srv: TorporServer) -> None:
    """Every remaining page and tab loads cleanly at both widths."""
    if "slow-chat" not in {d["name"] for d in srv.api().get("/api/deployments").json()["data"]}:
        srv.deploy(fake_spec("slow-chat", engine_args="--tokens 3"))
    page = ui.open("/deployments")
    expect(page.locator("tr[data-deployment=smollm2]")).to_be_visible()
    ui.shoot("deployments")
    for tab in ("overview", "metrics", "logs", "async", "settings"):
        page = ui.open(f"/deployments/smollm2/{tab}")
        expect(page.get_by_role("tab", selected=True)).to_be_visible()
        ui.shoot(f"deployment-{tab}")

    # Settings: a change that restarts workers asks first.
    page = ui.open("/deployments/slow-chat/settings")
    page.locator("textarea[name=env]").fill("SECRET_TOKEN=abc")
    page.get_by_role("button", name="Save changes").click()
    expect(page.get_by_role("dialog", name="Restart workers?")).to_be_visible()
    ui.shoot("deployment-settings-confirm")
    page.get_by_role("button", name="Restart workers and save").click()
    wait_until(lambda: srv.get("slow-chat")["env"] == {"SECRET_TOKEN": "abc"}, 5, "the patch")
    page = ui.open("/deployments/slow-chat/overview")
    expect(page.get_by_test_id("env")).to_contain_text("••••")
    expect(page.get_by_test_id("env")).not_to_contain_text("abc")

    page = ui.open("/keys")
    page.locator("input[name=key-name]").fill("console-test")
    page.get_by_role("button", name="Create key").click()
    expect(page.get_by_test_id("new-key")).to_contain_text("tp-")
    ui.shoot("keys-created")
    page.get_by_role("button", name="Done").click()
    row = page.locator("[data-testid=keys] tr").filter(has_text="console-test")
    expect(row).to_have_count(1)
    ui.shoot("keys")
    row.get_by_role("button", name="Revoke").click()
    page.get_by_role("dialog").get_by_role("button", name="Revoke").click()
    expect(page.locator("[data-testid=keys] tr").filter(has_text="console-test")).to_have_count(0)

    page = ui.open("/video/smollm2")
    expect(page.get_by_label("Video prompt")).to_be_visible()
    ui.shoot("video")
    page = ui.open("/dashboard")
    expect(page.get_by_role("heading", name="GPU dashboard")).to_be_visible()


def test_console_served_with_spa_fallback_and_api_404(srv: TorporServer) -> None:
    r = httpx.get(srv.url + "/")
    assert r.status_code == 200 and '<div id="app">' in r.text
    r = httpx.get(srv.url + "/deployments/anything")  # SPA fallback
    assert r.status_code == 200 and '<div id="app">' in r.text
    r = httpx.get(srv.url + "/api/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_unbuilt_console_says_how_to_build(tmp_path: Path) -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from torpor.console import mount_console

    app = FastAPI()
    mount_console(app, tmp_path / "missing-dist")
    with TestClient(app) as client:
        r = client.get("/")
        assert r.status_code == 200
        assert "console is not built" in r.text and "scripts/install" in r.text


def test_conversations_are_scoped_to_their_key(srv: TorporServer) -> None:
    with srv.api() as admin:
        other = admin.post("/api/keys", json={"name": "conv-other"}).json()["key"]
        conv = admin.post(
            "/api/conversations",
            json={
                "deployment": "smollm2",
                "title": "mine",
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "<think>hmm</think> hello"},
                ],
            },
        ).json()
        assert conv["messages"][1]["content"] == "hello"  # reasoning never saved
        r = admin.patch(
            f"/api/conversations/{conv['id']}",
            json={"append": [{"role": "user", "content": "again"}]},
        )
        assert r.status_code == 200 and len(r.json()["messages"]) == 3
    with srv.api(other) as c:
        assert c.get(f"/api/conversations/{conv['id']}").status_code == 404
        assert c.delete(f"/api/conversations/{conv['id']}").status_code == 404
        assert conv["id"] not in {x["id"] for x in c.get("/api/conversations").json()["data"]}
    with srv.api() as admin:
        assert admin.delete(f"/api/conversations/{conv['id']}").status_code == 200
        assert admin.get(f"/api/conversations/{conv['id']}").status_code == 404


# -- issue 18: the console from a good internal tool to a product --------------------------


def deploy_ready(srv: TorporServer, name: str, engine_args: str = "", **fields: Any) -> None:
    srv.deploy(fake_spec(name, engine_args=engine_args, min_workers=1, **fields))
    srv.wait_for(name, lambda d: d["status"] == "ready", timeout=30)


def test_failing_stream_shows_its_error_and_saves_nothing(ui: Console, srv: TorporServer) -> None:
    # Cold: the request is held (keep-alives start the SSE stream), then the engine fails,
    # so the failure arrives as an SSE error event, not as an HTTP status.
    srv.deploy(fake_spec("fails-late", engine_args="--startup-delay-ms 1500 --fail-mode http500"))
    page = ui.open("/playground/fails-late")
    expect(page.locator("select[aria-label=Model]")).to_have_value("fails-late")
    send(page, "Hello?")
    answer = page.locator(".msg.assistant").last
    expect(answer).to_have_attribute("data-streaming", "false", timeout=30_000)
    error = answer.get_by_test_id("answer-error")
    expect(error).to_be_visible()
    assert error.inner_text().strip(), "an empty error"
    ui.shoot("playground-stream-error")
    with srv.api() as c:
        convs = c.get("/api/conversations").json()["data"]
    assert [cv for cv in convs if cv["deployment"] == "fails-late"] == []
    expect(page.locator(".conv-item").filter(has_text="fails-late")).to_have_count(0)
    # The JSON tab: the exact request and the raw events received, each with a copy button.
    page.get_by_role("tab", name="JSON").click()
    expect(page.get_by_test_id("json-request")).to_contain_text("POST /v1/chat/completions")
    expect(page.get_by_test_id("json-request")).to_contain_text('"content": "Hello?"')
    raw = page.get_by_test_id("json-response")
    expect(raw).to_contain_text("HTTP 200")
    expect(raw).to_contain_text('data: {"error"')
    expect(page.get_by_role("button", name="Copy request")).to_be_visible()
    expect(page.get_by_role("button", name="Copy response")).to_be_visible()


def test_answers_render_markdown_sanitised_and_keep_stopped(ui: Console, srv: TorporServer) -> None:
    answer = (
        "Here:\n\n```python\nprint('hi')\n```\n\n**bold** and `x`\n\n"
        '<img src="x" onerror="window.__pwned = 1"><script>window.__pwned = 2</script>'
        "[link](javascript:window.__pwned=3)"
    )
    with srv.api() as c:
        conv = c.post(
            "/api/conversations",
            json={
                "deployment": "smollm2",
                "title": "markdown",
                "messages": [
                    {"role": "user", "content": "show me"},
                    {"role": "assistant", "content": answer, "stopped": True},
                ],
            },
        ).json()
    assert conv["messages"][1]["stopped"] is True
    page = ui.open(f"/playground/smollm2?c={conv['id']}")
    md = page.locator(".msg.assistant .answer.md")
    expect(md.locator("pre code")).to_have_text("print('hi')")
    expect(md.locator("strong")).to_have_text("bold")
    expect(md.locator("script")).to_have_count(0)
    assert (
        md.locator("img").evaluate_all("els => els.filter(e => e.hasAttribute('onerror')).length")
        == 0
    )
    hrefs = md.locator("a").evaluate_all("els => els.map(e => e.getAttribute('href') || '')")
    assert not any(h.startswith("javascript") for h in hrefs), hrefs
    assert page.evaluate("window.__pwned === undefined")
    # A reopened answer that was stopped still says so; the history shows when.
    expect(page.locator(".msg.assistant").last).to_have_attribute("data-stopped", "true")
    expect(page.locator(".conv-item").filter(has_text="markdown").locator("time")).to_contain_text(
        "ago"
    )
    ui.shoot("playground-markdown")
    with srv.api() as c:
        c.delete(f"/api/conversations/{conv['id']}")


def test_playground_opens_on_a_ready_chat_model(ui: Console, srv: TorporServer) -> None:
    # "aaa-broken" sorts first and has failed; the playground opens on a ready one instead.
    srv.deploy(fake_spec("aaa-broken", engine_args="--fail-mode crash-on-start", min_workers=1))
    srv.wait_for("aaa-broken", lambda d: d["status"] == "error", timeout=30)
    deploy_ready(srv, "chat-ready")
    page = ui.open("/playground")
    select = page.locator("select[aria-label=Model]")
    expect(select).not_to_have_value("")
    assert select.input_value() != "aaa-broken"
    ready = {
        d["name"]
        for d in srv.api().get("/api/deployments").json()["data"]
        if d["status"] == "ready"
    }
    assert select.input_value() in ready
    assert page.title() == "Playground · torpor"
    srv.api().delete("/api/deployments/aaa-broken")


def test_async_tab_filter_detail_and_cancel(ui: Console, srv: TorporServer) -> None:
    deploy_ready(srv, "async-fast", "--tokens 3")
    # A worker that never answers: one request processing forever, the next one pending.
    deploy_ready(srv, "async-stuck", "--fail-mode hang", max_workers=1, concurrency=1)
    with srv.api() as c:

        def submit(dep: str, text: str) -> str:
            r = c.post(
                f"/deployment/{dep}/v1/chat/completions",
                json={"input": {"messages": [{"role": "user", "content": text}]}},
            )
            assert r.status_code == 202, r.text
            return str(r.json()["id"])

        done = submit("async-fast", "hello done")
        wait_until(lambda: c.get(f"/v1/requests/{done}").json()["status"] == "completed", 15)
        busy = submit("async-stuck", "hello busy")
        wait_until(lambda: c.get(f"/v1/requests/{busy}").json()["status"] == "processing", 15)
        waiting = submit("async-stuck", "hello waiting")
        assert c.get(f"/v1/requests/{waiting}").json()["status"] == "pending"

    page = ui.open("/deployments/async-stuck/async")
    rows = page.locator("[data-testid=async-tasks] tr[data-task]")
    expect(rows).to_have_count(2)
    page.get_by_label("Status filter").select_option("pending")
    expect(rows).to_have_count(1)
    expect(page.locator(f"tr[data-task={waiting}]")).to_have_attribute("data-status", "pending")
    page.get_by_label("Status filter").select_option("processing")
    expect(page.locator(f"tr[data-task={busy}]")).to_be_visible()
    expect(rows).to_have_count(1)
    expect(page.get_by_role("alert")).to_have_count(0)  # the API took every filter
    ui.shoot("deployment-async")

    page.get_by_label("Status filter").select_option("")
    page.locator(f"tr[data-task={waiting}]").click()
    detail = page.get_by_test_id("task-detail")
    expect(detail).to_have_attribute("data-status", "pending")
    expect(page.get_by_test_id("task-request")).to_contain_text("hello waiting")
    ui.shoot("deployment-async-detail")
    page.get_by_role("button", name="Cancel task").click()
    expect(detail).to_have_attribute("data-status", "cancelled")
    with srv.api() as c:
        assert c.get(f"/v1/requests/{waiting}").json()["status"] == "cancelled"
    page.keyboard.press("Escape")

    page = ui.open("/deployments/async-fast/async")
    page.locator(f"tr[data-task={done}]").click()
    expect(page.get_by_test_id("task-request")).to_contain_text("hello done")
    expect(page.get_by_test_id("task-response")).to_contain_text("tok0 tok1 tok2")
    page.keyboard.press("Escape")
    with srv.api() as c:
        c.delete(f"/v1/requests/{busy}")
        c.delete("/api/deployments/async-stuck")


def test_status_popover_fully_visible_and_closes(ui: Console, srv: TorporServer) -> None:
    page = ui.open("/deployments")
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        row = page.locator("tr[data-deployment=smollm2]")
        row.get_by_test_id("status").click()
        pop = page.get_by_test_id("status-popover")
        expect(pop).to_be_visible()
        box = pop.bounding_box()
        assert box is not None
        assert box["x"] >= 0 and box["x"] + box["width"] <= width, (width, box)
        # Nothing clips or covers it: the point at each corner belongs to the popover.
        for x, y in (
            (box["x"] + 4, box["y"] + 4),
            (box["x"] + box["width"] - 4, box["y"] + box["height"] - 4),
        ):
            inside = page.evaluate(
                "([x, y]) => !!document.elementFromPoint(x, y)?.closest('[data-testid=status-popover]')",
                [x, y],
            )
            assert inside, f"popover clipped at {width}px: {box}"
        page.screenshot(path=str(ARTIFACTS / f"deployments-status-popover-{width}.png"))
        page.keyboard.press("Escape")
        expect(pop).to_have_count(0)
        row.get_by_test_id("status").click()
        expect(pop).to_be_visible()
        page.locator("h1").click()  # outside
        expect(pop).to_have_count(0)
        # Idle workers read as words, not "1/0".
        expect(row.get_by_test_id("workers")).to_contain_text("ready")
    page.set_viewport_size({"width": 1280, "height": 900})


def fill_option(page: Page, field: dict[str, Any]) -> None:
    name = f"[name=option-{field['key']}]"
    example = field["example"]
    if field["kind"] == "boolean":
        page.locator(f"input{name}").check()
    elif field["kind"] == "choice":
        page.locator(f"select{name}").select_option(str(example))
    elif field["kind"] == "list":
        page.locator(f"textarea{name}").fill("\n".join(example))
    else:
        page.locator(f"input{name}").fill(str(example))


def test_wizard_forms_round_trip_every_framework(
    ui: Console, srv: TorporServer, tmp_path: Path
) -> None:
    with srv.api() as c:
        frameworks = [f for f in c.get("/api/frameworks").json()["data"] if f["creatable"]]
    assert {f["name"] for f in frameworks} >= {
        "llama.cpp",
        "vllm",
        "sglang",
        "ollama",
        "embed",
        "custom",
    }
    page = ui.open("/deployments/new")
    page.locator("input[name=name]").fill("wiz-sglang")
    page.get_by_role("button", name="Next").click()
    for fw in frameworks:
        page.locator("select[name=framework]").select_option(fw["name"])
        model = fw["default_model"] or fw["model_placeholder"] or "org/model"
        page.locator("input[name=model]").fill(model)
        for field in fw["options"]:
            if field["example"] is not None:
                fill_option(page, field)
        page.get_by_role("button", name="Next").click()
        # The server's own validation accepted the form: the review step shows the spec.
        review = page.get_by_test_id("review-spec")
        expect(review).to_contain_text(f'"framework": "{fw["name"]}"', timeout=10_000)
        for field in fw["options"]:
            if field["example"] is not None:
                expect(review).to_contain_text(f'"{field["key"]}"')
        page.get_by_role("button", name="Back").click()

    # A refused value shows the server's message, which goes away once the value is fixed.
    page.locator("select[name=framework]").select_option("sglang")
    model_dir = tmp_path / "sglang-model"
    model_dir.mkdir()
    page.locator("input[name=model]").fill(str(model_dir))
    page.locator("input[name=option-max_model_len]").fill("0")
    page.get_by_role("button", name="Next").click()
    alert = page.locator("[data-step='2'] .error-box")
    expect(alert).to_contain_text("max_model_len")
    ui.shoot("wizard-refused")
    page.locator("input[name=option-max_model_len]").fill("4096")
    expect(alert).to_have_count(0)
    # The refusal was the only error the browser saw, and an expected one.
    assert all("/api/frameworks/validate" in e for e in ui.errors), ui.errors
    ui.errors.clear()
    page.locator("select[name=option-dtype]").select_option("bfloat16")
    page.locator("input[name=option-gpu_memory_utilization]").fill("0.8")
    page.locator("input[name=wait_time_s]").fill("30")
    page.locator("input[name=budget_usd_monthly]").fill("5")
    page.get_by_role("button", name="Next").click()
    page.get_by_role("button", name="Deploy").click()
    page.wait_for_url("**/#/deployments/wiz-sglang")
    dep = srv.get("wiz-sglang")
    assert dep["framework"] == "sglang"
    assert dep["options"] == {
        "max_model_len": 4096,
        "dtype": "bfloat16",
        "gpu_memory_utilization": 0.8,
    }
    assert dep["wait_time_s"] == 30 and dep["budget_usd_monthly"] == 5
    assert page.title() == "wiz-sglang · Deployments · torpor"

    # Settings: drawn from the same description; env secrets stay masked there too.
    srv.patch("wiz-sglang", {"env": {"HF_TOKEN": "hf_secret_value"}})
    wait_until(lambda: srv.get("wiz-sglang")["env"] == {"HF_TOKEN": "hf_secret_value"}, 10)
    page = ui.open("/deployments/wiz-sglang/settings")
    expect(page.locator("input[name=option-max_model_len]")).to_have_value("4096")
    expect(page.locator("textarea[name=env]")).to_have_value("HF_TOKEN=••••••••")
    page.locator("input[name=max_queue]").fill("7")
    page.get_by_role("button", name="Save changes").click()
    wait_until(lambda: srv.get("wiz-sglang")["max_queue"] == 7, 5, "the patch")
    assert srv.get("wiz-sglang")["env"] == {"HF_TOKEN": "hf_secret_value"}  # kept, not masked
    ui.shoot("deployment-settings-sglang")
    srv.api().delete("/api/deployments/wiz-sglang")


def test_dashboard_error_counts_and_gaps(ui: Console, srv: TorporServer) -> None:
    deploy_ready(srv, "all-fail", "--fail-mode http500")
    client = srv.openai()
    for _ in range(2):
        with pytest.raises(openai.APIStatusError):
            client.chat.completions.create(
                model="all-fail", messages=[{"role": "user", "content": "x"}]
            )
    with srv.api() as c:
        wait_until(
            lambda: any(
                r["deployment"] == "all-fail" and r["errors"] >= 2
                for r in c.get("/api/usage/by-deployment", params={"window": "24h"}).json()["data"]
            ),
            15,
            "the errors to be metered",
        )
        errors_1h = c.get("/api/usage/summary", params={"window": "1h"}).json()["errors"]
    page = ui.open("/dashboard")
    expect(page.get_by_test_id("sum-1h-errors")).to_have_attribute("data-value", str(errors_1h))
    row = page.locator("[data-testid=cost-breakdown] tr[data-deployment=all-fail]")
    expect(row.get_by_test_id("errors")).to_have_attribute("data-value", "2")
    expect(row.get_by_test_id("errors")).to_contain_text("100%")
    fleet = page.locator("[data-testid=fleet] tr[data-deployment=all-fail]")
    expect(fleet.get_by_test_id("fleet-errors")).to_have_attribute("data-value", "2")
    # Hours without traffic are gaps in latency and speed, not zeros.
    latency = page.get_by_test_id("chart-latency")
    expect(latency).not_to_have_attribute("data-gaps", "0")
    assert int(latency.get_attribute("data-points") or "0") >= 1
    # Money in dollars and cents (or two significant digits), never a dozen decimals.
    for cost in page.locator("[data-testid=cost-breakdown] td:nth-child(6)").all_inner_texts():
        assert cost.startswith(("$", "<$")) and len(cost.split(".")[-1]) <= 4, cost
    assert page.title() == "GPU dashboard · torpor"
    ui.shoot("dashboard-errors")


def test_keys_spend_against_budget_and_bootstrap_key(ui: Console, srv: TorporServer) -> None:
    deploy_ready(
        srv, "priced", "--tokens 5", prices={"prompt_per_mtok": 1000, "completion_per_mtok": 1000}
    )
    with srv.api() as c:
        made = c.post(
            "/api/keys",
            json={"name": "tight", "deployments": ["priced"], "budget_usd_monthly": 1},
        ).json()
    srv.openai(made["key"]).chat.completions.create(
        model="priced", messages=[{"role": "user", "content": "spend some"}]
    )
    with srv.api() as c:
        wait_until(
            lambda: (
                next(k for k in c.get("/api/keys").json()["data"] if k["id"] == made["id"])[
                    "spend_month_usd"
                ]
                > 0.001
            ),
            15,
            "the key's spend",
        )
        # Budgets hold (a request that may not fit is refused): a key is over its budget
        # when the budget is lowered below what it has spent.
        r = c.patch(f"/api/keys/{made['id']}", json={"budget_usd_monthly": 0.001})
        assert r.status_code == 200, r.text
        listed = {k["id"]: k for k in c.get("/api/keys").json()["data"]}
    assert listed[made["id"]]["last_used_at"] is not None
    boot = [k for k in listed.values() if k["bootstrap"]]
    assert len(boot) == 1 and boot[0]["revoked_at"] is None

    page = ui.open("/keys")
    row = page.locator(f"[data-testid=keys] tr[data-key={made['id']}]")
    spend = row.get_by_test_id("spend")
    expect(spend).to_contain_text("of $0.001")
    expect(spend).to_contain_text("over budget")
    expect(spend.locator("[data-over=true]")).to_have_count(1)
    expect(row.get_by_test_id("last-used")).to_contain_text("ago")
    boot_row = page.locator(f"[data-testid=keys] tr[data-key={boot[0]['id']}]")
    expect(boot_row).to_contain_text("bootstrap key")
    expect(boot_row.get_by_role("button", name="Revoke")).to_have_count(0)
    expect(row.get_by_role("button", name="Revoke")).to_have_count(1)
    assert page.title() == "API keys · torpor"
    ui.shoot("keys-spend")


def test_overview_workers_and_volume(ui: Console, srv: TorporServer) -> None:
    """The overview lists the workers (state, uptime, in flight, restarts, endpoint, GPUs)
    and the volume (directory, model bytes against storage_gb), never raw keys."""
    deploy_ready(srv, "ov-busy", "--tokens 400 --token-delay-ms 50")
    port = srv.get("ov-busy")["workers"][0]["port"]
    with (
        srv.api() as c,
        c.stream(
            "POST",
            "/v1/chat/completions",
            json={
                "model": "ov-busy",
                "stream": True,
                "messages": [{"role": "user", "content": "hi"}],
            },
        ) as streaming,
    ):
        assert streaming.status_code == 200
        lines = streaming.iter_lines()  # kept: a dropped iterator closes the stream
        assert next(lines).startswith("data: ")  # the request holds a slot now
        page = ui.open("/deployments/ov-busy/overview")
        row = page.locator("[data-testid=overview-workers] tr.worker")
        expect(row).to_have_count(1)
        expect(row).to_have_attribute("data-state", "healthy")
        expect(row.get_by_test_id("inflight")).to_have_text("1")
        expect(row.get_by_test_id("restarts")).to_have_text("0")
        expect(row.get_by_test_id("worker-endpoint")).to_have_text(f"http://127.0.0.1:{port}")
        expect(row.get_by_test_id("gpu-ids")).to_have_text("none (CPU)")
        expect(row.get_by_test_id("uptime")).to_have_text(re.compile(r"^\d+s$|^\d+m \d+s$"))
        ui.shoot("deployment-overview-busy")
    expect(row.get_by_test_id("inflight")).to_have_text("0", timeout=10_000)

    # The volume of a deployment with a model: its directory, and bytes against the limit.
    model_bytes = srv.get("smollm2")["storage"]["model_bytes"]
    assert model_bytes and model_bytes > 1_000_000
    page = ui.open("/deployments/smollm2/overview")
    volume = page.get_by_test_id("volume")
    expect(page.get_by_test_id("volume-dir")).to_have_text(
        str(srv.data_dir / "deployments" / "smollm2")
    )
    expect(page.get_by_test_id("model-size")).to_have_text(f"{model_bytes / 1e6:.1f} MB")
    bar = volume.get_by_test_id("usage-bar")
    expect(bar).to_contain_text(f"Storage: {model_bytes / 1e6:.1f} MB of 100 GB (<1%)")
    fill = bar.locator(".usage-fill")
    assert fill.get_attribute("style") == f"width: {model_bytes / 1e11 * 100:.1f}%;"
    expect(page.locator("main")).not_to_contain_text("model_bytes")
    expect(page.locator("main")).not_to_contain_text(str(model_bytes))
    ui.shoot("deployment-overview")


def test_crash_loop_overview_shows_the_last_log_lines(ui: Console, srv: TorporServer) -> None:
    srv.deploy(fake_spec("crashy", engine_args="--fail-mode crash-on-start", min_workers=1))
    try:
        srv.wait_for("crashy", lambda d: d["status"] == "error", timeout=30)
        page = ui.open("/deployments/crashy/overview")
        failure = page.get_by_test_id("last-error")
        expect(failure).to_be_visible()
        expect(failure.get_by_test_id("log-tail")).to_contain_text("crashing on purpose")
        expect(page.get_by_test_id("reason")).to_contain_text("crash loop")
        # The setup is done; a bare "running" next to a crash loop read as "all is well".
        expect(page.get_by_test_id("setup")).not_to_have_text("running")
        ui.shoot("deployment-overview-crash-loop")
    finally:
        assert srv.api().delete("/api/deployments/crashy").status_code in (200, 202, 204)


def test_metrics_tab_loading_state(ui: Console, srv: TorporServer) -> None:
    held: list[Route] = []
    ui.page.route("**/api/deployments/smollm2/metrics?*", lambda route: held.append(route))
    page = ui.open("/deployments/smollm2/metrics")
    expect(page.get_by_test_id("metrics-loading")).to_be_visible()
    expect(page.get_by_text("No data yet")).to_have_count(0)
    pump_until(page, lambda: bool(held), "the metrics request")
    for route in held:
        route.continue_()
    ui.page.unroute("**/api/deployments/smollm2/metrics?*")
    expect(page.get_by_test_id("metric-total")).to_be_visible()
    expect(page.get_by_test_id("metrics-loading")).to_have_count(0)
    # Another window is loading until its own data is there (never the last window's).
    held.clear()
    ui.page.route("**/api/deployments/smollm2/metrics?window=24h", lambda route: held.append(route))
    page.get_by_role("button", name="24h").click()
    expect(page.get_by_test_id("metrics-loading")).to_be_visible()
    pump_until(page, lambda: bool(held), "the 24h request")
    expect(page.get_by_test_id("metric-total")).to_have_count(0)
    for route in held:
        route.continue_()
    ui.page.unroute("**/api/deployments/smollm2/metrics?window=24h")
    expect(page.get_by_test_id("metric-total")).to_be_visible()


def test_non_admin_console(browser: Browser, srv: TorporServer) -> None:
    with srv.api() as c:
        made = c.post(
            "/api/keys",
            json={"name": "viewer", "deployments": ["smollm2"], "budget_usd_monthly": 2},
        ).json()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_init_script(f"window.sessionStorage.setItem('torpor.apiKey', {made['key']!r})")
    c = Console(context.new_page(), srv)
    try:
        page = c.open("/keys")
        own = page.get_by_test_id("own-key")
        expect(own).to_contain_text("viewer")
        expect(own.get_by_test_id("spend")).to_contain_text("of $2.00")
        c.shoot("keys-non-admin")
        page = c.open("/dashboard")
        expect(page.get_by_test_id("sum-24h-requests")).to_be_visible()
        c.shoot("dashboard-non-admin")
        page = c.open("/deployments/smollm2/overview")
        expect(page.get_by_role("heading", name="smollm2")).to_be_visible()
        expect(page.get_by_text("Model files")).to_have_count(0)  # no server paths
        expect(page.locator("main")).not_to_contain_text(str(srv.data_dir))
        expect(page.get_by_test_id("volume")).to_have_count(0)
        # Workers with their state, never their addresses.
        expect(page.get_by_role("heading", name="Workers")).to_be_visible()
        expect(page.get_by_test_id("worker-endpoint")).to_have_count(0)
        c.shoot("deployment-non-admin")
        page = c.open("/catalog")
        expect(page.locator(".card[data-deployment=smollm2]")).to_be_visible()
        c.assert_clean()  # no 403 from routes a non-admin may not read
    finally:
        context.close()


def test_video_view_state_resets_between_deployments(ui: Console, srv: TorporServer) -> None:
    if "chat-ready" not in {d["name"] for d in srv.api().get("/api/deployments").json()["data"]}:
        deploy_ready(srv, "chat-ready")
    page = ui.open("/video/smollm2")
    expect(page.get_by_test_id("not-video")).to_contain_text("not a video-generation")
    page.get_by_label("Video prompt").fill("a fox in the snow")
    page.evaluate("location.hash = '#/video/chat-ready'")
    expect(page.get_by_role("heading", name="chat-ready")).to_be_visible()
    expect(page.get_by_label("Video prompt")).to_have_value("")
    assert page.title() == "chat-ready · Video · torpor"


def test_every_page_at_both_widths(ui: Console, srv: TorporServer) -> None:
    """Screenshots of each page, 1280 and 390 px; tables become cards on phones."""
    pages = {
        "catalog": "/catalog",
        "playground-empty": "/playground/smollm2",
        "dashboard": "/dashboard",
        "deployments": "/deployments",
        "wizard": "/deployments/new",
        "keys": "/keys",
        "video": "/video/smollm2",
    }
    for tab in ("overview", "workers", "metrics", "logs", "async", "settings"):
        pages[f"deployment-{tab}"] = f"/deployments/smollm2/{tab}"
    for name, route in pages.items():
        page = ui.open(route)
        expect(page.locator("main h1, main .chat-head").first).to_be_visible()
        ui.shoot(name)
    page = ui.open("/deployments")
    page.set_viewport_size({"width": 390, "height": 900})
    cell = page.locator("tr[data-deployment=smollm2] td").nth(1)
    assert cell.get_attribute("data-label") == "Status"
    connect = page.locator("tr[data-deployment=smollm2]").get_by_role("button", name="Connect")
    box = connect.bounding_box()
    assert box is not None and box["x"] + box["width"] <= 390, box
    page.set_viewport_size({"width": 1280, "height": 900})


def test_dashboard_shows_gpus_by_node(
    browser: Browser, server_factory: Callable[..., TorporServer]
) -> None:
    gpu_srv = server_factory(env={"TORPOR_GPUS": "2xA100-80GB"})
    deploy_ready(gpu_srv, "on-gpu", gpus=1)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_init_script(
        f"window.sessionStorage.setItem('torpor.apiKey', {gpu_srv.admin_key!r})"
    )
    c = Console(context.new_page(), gpu_srv)
    try:
        page = c.open("/dashboard")
        row = page.locator("[data-testid=gpu-nodes] tr[data-node=local]")
        expect(row).to_contain_text("A100-80GB")
        expect(row).to_contain_text("1 / 2")
        expect(row).to_contain_text("on-gpu")
        c.shoot("dashboard-gpus")
        c.assert_clean()
    finally:
        context.close()
