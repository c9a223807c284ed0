"""Adapter name -> class, as `tiers.<name>.telemetry` names them (`none`: no adapter, the tier is never checked)."""

from __future__ import annotations

from router.core.config import TierConfig
from router.dispatch.telemetry.base import TelemetryAdapter
from router.dispatch.telemetry.ollama import OllamaAdapter
from router.dispatch.telemetry.ours import OursAdapter
from router.dispatch.telemetry.tgi import TgiAdapter
from router.dispatch.telemetry.vllm import VllmAdapter

ADAPTERS: dict[str, type[TelemetryAdapter]] = {
    cls.name: cls for cls in (OursAdapter, VllmAdapter, TgiAdapter, OllamaAdapter)
}


def adapter_for(tier: TierConfig) -> TelemetryAdapter | None:
    """The adapter reading `tier`'s engine, or None when its telemetry is `none`."""
    source = tier.telemetry_source()
    return None if source == "none" else ADAPTERS[source](tier.base_url, tier.model)
