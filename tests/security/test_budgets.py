"""Issue 17, honest budgets: what a request really used is charged when it ends (above its reservation too), every
field that reaches the prompt is counted, `/v1/route` and embeddings are rate-limited, and a limit is a token
bucket (no 2x burst at a minute boundary: tests/router/core/test_state.py)."""

from __future__ import annotations

from typing import Any

import httpx

from router.decide.access import hash_key
from router.devtools.standin import Standin, StandinSettings
from tests.helpers import RouterFactory, router_yaml
from tests.servers import ServerThread

KEY = "sk-budget-0123456789abcdef"
AUTH = {"authorization": f"Bearer {KEY}"}


def keyed(small: str, large: str, remote: str, **key: Any) -> dict[str, Any]:
    raw = router_yaml(small, large, remote)
    raw["auth"] = {"enabled": True, "keys": [{"name": "budget", "sha256": hash_key(KEY), "force_tiers": True, **key}]}
    return raw


def test_what_an_answer_really_used_is_charged_above_its_reservation(
    start_router: RouterFactory, standins: dict[str, ServerThread]
) -> None:
    """900 words in, 900 out, no max_tokens: reserved ~1,456 (prompt + the 256 default), used ~2,100; the next
    identical request no longer fits in 3,000 a minute (it did when only the reservation was charged)."""
    chatty = ServerThread(Standin(StandinSettings(name="small", max_words=2000)))
    with chatty:
        router = start_router(
            keyed(f"{chatty.url}/v1", *(f"{standins[t].url}/v1" for t in ("large", "remote")), tpm=3000)
        )
        words = " ".join(f"w{i}" for i in range(899))
        body = {"model": "small", "messages": [{"role": "user", "content": words}]}
        first = httpx.post(f"{router.url}/v1/chat/completions", json=body, headers=AUTH, timeout=30)
        assert first.status_code == 200 and first.json()["usage"]["completion_tokens"] == 900
        second = httpx.post(f"{router.url}/v1/chat/completions", json=body, headers=AUTH, timeout=30)
        assert second.status_code == 429, second.text


def test_every_field_that_reaches_the_prompt_is_counted(
    start_router: RouterFactory, standins: dict[str, ServerThread]
) -> None:
    urls = [f"{standins[t].url}/v1" for t in ("small", "large", "remote")]
    router = start_router(keyed(*urls, tpm=20_000))
    hi = [{"role": "user", "content": "hi"}]
    tool = {"type": "function", "function": {"name": "f", "description": "x" * 120_000, "parameters": {}}}
    counted = httpx.post(f"{router.url}/v1/chat/completions", json={"messages": hi, "tools": [tool]}, headers=AUTH)
    assert counted.status_code == 400 and "more than the key's limit" in counted.json()["error"]["message"]

    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 450_000}}
    parts = [{"role": "user", "content": [{"type": "text", "text": "what is this?"}, image]}]
    big = httpx.post(f"{router.url}/v1/chat/completions", json={"messages": parts}, headers=AUTH)
    assert big.status_code == 400 and big.json()["error"]["param"] == "messages", "beyond limits.max_content_chars"
    route = httpx.post(f"{router.url}/v1/route", json={"messages": hi, "tools": [tool] * 3}, headers=AUTH)
    assert route.json()["prompt_tokens"] > 100_000, "the decision (rules, pre-flight) sees the tools too"


def test_route_and_embeddings_are_rate_limited(start_router: RouterFactory, standins: dict[str, ServerThread]) -> None:
    router = start_router(keyed(*(f"{standins[t].url}/v1" for t in ("small", "large", "remote")), rpm=3))
    hi = {"messages": [{"role": "user", "content": "hi"}]}
    statuses = [httpx.post(f"{router.url}/v1/route", json=hi, headers=AUTH).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    limited = httpx.post(f"{router.url}/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": "hi"}, headers=AUTH)
    assert limited.status_code == 429
