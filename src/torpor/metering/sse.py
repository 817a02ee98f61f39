"""Reading usage out of an OpenAI SSE stream while passing it through.

torpor asks the engine for a final usage chunk (`stream_options.include_usage`); when the
client did not ask for it, that chunk is dropped before it reaches the client. Engines
that ignore the option get their tokens counted with the engine's tokenizer when it has one
(the text is collected for that, and `[DONE]` held back until the count is in), else their
content chunks counted as an estimate; a client that asked for usage gets a usage chunk
made from that count.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

_DONE = b"data: [DONE]"
# A content-bearing delta (chat), text (completions) or the start of tool calls.
_CONTENT = re.compile(rb'"(?:content|text)":\s?"[^"]|"tool_calls":\s?\[\s?\{')
# A usage object (engines may send `"usage": null` in every chunk).
_USAGE = re.compile(rb'"usage":\s?\{')


@dataclass
class StreamUsage:
    """Feeds on the engine's bytes, yields the bytes for the client, keeps the usage."""

    strip_usage_chunk: bool
    want_usage_chunk: bool
    # The engine can count tokens: keep the completion text, and hold `[DONE]` back (when
    # the client wants a usage chunk) until `counted()` has the numbers.
    collect_text: bool = False
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    content_chunks: int = 0
    # The engine sent `data: [DONE]`: the answer is complete even if the client hangs up now.
    done: bool = False
    # Set by `counted()`: the numbers came from the engine's tokenizer.
    exact: bool = False
    _pending: bytes = b""
    _last: dict[str, Any] = field(default_factory=dict)
    _text: list[str] = field(default_factory=list)
    _held_done: bytes | None = None

    @property
    def engine_usage(self) -> bool:
        """The engine sent a usage object of its own."""
        return self.completion_tokens is not None and not self.exact

    @property
    def text(self) -> str:
        return "".join(self._text)

    def counted(self, prompt: int, completion: int) -> None:
        """The engine's tokenizer counted what the stream did not report."""
        self.prompt_tokens, self.completion_tokens, self.exact = prompt, completion, True

    def release(self) -> bytes:
        """The held `[DONE]`, after the usage chunk the client asked for."""
        held, self._held_done = self._held_done, None
        if held is None:
            return b""
        return self._synthesized() + b"\n\n" + held + b"\n\n"

    @property
    def estimated(self) -> bool:
        return self.completion_tokens is None

    def tokens(self) -> tuple[int, int]:
        if self.completion_tokens is not None:
            return self.prompt_tokens or 0, self.completion_tokens
        return 0, self.content_chunks

    def feed(self, chunk: bytes) -> bytes:
        """Complete events pass at once; a partial event waits for its end."""
        data = self._pending + chunk
        end = data.rfind(b"\n\n")
        if end < 0:
            self._pending = data
            return b""
        self._pending = data[end + 2 :]
        out = []
        for event in data[: end + 2].split(b"\n\n"):
            if not event:
                continue
            kept = self._event(event)
            if kept is not None:
                out.append(kept + b"\n\n")
        return b"".join(out)

    def flush(self) -> bytes:
        rest, self._pending = self._pending, b""
        return rest

    def _event(self, event: bytes) -> bytes | None:
        line = event.strip()
        if line == _DONE:
            self.done = True
            if self.want_usage_chunk and self.completion_tokens is None:
                if self.collect_text:
                    self._held_done = event
                    return None
                return self._synthesized() + b"\n\n" + event
            return event
        if not line.startswith(b"data:"):
            return event
        # Byte checks on every chunk; JSON is parsed only for a chunk that carries a usage
        # object, and for the first one (its id and model name a synthesized usage chunk).
        if _CONTENT.search(line):
            self.content_chunks += 1
            if self.collect_text:
                self._collect(line)
        if _USAGE.search(line) is None and self._last:
            return event
        try:
            obj = orjson.loads(line[5:])
        except orjson.JSONDecodeError:
            return event
        if not isinstance(obj, dict):
            return event
        if obj.get("choices"):
            self._last = obj
        usage = obj.get("usage")
        if isinstance(usage, dict):
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.completion_tokens = int(usage.get("completion_tokens") or 0)
            if self.strip_usage_chunk and not obj.get("choices"):
                return None
        return event

    def _collect(self, line: bytes) -> None:
        try:
            obj = orjson.loads(line[5:])
        except orjson.JSONDecodeError:
            return
        for choice in obj.get("choices") or () if isinstance(obj, dict) else ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            part = delta if isinstance(delta, dict) else choice
            for name in ("content", "text"):
                if isinstance(part.get(name), str):
                    self._text.append(part[name])
            for call in part.get("tool_calls") or ():
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict):
                    self._text.extend(
                        v for v in (function.get("name"), function.get("arguments")) if v
                    )

    def _synthesized(self) -> bytes:
        prompt, completion = self.tokens()
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        last = self._last
        chunk = {
            "id": last.get("id", "torpor-usage"),
            "object": last.get("object", "chat.completion.chunk"),
            "created": last.get("created", 0),
            "model": last.get("model", ""),
            "choices": [],
            "usage": usage,
        }
        return b"data: " + orjson.dumps(chunk)
