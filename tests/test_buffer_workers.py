"""`buffer_workers` live: a deployment scaled to zero with buffer_workers 1 keeps one idle
worker up with no demand, and a second one while a request occupies the first (N idle
workers above current demand, like Modal's buffer_containers); when the request is over,
the extra worker goes to sleep."""

from __future__ import annotations

import threading
import time
from typing import Any

from tests.conftest import TorporServer, fake_spec


def states(dep: dict[str, Any]) -> list[str]:
    return sorted(w["state"] for w in dep["workers"] if w["state"] not in ("stopped", "failed"))


def test_buffer_workers_keep_one_idle_worker_above_demand(server: TorporServer) -> None:
    name = "buffered"
    # 30 tokens 100 ms apart: a request holds its worker's one slot for about 3 s.
    server.deploy(
        fake_spec(
            name,
            engine_args="--tokens 30 --token-delay-ms 100",
            min_workers=0,
            max_workers=3,
            concurrency=1,
            buffer_workers=1,
            sleep_after_s=1,
        )
    )
    # No demand: one idle worker anyway, and no more (checked over a while).
    server.wait_for(name, lambda d: states(d) == ["healthy"], 30)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        assert states(server.get(name)) == ["healthy"]
        time.sleep(0.1)

    done = threading.Event()

    def long_request() -> None:
        client = server.openai()
        client.chat.completions.create(model=name, messages=[{"role": "user", "content": "x"}])
        done.set()

    t = threading.Thread(target=long_request)
    t.start()
    # Demand 1 on one worker: a second one comes up while the first one is busy.
    dep = server.wait_for(name, lambda d: states(d) == ["healthy", "healthy"], 30)
    assert not done.is_set(), "the request ended before the buffer worker was up"
    t.join(30)
    assert done.is_set()
    # Demand 0 again: the target is one awake worker; the other one goes to sleep.
    dep = server.wait_for(name, lambda d: states(d) == ["healthy", "sleeping"], 30)
    assert len(dep["workers"]) >= 2
