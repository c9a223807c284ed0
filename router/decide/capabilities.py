"""What a request needs a tier to honour (tools, response_format, ...), and whether a chain of tiers can."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from msgspec import UNSET, Raw, UnsetType

from router.core.config import Capability, TierConfig
from router.wire.protocol import ChatCompletionRequest

Needs = dict[Capability, str]
"""Each capability a request needs, with the first request parameter that needs it (what a 400 names)."""


def needed_capabilities(request: ChatCompletionRequest) -> Needs:
    """The capabilities the request's parameters need; parameters at their no-op value need nothing.

    A no-op value is one any model honours by ignoring it: `tool_choice` "auto"/"none", `response_format`
    "text", `logprobs: false`, `top_logprobs: 0`, a penalty of 0, an empty `logit_bias`, `n: 1`. Tool
    calls in the message history are not counted (they come with `tools` in practice).
    """
    needs: Needs = {}

    def need(capability: Capability, param: str) -> None:
        needs.setdefault(capability, param)

    if request.has_tools():
        need("tools", "tools")
    choice = _decoded(request.tool_choice)
    if choice == "required" or isinstance(choice, dict):
        need("tools", "tool_choice")
    response_format = _decoded(request.response_format)
    plain_text = isinstance(response_format, dict) and response_format.get("type") == "text"
    if response_format is not None and not plain_text:
        need("response_format", "response_format")
    if request.logprobs is True:
        need("logprobs", "logprobs")
    if isinstance(request.top_logprobs, int) and request.top_logprobs > 0:
        need("logprobs", "top_logprobs")
    penalties = (("presence_penalty", request.presence_penalty), ("frequency_penalty", request.frequency_penalty))
    for param, value in penalties:
        if isinstance(value, float | int) and value != 0:
            need("penalties", param)
    if _decoded(request.logit_bias) not in (None, {}):
        need("logit_bias", "logit_bias")
    if isinstance(request.n, int) and request.n > 1:
        need("n", "n")
    return needs


def missing(tier: TierConfig, needs: Mapping[Capability, str]) -> list[Capability]:
    """What the request needs that the tier does not honour, in the request's order."""
    capable = tier.capable()
    return [capability for capability in needs if capability not in capable]


@dataclass(frozen=True, slots=True)
class CapabilityGap:
    """No tier of a chain honours everything a request needs: the parameter to name, and why."""

    param: str
    message: str


def chain_gap(
    chain: Sequence[str], tiers: Mapping[str, TierConfig], needs: Mapping[Capability, str]
) -> CapabilityGap | None:
    """None when some tier of the chain honours every need; else the gap, naming each tier and what it lacks."""
    if not needs:
        return None
    lacking = {name: missing(tiers[name], needs) for name in chain}
    if any(not lacks for lacks in lacking.values()):
        return None
    detail = "; ".join(f"tier '{name}' lacks {', '.join(lacks)}" for name, lacks in lacking.items())
    unmet = [c for c in needs if all(c in lacks for lacks in lacking.values())]
    if unmet:  # one capability no tier has: name its parameter
        param = needs[unmet[0]]
        return CapabilityGap(param, f"'{param}' is not supported by any tier this request may use ({detail})")
    params = ", ".join(f"'{p}'" for p in needs.values())  # each is somewhere, never all on one tier
    return CapabilityGap(
        needs[lacking[chain[0]][0]], f"no tier this request may use supports {params} together ({detail})"
    )


def _decoded(value: Raw | UnsetType) -> Any:
    """A passed-through field's JSON value (None when absent, null or not JSON)."""
    if value is UNSET:
        return None
    try:
        return msgspec.json.decode(value)
    except msgspec.DecodeError:
        return None
