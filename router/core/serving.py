"""`server`: where the router listens, and what one connection may cost it before it is closed."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from router.core.schema import Seconds, Strict


class ServerConfig(Strict, frozen=True):
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 8000
    max_body_bytes: Annotated[int, Meta(ge=1024)] = 4 * 1024 * 1024
    cors_origins: list[str] = []  # origins browsers may call the API from ("*": any); empty: CORS off
    header_timeout_s: Seconds = 10.0
    """A request's line and headers must arrive within this, once its first byte has (slow clients: 408)."""
    body_timeout_s: Seconds = 60.0
    """Its body within this, once the headers have: a connection that trickles it is closed."""
    max_header_bytes: Annotated[int, Meta(ge=1024)] = 65_536
    """Request line and headers together; more: 431, and the connection is closed. Checked after each socket read,
    and the read that completes the headers is let through, so up to one read (at most 256 KiB) beyond this."""
    forwarded_allow_ips: list[str] = []
    """Proxies (IPs, CIDRs, "*") whose X-Forwarded-For / X-Forwarded-Proto are believed, as the client's address
    for the failed-key throttle and the logs. Empty, the default: the headers are ignored from everyone, so a
    client cannot choose the address it is throttled as."""
    admin_key_env: str | None = None
    """The environment variable holding the admin key: `/metrics`, `/status`, `/status.json` and the detail of
    `/ready` then need `Authorization: Bearer <admin key>`. Unset: they are open when `auth` is off; with `auth`
    on they are refused (403), and `/ready` answers only whether the router is ready."""
