"""The OpenAI Responses API, translated to and from chat completions, for engines that do
not serve `/v1/responses` themselves. Pure: dicts and bytes in, dicts and bytes out; the
proxy (torpor.gateway.responses_api) makes the call and keeps the conversation state.

Covered: `input` as text or items (messages with text or image parts, function calls and
their outputs), `instructions`, `previous_response_id` (the caller passes the stored
history), function tools and `tool_choice`, `text.format` (json_schema, json_object),
`max_output_tokens`, `temperature`, `top_p`, `stream` with the Responses event sequence,
and `usage`. Hosted tools (web search, file search, computer use) are refused.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from torpor.errors import BadRequest

JSON = dict[str, Any]
# Copied to the chat request under the same name.
_SAME = ("temperature", "top_p", "user", "seed", "stop", "frequency_penalty", "presence_penalty")


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass
class Turn:
    """One Responses request as chat: the request, and the messages this turn adds to the
    conversation (its input; the answer is added by `remember`)."""

    chat: JSON
    added: list[JSON]


def to_chat(body: JSON, model: str, history: list[JSON]) -> Turn:
    """The chat completion request for a Responses request (after `history`)."""
    added = input_messages(body.get("input"))
    messages: list[JSON] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    messages += history + added
    if not messages:
        raise BadRequest("'input' is required")
    chat: JSON = {"model": model, "messages": messages}
    for name in _SAME:
        if body.get(name) is not None:
            chat[name] = body[name]
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    tools = _tools(body.get("tools"))
    if tools:
        chat["tools"] = tools
        choice = _tool_choice(body.get("tool_choice"))
        if choice is not None:
            chat["tool_choice"] = choice
    fmt = _response_format(body.get("text"))
    if fmt is not None:
        chat["response_format"] = fmt
    if body.get("stream") is True:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return Turn(chat, added)


def input_messages(value: Any) -> list[JSON]:
    """Chat messages for a Responses `input` (a string or a list of items)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise BadRequest("'input' must be a string or a list of items")
    out: list[JSON] = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise BadRequest(f"input[{i}]: must be an object")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role", "user")
            role = "system" if role == "developer" else role
            if role not in ("system", "user", "assistant"):
                raise BadRequest(f"input[{i}].role: {role!r} is not a message role")
            out.append({"role": role, "content": _content(item.get("content"), i)})
        elif kind == "function_call":
            call = {
                "id": item.get("call_id") or item.get("id"),
                "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments", "")},
            }
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            else:
                # "" rather than null: llama-cpp-python refuses a null assistant content.
                out.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else orjson.dumps(output).decode()
            out.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": text})
        elif kind == "reasoning":
            continue  # nothing a chat engine can take back
        else:
            raise BadRequest(f"input[{i}].type: {kind!r} is not supported by this deployment")
    return out


def _content(value: Any, i: int) -> Any:
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise BadRequest(f"input[{i}].content: must be a string or a list of parts")
    parts: list[JSON] = []
    for part in value:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": part.get("text", "")})
        elif kind == "input_image" and part.get("image_url"):
            parts.append({"type": "image_url", "image_url": {"url": part["image_url"]}})
        elif kind == "refusal":
            parts.append({"type": "text", "text": part.get("refusal", "")})
        else:
            raise BadRequest(f"input[{i}].content: part type {kind!r} is not supported")
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _tools(value: Any) -> list[JSON]:
    if not value:
        return []
    if not isinstance(value, list):
        raise BadRequest("'tools' must be a list")
    tools = []
    for tool in value:
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise BadRequest(f"tools: {kind!r} tools are not supported; only function tools")
        function = {"name": tool.get("name"), "parameters": tool.get("parameters") or {}}
        if tool.get("description"):
            function["description"] = tool["description"]
        tools.append({"type": "function", "function": function})
    return tools


