"""Compiled rails: flows that are one LLM-free check and a refusal, run as a direct call instead of Colang.

NeMo Guardrails does the same for the library rails it knows (its IORails engine compiles a configured
flow into one action call). Its Colang 1.0 runtime costs ~10 ms of CPU per check whatever the rails do,
more than the checks themselves (microseconds for the patterns). A flow is compiled only when its body
is exactly this shape, so running it directly means the same thing as interpreting it:

    define subflow <name>
      $<var> = execute llm_free_checks(checks="<checks>", text=$user_message)   # or $bot_message
      if $<var>
        bot <message>
        stop

Any other flow (NeMo's `self check input`, your own) stays with `LLMRails.check_async`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Direction = Literal["input", "output"]
TEXT_PARAM: dict[str, Direction] = {"$user_message": "input", "$bot_message": "output"}


@dataclass(frozen=True, slots=True)
class CompiledRail:
    flow: str
    direction: Direction
    checks: tuple[str, ...]


def compile_flow(flow_id: str, elements: list[dict[str, Any]], action: str) -> CompiledRail | None:
    """The direct form of a flow of the shape above, or None when it is anything else."""
    elements = [e for e in elements if e.get("_type") != "meta"]  # `define subflow` adds a meta element
    if len(elements) != 4:
        return None
    call, branch, say, stop = elements
    params = call.get("action_params") or {}
    key = call.get("action_result_key")
    if (
        call.get("_type") != "run_action"
        or call.get("action_name") != action
        or set(params) != {"checks", "text"}
        or not isinstance(params["checks"], str)
        or params["text"] not in TEXT_PARAM
        or not key
        or branch.get("_type") != "if"
        or branch.get("expression") != f"${key}"
        or branch.get("_next_else") != 3
        or not _utters(say)
        or not _utters(stop, "stop")
    ):
        return None
    checks = tuple(c.strip() for c in params["checks"].split(",") if c.strip())
    return CompiledRail(flow_id, TEXT_PARAM[params["text"]], checks)


def _utters(element: dict[str, Any], value: str | None = None) -> bool:
    if element.get("_type") != "run_action" or element.get("action_name") != "utter":
        return False
    said = (element.get("action_params") or {}).get("value")
    return isinstance(said, str) and (value is None or said == value)
