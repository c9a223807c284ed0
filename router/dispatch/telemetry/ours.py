"""Our workers (workers/): their `/v1/memory` is the reading itself (its heartbeats in Redis carry the same)."""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from router.dispatch.telemetry.base import Reading, TelemetryAdapter, get, json_object


class OursAdapter(TelemetryAdapter):
    name = "ours"

    async def read(self, client: httpx.AsyncClient, headers: Mapping[str, str], timeout_s: float) -> Reading:
        return json_object(await get(client, f"{self.base_url}/memory", headers, timeout_s))
