"""The adapter interface: one engine's telemetry endpoints read into a `/v1/memory`-shaped reading."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import httpx

Reading = dict[str, Any]
"""The fields of a worker's `/v1/memory` (router.dispatch.fleet.Telemetry.parse reads them), plus `note`."""

MEMORY_UNKNOWN: Reading = {"free": 0, "kv_bytes_per_token": 0}
"""What an engine that reports no memory gives: a request then needs 0 of 0, so memory never refuses it."""


class TelemetryAdapter(ABC):
    """Reads one tier's engine at `base_url` (the tier's OpenAI base URL, `.../v1`) serving `model`."""

    name: ClassVar[str]

    def __init__(self, base_url: str, model: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model

    @property
    def root(self) -> str:
        """The server's root: engines publish their metrics beside `/v1`, not under it."""
        return self.base_url.removesuffix("/v1")

    @abstractmethod
    async def read(self, client: httpx.AsyncClient, headers: Mapping[str, str], timeout_s: float) -> Reading:
        """The engine's reading now. Raises `httpx.HTTPError` when it cannot be reached and `ValueError` when it
        answers something else than its engine would; either makes the tier's telemetry unknown (it is tried)."""


async def get(client: httpx.AsyncClient, url: str, headers: Mapping[str, str], timeout_s: float) -> httpx.Response:
    """GET `url`; anything but a 200 is a `ValueError` naming it."""
    response = await client.get(url, headers=dict(headers), timeout=timeout_s)
    if response.status_code != 200:
        raise ValueError(f"GET {url}: {response.status_code}")
    return response


def json_object(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    if not isinstance(body, dict):
        raise ValueError(f"GET {response.request.url}: not a JSON object")
    return body
