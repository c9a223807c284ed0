"""API keys: who is calling, which tiers they may use, and their per-minute limits.

Keys are stored as SHA-256 digests (config `auth.keys`, or Redis `<prefix>keys:<sha256>`), never in
clear; a presented key is hashed and compared with every configured digest in constant time. Failures
are 401 (no key, unknown key) in the OpenAI error shape; a tier the key may not use is a 403.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from router.config import ApiKey, AuthConfig, Config, ConfigError
from router.errors import PermissionDenied, RouterError
from router.state import StateStore, StateUnavailable

log = logging.getLogger(__name__)
KEYS_PREFIX = "keys:"


class Unauthorized(RouterError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"

    def headers(self) -> dict[str, str]:
        return {"www-authenticate": "Bearer"}


class KeyStoreUnavailable(RouterError):
    status_code = 503
    error_type = "server_error"
    code = "auth_unavailable"


class StoredKey(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A key as kept in Redis (its digest is the record's name)."""

    name: str
    group: str | None = None
    tiers: list[str] | None = None
    rpm: int = 0
    tpm: int = 0


@dataclass(frozen=True, slots=True)
class Caller:
    name: str
    group: str | None = None
    tiers: frozenset[str] | None = None
    rpm: int = 0
    tpm: int = 0

    def allowed(self, chain: list[str]) -> list[str]:
        """The chain with the tiers this key may not use taken out (403 if none is left)."""
        if self.tiers is None:
            return chain
        allowed = [tier for tier in chain if tier in self.tiers]
        if not allowed:
            raise PermissionDenied(
                f"this API key may not use tier(s) {', '.join(chain)} (allowed: {', '.join(sorted(self.tiers))})",
                code="tier_not_allowed",
            )
        return allowed


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _caller(key: ApiKey | StoredKey) -> Caller:
    tiers = frozenset(key.tiers) if key.tiers is not None else None
    return Caller(key.name, key.group, tiers, key.rpm, key.tpm)


class KeyStore:
    def __init__(self, settings: AuthConfig, store: StateStore | None) -> None:
        self.settings = settings
        self._static = list(settings.keys)
        self._store = store if settings.redis_keys and store is not None and store.backend == "redis" else None

    async def authenticate(self, authorization: str | None) -> Caller:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("no API key: send it as 'Authorization: Bearer <key>'")
        digest = hash_key(token.strip())
        found: ApiKey | None = None
        for key in self._static:  # every digest is compared, so the time does not depend on which matched
            if hmac.compare_digest(key.sha256, digest):
                found = key
        if found is not None:
            return _caller(found)
        if self._store is not None:
            try:
                raw = await self._store.get(KEYS_PREFIX + digest)
            except StateUnavailable as exc:
                log.warning("API key lookup in redis failed: %s", exc)
                raise KeyStoreUnavailable("the API key store is unavailable; try again shortly") from exc
            if raw is not None:
                try:
                    return _caller(msgspec.json.decode(raw, type=StoredKey))
                except msgspec.DecodeError:
                    log.error("unreadable key record %s…", digest[:12])
        raise Unauthorized("invalid API key")


def require_bearer(token: str, paths: tuple[str, ...] = ("/v1/",)) -> Any:
    """ASGI middleware factory: requests under `paths` must carry `Authorization: Bearer <token>` (401 else).

    Workers use it so that only the router (which holds the shared token) can reach their model.
    """
    expected = f"Bearer {token}".encode()
    body = msgspec.json.encode(
        {
            "error": {
                "message": "this worker accepts only the router",
                "type": "authentication_error",
                "param": None,
                "code": "invalid_worker_token",
            }
        }
    )

    def factory(app: Any) -> Any:
        async def middleware(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http" and scope["path"].startswith(paths):
                given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
                if not hmac.compare_digest(given, expected):
                    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                    await send({"type": "http.response.start", "status": 401, "headers": headers})
                    await send({"type": "http.response.body", "body": body})
                    return
            await app(scope, receive, send)

        return middleware

    return factory


def worker_token(config: Config, environ: Mapping[str, str] | None = None) -> str | None:
    """The router-to-worker token (`auth.worker_token_env`); a named but unset variable stops start-up."""
    name = config.auth.worker_token_env
    if not name:
        return None
    token = (os.environ if environ is None else environ).get(name)
    if not token:
        raise ConfigError(config.source, "auth.worker_token_env", f"the environment variable {name} is not set")
    return token
