"""The SSE usage scanner: usage read from a stream on the way through, the usage chunk
torpor asked for removed, and a usage chunk made from counted chunks when needed."""

from __future__ import annotations

from typing import Any

import orjson

from torpor.metering.sse import StreamUsage


def event(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


ROLE = event({"id": "c1", "model": "m", "created": 7, "object": "chat.completion.chunk",
              "choices": [{"index": 0, "delta": {"role": "assistant"}}], "usage": None})  # fmt: skip
HI = event({"id": "c1", "choices": [{"index": 0, "delta": {"content": "Hi"}}], "usage": None})
THERE = event({"id": "c1", "choices": [{"index": 0, "delta": {"content": " there"}}]})
STOP = event({"id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
USAGE = event({"id": "c1", "choices": [],
               "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})  # fmt: skip
DONE = b"data: [DONE]\n\n"


def feed_all(scanner: StreamUsage, chunks: list[bytes]) -> bytes:
    return b"".join(scanner.feed(c) for c in chunks) + scanner.flush()


def test_engine_usage_is_read_and_its_chunk_removed_when_the_client_did_not_ask() -> None:
    s = StreamUsage(strip_usage_chunk=True, want_usage_chunk=False)
    out = feed_all(s, [ROLE, HI, THERE, STOP, USAGE, DONE])
    assert s.tokens() == (3, 2) and not s.estimated and s.done
    assert out == ROLE + HI + THERE + STOP + DONE


def test_usage_chunk_kept_when_the_client_asked() -> None:
    s = StreamUsage(strip_usage_chunk=False, want_usage_chunk=True)
    out = feed_all(s, [ROLE, HI, THERE, STOP, USAGE, DONE])
    assert out == ROLE + HI + THERE + STOP + USAGE + DONE
    assert s.tokens() == (3, 2)


def test_engine_without_usage_gets_counted_and_a_usage_chunk_is_made() -> None:
    s = StreamUsage(strip_usage_chunk=False, want_usage_chunk=True)
    out = feed_all(s, [ROLE, HI, THERE, STOP, DONE])
    assert s.estimated and s.tokens() == (0, 2)
    made = orjson.loads(out.split(b"\n\n")[-3][len(b"data: ") :])
    assert made["usage"] == {"prompt_tokens": 0, "completion_tokens": 2, "total_tokens": 2}
    assert (made["id"], made["model"], made["created"], made["choices"]) == ("c1", "m", 7, [])
    assert out.endswith(DONE)


def test_events_split_across_reads_pass_whole_and_in_order() -> None:
    s = StreamUsage(strip_usage_chunk=True, want_usage_chunk=False)
    stream = ROLE + HI + THERE + STOP + USAGE + DONE
    out = b""
    for i in range(0, len(stream), 7):  # reads cut events anywhere
        out += s.feed(stream[i : i + 7])
    out += s.flush()
    assert out == ROLE + HI + THERE + STOP + DONE
    assert s.tokens() == (3, 2)


def test_completions_text_and_comments_pass_through() -> None:
    s = StreamUsage(strip_usage_chunk=False, want_usage_chunk=False)
    text = event({"id": "t", "object": "text_completion", "choices": [{"index": 0, "text": "ok"}]})
    out = feed_all(s, [b": keep-alive\n\n", text, DONE])
    assert out == b": keep-alive\n\n" + text + DONE
    assert s.content_chunks == 1


def test_held_done_waits_for_the_engine_count() -> None:
    from torpor.metering.sse import StreamUsage

    scanner = StreamUsage(strip_usage_chunk=False, want_usage_chunk=True, collect_text=True)
    chunk = b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",'
    out = scanner.feed(chunk + b'"choices":[{"index":0,"delta":{"content":"Hi there"}}]}\n\n')
    tool = b'"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,'
    out += scanner.feed(chunk + tool)
    out += scanner.feed(b'"function":{"name":"f","arguments":"{}"}}]}}]}\n\ndata: [DONE]\n\n')
    assert b"[DONE]" not in out and scanner.done and scanner.estimated
    assert scanner.text == "Hi theref{}"
    scanner.counted(31, 4)
    tail = scanner.release()
    assert tail.endswith(b"data: [DONE]\n\n")
    assert b'"usage":{"prompt_tokens":31,"completion_tokens":4,"total_tokens":35}' in tail
    assert not scanner.estimated and scanner.tokens() == (31, 4)
