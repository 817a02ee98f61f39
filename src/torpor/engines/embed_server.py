"""A small OpenAI-compatible embedding server for BERT sentence-transformers models on CPU.

It reads a sentence-transformers directory (config.json, tokenizer.json, model.safetensors,
1_Pooling/config.json), runs the BERT encoder with numpy, pools as the model's pooling
config says and normalizes, and answers `POST /v1/embeddings`, `GET /v1/models` and
`GET /health`. Run as a worker by the `embed` framework:

    python -m torpor.engines.embed_server --model DIR --served-model-name NAME --port PORT
"""

from __future__ import annotations

import argparse
import base64
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web

Array = np.ndarray[Any, np.dtype[np.float32]]

_MAX_INPUTS = 2048


def _erf(x: Array) -> Array:
    # Abramowitz and Stegun 7.1.26 (absolute error below 1.5e-7): exact-GELU BERT needs erf.
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    out: Array = (sign * (1.0 - poly * np.exp(-a * a))).astype(np.float32)
    return out


def _gelu(x: Array) -> Array:
    return (0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))).astype(np.float32)


def _layer_norm(x: Array, weight: Array, bias: Array, eps: float) -> Array:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    out: Array = ((x - mean) / np.sqrt(var + eps) * weight + bias).astype(np.float32)
    return out


class BertEmbedder:
    def __init__(self, model_dir: Path):
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        config = json.loads((model_dir / "config.json").read_text())
        if config.get("model_type") != "bert":
            raise ValueError(f"{model_dir}: only BERT models are supported")
        self.heads = int(config["num_attention_heads"])
        self.layers = int(config["num_hidden_layers"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        self.dim = int(config["hidden_size"])
        max_len = int(config.get("max_position_embeddings", 512))
        st_config = model_dir / "sentence_bert_config.json"
        if st_config.is_file():
            max_len = min(max_len, int(json.loads(st_config.read_text())["max_seq_length"]))
        pooling = model_dir / "1_Pooling" / "config.json"
        pool = json.loads(pooling.read_text()) if pooling.is_file() else {}
        self.cls_pooling = bool(pool.get("pooling_mode_cls_token"))
        modules = model_dir / "modules.json"
        self.normalize = not modules.is_file() or "Normalize" in modules.read_text()
        weights = load_file(str(model_dir / "model.safetensors"))
        prefix = "bert." if "bert.embeddings.word_embeddings.weight" in weights else ""
        self.w = {k.removeprefix(prefix): v.astype(np.float32) for k, v in weights.items()}
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=max_len)
        self.tokenizer.no_padding()

    def _encode_one(self, ids: list[int]) -> Array:
        w = self.w
        n = len(ids)
        x = w["embeddings.word_embeddings.weight"][ids]
        x = x + w["embeddings.position_embeddings.weight"][:n]
        x = x + w["embeddings.token_type_embeddings.weight"][0]
        x = _layer_norm(
            x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self.eps
        )
        head = self.dim // self.heads
        for i in range(self.layers):
            p = f"encoder.layer.{i}."

            def dense(v: Array, name: str, p: str = p) -> Array:
                out: Array = v @ w[p + name + ".weight"].T + w[p + name + ".bias"]
                return out

            q = dense(x, "attention.self.query").reshape(n, self.heads, head).transpose(1, 0, 2)
            k = dense(x, "attention.self.key").reshape(n, self.heads, head).transpose(1, 0, 2)
            v = dense(x, "attention.self.value").reshape(n, self.heads, head).transpose(1, 0, 2)
            scores = q @ k.transpose(0, 2, 1) / math.sqrt(head)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            ctx = (scores @ v).transpose(1, 0, 2).reshape(n, self.dim)
            x = _layer_norm(
                dense(ctx, "attention.output.dense") + x,
                w[p + "attention.output.LayerNorm.weight"],
                w[p + "attention.output.LayerNorm.bias"],
                self.eps,
            )
            hidden = _gelu(dense(x, "intermediate.dense"))
            x = _layer_norm(
                dense(hidden, "output.dense") + x,
                w[p + "output.LayerNorm.weight"],
                w[p + "output.LayerNorm.bias"],
                self.eps,
            )
        pooled: Array = x[0] if self.cls_pooling else x.mean(0)
        if self.normalize:
            pooled = pooled / max(float(np.linalg.norm(pooled)), 1e-12)
        return pooled.astype(np.float32)

    def embed(self, texts: list[str]) -> tuple[list[Array], int]:
        encodings = self.tokenizer.encode_batch(texts)
        vectors = [self._encode_one(list(e.ids)) for e in encodings]
        return vectors, sum(len(e.ids) for e in encodings)


def _error(status: int, message: str) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "code": None}}
    return web.json_response(body, status=status)


def make_app(embedder: BertEmbedder, served_name: str) -> web.Application:
    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def models(_: web.Request) -> web.Response:
        model = {"id": served_name, "object": "model", "owned_by": "torpor", "created": 0}
        return web.json_response({"object": "list", "data": [model]})

    async def embeddings(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "Malformed JSON body")
        raw = body.get("input") if isinstance(body, dict) else None
        texts = [raw] if isinstance(raw, str) else raw
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            return _error(400, "'input' must be a string or a non-empty list of strings")
        if len(texts) > _MAX_INPUTS:
            return _error(400, f"'input' may hold at most {_MAX_INPUTS} strings")
        fmt = body.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            return _error(400, "'encoding_format' must be 'float' or 'base64'")
        vectors, tokens = embedder.embed(texts)
        data = []
        for i, vec in enumerate(vectors):
            emb: Any = (
                base64.b64encode(vec.astype("<f4").tobytes()).decode()
                if fmt == "base64"
                else [float(x) for x in vec]
            )
            data.append({"object": "embedding", "index": i, "embedding": emb})
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": served_name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/embeddings", embeddings)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--served-model-name", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    embedder = BertEmbedder(args.model)
    web.run_app(
        make_app(embedder, args.served_model_name), host=args.host, port=args.port, print=None
    )


if __name__ == "__main__":
    main()
