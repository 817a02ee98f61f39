"""A fake OpenAI-compatible LLM engine that runs as a real, separate process.

It is meant for tests and benchmarks where the model's speed and quality do not matter, but
process behaviour does: start-up time, streaming cadence, failures, crashes, hangs, client
disconnects and shutdown on SIGTERM.

Run it with::

    python -m torpor.testing.fake_engine --port 8001 [--host 127.0.0.1] [options]

Every option can also be given through an environment variable ``FAKE_ENGINE_<UPPER_NAME>``
(for example ``FAKE_ENGINE_TOKEN_DELAY_MS=20``); a command-line option wins over the variable.

Routes:

* ``GET /health`` -> ``{"status": "ok"}``
* ``GET /v1/models`` -> an OpenAI model list holding the one served model id
* ``POST /v1/chat/completions`` and ``POST /v1/completions`` (``stream`` true or false)
* ``POST /v1/embeddings`` -> deterministic 8-dimensional vectors
* ``GET /stats`` -> counters for tests (see :class:`Stats`)

The answer text is ``"tok0 tok1 ... tok{N-1} "`` (one token is one ``"tokK "`` word). A request
carrying the header ``X-Fake-Echo: 1`` gets the JSON of its own body as the answer content
instead. Every response carries the header ``X-Fake-Engine-Pid``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import re
import signal
import struct
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from torpor.testing.fake_sleep import add_sleep_routes, asleep_response

ENV_PREFIX: Final = "FAKE_ENGINE_"
FAIL_MODES: Final = (
    "none",
    "http500",
    "http500-text",
    "http400",
    "crash-on-start",
    "crash-after",
    "hang",
)
EMBEDDING_DIM: Final = 8
THINK_PREFIX: Final = "<think>reasoning here</think>"
PID_HEADER: Final = "X-Fake-Engine-Pid"
ECHO_HEADER: Final = "X-Fake-Echo"
EXIT_CRASH_ON_START: Final = 3
EXIT_CRASH_AFTER: Final = 4
SHUTDOWN_TIMEOUT_S: Final = 0.1

BAD_REQUEST_ERROR: Final[dict[str, Any]] = {
    "error": {
        "message": "fake engine rejects this request",
        "type": "invalid_request_error",
        "code": "fake_bad_request",
        "param": None,
    }
}
SERVER_ERROR: Final[dict[str, Any]] = {
    "error": {
        "message": "fake engine failed on purpose",
        "type": "server_error",
        "code": "fake_internal_error",
        "param": None,
    }
}

JSON = dict[str, Any]


@dataclass(frozen=True)
class EngineConfig:
    """The engine's settings, as parsed from the command line and the environment."""

    port: int
    host: str = "127.0.0.1"
    model_id: str = "fake-model"
    tokens: int = 8
    token_delay_ms: float = 0.0
    first_token_delay_ms: float = 0.0
    startup_delay_ms: float = 0.0
    sleep_delay_ms: float = 0.0
    wake_delay_ms: float = 0.0
    fail_mode: str = "none"
    crash_after: int = 1
    think: bool = False


@dataclass
class Stats:
    """Counters served at ``GET /stats``.

    ``requests``: completion requests received (chat and legacy completions, whatever the
    fail mode); ``active``: completion requests being handled now; ``completed``: those that
    were answered in full with status 200; ``failed``: those answered with an error status;
    ``disconnected``: those whose client went away (or were cancelled) before the end;
    ``last_request``: the JSON body of the last POST received, or ``None``.
    """

    requests: int = 0
    active: int = 0
    completed: int = 0
    failed: int = 0
    disconnected: int = 0
    last_request: Any = None
    ids: int = field(default=0, repr=False)

    def as_json(self) -> JSON:
        return {
            "requests": self.requests,
            "active": self.active,
            "completed": self.completed,
            "failed": self.failed,
            "disconnected": self.disconnected,
            "last_request": self.last_request,
            "pid": os.getpid(),
        }


CONFIG_KEY: Final = web.AppKey("fake_engine_config", EngineConfig)
STATS_KEY: Final = web.AppKey("fake_engine_stats", Stats)


# --------------------------------------------------------------------------------------------
# Helpers


def _count_words(value: Any) -> int:
    """Count whitespace-separated words in a prompt, message content or list of those."""
    if value is None:
        return 0
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, int | float):
        return 1  # one token id
    if isinstance(value, Mapping):
        # A content part such as {"type": "text", "text": "..."}.
        text = value.get("text")
        return _count_words(text) if isinstance(text, str) else 0
    if isinstance(value, Sequence):
        return sum(_count_words(item) for item in value)
    return 0