def _tool_choice(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and value.get("type") == "function":
        return {"type": "function", "function": {"name": value.get("name")}}
    raise BadRequest(f"tool_choice: {value!r} is not supported")


def _response_format(text: Any) -> JSON | None:
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return None
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    if fmt["type"] == "json_schema":
        spec = {"name": fmt.get("name", "output"), "schema": fmt.get("schema") or {}}
        if fmt.get("strict") is not None:
            spec["strict"] = fmt["strict"]
        return {"type": "json_schema", "json_schema": spec}
    raise BadRequest(f"text.format.type: {fmt['type']!r} is not supported")


def usage_of(chat_usage: Any) -> JSON | None:
    if not isinstance(chat_usage, dict):
        return None
    prompt = int(chat_usage.get("prompt_tokens") or 0)
    completion = int(chat_usage.get("completion_tokens") or 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def message_item(item_id: str, text: str, status: str = "completed") -> JSON:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": [part],
    }


def call_item(item_id: str, call_id: str, name: str, arguments: str) -> JSON:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": "completed",
    }


def response_object(
    body: JSON,
    response_id: str,
    model: str,
    created: int,
    output: list[JSON],
    usage: JSON | None,
    status: str = "completed",
) -> JSON:
    incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
    text = body.get("text") if isinstance(body.get("text"), dict) else {"format": {"type": "text"}}
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": status,
        "error": None,
        "incomplete_details": incomplete,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": model,
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "store": body.get("store", True),
        "temperature": body.get("temperature"),
        "text": text,
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p"),
        "truncation": "disabled",
        "usage": usage,
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }


def from_chat(body: JSON, chat: JSON, response_id: str, model: str) -> tuple[JSON, JSON]:
    """(the Response for a chat completion, the assistant message for the history)."""
    choices = chat.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    output: list[JSON] = []
    calls = message.get("tool_calls") or []
    text = message.get("content")
    if isinstance(text, str) and (text or not calls):
        output.append(message_item(new_id("msg"), text))
    for call in calls:
        function = call.get("function") or {}
        call_id = call.get("id") or new_id("call")
        output.append(
            call_item(
                new_id("fc"), call_id, function.get("name", ""), function.get("arguments", "")
            )
        )
    status = "incomplete" if choice.get("finish_reason") == "length" else "completed"
    created = int(chat.get("created") or time.time())
    response = response_object(
        body, response_id, model, created, output, usage_of(chat.get("usage")), status
    )
    return response, assistant_message(output)


def assistant_message(output: list[JSON]) -> JSON:
    """The chat message an answer's output items make, for the next turn's history."""
    text = "".join(
        part.get("text", "")
        for item in output
        if item["type"] == "message"
        for part in item["content"]
    )
    message: JSON = {"role": "assistant", "content": text}
    calls = [
        {
            "id": item["call_id"],
            "type": "function",
            "function": {"name": item["name"], "arguments": item["arguments"]},
        }
        for item in output
        if item["type"] == "function_call"
    ]
    if calls:
        message["tool_calls"] = calls
    return message


@dataclass
class _Call:
    item_id: str
    call_id: str
    name: str
    arguments: str = ""
    index: int = 0


