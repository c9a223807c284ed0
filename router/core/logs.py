"""Structured logs: one JSON object per line, with the request id of the request being served.

The router takes a client's `x-request-id` (or makes one), answers with it, and passes it to the tier it
calls; workers log under the same id. Prompt text never reaches the logs unless `logging.prompts: true`.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from contextvars import ContextVar
from typing import Any

REQUEST_ID_HEADER = "x-request-id"
SCOPE_KEY = "tiered_router.request_id"
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
_VALID_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "request_id"}


def new_request_id(given: str | None) -> str:
    """The client's id when it is a sane token (letters, digits, `._:-`, at most 128), else a fresh one."""
    if given and _VALID_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


class RequestIdFilter(logging.Filter):
    """Stamp each record with the id of the request this task is serving (None outside requests)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "msg", "request_id", ...extra fields, "exc"}` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid:
            entry["request_id"] = rid
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure(level: str = "info", fmt: str = "json") -> None:
    """The process's logging (the CLI owns it): JSON lines (or text) on stderr, request ids attached."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))
    # httpx logs every request at INFO: noise, and CPU on the hot path.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def with_request_id(app: Any) -> Any:
    """ASGI middleware: the request id for the request's task (logs, the upstream call); see `send_request_id`."""

    async def middleware(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        given = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), None)
        rid = scope[SCOPE_KEY] = new_request_id(given)
        token = request_id.set(rid)
        try:
            await app(scope, receive, send)
        finally:
            request_id.reset(token)

    return middleware


async def send_request_id(message: Any, scope: Any) -> None:
    """Litestar `before_send` hook: answer with the request id, error responses included."""
    rid = scope.get(SCOPE_KEY)
    if rid is not None and message["type"] == "http.response.start":
        message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