def _prompt_tokens(body: JSON) -> int:
    if "messages" in body:
        messages = body.get("messages")
        count = 0
        if isinstance(messages, list):
            for message in messages:
                if isinstance(message, Mapping):
                    count += _count_words(message.get("content"))
    else:
        count = _count_words(body.get("prompt"))
    return max(count, 1)


def _max_tokens(body: JSON) -> int | None:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def _error(status: int, message: str, code: str, err_type: str) -> web.Response:
    body = {"error": {"message": message, "type": err_type, "code": code, "param": None}}
    return web.json_response(body, status=status)


def _sse(payload: Mapping[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


async def _sleep_ms(ms: float) -> None:
    if ms > 0:
        await asyncio.sleep(ms / 1000.0)


def _fake_vector(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    raw = [(b / 127.5) - 1.0 for b in digest[:EMBEDDING_DIM]]
    norm = sum(x * x for x in raw) ** 0.5 or 1.0
    return [round(x / norm, 6) for x in raw]


async def _read_json(request: web.Request) -> JSON | web.Response:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _error(
            400, "request body is not valid JSON", "invalid_json", "invalid_request_error"
        )
    if not isinstance(body, dict):
        return _error(
            400, "request body must be a JSON object", "invalid_json", "invalid_request_error"
        )
    return body


@dataclass
class _Answer:
    pieces: list[str]  # content pieces, streamed one per chunk
    completion_tokens: int
    finish_reason: str


def _build_answer(config: EngineConfig, body: JSON, echo: bool) -> _Answer:
    if echo:
        text = json.dumps(body, separators=(",", ":"), sort_keys=True)
        return _Answer([text], max(len(text.split()), 1), "stop")
    n = config.tokens
    cap = _max_tokens(body)
    finish_reason = "stop"
    if cap is not None and cap < n:
        n = cap
        finish_reason = "length"
    pieces = [f"tok{k} " for k in range(n)]
    if config.think:
        pieces.insert(0, THINK_PREFIX)
    return _Answer(pieces, n, finish_reason)


# --------------------------------------------------------------------------------------------
# Handlers


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    response.headers[PID_HEADER] = str(os.getpid())


async def handle_health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def handle_models(request: web.Request) -> web.Response:
    config = request.app[CONFIG_KEY]
    return web.json_response(
        {
            "object": "list",
            "data": [
                {
                    "id": config.model_id,
                    "object": "model",
                    "created": 0,
                    "owned_by": "torpor-fake-engine",
                }
            ],
        }
    )


async def handle_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATS_KEY].as_json())


async def handle_embeddings(request: web.Request) -> web.Response:
    config = request.app[CONFIG_KEY]
    stats = request.app[STATS_KEY]
    parsed = await _read_json(request)
    if isinstance(parsed, web.Response):
        return parsed
    body = parsed
    stats.last_request = body
    raw_input = body.get("input")
    inputs: list[Any]
    if isinstance(raw_input, str):
        inputs = [raw_input]
    elif isinstance(raw_input, list) and raw_input and all(isinstance(x, int) for x in raw_input):
        inputs = [raw_input]  # a single list of token ids
    elif isinstance(raw_input, list) and raw_input:
        inputs = list(raw_input)
    else:
        return _error(
            400, "'input' must be a string or a list", "invalid_input", "invalid_request_error"
        )
    base64_format = body.get("encoding_format") == "base64"
    data: list[JSON] = []
    for index, item in enumerate(inputs):
        key = item if isinstance(item, str) else json.dumps(item)
        vector = _fake_vector(key)
        embedding: list[float] | str = vector
        if base64_format:
            embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    prompt_tokens = max(_count_words(inputs), 1)
    model = body.get("model")
    return web.json_response(
        {
            "object": "list",
            "data": data,
            "model": model if isinstance(model, str) else config.model_id,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }
    )


async def handle_chat(request: web.Request) -> web.StreamResponse:
    return await _handle_completion(request, chat=True)


async def handle_completions(request: web.Request) -> web.StreamResponse:
    return await _handle_completion(request, chat=False)


async def _handle_completion(request: web.Request, *, chat: bool) -> web.StreamResponse:
    config = request.app[CONFIG_KEY]
    stats = request.app[STATS_KEY]
    asleep = asleep_response(request.app)
    if asleep is not None:
        return asleep
    stats.requests += 1
    stats.active += 1
    finished = False
    try:
        if config.fail_mode == "crash-after" and stats.requests >= config.crash_after:
            print(
                f"fake engine: crashing on purpose at request {stats.requests}",
                file=sys.stderr,
                flush=True,
            )
            os._exit(EXIT_CRASH_AFTER)
        parsed = await _read_json(request)
        if isinstance(parsed, web.Response):
            stats.failed += 1
            finished = True
            return parsed
        body = parsed
        stats.last_request = body
        if config.fail_mode == "hang":
            await asyncio.Event().wait()  # never set: only a disconnect or shutdown ends this
        if config.fail_mode == "http400":
            stats.failed += 1
            finished = True
            return web.json_response(BAD_REQUEST_ERROR, status=400)
        if config.fail_mode == "http500":
            stats.failed += 1
            finished = True
            return web.json_response(SERVER_ERROR, status=500)
        if config.fail_mode == "http500-text":  # what a crashed framework handler sends
            stats.failed += 1
            finished = True
            return web.Response(status=500, text="Internal Server Error")

        echo = request.headers.get(ECHO_HEADER, "").strip().lower() in ("1", "true", "yes")
        answer = _build_answer(config, body, echo)
        prompt_tokens = _prompt_tokens(body)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": answer.completion_tokens,
            "total_tokens": prompt_tokens + answer.completion_tokens,
        }
        model = body.get("model")
        model_name = model if isinstance(model, str) and model else config.model_id
        stats.ids += 1
        prefix = "chatcmpl" if chat else "cmpl"
        ident = f"{prefix}-fake-{os.getpid()}-{stats.ids}"
        created = int(time.time())

        if body.get("stream") is True:
            response = await _stream(
                request,
                config,
                body,
                answer,
                usage,
                chat=chat,
                ident=ident,
                model=model_name,
                created=created,
            )
        else:
            await _sleep_ms(config.first_token_delay_ms)
            await _sleep_ms(config.token_delay_ms * answer.completion_tokens)
            text = "".join(answer.pieces)
            choice: JSON
            if chat:
                choice = {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": answer.finish_reason,
                }
            else:
                choice = {
                    "index": 0,
                    "text": text,
                    "logprobs": None,
                    "finish_reason": answer.finish_reason,
                }
            response = web.json_response(
                {
                    "id": ident,
                    "object": "chat.completion" if chat else "text_completion",
                    "created": created,
                    "model": model_name,
                    "choices": [choice],
                    "usage": usage,
                }
            )
        stats.completed += 1
        finished = True
        return response
    except (asyncio.CancelledError, ConnectionResetError):
        # aiohttp cancels the handler when the client goes away (handler_cancellation=True);
        # a write to a closed connection raises ConnectionResetError.
        if not finished:
            stats.disconnected += 1
            finished = True
        raise
    finally:
        stats.active -= 1


