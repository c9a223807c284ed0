"""Issue 17, the ops endpoints: nothing a stranger or a plain API key can read names a key, an upstream URL, a
rule or a line of config; the operator reads it all with the admin key; readiness probes are cached, so a remote
tier is sent its key at most once per interval however often `/ready` is polled."""

from __future__ import annotations

import time

import httpx
import pytest

from router.decide.access import hash_key
from tests.helpers import RouterFactory, router_yaml
from tests.servers import ServerThread

KEY, ADMIN = "sk-user-0123456789abcdef", "sk-admin-0123456789abcdef"
HI = [{"role": "user", "content": "hi"}]


def keyed(standins: dict[str, ServerThread]) -> dict[str, object]:
    raw = router_yaml(*(f"{standins[t].url}/v1" for t in ("small", "large", "remote")))
    raw["auth"] = {"enabled": True, "keys": [{"name": "alice-teama", "sha256": hash_key(KEY), "rpm": 100}]}
    return raw


def leaks(text: str, standins: dict[str, ServerThread]) -> list[str]:
    """What an outsider must not see: key names, upstream URLs, rule names, the config file."""
    secrets = ["alice-teama", "header-override", "router0.yaml", *(s.url for s in standins.values())]
    return [secret for secret in secrets if secret in text]


@pytest.mark.parametrize("authorization", [None, f"Bearer {KEY}"])
def test_without_an_admin_key_the_ops_endpoints_say_nothing_internal(
    start_router: RouterFactory, standins: dict[str, ServerThread], authorization: str | None
) -> None:
    router = start_router(keyed(standins))
    user = {"authorization": f"Bearer {KEY}"}
    httpx.post(f"{router.url}/v1/chat/completions", json={"messages": HI}, headers=user).raise_for_status()
    headers = {"authorization": authorization} if authorization else {}
    ready = httpx.get(f"{router.url}/ready", headers=headers)
    assert ready.status_code == 200 and set(ready.json()) == {"ready", "tiers"}
    assert ready.json()["tiers"]["small"] == {"ready": True}
    for path in ("/metrics", "/status.json"):
        closed = httpx.get(f"{router.url}{path}", headers=headers)
        assert closed.status_code == 403 and "admin_key_env" in closed.json()["error"]["message"], path
        assert leaks(closed.text, standins) == []
    assert leaks(ready.text, standins) == []


def test_the_admin_key_opens_them(start_router: RouterFactory, standins: dict[str, ServerThread]) -> None:
    raw = keyed(standins)
    raw["server"]["admin_key_env"] = "TEST_ADMIN_KEY"
    router = start_router(raw, environ={"TEST_ADMIN_KEY": ADMIN, "TEST_REMOTE_KEY": "sk-remote"})
    user = {"authorization": f"Bearer {KEY}"}
    httpx.post(f"{router.url}/v1/chat/completions", json={"messages": HI}, headers=user).raise_for_status()
    admin = {"authorization": f"Bearer {ADMIN}"}
    for path in ("/metrics", "/status.json"):
        assert httpx.get(f"{router.url}{path}").status_code == 401, path
        assert httpx.get(f"{router.url}{path}", headers=user).status_code == 401, "a plain API key is not enough"
        assert httpx.get(f"{router.url}{path}", headers=admin).status_code == 200
    detail = httpx.get(f"{router.url}/ready", headers=admin).json()
    assert detail["tiers"]["small"]["url"] == f"{standins['small'].url}/v1" and "config" in detail
    assert set(httpx.get(f"{router.url}/ready", headers=user).json()) == {"ready", "tiers"}


def test_readiness_probes_are_cached(start_router: RouterFactory, standins: dict[str, ServerThread]) -> None:
    router = start_router()
    from router.ops.status import READY_CACHE_S

    before = httpx.get(f"{standins['remote'].url}/_standin/stats").json()["model_lists"]
    started = time.monotonic()
    for _ in range(20):
        httpx.get(f"{router.url}/ready").raise_for_status()
    rounds = 1 + int((time.monotonic() - started) / READY_CACHE_S)  # at most one probe round per interval
    probed = httpx.get(f"{standins['remote'].url}/_standin/stats").json()["model_lists"] - before
    assert 1 <= probed <= rounds < 20, (probed, rounds)
