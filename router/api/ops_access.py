"""Who may read the ops endpoints. `/health` and a bare `/ready` (ready or not, per tier) are for anyone, load
balancers and probes included; `/metrics`, `/status`, `/status.json` and `/ready`'s detail carry key names, upstream
URLs, rule names and config text, so they are for the operator:

- `server.admin_key_env` set: they need `Authorization: Bearer <admin key>` (401 otherwise);
- unset, with `auth` off (the local demo): open;
- unset, with `auth` on: refused (403), since a plain API key must not read them.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from router.core.config import Config, ConfigError
from router.decide.access import bearer_token, hash_key
from router.wire.errors import PermissionDenied, Unauthorized


class OpsAccess:
    def __init__(self, config: Config, environ: Mapping[str, str]) -> None:
        name = config.server.admin_key_env
        key = environ.get(name) if name else None
        if name and not key:
            raise ConfigError(config.source, "server.admin_key_env", f"the environment variable {name} is not set")
        self._digest = hash_key(key) if key else None
        self._open = key is None and not config.auth.enabled

    def allowed(self, authorization: str | None) -> bool:
        """May this caller read the detail? (False for a stranger; never raises.)"""
        if self._open:
            return True
        if self._digest is None or not authorization:
            return False
        try:
            token = bearer_token(authorization)
        except Unauthorized:
            return False
        return hmac.compare_digest(hash_key(token), self._digest)

    def require(self, authorization: str | None) -> None:
        """401 or 403 unless the caller may read the ops endpoints."""
        if self.allowed(authorization):
            return
        if self._digest is None:
            raise PermissionDenied(
                "the ops endpoints are closed while auth is on and no admin key is set (server.admin_key_env)"
            )
        raise Unauthorized("this endpoint needs the admin key: 'Authorization: Bearer <admin key>'")
