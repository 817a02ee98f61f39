"""`/v1/responses` served by torpor for engines that only speak chat completions: the
request is translated (torpor.gateway.responses), sent through the normal dispatch (so
admission, retries and metering apply), and the answer translated back. Responses are kept
per API key for `previous_response_id`, `GET` and `DELETE /v1/responses/{id}`.

`torpor serve` keeps them in the database (torpor.gateway.state): a conversation continues
on any torpor process, and after a restart, until the retention deletes it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import orjson

from torpor.auth import ApiKey
from torpor.engines.tokens import TokenCall, TokenCalls
from torpor.errors import NotFound, TorporError, error_body
from torpor.gateway.dispatch import BufferedResponse, Dispatcher, Sink, UpstreamRequest
from torpor.gateway.responses import (
    JSON,
    StreamTranslator,
    assistant_message,
    from_chat,
    new_id,
    to_chat,
)
from torpor.gateway.state import MemoryResponseStore, ResponseStore, Stored

CHAT_ROUTE = "/v1/chat/completions"
_JSON_HEADERS = [(b"content-type", b"application/json")]


@dataclass(frozen=True)
class ChatCall:
    """What the proxy knows about the request, to build the chat call."""

    key: ApiKey
    deployment: str
    headers: dict[str, str]
    session_id: str | None
    arrived: float
    # Engine-specific rewriting of the chat body (request fields), and token counting.
    prepare: Callable[[JSON], object]
    counter: Callable[[JSON], Callable[[str], TokenCalls | None] | None]
    # Chat body -> the engine's call that counts its prompt, for budget reservations.
    count_prompt: Callable[[JSON], TokenCall | None] | None = None


class ResponsesApi:
    def __init__(self, store: ResponseStore | None = None):
        self.store: ResponseStore = store or MemoryResponseStore()

    async def retrieve(self, stored: Stored | None, response_id: str, out: Sink) -> None:
        """`GET /v1/responses/{id}`: `stored` is what the store holds for the caller's key."""
        if stored is None:
            raise _not_found(response_id)
        await out.full(200, _JSON_HEADERS, orjson.dumps(stored.response))

    async def delete(self, key: ApiKey, response_id: str, out: Sink) -> None:
        if not await self.store.delete(key, response_id):
            raise _not_found(response_id)
        body = {"id": response_id, "object": "response", "deleted": True}
        await out.full(200, _JSON_HEADERS, orjson.dumps(body))

    async def create(self, dispatcher: Dispatcher, call: ChatCall, body: JSON, out: Sink) -> None:
        history: list[JSON] = []
        previous = body.get("previous_response_id")
        if previous is not None:
            stored = await self.store.get(call.key, str(previous))
            if stored is None:
                raise _not_found(str(previous), "previous_response_id")
            history = stored.history
        turn = to_chat(body, call.deployment, history)
        call.prepare(turn.chat)
        stream = turn.chat.get("stream") is True
        max_tokens = turn.chat.get("max_tokens")
        request = UpstreamRequest(
            key=call.key,
            deployment=call.deployment,
            method="POST",
            path=CHAT_ROUTE,
            body=orjson.dumps(turn.chat),
            headers={**call.headers, "content-type": "application/json"},
            stream=stream,
            session_id=call.session_id,
            arrived=call.arrived,
            want_usage_chunk=stream,
            max_tokens=max_tokens if isinstance(max_tokens, int) else None,
            count_tokens=call.counter(turn.chat) if stream else None,
            payload=turn.chat,
            count_prompt=call.count_prompt,
        )
        response_id = new_id("resp")
        keep = body.get("store") is not False
        base = history + turn.added
        if not stream:
            buffered = BufferedResponse()
            await dispatcher.dispatch(request, buffered)
            if buffered.status != 200:
                await out.full(buffered.status, _JSON_HEADERS, buffered.content)
                return
            chat = orjson.loads(buffered.content)
            response, answer = from_chat(body, chat, response_id, call.deployment)
            if keep:
                await self.store.put(
                    response_id, Stored(call.key.id, response, [*base, answer], call.deployment)
                )
            await out.full(200, _JSON_HEADERS, orjson.dumps(response))
            return
        translator = StreamTranslator(body, response_id, call.deployment)
        await dispatcher.dispatch(request, _TranslatingSink(out, translator))
        if keep and translator.finished and translator.final()["status"] != "failed":
            answer = assistant_message(translator.output)
            await self.store.put(
                response_id,
                Stored(call.key.id, translator.final(), [*base, answer], call.deployment),
            )


class _TranslatingSink:
    """Takes the chat stream dispatch writes, writes Responses events to the client."""

    def __init__(self, out: Sink, translator: StreamTranslator):
        self.out, self.translator = out, translator
        self.started = False
        self.sse = False

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.started = True
        await self.out.start(status, headers)

    async def start_sse(self, extra: list[tuple[bytes, bytes]] | None = None) -> None:
        if not self.started:
            self.started = self.sse = True
            await self.out.start_sse(extra)
            await self.out.body(self.translator.start())

    async def body(self, data: bytes, more: bool = True) -> None:
        if data.startswith(b":"):
            await self.out.body(data, more)  # keep-alive comments while a worker starts
            return
        events = self.translator.feed(data)
        if not more:
            events += self.translator.complete()
        await self.out.body(events, more)

    async def full(self, status: int, headers: list[tuple[bytes, bytes]], data: bytes) -> None:
        if self.started:
            # An engine error after the stream started: an error event, then the end.
            try:
                error = orjson.loads(data).get("error") or {}
            except (orjson.JSONDecodeError, AttributeError):
                error = {"message": data.decode("utf-8", "replace")[:400]}
            await self.out.body(self.translator.error(error), more=False)
            return
        self.started = True
        await self.out.full(status, headers, data)

    async def error(self, exc: TorporError) -> None:
        if self.started:
            await self.out.body(self.translator.error(error_body(exc)["error"]), more=False)
        else:
            await self.out.error(exc)


def _not_found(response_id: str, field: str = "id") -> NotFound:
    return NotFound(f"No response with {field} {response_id!r} for this API key")
