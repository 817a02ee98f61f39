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


def test_stream_with_a_query_string_is_still_counted_by_the_tokenizer(
    llama: TorporServer,
) -> None:
    # The route decides counting; a query string on it must not turn counting off.
    client = llama.openai()
    messages: Any = [{"role": "user", "content": "Name three colours."}]
    plain = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=8)
    assert plain.usage is not None
    chunks = list(
        client.chat.completions.create(
            model="smollm2",
            messages=messages,
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
            extra_query={"trace": "1"},
        )
    )
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1 and usage[0].prompt_tokens == plain.usage.prompt_tokens


WEATHER_TOOL: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def test_responses_create_text_and_previous_response(llama: TorporServer) -> None:
    client = llama.openai()
    first = client.responses.create(
        model="smollm2",
        instructions="Answer in one short sentence.",
        input="What is the capital of France?",
        max_output_tokens=24,
    )
    assert first.id.startswith("resp_") and first.object == "response"
    assert first.output_text.strip()
    assert first.usage is not None and first.usage.input_tokens > 10
    assert 0 < first.usage.output_tokens <= 24
    # The stored conversation goes on: the engine sees the first turn again.
    second = client.responses.create(
        model="smollm2",
        previous_response_id=first.id,
        input="And of Italy?",
        max_output_tokens=16,
    )
    assert second.previous_response_id == first.id
    assert second.usage is not None and second.usage.input_tokens > first.usage.input_tokens
    assert client.responses.retrieve(first.id).output_text == first.output_text
    # Per key: another key does not see it.
    with llama.api() as c:
        r = c.post("/api/keys", json={"name": "other", "deployments": ["smollm2"]})
        other = llama.openai(r.json()["key"])
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.create(model="smollm2", previous_response_id=first.id, input="hi")
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)


def test_responses_stream_events_and_usage(llama: TorporServer) -> None:
    client = llama.openai()
    deltas: list[str] = []
    kinds: list[str] = []
    with client.responses.stream(
        model="smollm2", input="Say hello.", max_output_tokens=120, temperature=0
    ) as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert "response.output_item.added" in kinds and "response.output_item.done" in kinds
    assert kinds[-1] == "response.completed"
    assert len(deltas) > 2 and "".join(deltas) == final.output_text
    assert final.usage is not None and final.usage.input_tokens > 10
    assert 0 < final.usage.output_tokens <= 120


def test_responses_function_tool_round_trip(llama: TorporServer) -> None:
    client = llama.openai()
    first = client.responses.create(
        model="smollm2",
        input="What is the weather in Paris?",
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=60,
        temperature=0,
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert isinstance(json.loads(calls[0].arguments)["city"], str)
    second = client.responses.create(
        model="smollm2",
        previous_response_id=first.id,
        input=[
            {
                "type": "function_call_output",
                "call_id": calls[0].call_id,
                "output": json.dumps({"temperature_c": 21, "sky": "clear"}),
            }
        ],
        tools=[WEATHER_TOOL],
        max_output_tokens=30,
    )
    assert second.output_text.strip()
    # A call streamed: output_item.added, argument deltas, output_item.done, then the end
    # (`response.incomplete` when this small model runs out of tokens inside the JSON).
    deltas: list[str] = []
    done: list[Any] = []
    kinds: list[str] = []
    stream = client.responses.create(
        model="smollm2",
        input="Weather in Rome?",
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=60,
        stream=True,
    )
    for event in stream:
        kinds.append(event.type)
        if event.type == "response.function_call_arguments.delta":
            deltas.append(event.delta)
        elif event.type == "response.output_item.done":
            done.append(event.item)
        elif event.type in ("response.completed", "response.incomplete"):
            final = event.response
    assert kinds[0] == "response.created" and kinds[-1] in (
        "response.completed",
        "response.incomplete",
    )
    assert [item.type for item in done] == ["function_call"] and done[0].name == "get_weather"
    assert "".join(deltas) == done[0].arguments and final.output[0].id == done[0].id


def test_responses_json_schema_output(llama: TorporServer) -> None:
    resp = llama.openai().responses.create(
        model="smollm2",
        input="Name a city and its population.",
        max_output_tokens=60,
        text={
            "format": {
                "type": "json_schema",
                "name": "city",
                "schema": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
                    "required": ["city", "population"],
                    "additionalProperties": False,
                },
                "strict": True,
            }
        },
    )
    answer = json.loads(resp.output_text)
    assert isinstance(answer["city"], str) and isinstance(answer["population"], int)


def test_openai_agents_sdk_two_turn_agent_with_a_function_tool(llama: TorporServer) -> None:
    """The OpenAI Agents SDK with its default model (the Responses API) runs unchanged."""
    from agents import (
        Agent,
        ModelSettings,
        Runner,
        function_tool,
        set_default_openai_api,
        set_default_openai_client,
        set_tracing_disabled,
    )

    set_tracing_disabled(True)  # no traces leave the machine
    set_default_openai_api("responses")
    set_default_openai_client(
        openai.AsyncOpenAI(base_url=llama.url + "/v1", api_key=llama.admin_key, max_retries=0),
        use_for_tracing=False,
    )
    asked: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        asked.append(city)
        return f"It is 21 degrees and sunny in {city}."

    agent = Agent(
        name="weather",
        instructions="You answer questions about the weather using the tool.",
        model="smollm2",
        tools=[get_weather],
        # SmolLM2 on llama.cpp calls a tool only when told which; the SDK resets the choice
        # after the call, so the second turn answers in text.
        model_settings=ModelSettings(tool_choice="get_weather", max_tokens=80, temperature=0),
    )
    result = Runner.run_sync(agent, "What is the weather in Paris?", max_turns=3)
    assert len(asked) == 1 and asked[0]
    assert isinstance(result.final_output, str) and result.final_output.strip()
    kinds = [item.type for item in result.new_items]
    assert kinds[:2] == ["tool_call_item", "tool_call_output_item"]
    assert kinds[-1] == "message_output_item"
    assert len(result.raw_responses) == 2  # two model turns
