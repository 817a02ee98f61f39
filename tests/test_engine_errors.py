"""Engine error answers as callers see them: recorded shapes from llama-cpp-python 0.3.36
(`python -m llama_cpp.server` with the bundled model) and from aiohttp/FastAPI servers."""

from __future__ import annotations

import orjson
import pytest

from torpor.engines.fields import NATIVE, RequestFields, normalise, request_fields_of
from torpor.engines.llamacpp import LlamaCppEngine
from torpor.engines.vllm import VllmEngine
from torpor.errors import BadRequest
from torpor.gateway.engine_errors import clean_message, engine_error

# response_format json_schema, answered 500 by llama-cpp-python (its pydantic model refuses).
JSON_SCHEMA_500 = (
    b"{\"error\":{\"message\":\"1 validation error:\\n  {'type': 'literal_error', 'loc': "
    b"('body', 'response_format', 'type'), 'msg': \\\"Input should be 'text' or "
    b"'json_object'\\\", 'input': 'json_schema', 'ctx': {'expected': \\\"'text' or "
    b"'json_object'\\\"}}\\n\\n  File \\\"/srv/venv/lib/python3.11/site-packages/llama_cpp/"
    b'server/app.py\\", line 376, in create_chat_completion\\n    POST /v1/chat/completions",'
    b'"type":"internal_server_error","param":null,"code":null}}'
)
# messages as a string.
MESSAGES_500 = (
    b"{\"error\":{\"message\":\"1 validation error:\\n  {'type': 'list_type', 'loc': ('body', "
    b"'messages'), 'msg': 'Input should be a valid list', 'input': 'x'}\\n\\n  File "
    b'\\"/srv/venv/lib/python3.11/site-packages/llama_cpp/server/app.py\\", line 376, in '
    b'create_chat_completion\\n    POST /v1/chat/completions","type":"internal_server_error",'
    b'"param":null,"code":null}}'
)
# /v1/embeddings on a chat model.
EMBEDDINGS_500 = (
    b'{"error":{"message":"Llama model must be created with embedding=True to call this '
    b'method","type":"internal_server_error","param":null,"code":null}}'
)


def test_validation_500_becomes_400_with_the_fields() -> None:
    err = engine_error(500, JSON_SCHEMA_500, "/v1/chat/completions")
    assert isinstance(err, BadRequest) and err.status == 400
    assert "response_format.type: Input should be 'text' or 'json_object'" in err.message
    assert "/srv" not in err.message and "File" not in err.message
    err = engine_error(500, MESSAGES_500, "/v1/chat/completions")
    assert err is not None and err.status == 400
    assert err.message.endswith("messages: Input should be a valid list")


def test_other_500_is_502_with_the_reason_and_no_retry_advice() -> None:
    err = engine_error(500, EMBEDDINGS_500, "/v1/embeddings")
    assert err is not None and err.status == 502 and err.code == "worker_error"
    assert err.message == (
        "Worker error: Llama model must be created with embedding=True to call this method"
    )
    assert "retry" not in err.message
    busy = engine_error(503, b'{"error": {"message": "too many requests"}}', "/v1/completions")
    assert busy is not None and busy.status == 502 and busy.message.endswith("please retry")


def test_plain_text_and_fastapi_errors_get_the_envelope() -> None:
    err = engine_error(404, b"404: Not Found", "/v1/responses")
    assert err is not None and err.status == 404 and err.code == "not_found"
    assert (
        err.message
        == "Route /v1/responses is not served by this deployment's engine (404: Not Found)"
    )
    err = engine_error(405, b'{"detail":"Method Not Allowed"}', "/v1/chat/completions")
    assert err is not None and err.status == 405 and "Method Not Allowed" in err.message
    err = engine_error(422, b'{"detail":[{"loc":["body","model"],"msg":"Field required"}]}', "/x")
    assert err is not None and err.status == 422 and err.message == "model: Field required"
    err = engine_error(500, b"Internal Server Error", "/v1/chat/completions")
    assert err is not None and err.status == 502
    assert err.message == "Worker error: Internal Server Error"


def test_enveloped_4xx_is_relayed_and_success_passes() -> None:
    body = orjson.dumps({"error": {"message": "bad", "type": "invalid_request_error"}})
    assert engine_error(400, body, "/v1/chat/completions") is None
    assert engine_error(200, b"{}", "/v1/chat/completions") is None


def test_messages_lose_tracebacks_and_paths_and_stay_short() -> None:
    text = "boom at /home/u/models/x.gguf\nTraceback (most recent call last):\n  File ..."
    assert clean_message(text) == "boom at <path>"
    assert len(clean_message("x" * 5000)) == 400


def test_llama_cpp_fields_map_and_refuse() -> None:
    fields = request_fields_of(LlamaCppEngine())
    body = {"max_completion_tokens": 8, "messages": []}
    assert normalise(body, "/v1/chat/completions", fields)
    assert body == {"max_tokens": 8, "messages": []}
    # An explicit max_tokens wins; the other name is dropped either way.
    body = {"max_completion_tokens": 8, "max_tokens": 4}
    normalise(body, "/v1/chat/completions", fields)
    assert body == {"max_tokens": 4}
    with pytest.raises(BadRequest, match="'n' = 2 is not supported"):
        normalise({"n": 2}, "/v1/chat/completions", fields)
    assert not normalise({"n": 1}, "/v1/chat/completions", fields)
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    body = {
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    }
    normalise(body, "/v1/chat/completions", fields)
    assert body["response_format"] == {"type": "json_object", "schema": schema}
    # Other routes and engines that read the OpenAI names are left alone.
    assert not normalise({"max_completion_tokens": 8}, "/v1/embeddings", fields)
    assert request_fields_of(VllmEngine()) is NATIVE
    assert not normalise({"n": 3}, "/v1/chat/completions", RequestFields())
