"""The ask split: pasted material apart from the instruction, and the ask features that read the instruction."""

from __future__ import annotations

import pytest

from router.decide.classify.ask import ASK_FEATURE_NAMES, WHOLE, Ask, ask_features, split

LOG = "\n".join(
    f"2025-03-0{n} 10:0{n}:00,000 {'ERROR' if n == 4 else 'INFO '} [worker-{n}] step {n} of the nightly job"
    for n in range(1, 9)
)
PROSE = (
    "We spent the long weekend at my aunt's farm, which was lovely and muddy in equal parts. The kids fed the goats, "
    "my partner fixed half a fence, and I mostly read on the porch while the rain came and went all afternoon. On "
    "Sunday we drove back through the hills and stopped at a bakery that sells the best rye bread I have ever had."
)


def feature(ask: Ask, name: str) -> float:
    return ask_features(ask)[ASK_FEATURE_NAMES.index(name)]


def test_a_short_message_is_all_ask() -> None:
    assert split("  Is 2^61-1 prime? Justify.  ") == Ask("Is 2^61-1 prime? Justify.", 0)


def test_a_question_before_a_log_is_the_ask_and_the_log_is_material() -> None:
    ask = split(f"what time did the first ERROR happen in this log?\n\n{LOG}")
    assert ask.instruction == "what time did the first ERROR happen in this log?"
    assert ask.material_chars >= len(LOG)


def test_an_opening_line_without_a_blank_line_still_reads_as_the_ask() -> None:
    ask = split(f"which worker failed here?\n{LOG}")
    assert ask.instruction == "which worker failed here?"


def test_fenced_code_is_material_wherever_it_sits() -> None:
    code = "```python\n" + "\n\n".join(f"def f{n}(x):\n    return x * {n}" for n in range(30)) + "\n```"
    ask = split(f"{code}\n\nWhat language is this?")
    assert ask.instruction == "What language is this?"
    assert ask.material_chars > len(code) - 10


def test_long_prose_keeps_only_its_questions_and_closing_sentence() -> None:
    message = f"{PROSE} Then we were home. {PROSE} Anyway, quick one: how do you spell rye in German?"
    assert len(message) > WHOLE
    ask = split(message)
    assert ask.instruction == "Anyway, quick one: how do you spell rye in German?"
    assert ask.material_chars > 2 * len(PROSE)


def test_material_is_measured_and_a_trivial_ask_on_it_reads_as_a_lookup() -> None:
    ask = split(f"How many paragraphs is this?\n\n{PROSE}\n\n{PROSE}")
    assert feature(ask, "material") > 0.3
    assert feature(ask, "ask_lookup") > 0.3
    assert feature(ask, "ask_light_edit") > 0.3
    assert feature(ask, "ask_heavy") == 0.0


@pytest.mark.parametrize(
    "text",
    ["Is 2^61-1 prime? Justify.", "Which is larger, 99^100 or 100^99?", "Prove there are infinitely many primes."],
)
def test_terse_claims_to_justify_and_large_comparisons_read_as_hard(text: str) -> None:
    assert feature(split(text), "terse_hard") > 0.5


def test_a_hard_cue_in_a_long_ask_is_not_terse() -> None:
    assert feature(split("Prove it. " + "Please keep every step very explicit for me. " * 8), "terse_hard") == 0.0


def test_large_quantities_and_brevity_requests_are_seen() -> None:
    assert feature(split("Which is larger, 99^100 or 100^99?"), "big_quantities") > 0.5
    assert feature(split("What is a salt in hashing? one or two sentences max"), "ask_brief") > 0.5
    assert feature(split("Design a multi-region ledger."), "ask_brief") == 0.0


def test_every_feature_is_in_the_unit_interval() -> None:
    huge = split("x" * 50_000 + "\n\nwhy? " * 300)
    for ask in (huge, split(""), split(LOG)):
        assert all(0.0 <= value <= 1.0 for value in ask_features(ask))
