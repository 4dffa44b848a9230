"""The guide's rules (entitlements/prompts/advice.py) on the guide's own examples, on each rule's good and
bad cases, and on what hostile or foreign text looks like. Pure: no database."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entitlements.prompts import advice
from entitlements.prompts.advice import CODES, EXCERPT_CHARS_MAX, RULES, Advice, advise, count_words, quoted_parts
from entitlements.prompts.examples import DONT_EXAMPLES, EXAMPLE_PROMPTS, GOOD_FRAGMENTS

CONSTRAINTS = " No distortion. No jitter."
# A prompt the guide would sign: motion with degree words, one camera move, a short cued line, constraints.
GOOD_LONG = (
    "She slowly lifts her gaze from the book in her lap and looks toward the window, a faint smile forming as "
    "warm light shifts across her face. She tucks a loose strand of hair behind her ear, then closes the book "
    "gently and sets it aside. Her shoulders relax and she exhales softly, leaning back into the chair. A gentle "
    "breeze stirs the curtain beside her, the fabric rippling slowly. She turns to the camera and whispers "
    "warmly, 'I knew you would come.' Slow dolly push-in toward her face as she speaks. Natural, unhurried "
    "pacing. No distortion. No jitter. Face stable, no deformation."
)


def codes(found: Advice) -> list[str]:
    return [item.code for item in found.items]


def warnings(found: Advice) -> list[str]:
    return [item.code for item in found.items if item.severity == "warning"]


def item(found: Advice, code: str) -> advice.AdviceItem:
    (matching,) = [entry for entry in found.items if entry.code == code]
    return matching


def warned_at(prompt: str, code: str) -> str:
    """The excerpt of the warning `code` on `prompt` (with enough of a prompt around it): part of it."""
    found = advise(padded(prompt))
    assert code in warnings(found)
    excerpt = item(found, code).excerpt
    assert excerpt is not None
    assert excerpt in prompt
    return excerpt


def padded(prompt: str) -> str:
    """The prompt, then enough neutral words with degree and a constraint line that length is not at issue."""
    filler = " She breathes slowly and smiles softly." * 12
    return prompt + filler + CONSTRAINTS


# --- the guide's own examples ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", EXAMPLE_PROMPTS)
def test_the_guides_example_prompts_get_only_the_length_tip(name: str) -> None:
    found = advise(EXAMPLE_PROMPTS[name])
    assert codes(found) == ["prompt_too_short"], found
    assert found.words < advice.WORDS_MIN


@pytest.mark.parametrize("fragment", GOOD_FRAGMENTS)
def test_the_guides_good_fragments_get_no_warning(fragment: str) -> None:
    found = advise(fragment)
    assert warnings(found) == []
    assert "scene_description" not in codes(found)
    assert "dialogue_without_cue" not in codes(found)


@pytest.mark.parametrize(("prompt", "code"), DONT_EXAMPLES.items())
def test_each_dont_example_of_the_guide_gets_its_code(prompt: str, code: str) -> None:
    found = advise(prompt)
    assert code in codes(found)
    assert item(found, code).excerpt is not None


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("simple & effective", ["prompt_too_long"]),
        ("with camera movement", ["prompt_too_long"]),
        # Its "then", 27 times over, is 28 actions in one clip: rightly too many.
        ("complex sequential action", ["overloaded_clip", "prompt_too_long"]),
    ],
)
def test_the_guides_example_prompts_repeated_to_5000_characters(name: str, expected: list[str]) -> None:
    example = EXAMPLE_PROMPTS[name]
    long_prompt = " ".join([example] * (5_000 // (len(example) + 1)))
    assert 4_800 < len(long_prompt) <= 5_000
    assert codes(advise(long_prompt)) == expected


def test_a_long_prompt_written_to_the_guide_gets_no_advice() -> None:
    found = advise(GOOD_LONG, duration_s=6)
    assert advice.WORDS_MIN <= found.words <= advice.WORDS_MAX
    assert found.items == ()


def test_every_item_quotes_the_guides_rule_with_its_severity() -> None:
    found = advise(
        'Dolly in while panning left. Everything moving at once. She says "hi there", then cut to.', duration_s=12
    )
    assert {entry.code for entry in found.items} >= {"several_camera_movements", "vague_motion", "clip_too_long"}
    for entry in found.items:
        severity, rule = RULES[entry.code]
        assert entry.severity == severity
        assert entry.message.endswith(f"The guide: “{rule}”")


# --- length -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("words", "expected"),
    [(1, "prompt_too_short"), (49, "prompt_too_short"), (50, None), (200, None), (201, "prompt_too_long")],
)
def test_length_is_a_tip_outside_50_to_200_words(words: int, expected: str | None) -> None:
    found = advise(" ".join(["smiles"] * words))
    assert found.words == words
    length = [code for code in codes(found) if code.startswith("prompt_too")]
    assert length == ([expected] if expected else [])
    if expected:
        assert item(found, expected).severity == "tip"
        assert f"{words} words" in item(found, expected).message


@pytest.mark.parametrize("prompt", ["", " ", "\n\t  \n", "...", " — , ; ", "- -- ' '"])
def test_a_prompt_without_words_gets_the_length_tip_alone(prompt: str) -> None:
    found = advise(prompt)
    assert found.words == 0
    assert codes(found) == ["prompt_too_short"]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("Slow dolly push-in", 3),
        ("don't stop — she's here", 4),
        ("one,two.three", 3),
        ("“Hey,” she says.", 3),
        ("«Je t'aime»", 2),
        ("5–10 words", 3),
        ("彼女は微笑む", 3),  # six characters of a script without spaces: one word per two
        ("彼女は微笑む and waves", 5),
        ("Ünïcödé wörds", 2),
    ],
)
def test_words_are_counted_as_the_guide_counts_them(text: str, words: int) -> None:
    assert count_words(text) == words
    assert advise(text).words == words


# --- one camera movement per shot -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt",
    [
        "Dolly in while panning left and tilting up",
        "The camera pans left, then zooms in on her face.",
        "Slow pan and tilt across the room.",
        "Tracking shot beside her, then the camera cranes up over the crowd.",
        "Slow zoom in while the camera orbits around her.",
        "Whip pan to the door. The camera rises above the street.",
        "We follow her down the hall as the camera tilts down to her feet.",
    ],
)
def test_several_camera_movements_in_one_shot_are_a_warning(prompt: str) -> None:
    warned_at(prompt, "several_camera_movements")


@pytest.mark.parametrize(
    "prompt",
    [
        "Slow dolly push-in",
        "Slow dolly push-in. The dolly-zoom holds on her eyes.",
        "Smooth pan to the right",
        "Camera holds still",
        "Camera holds still, no pan, no zoom, no tilt.",
        "The camera does not pan or tilt; it stays fixed while she turns.",
        "Static camera, without any zooming in or panning left. She tilts her head up slowly.",
        "She tilts her head up, pulls out her phone and cranes her neck. Smooth pan to the right.",
        "She pushes in the chair, pulls back her hair, and her gaze pans across the room. Slow dolly push-in.",
        "She slides the frying pan to the right. Camera holds still.",
        "Slow tracking shot beside her as the camera tracks left with her.",
        "Camera slowly pushes in. She holds her pose.",
        "Shot 1: slow pan to the left. Shot 2: slow tilt up to the sky.",
    ],
)
def test_one_camera_movement_or_none_is_no_camera_warning(prompt: str) -> None:
    assert "several_camera_movements" not in codes(advise(padded(prompt)))


def test_the_camera_warning_names_each_movement_as_written() -> None:
    found = item(advise("Dolly in while panning left and tilting up"), "several_camera_movements")
    assert found.excerpt == "Dolly in while panning left and tilting up"
    assert found.message.startswith("3 camera movements in one shot (“Dolly”, “panning left”, “tilting up”).")


# --- dialogue ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("'I really cannot believe you came all the way here tonight'", 11),
        ('"I really cannot believe you came all the way here tonight"', 11),
        ("“I really cannot believe you came all the way here tonight”", 11),
        ("„Ich habe dich so sehr vermisst, komm bitte endlich nach Hause“", 11),
        ("«Je t'aime tellement, tu m'as tellement manqué pendant ce long hiver»", 11),
        ("»Jeg har savnet dig så meget, kom nu hjem til mig igen i aften«", 14),
        ("”Jag har saknat dig så mycket, kom hem till mig nu i kväll”", 13),
        ("「会いたかった、ずっとずっと待っていたのよ、本当に長い間ずっと」", 15),
        ("“He told me ‘run, run, run’, so I ran all the way home”", 13),
        ('"He told me "run" and so I ran all the way home tonight"', 4),
    ],
)
def test_a_quoted_line_over_10_words_is_a_warning_whatever_its_quotation_marks(line: str, words: int) -> None:
    found = advise(padded(f"She whispers softly {line}"))
    if words > advice.LINE_WORDS_MAX:
        assert "dialogue_too_long" in warnings(found)
        entry = item(found, "dialogue_too_long")
        assert entry.excerpt == line
        assert f"has {words} words" in entry.message
    else:
        # Straight quotes cannot nest: the line is read as the first pair, which is short.
        assert "dialogue_too_long" not in codes(found)


def test_quotes_inside_quotes_are_one_line() -> None:
    prompt = "She laughs softly “He said ‘don’t go’ and I didn’t”"
    (line,) = quoted_parts(prompt)
    assert prompt[line.start : line.end] == "“He said ‘don’t go’ and I didn’t”"
    assert line.words == 7
    assert "dialogue_too_long" not in codes(advise(prompt))


@pytest.mark.parametrize(
    "prompt",
    [
        "She whispers 'I really cannot believe you came all this way",  # never closed
        "It's the girls' hair, and she can't stop; they're all smiling at Mr. O'Neil's dog's bone",
        "She says « Bonjour",
        "“”",
    ],
)
def test_unclosed_quotes_and_apostrophes_quote_nothing(prompt: str) -> None:
    found = advise(padded(prompt))
    assert "dialogue_too_long" not in codes(found)
    assert "dialogue_without_cue" not in codes(found)


def test_ten_words_is_not_too_long_and_one_line_counts_each_word() -> None:
    ten = "She whispers softly 'I cannot believe you came all this way tonight'"
    assert "dialogue_too_long" not in codes(advise(ten))
    several = advise(padded("She whispers '" + "word " * 10 + "word' and then sighs '" + "more " * 11 + "more'"))
    assert "2 lines are over 10 words" in item(several, "dialogue_too_long").message


@pytest.mark.parametrize(
    "prompt",
    [
        "She says 'Hello there, how are you'",
        'He asks "Are you coming with me"',
        '"Hello there, my friend," she says.',
        'She turns to him. "We should go home now."',
    ],
)
def test_dialogue_without_an_emotion_or_delivery_before_it_is_a_tip(prompt: str) -> None:
    found = advise(padded(prompt))
    assert "dialogue_without_cue" in codes(found)
    assert item(found, "dialogue_without_cue").severity == "tip"
    assert warnings(found) == []


@pytest.mark.parametrize(
    "prompt",
    [
        "She softly whispers 'Hey, I missed you'",
        "She says nervously 'Are you sure about this'",
        "With a warm smile, she says 'Welcome home'",
        "He laughs 'You did not just do that'",
        "In a hushed voice she says 'Over here'",
        "She smiles warmly. 'I knew you would come.'",
        'A sign that reads "OPEN ALL NIGHT EVERY DAY OF THE WEEK AND ALL YEAR ROUND FOR YOU"',
        'The word "love" glows in neon above her.',
        "Elle dit «Bonjour mon ami, comment vas-tu»",
        "彼女は「会いたかった」と囁く",
    ],
)
def test_cued_dialogue_text_on_screen_and_other_languages_get_no_cue_tip(prompt: str) -> None:
    found = advise(padded(prompt))
    assert "dialogue_without_cue" not in codes(found)
    assert "dialogue_too_long" not in codes(found)


def test_without_sound_the_dialogue_rules_stay_silent() -> None:
    prompt = padded("She says 'I really cannot believe that you came all the way here tonight'")
    assert {"dialogue_too_long", "dialogue_without_cue"} <= set(codes(advise(prompt)))
    assert {"dialogue_too_long", "dialogue_without_cue"}.isdisjoint(codes(advise(prompt, audio=False)))
    assert {"dialogue_too_long", "dialogue_without_cue"} <= set(codes(advise(prompt, audio=True)))


# --- specific motion ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "excerpt"),
    [
        ("Moves", "Moves"),
        ("she moves", "she moves"),
        ("Everything moving at once", "Everything moving at once"),
        ("The camera holds still. She moves.", "She moves"),
        ("She does something cute for the camera.", "She does something cute for the camera"),
        ("Then something happens.", "Then something happens"),
        ("Add some movement to the scene", "Add some movement to the scene"),
    ],
)
def test_vague_motion_is_a_warning(prompt: str, excerpt: str) -> None:
    found = advise(prompt)
    assert "vague_motion" in warnings(found)
    assert item(found, "vague_motion").excerpt == excerpt


@pytest.mark.parametrize(
    "prompt",
    [
        "Camera slowly pushes in. She holds her pose, only her hair moves in the wind.",
        "She moves slowly toward the door.",
        "She moves toward the window",
        "She moves her hand to her cheek",
        "Gentle breeze lifts her hair, subtle movement",
        "She brushes hair behind her ear, smooth and natural motion.",
        "No movement at all; she doesn't move.",
        "The camera moves in on her face.",
        "Everything moving gently at once",
    ],
)
def test_specific_or_negated_motion_is_not_vague(prompt: str) -> None:
    assert "vague_motion" not in codes(advise(prompt))


# --- one clear moment per clip ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt",
    [
        "She walks in. Cut to the kitchen where she pours coffee.",
        "She falls asleep. The next morning she wakes by the window.",
        "A boy plays in the yard. Years later, he returns as a man.",
        "She waits at the station. Meanwhile, he runs through the rain.",
        "Shot 1: she opens the door. Shot 2: she steps outside.",
        "A flashback to her childhood home.",
    ],
)
def test_several_scenes_in_one_clip_are_a_warning(prompt: str) -> None:
    warned_at(prompt, "overloaded_clip")


def test_more_steps_than_the_clip_holds_are_a_warning() -> None:
    steps = "She wakes, then stretches, then walks to the window, then opens it"  # four actions
    assert "overloaded_clip" in warnings(advise(padded(steps), duration_s=4))
    assert "overloaded_clip" not in codes(advise(padded(steps), duration_s=8))
    assert "overloaded_clip" not in codes(advise(padded(steps)))  # an unknown clip is read as 8 s
    seven = steps + ", then smiles, after that she sighs, and finally she leaves"
    assert "overloaded_clip" not in codes(advise(padded(seven), duration_s=15))  # 15 s hold seven
    assert "overloaded_clip" in warnings(advise(padded(seven + ", then waves"), duration_s=15))


@pytest.mark.parametrize(
    "prompt",
    [
        EXAMPLE_PROMPTS["complex sequential action"],
        GOOD_FRAGMENTS[10],
        GOOD_FRAGMENTS[11],
        "She takes another shot of espresso, then smiles. The next thing she does is laugh.",
        "She cuts the cake slowly. Later she smiles.",
    ],
)
def test_sequential_actions_the_guide_allows_are_no_warning(prompt: str) -> None:
    assert "overloaded_clip" not in codes(advise(prompt, duration_s=4))


# --- constraints, the scene, the clip -------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "No distortion.",
        "No jitter, face stable.",
        "without any flickering",
        "Face stable",
        "stable face, natural light",
        "no camera shake",
        "No face distortion or warping",
        "Avoid artifacts and extra fingers",
    ],
)
def test_a_quality_constraint_anywhere_is_enough(line: str) -> None:
    assert "no_quality_constraints" not in codes(advise(f"She turns slowly. {line}"))


@pytest.mark.parametrize("prompt", ["She turns slowly.", "No rush: she smiles.", "Distortion everywhere, jitter."])
def test_no_quality_constraint_line_is_a_tip(prompt: str) -> None:
    found = advise(prompt)
    assert item(found, "no_quality_constraints").severity == "tip"


@pytest.mark.parametrize(
    "prompt",
    [
        "A woman standing on a beach in a red dress at sunset",
        "A beautiful young woman with blonde hair wearing a red dress on the beach at sunset, she smiles",
    ],
)
def test_describing_the_image_is_a_tip(prompt: str) -> None:
    found = advise(prompt)
    assert item(found, "scene_description").severity == "tip"
    assert item(found, "scene_description").excerpt == prompt


def test_motion_in_a_described_setting_is_not_scene_description() -> None:
    prompt = "She walks along the beach at sunset, slowly turning to smile as her dress sways in the breeze."
    assert "scene_description" not in codes(advise(prompt))


@pytest.mark.parametrize(("duration_s", "tip"), [(None, False), (4, False), (8, False), (9, True), (15, True)])
def test_a_clip_over_8_seconds_is_a_tip_for_two_shorter_ones(duration_s: int | None, tip: bool) -> None:
    found = advise(GOOD_LONG, duration_s=duration_s)
    assert ("clip_too_long" in codes(found)) is tip
    if tip:
        assert item(found, "clip_too_long").severity == "tip"
        assert f"{duration_s} s" in item(found, "clip_too_long").message


# --- the contract of advise -----------------------------------------------------------------------------


def test_the_codes_are_warnings_then_tips() -> None:
    severities = [RULES[code][0] for code in CODES]
    assert severities == sorted(severities, key=lambda severity: severity != "warning")
    assert set(CODES) == set(advice.Code.__args__)  # type: ignore[attr-defined]


def test_excerpts_are_bounded_and_exact() -> None:
    line = "'" + " ".join(["word"] * 300) + "'"
    entry = item(advise("She says " + line), "dialogue_too_long")
    assert entry.excerpt is not None
    assert len(entry.excerpt) == EXCERPT_CHARS_MAX
    assert line.startswith(entry.excerpt)


def test_a_capital_dotted_i_keeps_excerpts_in_place() -> None:
    # "İ".lower() is two characters: positions found in the lowercase text must still be the prompt's.
    prompt = "İİİİ İstanbul. Dolly in while panning left and tilting up"
    assert item(advise(prompt), "several_camera_movements").excerpt == "Dolly in while panning left and tilting up"


ANY_TEXT = st.text(alphabet=st.characters(codec=None), max_size=400)
PROMPTISH = st.lists(
    st.sampled_from(
        [
            "she",
            "moves",
            "camera",
            "pans",
            "left",
            "tilts",
            "up",
            "dolly",
            "push-in",
            "no",
            "zoom",
            "then",
            "cut",
            "to",
            "'",
            '"',
            "“",
            "”",
            "«",
            "»",
            "„",
            "「",
            "」",
            "says",
            "softly",
            ",",
            ".",
            "!",
            "—",
            "shot",
            "1",
            "2",
            "beach",
            "sunset",
            "standing",
            "distortion",
            "İ",
            "彼女",
            "\n",
            "does",
            "something",
        ]
    ),
    max_size=120,
).map(" ".join)


def check_contract(prompt: str, found: Advice) -> None:
    assert found.words >= 0
    seen = [entry.code for entry in found.items]
    assert len(seen) == len(set(seen))
    assert seen == sorted(seen, key=CODES.index)
    for entry in found.items:
        assert entry.severity == RULES[entry.code][0]
        assert entry.excerpt is None or (0 < len(entry.excerpt) <= EXCERPT_CHARS_MAX and entry.excerpt in prompt)


@settings(max_examples=300, deadline=None)
@given(
    prompt=ANY_TEXT | PROMPTISH, duration_s=st.none() | st.integers(-(2**70), 2**70), audio=st.none() | st.booleans()
)
def test_advise_never_raises_and_keeps_its_contract_on_any_string(
    prompt: str, duration_s: int | None, audio: bool | None
) -> None:
    found = advise(prompt, duration_s=duration_s, audio=audio)
    check_contract(prompt, found)
    assert advise(prompt, duration_s=duration_s, audio=audio) == found


@settings(max_examples=100, deadline=None)
@given(prompt=PROMPTISH)
def test_a_constraint_line_at_the_end_removes_only_the_constraint_tip(prompt: str) -> None:
    before = set(codes(advise(prompt)))
    after = set(codes(advise(prompt + " No distortion.")))
    assert "no_quality_constraints" not in after
    assert after - before <= {"prompt_too_long"} | ({"prompt_too_short"} if not before else set())


@settings(max_examples=25, deadline=None)
@given(
    prompt=st.text(alphabet=st.characters(codec=None), min_size=4_500, max_size=5_000)
    | PROMPTISH.map(lambda text: (text + " ") * 40)
)
def test_5000_character_prompts_of_any_kind(prompt: str) -> None:
    check_contract(prompt, advise(prompt[:5_000]))


@pytest.mark.parametrize(
    "prompt",
    [
        "'" * 5_000,
        "'a " * 1_666,
        "« " * 2_500,
        '"' * 4_999,
        "“‘" * 2_500,
        "no " * 1_666,
        "then " * 1_000,
        "camera pans left and " * 250,
        "moves " * 833,
        "\n" * 5_000,
        "İ" * 5_000,
        "会" * 5_000,
    ],
)
def test_pathological_5000_character_prompts(prompt: str) -> None:
    check_contract(prompt, advise(prompt[:5_000]))
