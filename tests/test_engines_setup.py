"""Real workers through the whole setup pipeline: the custom framework (the fake engine) and
llama.cpp with the bundled model; each setup state is an event, in order."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import TorporServer, fake_spec, llama_spec

SETUP = ["starting", "filesystem_created", "downloading_model", "model_downloaded", "running"]


def events(srv: TorporServer, name: str) -> list[dict[str, Any]]:
    with srv.api() as c:
        r = c.get(f"/api/deployments/{name}/events")
        assert r.status_code == 200, r.text
        return list(r.json()["data"])


def check_pipeline(srv: TorporServer, name: str) -> None:
    got = events(srv, name)
    setup = [e["state"] for e in got if e["kind"] == "setup"]
    assert setup == SETUP, got
    stamps = [e["at"] for e in got]
    assert stamps == sorted(stamps)
    # Workers start only once the pipeline has reached `running`.
    kinds = [(e["kind"], e["state"]) for e in got]
    assert kinds.index(("setup", "running")) < kinds.index(("worker", "provisioning"))
    assert kinds.index(("worker", "provisioning")) < kinds.index(("worker", "healthy"))


@pytest.mark.llama
def test_custom_and_llamacpp_workers_run_through_the_pipeline(server: TorporServer) -> None:
    server.deploy(fake_spec("fake", min_workers=1))
    server.deploy(llama_spec("tiny", min_workers=1))
    for name in ("fake", "tiny"):
        dep = server.wait_for(name, lambda d: d["status"] == "ready", timeout=120)
        assert dep["state"] == "running"
        check_pipeline(server, name)

    tiny = server.get("tiny")
    assert tiny["model_path"].endswith(".gguf")
    assert tiny["storage"]["model_bytes"] > 1_000_000
    assert tiny["catalog"] == {
        "vendor": "HuggingFaceTB",
        "display_name": "SmolLM2 135M Instruct",
        "type": "chat",
    }
    # Served under the deployment's name: the gateway passes `model` through unchanged.
    reply = server.openai().chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert reply.model == "tiny"

    # The catalog entry is live: editing it restarts nothing.
    pid = tiny["workers"][0]["pid"]
    after = server.patch("tiny", {"catalog": {"display_name": "Tiny chat"}})
    assert after["catalog"]["display_name"] == "Tiny chat"
    assert after["spec_version"] == tiny["spec_version"]
    assert after["workers"][0]["pid"] == pid


def test_unknown_option_is_refused_with_422(server: TorporServer) -> None:
    with server.api() as c:
        r = c.post(
            "/api/deployments",
            json={"name": "v", "framework": "vllm", "model": "org/m", "options": {"tp": 2}},
        )
    assert r.status_code == 422
    assert "options: vllm has no option 'tp'" in r.json()["error"]["message"]
