"""The Responses <-> chat completions translation, on recorded shapes (requests as the
official SDK sends them, chunks as llama-cpp-python 0.3.36 streams them)."""

from __future__ import annotations

import orjson
import pytest

from torpor.errors import BadRequest
from torpor.gateway.responses import StreamTranslator, from_chat, to_chat

TOOL = {"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": True}


def test_request_items_become_chat_messages() -> None:
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    body = {
        "model": "m",
        "instructions": "Be brief.",
        "input": [
            {"role": "developer", "content": "Use tools."},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "x?"}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "42"},
        ],
        "tools": [TOOL],
        "tool_choice": {"type": "function", "name": "f"},
        "text": {"format": {"type": "json_schema", "name": "o", "schema": {"type": "object"}}},
        "max_output_tokens": 9,
        "temperature": 0.5,
        "stream": True,
    }
    turn = to_chat(body, "dep", history)
    assert turn.chat["messages"] == [
        {"role": "system", "content": "Be brief."},
        *history,
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "x?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]
    assert turn.added == turn.chat["messages"][3:]
    assert turn.chat["tools"] == [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    ]
    assert turn.chat["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert turn.chat["response_format"]["json_schema"]["schema"] == {"type": "object"}
    assert turn.chat["max_tokens"] == 9 and turn.chat["temperature"] == 0.5
    assert turn.chat["stream_options"] == {"include_usage": True}
    with pytest.raises(BadRequest, match="only function tools"):
        to_chat({"input": "x", "tools": [{"type": "web_search"}]}, "dep", [])


def test_chat_answer_becomes_a_response() -> None:
    chat = {
        "id": "chatcmpl-1",
        "created": 5,
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c9",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        }
                    ],
                },
            }
        ],
        "usage": {"prompt_tokens": 31, "completion_tokens": 4, "total_tokens": 35},
    }
    response, message = from_chat({"input": "x"}, chat, "resp_1", "dep")
    assert response["status"] == "completed" and response["created_at"] == 5
    [call] = response["output"]
    assert (call["type"], call["call_id"], call["name"]) == ("function_call", "c9", "f")
    assert response["usage"]["input_tokens"] == 31 and response["usage"]["total_tokens"] == 35
    assert message["tool_calls"][0]["id"] == "c9"


def _chunk(delta: dict[str, object], finish: str | None = None) -> bytes:
    obj = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "dep"}
    obj["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def test_stream_translation_event_sequence() -> None:
    t = StreamTranslator({"input": "x"}, "resp_1", "dep")
    out = t.start()
    out += t.feed(_chunk({"role": "assistant"}) + _chunk({"content": "Hel"}))
    out += t.feed(_chunk({"content": "lo"}) + _chunk({}, "stop"))
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    out += t.feed(
        b"data: " + orjson.dumps({"choices": [], "usage": usage}) + b"\n\ndata: [DONE]\n\n"
    )
    events = [orjson.loads(e.split(b"\ndata: ")[1]) for e in out.split(b"\n\n") if e]
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(10))
    final = events[-1]["response"]
    assert final["output"][0]["content"][0]["text"] == "Hello"
    assert final["output"][0]["id"] == events[2]["item"]["id"]
    assert final["usage"]["output_tokens"] == 2