async def _stream(
    request: web.Request,
    config: EngineConfig,
    body: JSON,
    answer: _Answer,
    usage: JSON,
    *,
    chat: bool,
    ident: str,
    model: str,
    created: int,
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)

    def chunk(choices: list[JSON], extra: JSON | None = None) -> JSON:
        payload: JSON = {
            "id": ident,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": model,
            "choices": choices,
        }
        if extra:
            payload.update(extra)
        return payload

    def content_choice(text: str, finish_reason: str | None) -> JSON:
        if chat:
            delta: JSON = {"content": text} if text else {}
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}

    if chat:
        role_choice: JSON = {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
        await response.write(_sse(chunk([role_choice])))

    await _sleep_ms(config.first_token_delay_ms)
    for piece in answer.pieces:
        if not piece.startswith("<think>"):
            await _sleep_ms(config.token_delay_ms)
        await response.write(_sse(chunk([content_choice(piece, None)])))
    await response.write(_sse(chunk([content_choice("", answer.finish_reason)])))

    stream_options = body.get("stream_options")
    if isinstance(stream_options, Mapping) and stream_options.get("include_usage") is True:
        await response.write(_sse(chunk([], {"usage": usage})))
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def build_app(config: EngineConfig) -> web.Application:
    """Build the aiohttp application serving the fake engine."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[CONFIG_KEY] = config
    app[STATS_KEY] = Stats()
    app.on_response_prepare.append(_on_prepare)
    app.router.add_get("/health", handle_health)
    app.router.add_get("/v1/models", handle_models)
    app.router.add_get("/stats", handle_stats)
    app.router.add_post("/v1/chat/completions", handle_chat)
    app.router.add_post("/v1/completions", handle_completions)
    app.router.add_post("/v1/embeddings", handle_embeddings)
    add_sleep_routes(app, config.sleep_delay_ms, config.wake_delay_ms)
    return app


# --------------------------------------------------------------------------------------------
# Command line


def _env(name: str) -> str | None:
    return os.environ.get(ENV_PREFIX + name.upper().replace("-", "_"))


def _env_bool(name: str) -> bool:
    value = _env(name)
    return value is not None and value.strip().lower() in ("1", "true", "yes", "on")


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


_CRASH_AFTER_SHORTHAND: Final = re.compile(r"crash-after[:=](\d+)")


def _fail_mode(text: str) -> str:
    mode = text.strip().lower()
    match = _CRASH_AFTER_SHORTHAND.fullmatch(mode)
    if match is not None:
        # Shorthand "crash-after:N" / "crash-after=N"; parse_config() splits it.
        _positive_int(match.group(1))
        return mode
    if mode not in FAIL_MODES:
        raise argparse.ArgumentTypeError(f"unknown fail mode {text!r}; one of {FAIL_MODES}")
    return mode


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m torpor.testing.fake_engine",
        description=(
            "Fake OpenAI-compatible LLM engine for tests. Every option can also be set "
            "with the environment variable FAKE_ENGINE_<UPPER_NAME>; the command line wins."
        ),
    )
    port = _env("port")
    parser.add_argument(
        "--port", type=int, default=port, required=port is None, help="port to listen on"
    )
    parser.add_argument("--host", default=_env("host") or "127.0.0.1", help="address to bind")
    parser.add_argument(
        "--model-id", default=_env("model_id") or "fake-model", help="served model id"
    )
    parser.add_argument(
        "--tokens",
        type=_non_negative_int,
        default=_env("tokens") or "8",
        help="completion tokens per answer (default 8)",
    )
    parser.add_argument(
        "--token-delay-ms",
        type=_non_negative_float,
        default=_env("token_delay_ms") or "0",
        help="delay before each token (non-stream: tokens x delay in total)",
    )
    parser.add_argument(
        "--first-token-delay-ms",
        type=_non_negative_float,
        default=_env("first_token_delay_ms") or "0",
        help="extra delay before the first token",
    )
    parser.add_argument(
        "--startup-delay-ms",
        type=_non_negative_float,
        default=_env("startup_delay_ms") or "0",
        help="sleep before binding the port (simulated model load)",
    )
    for name, what in (("sleep", "POST /sleep"), ("wake", "POST /wake_up")):
        parser.add_argument(
            f"--{name}-delay-ms",
            type=_non_negative_float,
            default=_env(f"{name}_delay_ms") or "0",
            help=f"time {what} takes (vLLM's sleep API)",
        )
    parser.add_argument(
        "--fail-mode",
        type=_fail_mode,
        default=_env("fail_mode") or "none",
        help=(
            "none | http500 | http500-text | http400 | crash-on-start | crash-after | hang; "
            "crash-after:N is shorthand for --fail-mode crash-after --crash-after N"
        ),
    )
    parser.add_argument(
        "--crash-after",
        type=_positive_int,
        default=_env("crash_after") or "1",
        help="with --fail-mode crash-after: exit with code 4 on the N-th completion request",
    )
    parser.add_argument(
        "--think",
        action=argparse.BooleanOptionalAction,
        default=_env_bool("think"),
        help='answers start with "<think>reasoning here</think>"',
    )
    return parser


def parse_config(argv: Sequence[str] | None = None) -> EngineConfig:
    args = make_parser().parse_args(argv)
    fail_mode: str = args.fail_mode
    crash_after: int = args.crash_after
    match = _CRASH_AFTER_SHORTHAND.fullmatch(fail_mode)
    if match is not None:
        crash_after = int(match.group(1))
        fail_mode = "crash-after"
    return EngineConfig(
        port=args.port,
        host=args.host,
        model_id=args.model_id,
        tokens=args.tokens,
        token_delay_ms=args.token_delay_ms,
        first_token_delay_ms=args.first_token_delay_ms,
        startup_delay_ms=args.startup_delay_ms,
        sleep_delay_ms=args.sleep_delay_ms,
        wake_delay_ms=args.wake_delay_ms,
        fail_mode=fail_mode,
        crash_after=crash_after,
        think=args.think,
    )


async def serve(config: EngineConfig) -> int:
    """Run the engine until SIGTERM or SIGINT; return the process exit code."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    # The model "loads" first; a signal during the load ends the process at once.
    if config.startup_delay_ms > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), config.startup_delay_ms / 1000.0)
        if stop.is_set():
            return 0
    if config.fail_mode == "crash-on-start":
        print("fake engine: crashing on purpose", file=sys.stderr, flush=True)
        return EXIT_CRASH_ON_START

    runner = web.AppRunner(
        build_app(config),
        handler_cancellation=True,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        access_log=None,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port)
        await site.start()
        port = config.port
        if port == 0 and runner.addresses:
            port = int(runner.addresses[0][1])  # report the port the OS picked
        print(f"fake engine ready on port {port}", flush=True)
        await stop.wait()
    finally:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(runner.cleanup(), SHUTDOWN_TIMEOUT_S + 0.4)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(argv)
    return asyncio.run(serve(config))


if __name__ == "__main__":
    sys.exit(main())
