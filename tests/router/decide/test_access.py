"""API keys, per-key tiers and groups, input limits, and the worker token, through real routers on loopback."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import msgspec
import pytest

from router.core.state import RedisStore
from router.decide.access import hash_key
from router.devtools.standin import Standin, StandinSettings
from tests.helpers import RouterFactory, router_yaml
from tests.servers import ServerThread, redis_server

HI = [{"role": "user", "content": "hi"}]
ALICE, BOB = "sk-alice-0123456789abcdef", "sk-bob-0123456789abcdef"
EVE = "sk-eve-0123456789abcdef"


def keyed(standins: dict[str, ServerThread], **auth: Any) -> dict[str, Any]:
    raw = router_yaml(*(f"{standins[t].url}/v1" for t in ("small", "large", "remote")))
    for tier in raw["tiers"].values():
        tier["guardrails"] = False
    raw["auth"] = {
        "enabled": True,
        "keys": [
            {
                "name": "alice",
                "sha256": hash_key(ALICE),
                "group": "team-a",
                "tiers": ["small", "remote"],
                "force_tiers": True,
            },
            {"name": "bob", "sha256": hash_key(BOB), "force_tiers": True},
            {"name": "eve", "sha256": hash_key(EVE)},
        ],
        **auth,
    }
    raw["rules"].insert(
        0, {"name": "team-a-to-remote", "when": {"key_group": ["team-a"], "last_user_regex": "^team"}, "tier": "remote"}
    )
    return raw


def chat(router: ServerThread, key: str | None, **body: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{router.url}/v1/chat/completions", json={"messages": HI, **body}, headers=headers, timeout=30)


def test_keys_are_required_checked_and_never_echoed(
    start_router: RouterFactory, standins: dict[str, ServerThread]
) -> None:
    router = start_router(keyed(standins))
    missing = chat(router, None)
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "authentication_error"
    assert "Bearer" in missing.json()["error"]["message"]
    wrong = chat(router, "sk-nobody")
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    assert "sk-nobody" not in wrong.text
    assert chat(router, BOB).status_code == 200
    assert httpx.get(f"{router.url}/v1/models").status_code == 401
    assert httpx.get(f"{router.url}/v1/models", headers={"authorization": f"Bearer {BOB}"}).status_code == 200
    assert httpx.get(f"{router.url}/health").status_code == 200  # operations endpoints stay open


def test_a_key_uses_only_its_tiers_and_its_group_in_rules(
    start_router: RouterFactory, standins: dict[str, ServerThread]
) -> None:
    router = start_router(keyed(standins))
    moved = chat(router, ALICE, model="large")  # large -> remote is its chain; alice may use remote
    assert moved.status_code == 200 and moved.headers["x-router-tier"] == "remote"
    assert chat(router, BOB, model="large").headers["x-router-tier"] == "large"
    team = chat(router, ALICE, messages=[{"role": "user", "content": "team question"}])
    assert team.headers["x-router-rule"] == "team-a-to-remote"
    assert (
        chat(router, BOB, messages=[{"role": "user", "content": "team question"}]).headers["x-router-rule"]
        != "team-a-to-remote"
    )

    raw = keyed(standins)
    raw["auth"]["keys"][0]["tiers"] = ["small"]
    strict = start_router(raw)
    refused = chat(strict, ALICE, model="large")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "tier_not_allowed"


def test_choosing_a_tier_is_a_permission_of_the_key(
    start_router: RouterFactory, standins: dict[str, ServerThread]
) -> None:
    """Without `force_tiers`, `model` naming a tier is a 403 and a header rule (x-tier) does not match: the key's
    requests are routed by the rules on their content, so a client cannot pick the unguarded tier."""
    router = start_router(keyed(standins))
    forced = chat(router, EVE, model="small")
    assert forced.status_code == 403 and forced.json()["error"]["code"] == "tier_not_allowed"
    assert "force_tiers" in forced.json()["error"]["message"]
    complex_prompt = [{"role": "user", "content": "Prove that there are infinitely many primes, step by step."}]
    headers = {"authorization": f"Bearer {EVE}", "x-tier": "small"}
    body = {"messages": complex_prompt}
    routed = httpx.post(f"{router.url}/v1/chat/completions", json=body, headers=headers, timeout=30)
    assert routed.status_code == 200 and routed.headers["x-router-rule"] != "header-override"
    headers["authorization"] = f"Bearer {BOB}"
    chosen = httpx.post(f"{router.url}/v1/chat/completions", json=body, headers=headers, timeout=30)
    assert chosen.headers["x-router-rule"] == "header-override" and chosen.headers["x-router-tier"] == "small"
    assert chat(router, EVE).status_code == 200, "model auto needs no permission"


def test_keys_can_live_in_redis(start_router: RouterFactory, standins: dict[str, ServerThread]) -> None:
    with redis_server() as url:

        async def store_key() -> None:
            store = RedisStore.from_url(url, "auth-test:")
            record = msgspec.json.encode({"name": "carol", "group": "ops", "tiers": ["remote"], "force_tiers": True})
            await store.put("keys:" + hash_key("sk-carol-xyz"), record)
            await store.close()

        asyncio.run(store_key())
        raw = keyed(standins)
        raw["redis"] = {"url": url, "prefix": "auth-test:"}
        router = start_router(raw)
        served = chat(router, "sk-carol-xyz", model="small")
        assert served.status_code == 200  # carol may use only remote: small's chain is small -> large -> remote
        assert served.headers["x-router-tier"] == "remote"
        assert chat(router, "sk-carol-xyz", model="large").headers["x-router-tier"] == "remote"
        assert chat(router, "sk-dave").status_code == 401


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": HI * 5}, "messages"),
        ({"messages": [{"role": "user", "content": "x" * 2001}]}, "messages"),
        ({"messages": HI, "max_tokens": 5000}, "max_tokens"),
    ],
)
def test_input_limits_get_a_400_naming_the_limit(
    start_router: RouterFactory, standins: dict[str, ServerThread], body: dict[str, Any], param: str
) -> None:
    router = start_router(limits={"max_messages": 4, "max_content_chars": 2000, "max_tokens": 4096})
    response = httpx.post(f"{router.url}/v1/chat/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param and "at most" in error["message"]


def test_a_tokens_per_minute_budget_counts_the_worst_case_and_gives_back_the_rest(
    start_router: RouterFactory, standins: dict[str, ServerThread]
) -> None:
    slow = ServerThread(Standin(StandinSettings(name="small", response_delay_s=0.5)))
    with slow:
        raw = keyed({**standins, "small": slow})
        raw["auth"]["keys"][1]["tpm"] = 1000
        router = start_router(raw)

        async def three_at_once() -> list[httpx.Response]:
            headers = {"authorization": f"Bearer {BOB}"}
            body = {"model": "small", "messages": HI, "max_tokens": 400}
            async with httpx.AsyncClient(timeout=30, headers=headers) as client:
                return list(
                    await asyncio.gather(
                        *(client.post(f"{router.url}/v1/chat/completions", json=body) for _ in range(3))
                    )
                )

        # In flight together, each counts its worst case (~410 tokens): the third does not fit in 1,000.
        statuses = sorted(r.status_code for r in asyncio.run(three_at_once()))
        assert statuses == [200, 200, 429]
        limited = next(r for r in asyncio.run(three_at_once()) if r.status_code == 429)
        assert limited.json()["error"]["type"] == "rate_limit_error" and 1 <= int(limited.headers["retry-after"]) <= 60

    # Each answer used a handful of tokens, and the rest was given back: sequential requests keep fitting.
    raw = keyed(standins)
    raw["auth"]["keys"][1]["tpm"] = 1000
    router = start_router(raw)
    for _ in range(6):
        response = chat(router, BOB, model="small", max_tokens=400)
        assert response.status_code == 200, response.text
        time.sleep(0.05)  # the refund is written just after the answer
    too_big = chat(router, BOB, max_tokens=2000)
    assert too_big.status_code == 400 and "more than the key's limit" in too_big.json()["error"]["message"]
