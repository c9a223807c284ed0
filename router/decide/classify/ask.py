"""The last user message split into its ask and any pasted material, and features of what the ask demands.

A long message is not a hard one when most of it is material the user pasted (notes, an email, a log, code, a
story) under a trivial ask ("what port is redis on?", "fix the typo in line one"); and a short message can be hard
("Is 2^61-1 prime? Justify."). So the split is structural, not lexical: fenced code, structured blocks (tables,
logs, configs, quoted lines) and long paragraphs are material; the short paragraphs around them, and the questions
and closing sentence of long prose, are the ask. The features then read the ask alone: how long it is, how much
material it works on, and cues for the size of the answer it wants (a lookup, a light edit, a brief answer, or a
claim to justify, a puzzle, a comparison of large quantities).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

ASK_FEATURE_NAMES: tuple[str, ...] = (
    "material",
    "ask_length",
    "ask_lookup",
    "ask_light_edit",
    "ask_brief",
    "ask_heavy",
    "terse_hard",
    "big_quantities",
    "light_ask_on_material",
    "heavy_ask_on_material",
)
WHOLE = 400
"""Messages shorter than this (characters) are all ask: too short to hold pasted material worth separating."""
LONG_BLOCK = 280
"""A paragraph longer than this is material (a pasted passage), apart from its questions and closing sentence."""
SHORT_LINE = 90
"""A block of three or more lines averaging fewer characters than this is lines, not prose: a poem, a log, a table."""
TERSE = 240
"""An ask up to this long with a hard cue is a terse hard prompt: nothing but the cue says it is hard."""

# The cue patterns below are lower case and read the lowered ask.
_FENCE = re.compile(r"```.*?(?:```|\Z)", re.DOTALL)
_BLANK = re.compile(r"\n[ \t]*\n+")
_SENTENCE = re.compile(r"(?<=[.!?。？！])\s+")
_STRUCTURED_LINE = re.compile(r"^\s*(?:[|>#]|\s{2,}\S|[-*•]\s|\d+[.)]\s|\w[\w .-]{0,30}:\s)|[|{};=<>]\s*$|\t")
_LOOKUP = re.compile(
    r"\b(?:what(?:'s| is| are| was| were)?|which|who|when|where|how (?:many|much|long|old)|is (?:there|it|this)"
    r"|does (?:it|this)|did|name (?:of|the)|find the|count|spot|identify|recogni[sz]e)\b",
)
_LIGHT_EDIT = re.compile(
    r"\b(?:typos?|spelling|grammar|proofread|punctuation|capitali[sz]\w*|translate|bullet\w*|table|tid(?:y|ier)"
    r"|format\w*|title|subject line|rename|sort|alphabeti[sz]\w*|uppercase|lowercase|word count|paragraphs?"
    r"|same content|just (?:the|tidier|clean)|one word|line (?:one|two|\d+))\b",
)
_BRIEF = re.compile(
    r"\b(?:short (?:answer|version)|briefly|brief|quick(?:ly)?|in (?:one|a single|two|1|2|a few) (?:sentences?|lines?"
    r"|words?)|one or two sentences|one-liner|one liner|keep it (?:short|brief|simple)|tl;?dr|just (?:the|tell me)"
    r"|yes or no|eli5|like i'?m (?:five|5)|\d+[- ]years?[- ]old|max(?:imum)?\b|no explanation|simple terms)\b",
)
_HEAVY = re.compile(
    r"\b(?:refactor|review|rewrite|improve|critique|analy[sz]e|evaluate|debug|fix (?:the|this) (?:bug|code|error)"
    r"|why|explain (?:why|how)|optimi[sz]e|redesign|restructure|compare|assess|feedback|what'?s wrong"
    r"|root cause|implement|extend|convert (?:this|it) (?:to|into) \w+ (?:code|class)|port (?:this|it))\b",
)
_HARD = re.compile(
    r"\b(?:prove|proof|justify|show that|argue|disprove|derive|is \S+ (?:prime|irrational|rational|divisible)"
    r"|which is (?:larger|bigger|greater|smaller)|larger|greater|how many ways|expected (?:number|value)"
    r"|probability|paradox|puzzle|riddle|closed form|infinitely many|induction|invariant|counterexample"
    r"|trailing zeros|tile|tiling|arrangements?|permutations?|combinations?|optimal strategy|resolve|why)\b"
    r"|\b\d+\s*(?:\^|\*\*)\s*\d+|\d+!|[√∑∫]",
)
_BIG = re.compile(r"\b\d+\s*(?:\^|\*\*)\s*\d+|\b\d+!|\b\d{5,}\b|\b10\^\d+|\be\^|googol|\bmod(?:ulo)?\s*\d+")


@dataclass(frozen=True, slots=True)
class Ask:
    instruction: str
    """What the user asks for: the whole message when it is short or has no material."""
    material_chars: int
    """How much pasted material the ask works on (0 for none)."""


def _blocks(message: str) -> list[tuple[str, bool]]:
    """Paragraphs in order, each with whether it is a fenced code block (kept whole, blank lines and all)."""
    blocks: list[tuple[str, bool]] = []
    at = 0
    for fence in _FENCE.finditer(message):
        blocks.extend((part, False) for part in _BLANK.split(message[at : fence.start()]) if part.strip())
        blocks.append((fence.group(), True))
        at = fence.end()
    blocks.extend((part, False) for part in _BLANK.split(message[at:]) if part.strip())
    return blocks


def _structured(block: str) -> bool:
    """Tables, logs, configs, code without fences, lists of fields, quoted lines: lines, not sentences."""
    lines = [line for line in block.splitlines() if line.strip()]
    if len(lines) < 3:
        return False
    marked = sum(1 for line in lines if _STRUCTURED_LINE.search(line))
    return marked >= len(lines) / 2 or sum(map(len, lines)) / len(lines) < SHORT_LINE


def _framing(block: str, first: bool, last: bool) -> list[str]:
    """The lines of a material block that still read as the ask: an opening line that asks or introduces
    ("what port is redis on?", "Here is the log:"), a closing question."""
    lines = [line.strip() for line in block.splitlines() if line.strip()]
    framing = []
    if first and not block.startswith("```") and len(lines[0]) <= LONG_BLOCK and lines[0].endswith(("?", ":")):
        framing.append(lines[0])
    if last and len(lines) > 1 and len(lines[-1]) <= LONG_BLOCK and lines[-1].endswith("?"):
        framing.append(lines[-1])
    return framing


def split(message: str) -> Ask:
    """The ask and how much material it is asked about (see the module docstring for the rule)."""
    text = message.strip()
    if len(text) < WHOLE:
        return Ask(text, 0)
    blocks = _blocks(text)
    asks: list[str] = []
    for n, (block, fenced) in enumerate(blocks):
        if fenced or _structured(block):
            asks.extend(_framing(block, n == 0, n == len(blocks) - 1))
            continue
        if len(block) <= LONG_BLOCK:
            asks.append(block.strip())
            continue
        sentences = _SENTENCE.split(block.strip())
        closing = n == len(blocks) - 1
        asks.extend(s for i, s in enumerate(sentences) if "?" in s or (closing and i == len(sentences) - 1))
    if not asks:
        asks = [text.splitlines()[0][:LONG_BLOCK]]
    instruction = "\n".join(asks)
    return Ask(instruction, max(0, len(text) - len(instruction)))


def _sat(count: float, scale: float) -> float:
    return 1.0 - math.exp(-count / scale)


def ask_features(ask: Ask) -> tuple[float, ...]:
    """`ASK_FEATURE_NAMES`, each in [0, 1]."""
    # Lowered once, so the cue patterns run case-sensitively: a third of the time of `re.IGNORECASE`.
    instruction = ask.instruction.lower()
    terse = len(instruction) <= TERSE
    material = min(1.0, math.log1p(ask.material_chars / 64) / math.log1p(20_000 / 64))
    lookup = _sat(len(_LOOKUP.findall(instruction)), 1.5)
    light = _sat(len(_LIGHT_EDIT.findall(instruction)), 1.5)
    brief = _sat(len(_BRIEF.findall(instruction)), 1.0)
    heavy = _sat(len(_HEAVY.findall(instruction)), 1.5)
    return (
        material,
        min(1.0, math.log1p(len(instruction) / 16) / math.log1p(2000 / 16)),
        lookup,
        light,
        brief,
        heavy,
        _sat(len(_HARD.findall(instruction)), 1.0) if terse else 0.0,
        _sat(len(_BIG.findall(instruction)), 1.0),
        # What the ask does with the material, as products: a linear head cannot form "pasted material AND only a
        # lookup or light edit" from the two apart, and a lookup with no material is a different request.
        material * max(lookup, light, brief) * (1.0 - heavy),
        material * heavy,
    )
