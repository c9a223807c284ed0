"""ASGI middleware that admits only callers holding a shared bearer token (workers admit only the router)."""

from __future__ import annotations

import hmac
from typing import Any

import msgspec


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
