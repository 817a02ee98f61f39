"""Browser tests of the web console: Playwright drives Debian's headless Chromium against a
real `torpor serve`. Every page is checked at 1280 px and 390 px wide (screenshots go to
artifacts/console/), and no page may log an error to the browser console.

Needs the built console (console/dist: `scripts/install` builds it) and /usr/bin/chromium
(`scripts/test` installs it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

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
    expect(page.get_by_test_id("json-response")).to_contain_text('"stream"')
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
