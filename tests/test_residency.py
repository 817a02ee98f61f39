"""GPU residency under pressure (declared devices), and a live schedule window."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.conftest import TorporServer, fake_spec


def chat(server: TorporServer, model: str) -> str:
    out = server.openai().chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}]
    )
    return str(out.choices[0].message.content)


def states(dep: dict[str, Any]) -> list[tuple[str, str | None]]:
    return [(w["state"], w["reason"]) for w in dep["workers"]]


def test_gpu_pressure_evicts_sleeping_then_idle_lower_priority(
    server_factory: Callable[..., TorporServer],
) -> None:
    server = server_factory(env={"TORPOR_GPUS": "1xA100-80GB"})
    # "low" sleeps when idle; "idle" never sleeps and has a lower priority than "need".
    server.deploy(fake_spec("low", gpus=1, sleep_after_s=0.5, priority=5, wait_time_s=30))
    server.deploy(fake_spec("idle", gpus=1, priority=-1, wait_time_s=30))
    server.deploy(fake_spec("need", gpus=1, priority=0, wait_time_s=30))

    assert chat(server, "low")
    server.wait_for("low", lambda d: any(w["state"] == "sleeping" for w in d["workers"]))
    # The only device is held by a sleeping worker (of a higher priority): it is evicted,
    # and the waiting request is served (no 503).
    assert chat(server, "need")
    low = server.get("low")
    assert states(low)[0] == ("stopped", "evicted for need (GPU pressure)")


def test_gpu_pressure_evicts_idle_lower_priority_worker(
    server_factory: Callable[..., TorporServer],
) -> None:
    server = server_factory(env={"TORPOR_GPUS": "1xA100-80GB"})
    server.deploy(fake_spec("idle", gpus=1, priority=-1, wait_time_s=30))
    server.deploy(fake_spec("need", gpus=1, priority=0, wait_time_s=30))
    assert chat(server, "idle")
    assert chat(server, "need")  # held through the eviction and the cold start
    assert states(server.get("idle"))[0] == ("stopped", "evicted for need (GPU pressure)")
    # The other way round, a lower priority does not evict an idle higher one: 503.
    server.patch("idle", {"wait_time_s": 1})
    with server.api() as c:
        r = c.post(
            "/v1/chat/completions",
            json={"model": "idle", "messages": [{"role": "user", "content": "x"}]},
        )
    assert r.status_code == 503, r.text
    assert server.get("need")["workers"][0]["state"] == "healthy"


def test_busy_worker_is_never_evicted(server_factory: Callable[..., TorporServer]) -> None:
    server = server_factory(env={"TORPOR_GPUS": "1xA100-80GB"})
    # The holder is in the middle of a slow answer when another deployment needs the GPU.
    server.deploy(fake_spec("busy", gpus=1, priority=-5, engine_args="--token-delay-ms 400"))
    server.deploy(fake_spec("other", gpus=1, wait_time_s=1))
    assert chat(server, "busy")

    done: list[str] = []
    t = threading.Thread(target=lambda: done.append(chat(server, "busy")))
    t.start()
    server.wait_for("busy", lambda d: any(w["inflight"] for w in d["workers"]))
    with server.api() as c:
        r = c.post(
            "/v1/chat/completions",
            json={"model": "other", "messages": [{"role": "user", "content": "x"}]},
        )
    t.join()
    assert done  # the busy request finished
    assert r.status_code == 503, r.text  # no device within wait_time_s, nothing evicted
    assert server.get("busy")["workers"][0]["state"] == "healthy"


def test_schedule_window_raises_and_lowers_min_workers_live(server: TorporServer) -> None:
    # A window every 30 s (seconds field), lasting 6 s: workers up at its start, reaped at
    # its end (idle_timeout_s 0).
    now = datetime.now(UTC)
    start = (now + timedelta(seconds=4)).replace(microsecond=0)
    cron = f"* * * * * {start.second}"
    server.deploy(
        fake_spec(
            "sched",
            idle_timeout_s=0,
            max_workers=2,
            schedule=[{"cron": cron, "duration_s": 6, "min_workers": 2}],
        )
    )
    assert server.get("sched")["workers"] == []
    dep = server.wait_for(
        "sched", lambda d: sum(w["state"] == "healthy" for w in d["workers"]) == 2, 30
    )
    up = datetime.now(UTC)
    assert up >= start - timedelta(seconds=0.5), (up, start)
    assert len(dep["workers"]) == 2
    server.wait_for("sched", lambda d: not any(w["state"] == "healthy" for w in d["workers"]), 30)
    down = datetime.now(UTC)
    assert down >= start + timedelta(seconds=5.5), (down, start)