@dataclass
class StreamTranslator:
    """Chat completion SSE bytes in, Responses SSE events out."""

    body: JSON
    response_id: str
    model: str
    created: int = field(default_factory=lambda: int(time.time()))
    seq: int = 0
    output: list[JSON] = field(default_factory=list)
    usage: JSON | None = None
    finish: str | None = None
    finished: bool = False
    _pending: bytes = b""
    _text_item: str | None = None
    _text_index: int = 0
    _text: list[str] = field(default_factory=list)
    _calls: dict[int, _Call] = field(default_factory=dict)
    _slots: int = 0
    _order: dict[str, int] = field(default_factory=dict)

    def start(self) -> bytes:
        snapshot = self._response([], None, "in_progress")
        return self._event("response.created", response=snapshot) + self._event(
            "response.in_progress", response=snapshot
        )

    def feed(self, data: bytes) -> bytes:
        buf = self._pending + data
        end = buf.rfind(b"\n\n")
        if end < 0:
            self._pending = buf
            return b""
        self._pending = buf[end + 2 :]
        out = []
        for event in buf[: end + 2].split(b"\n\n"):
            line = event.strip()
            if not line.startswith(b"data:"):
                continue  # comments (keep-alives while a worker starts)
            payload = line[5:].strip()
            if payload == b"[DONE]":
                out.append(self.complete())
                continue
            try:
                obj = orjson.loads(payload)
            except orjson.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                out.append(self._chunk(obj))
        return b"".join(out)

    def error(self, error: JSON) -> bytes:
        """An error in the stream: the `error` event, then `response.failed`."""
        self.finished = True
        failed = self._response(self.output, self.usage, "failed")
        failed["error"] = {"code": error.get("code"), "message": error.get("message", "")}
        return self._event(
            "error", code=error.get("code"), message=error.get("message", ""), param=None
        ) + self._event("response.failed", response=failed)

    def complete(self) -> bytes:
        if self.finished:
            return b""
        out = self._close_text() + self._close_calls()
        self.finished = True
        status = "incomplete" if self.finish == "length" else "completed"
        final = self._response(self.output, self.usage, status)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        return out + self._event(kind, response=final)

    def final(self) -> JSON:
        status = "incomplete" if self.finish == "length" else "completed"
        return self._response(self.output, self.usage, status)

    # -- internals ------------------------------------------------------------------------

    def _chunk(self, obj: JSON) -> bytes:
        if isinstance(obj.get("error"), dict):
            return self.error(obj["error"])
        out = []
        if obj.get("usage"):
            self.usage = usage_of(obj["usage"])
        for choice in obj.get("choices") or ():
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if isinstance(text, str) and text:
                out.append(self._text_delta(text))
            for call in delta.get("tool_calls") or ():
                out.append(self._call_delta(call))
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return b"".join(out)

    def _text_delta(self, text: str) -> bytes:
        out = b""
        if self._text_item is None:
            self._text_item, self._text_index = new_id("msg"), self._slot()
            item = message_item(self._text_item, "", "in_progress")
            item["content"] = []
            out += self._event(
                "response.output_item.added", output_index=self._text_index, item=item
            )
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            out += self._event(
                "response.content_part.added",
                item_id=self._text_item,
                output_index=self._text_index,
                content_index=0,
                part=part,
            )
        self._text.append(text)
        return out + self._event(
            "response.output_text.delta",
            item_id=self._text_item,
            output_index=self._text_index,
            content_index=0,
            delta=text,
            logprobs=[],
        )

    def _call_delta(self, delta: JSON) -> bytes:
        index = int(delta.get("index", 0))
        function = delta.get("function") or {}
        out = b""
        call = self._calls.get(index)
        if call is None:
            call = _Call(new_id("fc"), delta.get("id") or new_id("call"), function.get("name", ""))
            call.index = self._slot()
            self._calls[index] = call
            item = call_item(call.item_id, call.call_id, call.name, "")
            item["status"] = "in_progress"
            out += self._event("response.output_item.added", output_index=call.index, item=item)
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            call.arguments += arguments
            out += self._event(
                "response.function_call_arguments.delta",
                item_id=call.item_id,
                output_index=call.index,
                delta=arguments,
            )
        return out

    def _close_text(self) -> bytes:
        if self._text_item is None:
            return b""
        text = "".join(self._text)
        item = message_item(self._text_item, text)
        part = item["content"][0]
        ids = {"item_id": self._text_item, "output_index": self._text_index}
        out = self._event(
            "response.output_text.done", **ids, content_index=0, text=text, logprobs=[]
        )
        out += self._event("response.content_part.done", **ids, content_index=0, part=part)
        out += self._event("response.output_item.done", output_index=self._text_index, item=item)
        self._put(self._text_index, item)
        return out

    def _close_calls(self) -> bytes:
        out = b""
        for call in self._calls.values():
            item = call_item(call.item_id, call.call_id, call.name, call.arguments)
            out += self._event(
                "response.function_call_arguments.done",
                item_id=call.item_id,
                output_index=call.index,
                name=call.name,
                arguments=call.arguments,
            )
            out += self._event("response.output_item.done", output_index=call.index, item=item)
            self._put(call.index, item)
        return out

    def _put(self, index: int, item: JSON) -> None:
        """The finished item, in output order."""
        self._order[item["id"]] = index
        self.output.append(item)
        self.output.sort(key=lambda it: self._order[it["id"]])

    def _slot(self) -> int:
        self._slots += 1
        return self._slots - 1

    def _response(self, output: list[JSON], usage: JSON | None, status: str) -> JSON:
        return response_object(
            self.body, self.response_id, self.model, self.created, list(output), usage, status
        )

    def _event(self, kind: str, **fields: Any) -> bytes:
        event = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
