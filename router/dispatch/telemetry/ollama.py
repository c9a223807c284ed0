"""Ollama: `/api/ps`, the models it holds loaded and how much of each is in VRAM.

Ollama publishes no free memory, KV cache or queue, so memory never refuses a request here; what it does tell is
whether the tier's model is loaded (else the first request waits for the load), how much of it sits in VRAM (the
rest runs on the CPU, much slower) and, since 0.6, its context length, which becomes the tier's window.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from router.dispatch.telemetry.base import MEMORY_UNKNOWN, Reading, TelemetryAdapter, get, json_object

GIB = 1024**3


class OllamaAdapter(TelemetryAdapter):
    name = "ollama"

    async def read(self, client: httpx.AsyncClient, headers: Mapping[str, str], timeout_s: float) -> Reading:
        ps = json_object(await get(client, f"{self.root}/api/ps", headers, timeout_s))
        models = ps.get("models")
        if not isinstance(models, list):
            raise ValueError(f"{self.root}/api/ps has no models list: not an Ollama server")
        loaded = [m for m in models if isinstance(m, dict)]
        mine = next((m for m in loaded if self._is_mine(m)), None)
        if mine is None:
            names = ", ".join(str(m.get("name")) for m in loaded) or "none"
            note = f"Ollama: {self.model} not loaded (the first request loads it; loaded: {names}); memory not checked"
            return {**MEMORY_UNKNOWN, "note": note}
        size, vram = int(mine.get("size") or 0), int(mine.get("size_vram") or 0)
        where = "all in VRAM" if vram >= size else f"{vram / GIB:.1f} of {size / GIB:.1f} GiB in VRAM, the rest on CPU"
        note = f"Ollama: {self.model} loaded, {where}; Ollama reports no free memory or queue: memory not checked"
        reading: Reading = {**MEMORY_UNKNOWN, "note": note}
        window = mine.get("context_length")
        if isinstance(window, int) and window > 0:
            reading["max_seq_len"] = window
        return reading

    def _is_mine(self, model: dict[str, Any]) -> bool:
        """`llama3` is `llama3:latest` to Ollama."""
        wanted = {self.model, f"{self.model}:latest"} if ":" not in self.model else {self.model}
        return model.get("name") in wanted or model.get("model") in wanted
