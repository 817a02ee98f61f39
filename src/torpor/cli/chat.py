"""`torpor chat DEPLOYMENT "prompt"`: one answer from a deployment through the OpenAI route,
streamed to the terminal token by token (server-sent events read with httpx-sse)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from typing import Annotated, Any, TextIO

import httpx
import typer
from httpx_sse import SSEError, connect_sse

from torpor.cli.common import Target, _fail, app, explain, require_key, target
from torpor.sdk import TorporError
from torpor.sdk import _ops as ops

CHAT_PATH = "/v1/chat/completions"


def chat_body(
    deployment: str, prompt: str, system: str | None, max_tokens: int | None, stream: bool
) -> dict[str, Any]:
    """The chat completion request for one prompt (the `model` field names the deployment)."""
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    body: dict[str, Any] = {"model": deployment, "messages": messages, "stream": stream}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


def stream_error(payload: Any) -> str | None:
    """The message of an error event in a stream (`data: {"error": {...}}`), else None."""
    err = payload.get("error") if isinstance(payload, dict) else None
    if not err:
        return None
    if isinstance(err, dict):
        return str(err.get("message") or json.dumps(err))
    return str(err)


def delta_text(payload: Any) -> str:
    """The text a `chat.completion.chunk` adds (empty for role-only and usage chunks)."""
    choices = payload.get("choices") if isinstance(payload, dict) else None
    if not choices or not isinstance(choices[0], dict):
        return ""
    delta = choices[0].get("delta") or {}
    content = delta.get("content") if isinstance(delta, dict) else None
    return content if isinstance(content, str) else ""


def message_text(payload: Any) -> str:
    """The answer of a non-streamed `chat.completion`."""
    try:
        content = payload["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return ""
    return content if isinstance(content, str) else ""


def stream_answer(events: Iterator[str], write: Callable[[str], None]) -> None:
    """Write each chunk's text as it arrives; an error event raises TorporError."""
    for data in events:
        if data.strip() == "[DONE]":
            return
        try:
            payload = json.loads(data)
        except ValueError:
            continue  # not JSON: nothing to show
        message = stream_error(payload)
        if message is not None:
            raise TorporError(message, code="stream_error")
        write(delta_text(payload))


def _read_prompt(prompt: str, stdin: TextIO) -> str:
    text = stdin.read() if prompt == "-" else prompt
    if not text.strip():
        raise _fail(
            "the prompt is empty" + (" (nothing on standard input)" if prompt == "-" else "")
        )
    return text


class _Terminal:
    """Where the answer goes: written and flushed piece by piece; remembers whether it
    wrote anything (so an answer, or a partial one, ends with a newline)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.wrote = False

    def write(self, text: str) -> None:
        if text:
            self.out.write(text)
            self.out.flush()
            self.wrote = True

    def end(self) -> None:
        if self.wrote:
            self.write("\n")


def _post(http: httpx.Client, body: dict[str, Any], out: _Terminal) -> None:
    if not body["stream"]:
        response = http.post(CHAT_PATH, json=body)
        if response.status_code >= 400:
            raise ops.failure(response)
        out.write(message_text(response.json()))
        return
    with connect_sse(http, "POST", CHAT_PATH, json=body) as source:
        if source.response.status_code >= 400:
            source.response.read()
            raise ops.failure(source.response)
        try:
            stream_answer((event.data for event in source.iter_sse()), out.write)
        except SSEError as exc:
            raise TorporError(f"not an event stream: {exc}", code="bad_stream") from None


def run_chat(where: Target, body: dict[str, Any], out: TextIO) -> None:
    """Send the request to the chosen server and print the answer; a failure (also one
    that arrives as an error event mid-stream) exits 1 with a message that names the
    server and where the key came from."""
    headers = {"Authorization": f"Bearer {require_key(where)}"}
    terminal = _Terminal(out)
    # A cold start holds the request (keep-alives on a stream): no read timeout.
    with httpx.Client(base_url=where.url, headers=headers, timeout=ops.STREAM_TIMEOUT) as http:
        try:
            _post(http, body, terminal)
        except httpx.TransportError as exc:
            terminal.end()
            raise _fail(explain(ops.transport_error(where.url, exc), where)) from None
        except TorporError as exc:
            terminal.end()
            raise _fail(explain(exc, where)) from None
    terminal.end()


@app.command()
def chat(
    ctx: typer.Context,
    deployment: Annotated[str, typer.Argument(metavar="DEPLOYMENT", help="Deployment to ask.")],
    prompt: Annotated[
        str, typer.Argument(metavar="PROMPT", help='The prompt; "-" reads it from standard input.')
    ],
    system: Annotated[
        str | None, typer.Option("--system", help="A system message sent before the prompt.")
    ] = None,
    max_tokens: Annotated[
        int | None,
        typer.Option("--max-tokens", min=1, help="Longest answer, in tokens.", show_default=False),
    ] = None,
    stream: Annotated[
        bool,
        typer.Option("--stream/--no-stream", help="Print tokens as they come, or all at the end."),
    ] = True,
) -> None:
    """Ask a deployment and print its answer as it streams in (POST /v1/chat/completions)."""
    body = chat_body(deployment, _read_prompt(prompt, sys.stdin), system, max_tokens, stream)
    try:
        run_chat(target(ctx), body, sys.stdout)
    except KeyboardInterrupt:
        # Closing the connection stops the generation at the engine.
        sys.stdout.write("\n")
        raise typer.Exit(130) from None
