"""`POST /v1/embeddings`, served by the router's own all-MiniLM-L6-v2, driven with the real `openai` SDK: floats
and base64 (the SDK's default), the SDK's `CreateEmbeddingResponse` in strict mode, paraphrases closer than an
unrelated sentence, and 400/404 naming what is wrong; a model `embeddings.tiers` names is sent to that tier."""

from __future__ import annotations

import base64
import math
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from openai.types import CreateEmbeddingResponse

from router.core.config import ConfigError, load_config
from tests.helpers import RouterFactory, router_yaml, write_config
from tests.servers import ServerThread

MODEL = "all-minilm-l6-v2"
TEXTS = ["How do I reset my password?", "What are the steps to change my password?", "The tide comes in at noon."]


def cosine(a: list[float], b: list[float]) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_embeddings_with_the_sdk(start_router: RouterFactory) -> None:
    router = start_router()
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0)

    answer = client.embeddings.create(model=MODEL, input=TEXTS)  # the SDK asks for base64 and decodes it
    vectors = [item.embedding for item in sorted(answer.data, key=lambda item: item.index)]
    assert [len(v) for v in vectors] == [384, 384, 384] and answer.model == MODEL
    assert all(math.isclose(float(np.linalg.norm(v)), 1.0, abs_tol=1e-3) for v in vectors)
    paraphrase, unrelated = cosine(vectors[0], vectors[1]), cosine(vectors[0], vectors[2])
    assert paraphrase > unrelated + 0.3, (paraphrase, unrelated)
    assert answer.usage.prompt_tokens == answer.usage.total_tokens > 0

    floats = httpx.post(
        f"{router.url}/v1/embeddings", json={"model": MODEL, "input": TEXTS[0], "encoding_format": "float"}
    )
    parsed = CreateEmbeddingResponse.model_validate(floats.json(), strict=True)
    assert parsed.object == "list" and parsed.data[0].object == "embedding" and parsed.data[0].index == 0
    assert np.allclose(parsed.data[0].embedding, vectors[0], atol=1e-5)

    packed = httpx.post(
        f"{router.url}/v1/embeddings", json={"model": MODEL, "input": [TEXTS[0]], "encoding_format": "base64"}
    ).json()["data"][0]["embedding"]
    assert np.allclose(np.frombuffer(base64.b64decode(packed), dtype="<f4"), vectors[0], atol=1e-6)


@pytest.mark.parametrize(
    ("extra", "status", "param"),
    [
        ({"model": "text-embedding-3-small"}, 404, "model"),
        ({"dimensions": 256}, 400, "dimensions"),
        ({"input": ["hi"] * 257}, 400, "input"),
        ({"input": "x" * 32_001}, 400, "input"),
        ({"input": []}, 400, "input"),
        ({"input": [[1, 2, 3]]}, 400, "input[0]"),
        ({"encoding_format": "int8"}, 400, "encoding_format"),
    ],
)
def test_what_is_not_served_is_named(
    start_router: RouterFactory, extra: dict[str, object], status: int, param: str
) -> None:
    router = start_router()
    response = httpx.post(f"{router.url}/v1/embeddings", json={"model": MODEL, "input": "hi", **extra})
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param


def test_a_configured_alias_is_served(start_router: RouterFactory) -> None:
    router = start_router(embeddings={"aliases": ["text-embedding-3-small"]})
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0)
    answer = client.embeddings.create(model="text-embedding-3-small", input="hi", encoding_format="float")
    assert len(answer.data[0].embedding) == 384 and answer.model == MODEL  # says what served it
    with pytest.raises(openai.NotFoundError) as other:
        client.embeddings.create(model="text-embedding-3-large", input="hi")
    assert other.value.code == "model_not_found"


def test_a_model_a_tier_serves_is_sent_there_with_its_key(
    start_router: RouterFactory, standins: dict[str, ServerThread]
) -> None:
    router = start_router(
        embeddings={"aliases": ["text-embedding-3-small"], "tiers": {"text-embedding-3-large": "remote"}}
    )
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0)
    answer = client.embeddings.create(model="text-embedding-3-large", input=["hi", "there"], encoding_format="float")
    assert [len(item.embedding) for item in answer.data] == [8, 8] and answer.model == "text-embedding-3-large"
    sent = [
        r for r in httpx.get(f"{standins['remote'].url}/_standin/requests").json() if r["path"].endswith("/embeddings")
    ]
    assert len(sent) == 1 and sent[0]["body"]["input"] == ["hi", "there"]
    assert sent[0]["headers"]["authorization"] == "Bearer sk-test-secret-key"
    local = client.embeddings.create(model="text-embedding-3-small", input="hi", encoding_format="float")
    assert len(local.data[0].embedding) == 384, "an alias is still the router's own MiniLM"
    with pytest.raises(openai.NotFoundError) as other:
        client.embeddings.create(model="text-embedding-ada-002", input="hi")
    assert "'text-embedding-3-large'" in other.value.message


def test_a_tier_named_for_embeddings_must_exist(tmp_path: Path) -> None:
    raw = router_yaml(*(["http://127.0.0.1:1/v1"] * 3), embeddings={"tiers": {"e5": "nowhere"}})
    with pytest.raises(ConfigError, match=r"embeddings\.tiers\.e5"):
        load_config(write_config(tmp_path / "router.yaml", raw), environ={})
