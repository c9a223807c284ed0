"""Calibrate the classifier threshold to a target share of small-tier traffic (`tiered-router calibrate`).

As RouteLLM calibrates its routers: score a sample of real prompts, then pick the threshold below
which the wanted share of them falls. The result is written to a small YAML file that
`classifier.calibration` points at, so the hand-written router.yaml is never rewritten.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
from pathlib import Path

import msgspec
import yaml

from router.core.config import Calibration, Config, load_config
from router.decide.classify.registry import build_classifier
from router.decide.conversation import Conversation
from router.wire.protocol import ChatCompletionRequest, ChatMessage


class _PromptLine(msgspec.Struct):
    messages: list[ChatMessage] | None = None
    prompt: str | None = None


def read_prompts(path: Path) -> list[ChatCompletionRequest]:
    """JSONL lines with `messages` or `prompt`, or plain text with one prompt per line."""
    requests = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                item = msgspec.json.decode(line, type=_PromptLine)
            except msgspec.MsgspecError as exc:
                raise ValueError(f"{path}:{n}: {exc}") from exc
            messages = item.messages or ([ChatMessage("user", item.prompt)] if item.prompt else None)
            if not messages:
                raise ValueError(f"{path}:{n}: a JSON line needs 'messages' or 'prompt'")
        else:
            messages = [ChatMessage("user", line)]
        requests.append(ChatCompletionRequest(messages=messages))
    if not requests:
        raise ValueError(f"{path}: no prompts")
    return requests


def threshold_for_share(scores: list[float], small_share: float) -> tuple[float, float]:
    """The threshold t such that about `small_share` of `scores` are < t, and the share actually achieved.

    Ties make some shares unreachable; the achieved share is the closest one at or below the target,
    and the threshold sits halfway between the two scores that straddle it.
    """
    if not 0.0 <= small_share <= 1.0:
        raise ValueError("small_share must be within [0, 1]")
    ordered = sorted(scores)
    count = len(ordered)
    k = math.floor(small_share * count + 1e-9)
    while 0 < k < count and ordered[k - 1] == ordered[k]:
        k -= 1
    if k == 0:
        threshold = max(0.0, ordered[0] - 1e-6) if ordered[0] > 0 else 0.0
    elif k == count:
        threshold = min(1.0, ordered[-1] + 1e-6)
    else:
        threshold = (ordered[k - 1] + ordered[k]) / 2
    achieved = sum(1 for s in ordered if s < threshold) / count
    return round(threshold, 6), achieved


async def score_all(config: Config, requests: list[ChatCompletionRequest]) -> list[float]:
    classifier = build_classifier(config)
    await classifier.start()
    try:
        return [classifier.score(Conversation.from_request(r, config.classifier.max_chars)).score for r in requests]
    finally:
        await classifier.close()


def run_calibration(args: argparse.Namespace) -> int:
    config = load_config(args.config, calibrated=False)
    requests = read_prompts(args.prompts)
    scores = asyncio.run(score_all(config, requests))
    threshold, achieved = threshold_for_share(scores, args.small_share)
    calibration = Calibration(config.classifier.kind, threshold, args.small_share, len(scores), round(achieved, 4))
    output: Path = args.output or Path(args.config).parent / "calibration.yaml"
    output.write_text(
        "# written by `tiered-router calibrate`; point classifier.calibration at this file\n"
        + yaml.safe_dump(msgspec.to_builtins(calibration), sort_keys=False),
        encoding="utf-8",
    )
    print(
        f"{config.classifier.kind}: threshold {threshold} sends {achieved:.1%} of {len(scores)} prompts "
        f"to the small tier (target {args.small_share:.1%}); wrote {output}\n"
        f"to use it, set in {args.config}:\n  classifier:\n"
        f"    calibration: {os.path.relpath(output.resolve(), Path(args.config).resolve().parent)}"
    )
    return 0
