"""Webhooks never reach loopback, private, link-local or reserved addresses on a caller's
say-so, and a failed delivery records a status class, never what answered.

The address rules are tested as pure functions (no traffic); the delivery resolver with a
fake DNS answer and a real receiver on loopback that must see no connection; the submit
check against a real `torpor serve`. Every connection stays on loopback."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

import httpx
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from tests.conftest import TorporServer, fake_spec, free_port
from torpor.asyncreq.webhooks import (
    AddressNotAllowed,
    Delivery,
    GuardedResolver,
    HttpPoster,
    WebhookUrlGuard,
    delivery_refusal,
    getaddrinfo_resolve,
    status_class,
)
from torpor.netguard import (
    Refused,
    Target,
    address_refusal,
    addresses_refusal,
    url_target,
)

# -- the pure address check ------------------------------------------------------------------

REFUSED = {
    # loopback
    "127.0.0.1": "loopback",
    "127.255.255.254": "loopback",
    "::1": "loopback",
    # private
    "10.0.0.1": "private",
    "10.255.255.255": "private",
    "172.16.0.1": "private",
    "172.31.255.254": "private",
    "192.168.1.1": "private",
    "fc00::1": "private",
    "fd12:3456:789a::1": "private",
    # link-local, the cloud metadata address included
    "169.254.169.254": "link-local",
    "169.254.0.1": "link-local",
    "fe80::1": "link-local",
    "fe80::1%eth0": "link-local",
    # multicast
    "224.0.0.1": "multicast",
    "239.255.255.250": "multicast",
    "ff02::1": "multicast",
    "ff0e::1": "multicast",
    # reserved, broadcast, unspecified, shared address space
    "240.0.0.1": "reserved",
    "255.255.255.255": "reserved",
    "0.0.0.0": "unspecified",
    "::": "unspecified",
    "0.1.2.3": "reserved",
    "100.64.0.1": "shared address space",
    "100.127.255.254": "shared address space",
    # documentation and benchmarking ranges are not routable either
    "192.0.2.1": "reserved",
    "198.18.0.1": "reserved",
    "2001:db8::1": "reserved",
    # IPv6 forms of forbidden IPv4 addresses: judged by the IPv4 address they carry
    "::ffff:127.0.0.1": "loopback",
    "::ffff:10.0.0.1": "private",
    "::ffff:169.254.169.254": "link-local",
    "::127.0.0.1": "loopback",  # IPv4-compatible
    "::10.0.0.1": "private",
    "64:ff9b::7f00:1": "loopback",  # NAT64 of 127.0.0.1
    "64:ff9b::a9fe:a9fe": "link-local",  # NAT64 of 169.254.169.254
    "2002:7f00:1::1": "loopback",  # 6to4 of 127.0.0.1
    "2002:c0a8:101::1": "private",  # 6to4 of 192.168.1.1
    "64:ff9b:1::1": "private",  # local-use NAT64
    # outside the global unicast space
    "100::1": "reserved",
    "2001::1": "reserved",  # Teredo
    "4000::1": "reserved",
}

PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "2001:4860:4860::8888",
    "2606:4700:4700::1111",
    "93.184.216.34",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",  # NAT64 of 8.8.8.8
    "2002:808:808::1",  # 6to4 of 8.8.8.8
]


@pytest.mark.parametrize(("address", "reason"), sorted(REFUSED.items()))
def test_forbidden_addresses_are_refused_with_their_reason(address: str, reason: str) -> None:
    assert address_refusal(address) == reason
    assert address_refusal(ip_address(address.split("%")[0])) == reason


@pytest.mark.parametrize("address", PUBLIC)
def test_globally_routable_addresses_pass(address: str) -> None:
    assert address_refusal(address) is None
    assert address_refusal(ip_address(address)) is None


def test_a_list_passes_only_when_every_address_passes() -> None:
    assert addresses_refusal(["8.8.8.8", IPv6Address("2001:4860:4860::8888")]) is None
    assert addresses_refusal(["8.8.8.8", "10.1.2.3"]) == "private"
    assert addresses_refusal([IPv4Address("1.1.1.1"), "::ffff:127.0.0.1"]) == "loopback"
    assert addresses_refusal([]) == "no address"
    assert address_refusal("not-an-address") == "invalid address"


def test_url_form() -> None:
    assert url_target("https://hooks.example.com/x?y=1") == Target("hooks.example.com", 443, None)
    assert url_target("http://Example.COM:8080/") == Target("example.com", 8080, None)
    assert url_target("http://[::1]:9/h") == Target("::1", 9, IPv6Address("::1"))
    assert url_target("http://[::ffff:127.0.0.1]/h") == Target(
        "::ffff:127.0.0.1", 80, IPv6Address("::ffff:127.0.0.1")
    )
    assert url_target("http://127.0.0.1:1/h") == Target("127.0.0.1", 1, IPv4Address("127.0.0.1"))
    for url, reason in (
        ("ftp://example.com/x", "must be an http or https URL"),
        ("file:///etc/passwd", "must be an http or https URL"),
        ("gopher://example.com/", "must be an http or https URL"),
        ("example.com/hook", "must be an http or https URL"),
        ("http:///hook", "a host is required"),
        ("http://user:pw@example.com/", "user information is not allowed"),
        ("http://user@example.com/", "user information is not allowed"),
        ("http://@example.com/", "user information is not allowed"),
        ("http://example.com:99999/", "invalid URL"),
        ("http://exa mple.com/", "invalid URL"),
        ("http://example.com\\@127.0.0.1/", "invalid URL"),
        ("http://example.com/\r\nX: y", "invalid URL"),
        ("http://[not-v6]/", "invalid URL"),
    ):
        assert url_target(url) == Refused(reason), url


# -- the submit-time check -------------------------------------------------------------------


def fake_dns(answers: dict[str, list[str]]) -> Any:
    asked: list[tuple[str, int]] = []

    async def resolve(host: str, port: int) -> list[str]:
        asked.append((host, port))
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return answers[host]

    resolve.asked = asked  # type: ignore[attr-defined]
    return resolve


async def test_submit_guard_resolves_names_and_checks_every_address() -> None:
    dns = fake_dns(
        {
            "hooks.example.com": ["93.184.216.34", "2606:2800:220:1::1"],
            "rebound.example.com": ["93.184.216.34", "10.0.0.7"],
            "meta.example.com": ["169.254.169.254"],
            "empty.example.com": [],
        }
    )
    guard = WebhookUrlGuard(dns, allow_private=False, timeout_s=5)
    assert await guard.refusal("https://hooks.example.com/x") is None
    assert dns.asked == [("hooks.example.com", 443)]
    assert await guard.refusal("http://rebound.example.com/") == "address not allowed (private)"
    assert await guard.refusal("http://meta.example.com/") == "address not allowed (link-local)"
    assert await guard.refusal("http://nowhere.example.com/") == "host does not resolve"
    assert await guard.refusal("http://empty.example.com/") == "host does not resolve"
    # An IP literal needs no lookup.
    asked = len(dns.asked)
    assert await guard.refusal("http://[::ffff:10.0.0.1]:80/") == "address not allowed (private)"
    assert await guard.refusal("http://8.8.8.8/") is None
    assert len(dns.asked) == asked
    assert await guard.refusal("ftp://hooks.example.com/") == "must be an http or https URL"

    # Allowing private addresses turns the address check off, not the form check.
    open_guard = WebhookUrlGuard(dns, allow_private=True, timeout_s=5)
    assert await open_guard.refusal("http://127.0.0.1:1/") is None
    assert await open_guard.refusal("http://meta.example.com/") is None
    assert await open_guard.refusal("http://u:p@127.0.0.1/") == "user information is not allowed"


async def test_submit_guard_with_the_real_resolver_refuses_localhost() -> None:
    addresses = await getaddrinfo_resolve("localhost", 80)
    assert addresses and all(ip_address(a.split("%")[0]).is_loopback for a in addresses)
    guard = WebhookUrlGuard(getaddrinfo_resolve, allow_private=False, timeout_s=5)
    assert await guard.refusal("http://localhost:8080/hook") == "address not allowed (loopback)"


async def test_submit_guard_gives_up_on_a_slow_resolver() -> None:
    import asyncio

    never = asyncio.Event()

    async def hanging(_host: str, _port: int) -> list[str]:
        await never.wait()
        return []

    guard = WebhookUrlGuard(hanging, allow_private=False, timeout_s=0.2)
    assert await guard.refusal("http://slow.example.com/") == "host does not resolve"


# -- the delivery-time check -----------------------------------------------------------------


class FakeResolver(AbstractResolver):
    """Answers every name with fixed addresses, like a DNS server that rebinds."""

    def __init__(self, addresses: list[str]):
        self.addresses = addresses
        self.asked: list[str] = []
        self.closed = False

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        return [
            ResolveResult(
                hostname=host,
                host=a,
                port=port,
                family=socket.AF_INET6 if ":" in a else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for a in self.addresses
        ]

    async def close(self) -> None:
        self.closed = True


async def test_delivery_resolver_refuses_a_rebound_answer() -> None:
    for answer, reason in (
        (["127.0.0.1"], "loopback"),
        (["93.184.216.34", "10.0.0.7"], "private"),
        (["::ffff:169.254.169.254"], "link-local"),
    ):
        inner = FakeResolver(answer)
        with pytest.raises(AddressNotAllowed) as info:
            await GuardedResolver(inner).resolve("hooks.example.com", 443)
        assert info.value.reason == reason
        assert inner.asked == ["hooks.example.com"]
    inner = FakeResolver(["93.184.216.34"])
    guarded = GuardedResolver(inner)
    assert [r["host"] for r in await guarded.resolve("hooks.example.com", 443)] == ["93.184.216.34"]
    await guarded.close()
    assert inner.closed


class Receiver:
    """A real HTTP server on loopback answering POSTs with a fixed status; it counts the
    TCP connections it accepts."""

    def __init__(self, status: int = 200, host: str = "127.0.0.1") -> None:
        self.status = status
        self.connections = 0
        self.bodies: list[bytes] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.bodies.append(body)
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def verify_request(self, request: Any, client_address: Any) -> bool:
                receiver.connections += 1
                return True

        self.server = Server((host, 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def delivery(url: str) -> Delivery:
    return Delivery(url, b'{"id": "req_x"}', {"Content-Type": "application/json"})


async def test_rebinding_to_loopback_is_refused_without_connecting(receiver: Receiver) -> None:
    url = f"http://hooks.example.com:{receiver.port}/hook"
    rebound = FakeResolver(["127.0.0.1"])
    poster = HttpPoster(5, allow_private=False, resolver=lambda: rebound)
    try:
        assert await poster(delivery(url)) == "address not allowed"
        assert rebound.asked == ["hooks.example.com"]
        # An IP literal never reaches a resolver: it is checked before connecting.
        assert await poster(delivery(f"http://127.0.0.1:{receiver.port}/hook")) == (
            "address not allowed"
        )
        assert await poster(delivery(f"http://[::ffff:127.0.0.1]:{receiver.port}/")) == (
            "address not allowed"
        )
        assert await poster(delivery("ftp://hooks.example.com/")) == "invalid url"
    finally:
        await poster.close()
    assert receiver.connections == 0 and receiver.bodies == []

    # The same answer with private addresses allowed does connect: the refusal above was
    # the guard's, not a broken set-up.
    same = FakeResolver(["127.0.0.1"])
    open_poster = HttpPoster(5, allow_private=True, resolver=lambda: same)
    try:
        assert await open_poster(delivery(url)) is None
    finally:
        await open_poster.close()
    assert same.closed
    assert receiver.connections == 1 and receiver.bodies == [b'{"id": "req_x"}']


async def test_failed_deliveries_record_a_status_class_only() -> None:
    refused = Receiver(401)
    broken = Receiver(503)
    moved = Receiver(302)
    closed_port = free_port()
    poster = HttpPoster(5, allow_private=True)
    try:
        assert await poster(delivery(f"http://127.0.0.1:{refused.port}/h")) == "HTTP 4xx"
        assert await poster(delivery(f"http://127.0.0.1:{broken.port}/h")) == "HTTP 5xx"
        assert await poster(delivery(f"http://127.0.0.1:{moved.port}/h")) == "HTTP 3xx"
        assert await poster(delivery(f"http://127.0.0.1:{closed_port}/h")) == ("connection failed")
    finally:
        await poster.close()
        for r in (refused, broken, moved):
            r.close()
    assert moved.connections == 1  # the redirect was not followed
    assert [status_class(s) for s in (200, 204, 301, 404, 500, 599)] == [
        None,
        None,
        "HTTP 3xx",
        "HTTP 4xx",
        "HTTP 5xx",
        "HTTP 5xx",
    ]


async def test_a_receiver_that_never_answers_times_out() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts the connection in the kernel, never answers
    poster = HttpPoster(0.5, allow_private=True)
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/h"
        assert await poster(delivery(url)) == "timed out"
    finally:
        await poster.close()
        listener.close()


def test_delivery_precheck() -> None:
    assert delivery_refusal("http://127.0.0.1/", allow_private=False) == "address not allowed"
    assert delivery_refusal("http://[fe80::1]/", allow_private=False) == "address not allowed"
    assert delivery_refusal("http://127.0.0.1/", allow_private=True) is None
    assert delivery_refusal("http://hooks.example.com/", allow_private=False) is None
    assert delivery_refusal("http://u@hooks.example.com/", allow_private=True) == "invalid url"


# -- against a real torpor serve --------------------------------------------------------------

MESSAGES = [{"role": "user", "content": "hi"}]
BASE_ENV = {
    "TORPOR_CREATE_DEFAULT_DEPLOYMENT": "false",
    "TORPOR_ASYNC_POLL_INTERVAL_S": "0.2",
    "TORPOR_WEBHOOK_BACKOFF_BASE_S": "0.1",
    "TORPOR_WEBHOOK_MAX_ATTEMPTS": "2",
}


def _start(tmp: pytest.TempPathFactory, name: str, env: dict[str, str]) -> TorporServer:
    srv = TorporServer(tmp.mktemp(name), {**BASE_ENV, **env}).start()
    srv.deploy(fake_spec("fake", engine_args="--tokens 2", max_workers=1))
    return srv


def _stop(srv: TorporServer) -> None:
    srv.stop()
    assert srv.survivors() == []


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorporServer]:
    srv = _start(tmp_path_factory, "guarded", {})
    try:
        yield srv
    finally:
        _stop(srv)


@pytest.fixture(scope="module")
def trusting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorporServer]:
    srv = _start(tmp_path_factory, "trusting", {"TORPOR_WEBHOOK_ALLOW_PRIVATE": "1"})
    try:
        yield srv
    finally:
        _stop(srv)


def _submit(c: httpx.Client, url: str, via_header: bool) -> httpx.Response:
    if via_header:
        return c.post(
            "/v1/chat/completions",
            json={"model": "fake", "messages": MESSAGES},
            headers={"X-Async": "true", "X-Webhook-Url": url},
        )
    return c.post(
        "/deployment/fake/v1/chat/completions",
        json={"input": {"messages": MESSAGES}, "webhook_url": url},
    )


def _webhook_settled(c: httpx.Client, rid: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        view = dict(c.get(f"/v1/requests/{rid}").json())
        if view["webhook"]["state"] in ("delivered", "failed"):
            return view
        assert time.monotonic() < deadline, view
        time.sleep(0.05)


def test_loopback_webhooks_refused_at_submit(guarded: TorporServer, receiver: Receiver) -> None:
    p = receiver.port
    urls = [
        f"http://127.0.0.1:{p}/hook",
        f"http://[::1]:{p}/hook",
        f"http://[::ffff:127.0.0.1]:{p}/hook",
        f"http://localhost:{p}/hook",
    ]
    with guarded.api() as c:
        for url in urls:
            for via_header in (False, True):
                r = _submit(c, url, via_header)
                assert r.status_code == 400, (url, via_header, r.text)
                error = r.json()["error"]
                assert error["type"] == "invalid_request_error", error
                assert error["message"] == "webhook_url: address not allowed (loopback)", error
        r = _submit(c, "http://user:pw@example.com/hook", via_header=False)
        assert r.status_code == 400
        assert r.json()["error"]["message"] == "webhook_url: user information is not allowed"

        # Nothing was stored; a request without a webhook still is (the listing works).
        listing = c.get("/api/deployments/fake/async").json()
        assert listing["data"] == [] and sum(listing["counts"].values()) == 0
        r = c.post("/v1/chat/completions", json={"model": "fake"}, headers={"X-Async": "true"})
        assert r.status_code == 202, r.text
        listing = c.get("/api/deployments/fake/async").json()
        assert [v["id"] for v in listing["data"]] == [r.json()["id"]]
    assert receiver.connections == 0


def test_allowed_private_delivers_and_records_status_classes(
    trusting: TorporServer, receiver: Receiver
) -> None:
    unauthorized = Receiver(401)
    closed_port = free_port()
    try:
        with trusting.api() as c:
            ok = _submit(c, f"http://127.0.0.1:{receiver.port}/hook", via_header=True)
            assert ok.status_code == 202, ok.text
            local = _submit(c, f"http://localhost:{receiver.port}/hook", via_header=False)
            assert local.status_code == 202, local.text
            denied = _submit(c, f"http://127.0.0.1:{unauthorized.port}/hook", via_header=False)
            assert denied.status_code == 202, denied.text
            dead = _submit(c, f"http://127.0.0.1:{closed_port}/hook", via_header=True)
            assert dead.status_code == 202, dead.text
            # The form check stays on.
            r = _submit(c, "ftp://127.0.0.1/hook", via_header=True)
            assert r.status_code == 400
            assert r.json()["error"]["message"] == "webhook_url: must be an http or https URL"

            view = _webhook_settled(c, ok.json()["id"])
            assert view["webhook"]["state"] == "delivered", view
            assert view["webhook"]["last_error"] is None
            view = _webhook_settled(c, local.json()["id"])
            assert view["webhook"]["state"] == "delivered", view

            view = _webhook_settled(c, denied.json()["id"])
            assert view["webhook"]["state"] == "failed", view
            assert view["webhook"]["attempts"] == 2
            assert view["webhook"]["last_error"] == "HTTP 4xx"
            view = _webhook_settled(c, dead.json()["id"])
            assert view["webhook"]["state"] == "failed", view
            assert view["webhook"]["last_error"] == "connection failed"
        assert len(receiver.bodies) == 2 and len(unauthorized.bodies) == 2
    finally:
        unauthorized.close()
