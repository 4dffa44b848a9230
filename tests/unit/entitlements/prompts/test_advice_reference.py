"""The fast rules (entitlements/prompts/advice.py) give exactly the answers of the rules they replaced
(tests/support/advice_reference.py): the same word count and the same items, messages and excerpts, on the
guide's examples, the benchmark's prompts and anything Hypothesis writes from the rules' own vocabulary."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.advice.run import PROMPT_SETS
from entitlements.prompts import advice
from entitlements.prompts.examples import DONT_EXAMPLES, EXAMPLE_PROMPTS, GOOD_FRAGMENTS
from tests.support import advice_reference as reference

Answer = tuple[int, list[tuple[str, str, str, str | None]]]


def fast(prompt: str, duration_s: int | None = None, audio: bool | None = None) -> Answer:
    found = advice.advise(prompt, duration_s=duration_s, audio=audio)
    return found.words, [(item.code, item.severity, item.message, item.excerpt) for item in found.items]


def old(prompt: str, duration_s: int | None = None, audio: bool | None = None) -> Answer:
    found = reference.advise(prompt, duration_s=duration_s, audio=audio)
    return found.words, [(item.code, item.severity, item.message, item.excerpt) for item in found.items]


# Every word some rule looks for, and every mark that separates, quotes or breaks a clause or a sentence.
VOCABULARY = sorted(
    reference.MOTION_WORDS
    | reference.SCENE_WORDS
    | reference.DEGREE_WORDS
    | reference.NEGATIONS
    | reference.VAGUE_SUBJECTS
    | reference.VAGUE_DETERMINERS
    | reference.SPECIFIC_FOLLOWERS
    | reference.CAMERA_SUBJECTS
    | reference.CONNECTIVES
    | reference.CAMERA_PACING
    | reference.TEXT_CUES
    | reference.SPEECH_WORDS
    | reference.CUE_WORDS
    | reference.NOT_MANNER_LY
    | reference._CAMERA_ANCHORS
    | reference._PAIR_ANCHORS
    | reference._SCENE_ANCHORS
    | reference._SEQUENCE_WORDS
    | reference._SEQUENCE_ANCHORS
    | reference._VAGUE_ANCHORS
    | reference._CONSTRAINT_ANCHORS
    | reference._NUMBERS
    | reference._TIME_UNITS
    | reference._LATER_UNITS
    | set(reference._DIRECTIONS.split("|"))
    | {"shots", "degree", "overhead", "beside", "behind", "around", "reveal", "happens", "changes", "by", "that"}
    | {"fingers", "limbs", "stays", "remains", "kept", "intact", "Camera", "THEN", "İ", "彼女", "ずっと", "x"}
)
MARKS = [*reference._SEPARATORS, *reference._CLOSERS, "-", "'", "\u2019", "\n", "\t", "\r", "\x1c", "\xa0", "\u3000"]
JOINERS = st.sampled_from([" ", " ", " ", "  ", ", ", ". ", "\n", "-", "'", " '", "' ", '"', " “", "” ", *MARKS])
PIECES = st.sampled_from(VOCABULARY) | st.sampled_from(MARKS) | st.text(max_size=6)
PROMPTS = st.lists(st.tuples(PIECES, JOINERS), max_size=150).map(lambda pairs: "".join(a + b for a, b in pairs))
DURATIONS = st.none() | st.integers(0, 20)
AUDIO = st.none() | st.booleans()


@settings(max_examples=3_000, deadline=None)
@given(prompt=PROMPTS, duration_s=DURATIONS, audio=AUDIO)
def test_the_same_answer_on_prompts_of_the_rules_own_words(
    prompt: str, duration_s: int | None, audio: bool | None
) -> None:
    assert fast(prompt, duration_s, audio) == old(prompt, duration_s, audio)


@settings(max_examples=500, deadline=None)
@given(prompt=st.text(alphabet=st.characters(codec=None), max_size=300), duration_s=DURATIONS, audio=AUDIO)
def test_the_same_answer_on_any_string(prompt: str, duration_s: int | None, audio: bool | None) -> None:
    assert fast(prompt, duration_s, audio) == old(prompt, duration_s, audio)


@settings(max_examples=50, deadline=None)
@given(prompt=PROMPTS.filter(bool).map(lambda text: (text * (5_000 // len(text) + 1))[:5_000]))
def test_the_same_answer_on_5000_character_prompts(prompt: str) -> None:
    assert fast(prompt, 4, True) == old(prompt, 4, True)


# Long prompts that are not one piece repeated: camera words (with the camera as subject, pacing words and
# the connectives of pairs), quotes of every kind (each opener and each closer, apostrophes inside words),
# cues, speech and on-screen-text words, negations and sequence words, near the 5,000-character limit.
LONG_VOCABULARY = sorted(
    reference._CAMERA_ANCHORS
    | reference._PAIR_ANCHORS
    | reference.CAMERA_SUBJECTS
    | reference.CAMERA_PACING
    | reference.CUE_WORDS
    | reference.SPEECH_WORDS
    | reference.TEXT_CUES
    | reference.NEGATIONS
    | reference._SEQUENCE_WORDS
    | reference._SCENE_ANCHORS
    | set(reference._DIRECTIONS.split("|"))
    | {"and", "or", "&", "/", "+", "then", "she", "he", "don't", "it's", "girls'", "no distortion", "İ"}
)
QUOTE_MARKS = sorted({*reference._CLOSERS, *"".join(reference._CLOSERS.values()), "'", "\u2019"})
LONG_PIECES = st.sampled_from(LONG_VOCABULARY) | st.sampled_from(QUOTE_MARKS)
LONG_JOINERS = st.sampled_from([" ", " ", " ", ", ", ". ", "\n", " '", "' ", ' "', '" ', " “", "” ", *QUOTE_MARKS])
LONG_PROMPTS = st.lists(st.tuples(LONG_PIECES, LONG_JOINERS), min_size=700, max_size=1_000).map(
    lambda pairs: "".join(a + b for a, b in pairs)[:5_000]
)


@settings(max_examples=60, deadline=None)
@given(prompt=LONG_PROMPTS, duration_s=DURATIONS, audio=AUDIO)
def test_the_same_answer_on_long_prompts_of_camera_words_and_quotes(
    prompt: str, duration_s: int | None, audio: bool | None
) -> None:
    assert fast(prompt, duration_s, audio) == old(prompt, duration_s, audio)


KNOWN = [
    *EXAMPLE_PROMPTS.values(),
    *GOOD_FRAGMENTS,
    *DONT_EXAMPLES,
    *(prompt for prompts in PROMPT_SETS.values() for prompt in prompts),
    "'" * 5_000,
    "'a " * 1_666,
    "« " * 2_500,
    "“‘" * 2_500,
    "İ" * 5_000,
    "",
    " \n\t",
]


@pytest.mark.parametrize("prompt", KNOWN)
@pytest.mark.parametrize("duration_s", [None, 4, 12])
def test_the_same_answer_on_the_guide_and_the_benchmark(prompt: str, duration_s: int | None) -> None:
    for audio in (None, True, False):
        assert fast(prompt, duration_s, audio) == old(prompt, duration_s, audio)
