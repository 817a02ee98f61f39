"""The llama.cpp worker when llama-server is not installed: llama-cpp-python's OpenAI
server, plus one route torpor calls to count tokens exactly as the engine does.

llama-cpp-python sends no usage in streams, so torpor counts a finished stream's tokens
with the engine's own tokenizer. Its `/extras/tokenize` takes raw text, but a chat prompt's
tokens depend on the chat format (template, special tokens, a default system message):
`POST /torpor/tokenize/count` runs the engine's own chat handler up to the point where it
has the prompt's tokens and returns their number, so the count equals the `prompt_tokens`
of the same request answered without streaming.

The route does not wait for the request the engine is running (llama-cpp-python holds one
lock for a whole generation): tokenizing reads only the model's vocabulary, never the
context a generation is using, as llama-server also tokenizes in its HTTP threads while a
slot decodes. So torpor can count a prompt before reserving it against a budget while the
worker is busy.

Run as `python -m torpor.llamacpp_worker <llama_cpp.server arguments>`. The route is an
engine control route: torpor calls it on the worker, callers never reach it.
"""

from __future__ import annotations

from typing import Any

from fastapi import Body, HTTPException
from llama_cpp.server import app as server_app
from llama_cpp.server.__main__ import main

from torpor.errors import PromptReady

COUNT_ROUTE = "/torpor/tokenize/count"


class _StopAtPrompt:
    """The model, except that completing a prompt reports its size instead of generating."""

    def __init__(self, llama: Any):
        self._llama = llama

    def __getattr__(self, name: str) -> Any:
        return getattr(self._llama, name)

    def create_completion(self, prompt: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(prompt, str):
            prompt = self._llama.tokenize(prompt.encode("utf-8"), special=True)
        raise PromptReady(len(prompt))

    __call__ = create_completion


def count_tokens(llama: Any, body: dict[str, Any]) -> int:
    """Tokens of `messages` (as the chat handler formats them), `prompt`, or `text` (a
    completion, no special tokens added)."""
    if isinstance(body.get("messages"), list):
        handler = (
            llama.chat_handler
            or llama._chat_handlers.get(llama.chat_format)
            or _handler_by_name(llama.chat_format)
        )
        try:
            handler(
                llama=_StopAtPrompt(llama),
                messages=body["messages"],
                tools=body.get("tools"),
                tool_choice=body.get("tool_choice"),
                functions=body.get("functions"),
                function_call=body.get("function_call"),
            )
        except PromptReady as ready:
            return ready.tokens
        raise ValueError("the chat handler did not reach the prompt")
    if isinstance(body.get("prompt"), str):
        return len(llama.tokenize(body["prompt"].encode("utf-8"), special=True))
    text = body.get("text")
    if not isinstance(text, str):
        raise ValueError("give 'messages', 'prompt' or 'text'")
    return len(llama.tokenize(text.encode("utf-8"), add_bos=False, special=True))


def _handler_by_name(name: str) -> Any:
    from llama_cpp import llama_chat_format

    return llama_chat_format.get_chat_completion_handler(name)


def _loaded_llama() -> Any:
    """The model this worker serves, without taking the generation lock (see the module);
    a worker serves one model, loaded before the server answers."""
    proxy = server_app._llama_proxy
    llama = getattr(proxy, "_current_model", None)
    if llama is None:
        raise HTTPException(503, "model not loaded")
    return llama


@server_app.router.post(COUNT_ROUTE, include_in_schema=False)
async def tokenize_count(
    body: dict[str, Any] = Body(...),  # noqa: B008 (FastAPI's way to declare a body)
) -> dict[str, int]:
    return {"count": count_tokens(_loaded_llama(), body)}


if __name__ == "__main__":
    main()  # type: ignore[no-untyped-call]
