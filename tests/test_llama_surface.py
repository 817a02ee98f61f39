"""The OpenAI surface against the real llama.cpp engine (bundled SmolLM2) through
`torpor serve`, with the official SDK: fields llama.cpp reads under other names, structured
output, and the engine's reasons when it refuses a request."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import TorporServer

pytestmark = pytest.mark.llama
MESSAGES: Any = [{"role": "user", "content": "Write a long story about a cat."}]


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorporServer]:
    """One server for the module; its default deployment `smollm2` kept warm."""
    data: Path = tmp_path_factory.mktemp("llama-surface")
    server = TorporServer(data).start()
    try:
        server.patch("smollm2", {"min_workers": 1})
        server.wait_for("smollm2", lambda d: d["status"] == "ready", timeout=60)
        yield server
    finally:
        server.stop()
        assert server.survivors() == []


def test_max_completion_tokens_caps_the_answer(llama: TorporServer) -> None:
    resp = llama.openai().chat.completions.create(
        model="smollm2", messages=MESSAGES, max_completion_tokens=8
    )
    assert resp.usage is not None and 0 < resp.usage.completion_tokens <= 8
    assert resp.choices[0].finish_reason == "length"


def test_n_above_one_is_refused_naming_the_parameter(llama: TorporServer) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        llama.openai().chat.completions.create(
            model="smollm2", messages=MESSAGES, max_tokens=4, n=2
        )
    assert "'n' = 2 is not supported" in str(bad.value)


def test_json_schema_output_works(llama: TorporServer) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    resp = llama.openai().chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Name a city and its population, as JSON."}],
        max_tokens=80,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "city", "schema": schema, "strict": True},
        },
    )
    content = resp.choices[0].message.content
    assert content is not None
    answer = json.loads(content)
    assert isinstance(answer["city"], str) and isinstance(answer["population"], int)


def test_engine_refusals_carry_the_engine_reason(llama: TorporServer) -> None:
    client = llama.openai()
    # llama-cpp-python answers 500 to a body its models refuse: that is the caller's 400.
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="smollm2", messages="hello", max_tokens=4)  # type: ignore[arg-type]
    assert "The engine refused the request: messages: Input should be a valid list" in str(
        bad.value
    )
    # Embeddings from a chat model: the engine's reason, a 502 that does not ask to retry.
    with pytest.raises(openai.APIStatusError) as failed:
        client.embeddings.create(model="smollm2", input="hello")
    assert failed.value.status_code == 502
    message = failed.value.response.json()["error"]["message"]
    assert message == (
        "Worker error: Llama model must be created with embedding=True to call this method"
    )


def _summary(server: TorporServer) -> dict[str, Any]:
    with server.api() as c:
        r = c.get("/api/usage/summary", params={"window": "1h", "deployment": "smollm2"})
        assert r.status_code == 200, r.text
        return dict(r.json())


def test_stream_usage_is_counted_by_the_engine_tokenizer_and_billed(llama: TorporServer) -> None:
    client = llama.openai()
    before = _summary(llama)
    messages: Any = [{"role": "user", "content": "Count from one to five, please."}]
    plain = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=12)
    assert plain.usage is not None and plain.usage.prompt_tokens > 20  # template included

    chunks = list(
        client.chat.completions.create(
            model="smollm2",
            messages=messages,
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1 and chunks[-1].usage is not None  # last, as OpenAI sends it
    assert usage[0].prompt_tokens == plain.usage.prompt_tokens
    assert 0 < usage[0].completion_tokens <= 12
    assert usage[0].total_tokens == usage[0].prompt_tokens + usage[0].completion_tokens

    # A stream that did not ask for usage gets none, and is still billed exactly.
    quiet = list(
        client.chat.completions.create(
            model="smollm2", messages=messages, max_tokens=12, stream=True
        )
    )
    assert quiet and all(c.usage is None for c in quiet)

    deadline = time.monotonic() + 10
    after = _summary(llama)
    while after["requests"] < before["requests"] + 3 and time.monotonic() < deadline:
        time.sleep(0.1)
        after = _summary(llama)
    assert after["requests"] == before["requests"] + 3
    assert after["prompt_tokens"] - before["prompt_tokens"] == 3 * plain.usage.prompt_tokens
