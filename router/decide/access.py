"""API keys: who is calling, which tiers they may use, and their per-minute limits.

Keys are stored as SHA-256 digests (config `auth.keys`, or Redis `<prefix>keys:<sha256>`), never in
clear; a presented key is hashed and compared with every configured digest in constant time. Failures
are 401 (no key, unknown key) in the OpenAI error shape; a tier the key may not use is a 403.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from dataclasses import dataclass

import msgspec

from router.core.config import ApiKey, AuthConfig
from router.core.state import StateStore, StateUnavailable
from router.wire.errors import KeyStoreUnavailable, PermissionDenied, Unauthorized

log = logging.getLogger(__name__)
KEYS_PREFIX = "keys:"


class StoredKey(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A key as kept in Redis (its digest is the record's name)."""

    name: str
    group: str | None = None
    tiers: list[str] | None = None
    force_tiers: bool = False
    rpm: int = 0
    tpm: int = 0


@dataclass(frozen=True, slots=True)
class Caller:
    name: str
    group: str | None = None
    tiers: frozenset[str] | None = None
    rpm: int = 0
    tpm: int = 0
    force_tiers: bool = False
    """May choose its tier (`model` naming one, header rules): `auth.keys[].force_tiers`."""

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


BEARER = re.compile(r"Bearer ([\x21-\x7e]+)", re.IGNORECASE)
"""RFC 6750's form: the scheme, one space, the token in visible ASCII; nothing around it is trimmed away."""


def bearer_token(authorization: str | None) -> str:
    """The key in an `Authorization` header, parsed strictly (401 for anything else)."""
    if not authorization:
        raise Unauthorized("no API key: send it as 'Authorization: Bearer <key>'")
    match = BEARER.fullmatch(authorization)
    if match is None:
        raise Unauthorized("the Authorization header is not 'Bearer <key>' (one space, the key in visible ASCII)")
    return match.group(1)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _caller(key: ApiKey | StoredKey) -> Caller:
    tiers = frozenset(key.tiers) if key.tiers is not None else None
    return Caller(key.name, key.group, tiers, key.rpm, key.tpm, key.force_tiers)


class KeyStore:
    def __init__(self, settings: AuthConfig, store: StateStore | None) -> None:
        self.settings = settings
        self._static = list(settings.keys)
        self._store = store if settings.redis_keys and store is not None and store.backend == "redis" else None

    async def authenticate(self, authorization: str | None) -> Caller:
        digest = hash_key(bearer_token(authorization))
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
