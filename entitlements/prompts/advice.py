"""Prompt advice: the product's own prompting guide (its "Video Prompting Guide" and "Things to Avoid") as
pure rules over a prompt's text. No I/O, no state, standard library only.

`advise(prompt, duration_s=, audio=)` answers the prompt's word count and its advice: at most one item per
code, warnings first, each with the guide's rule quoted and, where one part of the prompt is at fault, that
part as an exact substring of the prompt (`excerpt`, at most EXCERPT_CHARS_MAX characters).

Advice is never a gate: nothing here refuses a prompt. The rules are conservative on purpose — a rule
that is unsure stays silent — so the guide's own example prompts get no warning (their only advice is the
length tip: they are shorter than the 50 words the guide asks for). The rules read English; text in other
languages is measured (words, quoted lines) but never judged by English vocabulary. `advise` never raises
on any `str`; its work grows about linearly with the prompt's length.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal, NamedTuple

Severity = Literal["warning", "tip"]
# Warnings first, then tips; RULES below has them in this order.
Code = Literal[
    "several_camera_movements",
    "dialogue_too_long",
    "vague_motion",
    "overloaded_clip",
    "prompt_too_short",
    "prompt_too_long",
    "dialogue_without_cue",
    "no_quality_constraints",
    "scene_description",
    "clip_too_long",
]

WORDS_MIN = 50
WORDS_MAX = 200
LINE_WORDS_MAX = 10
CLIP_S_MAX = 8
EXCERPT_CHARS_MAX = 200
# Sequential actions are fine ("The model follows temporal sequences well"); the guide's own example has
# two. A clip gets at least this many steps, and one more for every STEP_S seconds beyond.
STEPS_MIN = 3
STEP_S = 2
# An unknown duration is judged as the guide's upper "sweet spot" clip.
DURATION_S_ASSUMED = 8
# How far back a negation ("no", "without") or a cue before a quoted line is looked for.
NEGATION_WORDS_BACK = 3
CUE_WORDS_BACK = 12

# The guide's rules, in its own words (shared/seed/video-generation.md).
RULES: dict[Code, tuple[Severity, str]] = {
    "several_camera_movements": (
        "warning",
        "One camera movement per shot: the model handles camera movement well, but only when you give it one "
        "clear instruction. Combining multiple movements causes jitter.",
    ),
    "dialogue_too_long": (
        "warning",
        "Keep dialogue to 5–10 words per line for the cleanest lip sync. Lip sync degrades with long speech.",
    ),
    "vague_motion": (
        "warning",
        'Vague motion ("she moves"): unpredictable results. Be specific about what moves and how; use degree '
        "words to control how movements feel.",
    ),
    "overloaded_clip": (
        "warning",
        "Overloading a short clip: 4–15 seconds can't contain an entire story. One clear moment per generation.",
    ),
    "prompt_too_short": ("tip", "Aim for 50–200 words. This is the sweet spot for quality."),
    "prompt_too_long": ("tip", "Aim for 50–200 words. This is the sweet spot for quality."),
    "dialogue_without_cue": (
        "tip",
        'Label emotions before dialogue for much better results. "She whispers softly" produces noticeably '
        "better lip sync and tone than just writing the dialogue alone.",
    ),
    "no_quality_constraints": (
        "tip",
        'Add quality constraints at the end: "No distortion. No jitter. Face stable, no deformation." This '
        "works across all content types and noticeably reduces common artifacts.",
    ),
    "scene_description": (
        "tip",
        "Focus on motion, not the scene. The image is your scene. Don't re-describe the setting, outfit, or "
        "appearance — the model already sees all of that. Instead, describe what changes.",
    ),
    "clip_too_long": (
        "tip",
        "For clips longer than ~8 seconds, consider whether two shorter generations might give you better "
        "results. Quality stays highest in the 4–8 second range.",
    ),
}
CODES: tuple[Code, ...] = tuple(RULES)
_RANK = {code: rank for rank, code in enumerate(CODES)}


@dataclass(frozen=True, slots=True)
class AdviceItem:
    code: Code
    severity: Severity
    message: str
    excerpt: str | None


@dataclass(frozen=True, slots=True)
class Advice:
    words: int
    items: tuple[AdviceItem, ...]


# --- vocabulary ------------------------------------------------------------------------------------------


def _set(words: str) -> frozenset[str]:
    return frozenset(words.split())


_DOUBLING = re.compile(r"^[^aeiou]*[aeiou][bdgklmnprt]$")


def _forms(stems: str) -> frozenset[str]:
    """Each of the stems (separated by spaces) with its regular inflections (-s/-es/-ies, -ed/-d/-ied, -ing,
    doubled consonants)."""
    forms: set[str] = set()
    for stem in stems.split():
        forms.add(stem)
        if stem.endswith("y") and len(stem) > 2 and stem[-2] not in "aeiou":
            forms |= {stem[:-1] + "ies", stem[:-1] + "ied", stem + "ing"}
        elif stem.endswith("e") and not stem.endswith("ee"):
            forms |= {stem + "s", stem + "d", stem[:-1] + "ing"}
        elif stem.endswith(("s", "sh", "ch", "x", "z")):
            forms |= {stem + "es", stem + "ed", stem + "ing"}
        else:
            forms |= {stem + "s", stem + "ed", stem + "ing"}
            if _DOUBLING.match(stem):
                forms |= {stem + stem[-1] + "ed", stem + stem[-1] + "ing"}
    return frozenset(forms)


# Words that say something moves or changes (verbs of motion, expression and sound, and what moves things).
MOTION_WORDS = _forms(
    """turn smile look glance lean brush sway blow lift shift nod shake wave walk run jump dance spin laugh
    blink wink breathe sip raise lower reach grab flutter ripple fall rise drift flow open close widen narrow
    part gasp whisper speak say sing cry kiss hug touch stretch bend kneel step move push pull zoom pan tilt
    dolly orbit track crane swing twirl twist rotate roll bounce shiver tremble shudder sigh giggle grin
    frown pout bite lick wipe rub stroke tuck adjust comb toss flip throw catch drop pick pour drink eat chew
    swallow type write draw paint point gesture clap tap knock slide glide float sink swim dive climb crawl
    sprint jog stride stroll wander approach retreat follow chase lunge duck dodge crouch squat settle relax
    flinch recoil stumble trip tumble collapse emerge appear disappear vanish fade glow flicker sparkle pulse
    burst explode splash swirl billow flap sweep rustle scatter melt drip grow shrink bloom unfold fold wrap
    embrace caress release exhale inhale yawn scratch nuzzle peek peer gaze curl shrug bow beckon shout
    murmur talk wiggle sweat wobble jiggle quiver sag spill soar hover land lurch march skip hop pace pivot
    rock scroll sniff squeeze stir swat throb tighten loosen unbutton undress wring flex arch cross uncross
    wag drum flick blush tear weep sob scream yell whirl zip dash race rush hurry creep sneak flee enter exit
    leave arrive return descend ascend mouth purse squint glare stare wince grimace"""
)
MOTION_WORDS |= _set(
    """ran spun rose risen fell fallen blew blown shook shaken swung flew flown took woke threw thrown drew drawn
    bit ate drank sang swam knelt spoke said caught breeze wind gust motion motions movement movements moving"""
)
# Words that describe what the image already shows: posture, outfit, appearance, setting.
SCENE_WORDS = _set(
    """standing sitting seated lying posing posed perched wearing dressed clad outfit dress gown shirt blouse
    jacket coat skirt jeans trousers pants suit uniform bikini swimsuit sweater hoodie hat boots heels lingerie
    scarf necklace earrings sunglasses beach sunset sunrise dusk dawn background foreground backdrop scenery
    landscape setting bedroom kitchen street city forest park garden office cafe café restaurant studio field
    mountain mountains ocean sea lake river desert skyline interior exterior beautiful gorgeous pretty handsome
    blonde brunette redhead freckled tattooed slim curvy muscular elegant stunning attractive located"""
)
# Degree and pacing words ("Use degree words to control how movements feel").
DEGREE_WORDS = _set(
    """slow slowly slower gentle gently subtle subtly slight slightly quick quickly fast faster rapid rapidly
    smooth smoothly soft softly gradual gradually sudden suddenly abrupt abruptly steady steadily calm calmly
    lazy lazily graceful gracefully barely faint faintly light lightly sharp sharply swift swiftly delicate
    delicately natural naturally fluid fluidly rhythmic rhythmically wild wildly violent violently vigorous
    vigorously firm firmly brisk briskly little bit tiny small big large strong strongly intense intensely hard
    playful playfully casual casually leisurely hurried hurriedly energetic energetically frantic frantically
    minimal deliberate deliberately careful carefully tender tenderly quiet quietly loose loosely tight tightly
    sluggish dramatic dramatically fully halfway partly partially"""
)
_NEGATIONS = _set(
    """no not never without nor avoid avoids avoiding zero instead rather don't doesn't didn't won't isn't aren't
    can't cannot"""
)
NEGATIONS = _NEGATIONS | {word.replace("'", "\u2019") for word in _NEGATIONS}
# A generic motion word is vague when this is all that says who or what moves.
VAGUE_SUBJECTS = _set(
    """she he they it everything everyone everybody things thing someone somebody people person character
    characters subject woman man girl boy all stuff figure model"""
)
VAGUE_DETERMINERS = _set("some a an any random general constant lots lot more much add adding with of")
# After a generic motion verb, these say what moves or where ("moves her hand", "moves toward"): specific
# enough; after a generic noun, what it is of ("movement of her hair").
SPECIFIC_NOUN_FOLLOWERS = _set("of in from")
SPECIFIC_FOLLOWERS = _set(
    """her his their its my your our the a an this that toward towards to closer forward forwards backward
    backwards back left right across away up down aside into through along over past onto of"""
)
# What may precede an ambiguous camera verb ("pan", "tilt up", "pull back") for it to be the camera's move
# rather than a person's: nothing (it starts the clause), a connective, a pacing word, or the camera.
CAMERA_SUBJECTS = _set("camera cameras lens we shot pov viewpoint view frame")
CONNECTIVES = _set("and while then as before after also now finally next")
CAMERA_PACING = _set(
    """slow smooth gentle quick fast steady soft subtle slight gradual sudden sweeping lazy dramatic dynamic
    continuous constant whip crash snap"""
)
# A quoted part after one of these is on-screen text or a name, not a spoken line.
TEXT_CUES = _set(
    """sign signs text caption captions title titled label labeled labelled reads read written writing word
    words phrase logo banner poster screen spelled spelling named style styled tag hashtag font lettering
    printed engraved tattoo"""
)
# Verbs of speaking with no delivery in them ("says"): they make a quoted part a line, not a cue.
SPEECH_WORDS = _forms(
    "say ask tell reply answer speak talk call utter announce add respond state declare continue"
) | _set("mouth mouths narrate narrates said told spoke spoken line lines dialogue dialog voiceover")
# Delivery and emotion: what the guide means by "label emotions before dialogue".
CUE_WORDS = _forms(
    """whisper murmur mutter mumble shout yell scream shriek cry sob laugh giggle chuckle sigh gasp growl hiss
    purr sing hum plead beg exclaim tease breathe stammer stutter snap bark cheer groan moan squeal whimper
    coo croon sneer scoff snarl grumble whine pant blurt gush rasp drawl squeak sniffle weep smile grin smirk
    frown pout beam"""
) | _set(
    """happy sad angry excited excitement nervous surprised surprise shocked scared afraid fearful tender
    playful teasing flirty flirtatious warm cold tired weary breathless tearful tears terrified furious joyful
    joy anxious calm serious sarcastic gentle soft loud quiet hushed voice tone emotion emotional passionate
    confident shy sweet seductive sultry dreamy wistful bitter desperate urgent proud delighted delight amused
    amusement relieved relief awe sadness anger fear love affection cheerful eager hesitant stern firm flat
    mock mocking curious gleeful giddy sleepy drowsy trembling shaky sincere kind cruel lovely friendly
    nervousness excitedly"""
)
# Words ending in -ly that say nothing about how a line is delivered.
NOT_MANNER_LY = _set(
    """only early family finally really nearly simply directly immediately likely apply reply supply fly ally
    belly jelly holy july italy rely daily weekly monthly yearly ugly hourly mostly exactly actually usually
    probably certainly clearly literally basically totally completely fully currently recently previously
    eventually initially firstly lastly secondly then"""
)
# A window before a quoted part with none of these (and no cue word) is not English: no cue tip for it.
ENGLISH_HINTS = SPEECH_WORDS | _set(
    """she he they i me my we our you your it this that there here the a an her his their and then with to at in
    on of as is am are was were be do not what how why who i'm it's don't"""
)

# --- reading the text ------------------------------------------------------------------------------------

# Punctuation that separates words; each becomes a space (one character for one, so positions hold).
# (Apostrophes stay: they are inside words as often as around them.)
_SEPARATORS = (
    '.,;:!?"()[]{}<>/\\|*_=+~^`@#$%&'
    "\u2014\u2013\u2026\u00ab\u00bb\u201c\u201d\u201e\u201a\u2018\u2039\u203a\u300c\u300d\u300e\u300f"
    "\u3001\u3002\uff0c\uff01\uff1f\uff1a\uff1b\uff08\uff09\u3010\u3011"
)
_APOSTROPHES = frozenset("'\u2019")
_JUNK_TOKENS = ("-", "--", "---", "'", "''", "\u2019")
_JUNK_SET = frozenset(_JUNK_TOKENS)
_CJK_CLASS = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK_RUN = re.compile(rf"[{_CJK_CLASS}]+")
# U+3040-U+9FFF is encoded with a lead byte E3-E9, U+F900-U+FAFF with EF.
_CJK_LEAD_BYTES = (b"\xe3", b"\xe4", b"\xe5", b"\xe6", b"\xe7", b"\xe8", b"\xe9", b"\xef")
_SENTENCE_ENDS = ".!?\n\u2026\u3002\uff01\uff1f"
_SENTENCE_END = re.compile(f"[{_SENTENCE_ENDS}]")
_CLAUSE_BREAK = re.compile(r"[.!?;:,\n()\u2014\u2013\u2026\u3001\u3002\uff01\uff0c\uff1f]")
# How far a sentence is looked for around a position, each way.
_SENTENCE_CHARS_MAX = 400


def _lowered(text: str) -> str:
    """Lowercase with every character where it was, so that positions found in it are positions in `text`
    (str.lower turns "İ" into two characters)."""
    lowered = text.lower()
    if len(lowered) == len(text):
        return lowered
    return "".join(low if len(low := character.lower()) == 1 else character for character in text)


# bytes.translate is a table look-up per byte, several times faster than str.translate's per-character
# mapping; ASCII text is the same in both.
_ASCII_SEPARATORS = bytes(ord(" ") if chr(byte) in _SEPARATORS else byte for byte in range(256))


def _spaced(text: str) -> str:
    # On ASCII text, a byte table; elsewhere one replace per separator present is far faster than translate.
    if text.isascii():
        return text.encode("ascii").translate(_ASCII_SEPARATORS).decode("ascii")
    for separator in _SEPARATORS:
        if separator in text:
            text = text.replace(separator, " ")
    return text


# Each junk token as a whole token: the mark first (so that the pattern is found by a fast scan), then no
# letter of a word before it and none after.
_JUNK_PATTERNS = {junk: re.compile(re.escape(junk) + rf"(?<!\S{re.escape(junk)})(?!\S)") for junk in _JUNK_TOKENS}


def _count(tokens: list[str], token_set: set[str] | frozenset[str] | None = None, spaced: str | None = None) -> int:
    """Tokens that are words: not a lone hyphen or apostrophe. Given `spaced`, the text `tokens` were split
    from, the junk is counted by a scan of it: list.count compares every token, a tenth of the advice on a
    5,000-character prompt."""
    present = tokens if token_set is None else token_set
    if _JUNK_SET.isdisjoint(present):
        return len(tokens)
    junk_present = [junk for junk in _JUNK_TOKENS if junk in present]
    if spaced is None:
        return len(tokens) - sum(tokens.count(junk) for junk in junk_present)
    return len(tokens) - sum(len(_JUNK_PATTERNS[junk].findall(spaced)) for junk in junk_present)


def _count_plain(spaced: str) -> int:
    """_count of spaced text without CJK. A lone hyphen or apostrophe is made of nothing else: text without
    any has none to take away."""
    tokens = spaced.split()
    if "-" in spaced or "'" in spaced or "\u2019" in spaced:
        return _count(tokens)
    return len(tokens)


def _has_cjk(text: str) -> bool:
    # Looking for the UTF-8 lead bytes of the CJK blocks is a fast scan; the pattern runs only if one is there.
    if text.isascii():
        return False
    data = text.encode("utf-8", "surrogatepass")
    return any(lead in data for lead in _CJK_LEAD_BYTES) and _CJK_RUN.search(text) is not None


def _count_spaced(spaced: str, cjk: bool | None = None) -> int:
    """The words of text whose separators are already spaces. Scripts written without spaces (Chinese,
    Japanese) have no boundaries to count: a word of theirs counts one word per two characters, about what
    a word is in them, so that a long prompt in them is not called short, nor a line long."""
    if not (_has_cjk(spaced) if cjk is None else cjk):
        return _count_plain(spaced)
    tokens = spaced.split()
    return sum((len(token) + 1) // 2 if _CJK_RUN.match(token) else 1 for token in tokens if token.strip("-'\u2019"))


def count_words(text: str) -> int:
    """Words as the guide counts them: runs of letters and digits between spaces and punctuation (see
    `_count_spaced` for scripts written without spaces)."""
    return _count_spaced(_spaced(text))


class _Text:
    """The prompt as the rules read it: its lowercase copy (same positions), its words, and where a word
    occurs. Each rule starts from the words it cares about, so its cost follows their occurrences, not the
    prompt's length."""

    __slots__ = ("cjk", "lower", "original", "padded", "token_set", "tokens", "word_count")
    token_set: frozenset[str]  # the prompt's words that are in _LOOKED_UP

    def __init__(self, prompt: str) -> None:
        self.original = prompt
        self.lower = _lowered(prompt)
        spaced = _spaced(self.lower)
        # Every word with a space on each side: a whole word is found as " word " (positions shift by one).
        self.padded = f" {spaced} "
        self.tokens = spaced.split()
        # Not every word: only those some rule looks up (one pass that hashes each word; every later test of
        # which words the prompt has is then on a set of a few dozen).
        self.token_set = _LOOKED_UP.intersection(self.tokens)
        self.cjk = _has_cjk(spaced)
        self.word_count = _count_spaced(spaced, True) if self.cjk else _count(self.tokens, self.token_set, spaced)

    def count_words(self, start: int, end: int) -> int:
        """count_words of the prompt's text in [start, end)."""
        spaced = self.padded[start + 1 : end + 1]
        if self.cjk and _CJK_RUN.search(spaced) is not None:
            return _count_spaced(spaced, True)
        return _count_plain(spaced)

    def has_any(self, words: frozenset[str]) -> bool:
        return not words.isdisjoint(self.token_set)

    def positions(self, word: str) -> Iterator[int]:
        """Where `word` occurs as a whole word (not inside another, nor inside a hyphenated compound)."""
        spaced_word = f" {word} "
        found = self.padded.find(spaced_word)
        while found != -1:
            yield found
            found = self.padded.find(spaced_word, found + len(word) + 1)

    def count(self, word: str) -> int:
        return self.padded.count(f" {word} ")

    def anchored(self, anchors: Iterable[str]) -> list[tuple[str, int]]:
        """(word, position) of every occurrence of each of `anchors` that the prompt has (as `positions`
        finds them, in one loop: the rules call this for every word they start from)."""
        found = []
        padded = self.padded
        for word in self.token_set.intersection(anchors):
            spaced_word = f" {word} "
            step = len(word) + 1
            position = padded.find(spaced_word)
            while position != -1:
                found.append((word, position))
                position = padded.find(spaced_word, position + step)
        return found

    def words(self, start: int, end: int) -> list[str]:
        """The words in [start, end) of the prompt, lowercase (a word cut by `start` or `end` is kept)."""
        return self.padded[start + 1 : end + 1].split()

    def words_before(self, position: int, count: int) -> list[str]:
        """The last `count` words before `position` in its clause, lowercase."""
        begin = max(0, position - 20 * count)
        tail = len(_CLAUSE_BREAK.split(self.lower[begin:position])[-1])
        words = self.words(position - tail, position)
        if position - tail == begin and begin and len(words) > count:
            words = words[1:]  # the first may be cut
        return words[-count:]

    def beside(self, position: int, word: str) -> tuple[str | None, str | None]:
        """The words right before and after `word` at `position`, across punctuation (a quick look)."""
        before = self.padded[max(0, position - 24) : position + 1].split()
        after = self.padded[position + 1 + len(word) : position + len(word) + 25].split()
        whole = len(before) > 1 or position < 24  # a lone word at the window's edge may be cut
        return (before[-1] if before and whole else None), (after[0] if after else None)

    def word_after(self, position: int) -> str | None:
        """The first word at or after `position` in its clause."""
        head = len(_CLAUSE_BREAK.split(self.lower[position : position + 40], maxsplit=1)[0])
        words = self.words(position, position + head)
        return words[0] if words else None

    def sentence(self, start: int, end: int) -> tuple[int, int]:
        """The bounds of the sentence around [start, end), looked for at most _SENTENCE_CHARS_MAX each way."""
        lower = self.lower
        begin = max(0, start - _SENTENCE_CHARS_MAX)
        for mark in _SENTENCE_END.finditer(lower, begin, start):
            begin = mark.end()
        finish = _SENTENCE_END.search(lower, end, end + _SENTENCE_CHARS_MAX)
        return begin, finish.start() if finish else min(len(lower), end + _SENTENCE_CHARS_MAX)

    def clause(self, start: int, end: int) -> tuple[int, int]:
        begin, finish = self.sentence(start, end)
        pieces = [(found.start(), found.end()) for found in _CLAUSE_BREAK.finditer(self.lower, begin, finish)]
        before = [stop for _, stop in pieces if stop <= start]
        after = [first for first, _ in pieces if first >= end]
        return (before[-1] if before else begin), (after[0] if after else finish)

    def sentence_words(self, start: int, end: int) -> list[str]:
        return self.words(*self.sentence(start, end))

    def excerpt(self, start: int, end: int) -> str | None:
        """The prompt's own text in [start, end), trimmed and at most EXCERPT_CHARS_MAX characters."""
        return self.original[start:end].strip()[:EXCERPT_CHARS_MAX].rstrip() or None


def _negated(text: _Text, position: int) -> bool:
    return not NEGATIONS.isdisjoint(text.words_before(position, NEGATION_WORDS_BACK))


def _previous_word(text: _Text, position: int) -> str | None:
    """The nearest word before `position` in its clause that is not an -ly adverb; None at the clause start."""
    for word in reversed(text.words_before(position, 4)):
        if not (word.endswith("ly") and word not in NOT_MANNER_LY):
            return word
    return None


def _item(code: Code, finding: str, excerpt: str | None = None) -> AdviceItem:
    severity, rule = RULES[code]
    return AdviceItem(code=code, severity=severity, message=f"{finding} The guide: “{rule}”", excerpt=excerpt)


# --- one camera movement per shot -----------------------------------------------------------------------


class _Movement(NamedTuple):
    start: int
    end: int
    family: str


_DIRECTIONS = (
    "in|inward|inwards|closer|forward|toward|towards|into|out|back|backward|backwards|away|left|right|sideways|"
    "laterally|alongside|across|up|upward|upwards|down|downward|downwards|over|above|around|round"
)
# Verbs of a camera that is the subject, by the movement they name; "move" is named by its direction.
_CAMERA_VERBS = {
    "dolly": "push pull dolly approach retreat back",
    "move": "move glide drift travel slide creep",
    "tracking": "track follow trail truck",
    "orbit": "circle orbit arc rotate spin revolve",
    "crane": "rise lift ascend descend lower drop crane boom fly swoop soar",
    "pan": "pan swing sweep whip",
    "tilt": "tilt",
    "zoom": "zoom",
}
_IRREGULAR = {"spin": "spun", "rise": "rose risen", "fly": "flew flown", "swing": "swung", "sweep": "swept"}


def _alternatives(stems: str) -> str:
    """A regex alternation of the stems' forms, longest first (so that "pans" is not read as "pan")."""
    forms = set(_forms(stems)) | {form for stem in stems.split() for form in _IRREGULAR.get(stem, "").split()}
    return "|".join(sorted(forms, key=len, reverse=True))


# "The camera slowly pushes in", "we follow her": the camera is the subject, so any of these moves it.
_CAMERA_SUBJECT_MOVE = re.compile(
    r"(?:camera|cameras|lens|we)\s+(?:(?:\w+ly|then|now|also|very)\s+){0,2}(?P<verb>"
    + "|".join(rf"(?P<{family}>{_alternatives(verbs)})" for family, verbs in _CAMERA_VERBS.items())
    + rf")\b(?:\s+(?P<direction>{_DIRECTIONS})\b)?"
)
_DIRECTION_FAMILY = dict.fromkeys(_set("left right sideways laterally alongside across"), "tracking")
_DIRECTION_FAMILY |= dict.fromkeys(_set("up upward upwards down downward downwards over above"), "crane")
_DIRECTION_FAMILY |= {"around": "orbit", "round": "orbit"}


def _verb(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern + r"\b")


# How a word makes a camera movement:
#   always: it is one by itself (a film term);
#   pattern: when what follows it matches (it is the first word of the pattern);
#   paced: a noun after a pacing word ("slow pan", "smooth tilt");
#   verb: the pattern matches and nothing but a connective, a pacing word or the camera precedes it, so that
#         "she tilts her head up", "pulls out her phone" and "cranes her neck" stay the subject's; with
#         `object` also no possessive or article right after ("pulls back her hair", "pushes in the chair").
@dataclass(frozen=True, slots=True)
class _Camera:
    family: str
    how: Literal["always", "pattern", "paced", "verb"]
    pattern: re.Pattern[str] | None = None
    object_possible: bool = False


_PAN_VERB = _verb(
    r"pan(?:s|ning|ned)?\s+(?:left|right|across|over|up|down|along|upward|downward|toward|towards|"
    r"to\s+(?:the\s+)?(?:left|right)|to\s+reveal)"
)
_TILT_VERB = _verb(r"tilt(?:s|ing|ed)?\s+(?:up|down|upward|upwards|downward|downwards)")
_ZOOM_VERB = _verb(r"zoom(?:s|ing|ed)?\s+(?:in|out|into|onto|closer|back)")
_CRANE_VERB = _verb(r"cran(?:e|es|ing|ed)\s+(?:up|down|upward|upwards|downward|downwards|overhead)")
_PUSH_VERB = _verb(r"push(?:es|ing|ed)?\s+(?:in|inward|inwards|forward|closer)")
_PULL_VERB = _verb(r"pull(?:s|ing|ed)?\s+(?:out|back|away|backward|backwards)")
_TRACK_VERB = _verb(r"track(?:s|ing|ed)?\s+(?:left|right|alongside|beside|behind|along|sideways|forward|backward)")
_ORBIT_VERB = _verb(r"(?:orbit(?:s|ing|ed)?|circl(?:e|es|ing|ed)|arc(?:s|ing|ed)?)\s+(?:around|round)")
_SHOT = r"\w+\s+shots?"
_CAMERA_WORDS: dict[str, tuple[_Camera, ...]] = {}


def _camera_words(words: str, *ways: _Camera) -> None:
    for word in words.split():
        _CAMERA_WORDS[word] = _CAMERA_WORDS.get(word, ()) + ways


_camera_words(
    "dolly dollies dollied dollying push-in push-ins pull-out pull-outs pull-back pull-backs dolly-in dolly-out "
    "dolly-zoom",
    _Camera("dolly", "always"),
)
_camera_words("zoom-in zoom-ins zoom-out zoom-outs crash-zoom snap-zoom", _Camera("zoom", "always"))
_camera_words("whip-pan whip-pans", _Camera("pan", "always"))
_camera_words("whip", _Camera("pan", "pattern", _verb(r"whip\s+pan(?:s|ning|ned)?")))
_camera_words("tracking", _Camera("tracking", "pattern", _verb(_SHOT)), _Camera("tracking", "paced"))
_camera_words("truck trucks trucking trucked", _Camera("tracking", "pattern", _verb(r"\w+\s+(?:left|right)")))
_camera_words("crane jib boom", _Camera("crane", "pattern", _verb(_SHOT)))
_camera_words("jib jibs boom booms", _Camera("crane", "pattern", _verb(r"\w+\s+(?:up|down)")))
_camera_words("orbit orbital arc", _Camera("orbit", "pattern", _verb(_SHOT)))
_camera_words("360 360-degree", _Camera("orbit", "pattern", _verb(r"360(?:-degree|\s+degree)?\s+(?:orbit|pan)")))
_camera_words("pan pans", _Camera("pan", "paced"))
_camera_words("tilt tilts", _Camera("tilt", "paced"))
_camera_words("zoom zooms", _Camera("zoom", "paced"))
_camera_words("orbit orbits", _Camera("orbit", "paced"))
_camera_words("pan pans panning panned", _Camera("pan", "verb", _PAN_VERB))
_camera_words("tilt tilts tilting tilted", _Camera("tilt", "verb", _TILT_VERB, object_possible=True))
_camera_words("zoom zooms zooming zoomed", _Camera("zoom", "verb", _ZOOM_VERB, object_possible=True))
_camera_words("crane cranes craning craned", _Camera("crane", "verb", _CRANE_VERB, object_possible=True))
_camera_words("push pushes pushing pushed", _Camera("dolly", "verb", _PUSH_VERB, object_possible=True))
_camera_words("pull pulls pulling pulled", _Camera("dolly", "verb", _PULL_VERB, object_possible=True))
_camera_words("track tracks tracking tracked", _Camera("tracking", "verb", _TRACK_VERB))
_camera_words(
    "orbit orbits orbiting orbited circle circles circling circled arc arcs arcing arced",
    _Camera("orbit", "verb", _ORBIT_VERB),
)
_CAMERA_ANCHORS = frozenset(_CAMERA_WORDS)
_CAMERA_FAMILIES = {word: frozenset(way.family for way in ways) for word, ways in _CAMERA_WORDS.items()}
_CAMERA_SUBJECT_WORDS = frozenset({"camera", "cameras", "lens", "we"})
# "pan and tilt", "pan/zoom": two movements named together.
_PAIR_WORDS = "pan|tilt|zoom|dolly|truck|crane|orbit"
_CAMERA_PAIR = re.compile(
    rf"(?P<first>{_PAIR_WORDS})(?:s|ning|ing|ed|ned)?\s*(?:and|&|\+|/|or)\s*(?P<second>{_PAIR_WORDS})"
    r"(?:s|ning|ing|ed|ned)?\b"
)
_PAIR_ANCHORS = frozenset(
    form
    for word in _PAIR_WORDS.split("|")
    for form in (word, *(word + end for end in ("s", "ning", "ing", "ed", "ned")))
)
_PAIR_FAMILY = {"truck": "tracking"}
_CAMERA_VERB_PRECEDERS = CONNECTIVES | CAMERA_PACING | CAMERA_SUBJECTS
_DIRECT_OBJECT = re.compile(r"\s+(?:her|his|their|its|my|your|our|the|a|an|one's)\b")


def _camera_movement(text: _Text, word: str, position: int, way: _Camera) -> _Movement | None:
    lower = text.lower
    if way.how == "always":
        return _Movement(position, position + len(word), way.family)
    if way.how == "paced":
        before = text.words_before(position, 1)
        return _Movement(position, position + len(word), way.family) if before and before[0] in CAMERA_PACING else None
    assert way.pattern is not None
    found = way.pattern.match(lower, position)
    if found is None:
        return None
    if way.how == "verb":
        previous = _previous_word(text, position)
        if not (previous is None or previous in _CAMERA_VERB_PRECEDERS):
            return None
        if way.object_possible and previous not in CAMERA_SUBJECTS and _DIRECT_OBJECT.match(lower, found.end()):
            return None
    return _Movement(position, found.end(), way.family)


def _word_candidates(text: _Text) -> Iterator[_Movement]:
    for word, position in text.anchored(_CAMERA_ANCHORS):
        for way in _CAMERA_WORDS[word]:
            movement = _camera_movement(text, word, position, way)
            if movement is not None:
                yield movement


_CAMERA_VERB_FORMS = frozenset("|".join(_alternatives(verbs) for verbs in _CAMERA_VERBS.values()).split("|"))
_CAMERA_ADVERBS = frozenset({"then", "now", "also", "very"})
_PAIR_CONNECTIVES = ("and", "&", "+", "/", "or")


def _camera_verb_may_follow(lower: str, after: int) -> bool:
    """False only where _CAMERA_SUBJECT_MOVE cannot match after its subject (which ends at `after`): it needs
    a space, then an adverb or a camera verb as the next word. A quick look that spares the pattern."""
    if not lower[after : after + 1].isspace():
        return False
    chunk = lower[after : after + 60].split(None, 1)
    if not chunk:
        return True
    word = chunk[0]
    # A word of letters only (and not cut by the window) is the pattern's verb or adverb only if it is one.
    if len(word) >= 50 or not word.isalpha() or word.endswith("ly"):
        return True
    return word in _CAMERA_VERB_FORMS or word in _CAMERA_ADVERBS


def _phrase_candidates(text: _Text) -> Iterator[_Movement]:
    """Movements named by a camera that is the subject, or by a pair ("pan and tilt")."""
    lower = text.lower
    for word, position in text.anchored(_CAMERA_SUBJECT_WORDS):
        if not _camera_verb_may_follow(lower, position + len(word)):
            continue
        found = _CAMERA_SUBJECT_MOVE.match(lower, position)
        if found is not None:
            family = next(name for name in _CAMERA_VERBS if found.group(name))
            if family == "move":
                family = _DIRECTION_FAMILY.get(found.group("direction") or "", "dolly")
            yield _Movement(found.start("verb"), found.end(), family)
    for word, position in text.anchored(_PAIR_ANCHORS):
        # The pattern takes the whole word, then needs a connective ("pan and", "pan/tilt").
        rest = lower[position + len(word) : position + len(word) + 16].lstrip()
        if rest and not rest.startswith(_PAIR_CONNECTIVES):
            continue
        found = _CAMERA_PAIR.match(lower, position)
        if found is not None:
            for group in ("first", "second"):
                name = found.group(group)
                yield _Movement(found.start(group), found.end(group), _PAIR_FAMILY.get(name, name))


def _merged(movements: Iterable[_Movement], lower: str) -> list[_Movement]:
    """One movement per phrase: overlapping matches, and matches only spaces or hyphens apart ("dolly
    push-in", "dolly zoom"), are one movement, named by its first word."""
    merged: list[_Movement] = []
    for movement in sorted(movements):
        last = merged[-1] if merged else None
        if last and movement.start <= last.end + 2 and not lower[last.end : movement.start].strip(" -"):
            merged[-1] = _Movement(last.start, max(last.end, movement.end), last.family)
        else:
            merged.append(movement)
    return merged


def several_camera_movements(text: _Text, shot_starts: list[int]) -> AdviceItem | None:
    if not (text.has_any(_CAMERA_ANCHORS) or text.has_any(_CAMERA_SUBJECT_WORDS) or text.has_any(_PAIR_ANCHORS)):
        return None
    phrases_found = list(_phrase_candidates(text))
    # Merging and negation only take movements away, so fewer than two families that the prompt's camera
    # words could name at all ("dolly", "push-in": both dolly) is no advice, before any is looked at.
    possible = {found.family for found in phrases_found}
    for word in text.token_set.intersection(_CAMERA_ANCHORS):
        possible |= _CAMERA_FAMILIES[word]
    if len(possible) < 2:
        return None
    found_first = [*_word_candidates(text), *phrases_found]
    if len({found.family for found in found_first}) < 2:
        return None
    candidates = _merged(found_first, text.lower)
    movements = [found for found in candidates if not _negated(text, found.start)]
    by_shot: dict[int, dict[str, _Movement]] = {}
    for movement in movements:
        by_shot.setdefault(bisect.bisect_right(shot_starts, movement.start), {}).setdefault(movement.family, movement)
    for families in by_shot.values():
        if len(families) >= 2:
            named = sorted(families.values(), key=lambda found: found.start)
            phrases = ", ".join(f"“{text.original[found.start : found.end]}”" for found in named)
            return _item(
                "several_camera_movements",
                f"{len(named)} camera movements in one shot ({phrases}).",
                text.excerpt(named[0].start, named[-1].end),
            )
    return None


# --- one clear moment per clip --------------------------------------------------------------------------

_SEQUENCE_WORDS = frozenset({"then", "afterwards", "afterward", "finally", "eventually", "subsequently"})
_TIME_UNITS = _set("day morning night evening week month year")
_LATER_UNITS = _set("hours days weeks months years decades")
_NUMBERS = _set("1 2 3 4 5 6 7 8 9 one two three four five six")
_SCENE_ANCHORS = _set(
    "cut cuts cutting scene shot next following later meanwhile flashback flashbacks flash fade fades "
    "dissolve dissolves montage timeskip time-skip time"
)
_SEQUENCE_ANCHORS = frozenset({"after", "followed", "next"})


def _scene_change(text: _Text, word: str, position: int) -> Literal["change", "numbered"] | None:
    """Whether `word` at `position` starts a new scene ("cut to", "the next day", "years later", "shot 2")."""
    after = text.word_after(position + len(word))
    if word in {"meanwhile", "flashback", "flashbacks", "montage", "timeskip", "time-skip"}:
        return "change"
    if word in {"cut", "cuts", "cutting"}:
        return "change" if after in {"to", "back"} else None
    if word in {"scene", "shot"}:
        if after in _NUMBERS:
            return "numbered"
        before = text.words_before(position, 1)
        if before and before[0] in {"next", "new", "following"}:
            return "change"
        return "change" if word == "scene" and after in {"changes", "shifts", "switches", "cuts"} else None
    if word in {"next", "following"}:
        return "change" if after in _TIME_UNITS else None
    if word == "later":
        before = text.words_before(position, 1)
        return "change" if before and before[0] in _LATER_UNITS else None
    following = {"flash": {"back"}, "fade": {"to"}, "fades": {"to"}, "dissolve": {"to"}, "dissolves": {"to"}}
    return "change" if after in following.get(word, {"skip"} if word == "time" else set()) else None


def _sequence_marker(text: _Text, word: str, position: int) -> bool:
    after = text.word_after(position + len(word))
    if word == "after":
        return after in {"that", "this", "which"}
    if word == "followed":
        return after == "by"
    # "Next, she ..." at a sentence's start (not "the next day", which is a change of scene).
    head = text.lower[max(0, position - 3) : position].rstrip(" ")
    return (not head or head[-1] in _SENTENCE_ENDS) and after not in _TIME_UNITS


def shot_starts(text: _Text) -> tuple[list[int], int]:
    """Where each shot after the first starts, and how many changes of scene the prompt asks for."""
    changes: list[int] = []
    numbered: list[int] = []
    if text.has_any(_SCENE_ANCHORS):
        for word, position in text.anchored(_SCENE_ANCHORS):
            kind = _scene_change(text, word, position)
            if kind is not None:
                (changes if kind == "change" else numbered).append(position)
    numbered.sort()
    return sorted(changes + numbered[1:]), len(changes) + max(0, len(numbered) - 1)


def overloaded_clip(text: _Text, duration_s: int | None, starts: list[int], scene_changes: int) -> AdviceItem | None:
    clip = f"a {duration_s} s clip" if duration_s is not None else "one clip"
    if scene_changes:
        begin, finish = text.sentence(starts[0], starts[0] + 1)
        scenes = f"{scene_changes + 1} scenes" if scene_changes > 1 else "a change of scene"
        return _item("overloaded_clip", f"The prompt asks for {scenes} in {clip}.", text.excerpt(begin, finish))
    markers = sum(text.count(word) for word in _SEQUENCE_WORDS.intersection(text.token_set))
    if text.has_any(_SEQUENCE_ANCHORS):
        markers += sum(_sequence_marker(text, word, at) for word, at in text.anchored(_SEQUENCE_ANCHORS))
    steps = 1 + markers
    steps_max = max(STEPS_MIN, (duration_s if duration_s is not None else DURATION_S_ASSUMED) // STEP_S)
    if steps <= steps_max:
        return None
    # Only the first and the last sequence word matter: one scan from each end per word.
    present = [f" {word} " for word in _SEQUENCE_WORDS.intersection(text.token_set)]
    firsts = [at for at in (text.padded.find(word) for word in present) if at != -1]
    if not firsts:
        return _item("overloaded_clip", _overloaded(steps, clip, steps_max), text.excerpt(0, len(text.lower)))
    first, last = min(firsts), max(text.padded.rfind(word) for word in present)
    begin = text.sentence(first, first + 1)[0]
    return _item("overloaded_clip", _overloaded(steps, clip, steps_max), text.excerpt(begin, last + 4))


def _overloaded(steps: int, clip: str, steps_max: int) -> str:
    return f"The prompt asks for {steps} actions one after another in {clip} (about {steps_max} fit)."


# --- specific motion ------------------------------------------------------------------------------------

_GENERIC_VERBS = frozenset({"move", "moves", "moved", "moving"})
_GENERIC_NOUNS = frozenset({"movement", "movements", "motion", "motions"})
_VAGUE_OBJECTS = frozenset({"something", "stuff", "things", "anything"})
_VAGUE_ACTIONS = frozenset({"action", "activity"})
_VAGUE_ANCHORS = _GENERIC_VERBS | _GENERIC_NOUNS | _VAGUE_OBJECTS | _VAGUE_ACTIONS
_VAGUE_NOUN_SUBJECTS = VAGUE_SUBJECTS | VAGUE_DETERMINERS


def _vague_at(text: _Text, word: str, position: int) -> bool:
    """Cheapest test first: who moves, then what follows, then negation and degree words."""
    if word in _VAGUE_OBJECTS or word in _VAGUE_ACTIONS:
        # "does something", "something happens", "some action": the words right beside it are enough. A
        # look for the letters of those words where `beside` finds them spares the split when none is there.
        near = text.padded[max(0, position - 24) : position + 1]
        if word in _VAGUE_ACTIONS:
            if "some" not in near and "random" not in near:
                return False
        elif (
            "do" not in near
            and "did" not in near
            and (word != "something" or "happens" not in text.padded[position : position + len(word) + 25])
        ):
            return False
        previous, after = text.beside(position, word)
        if word in _VAGUE_ACTIONS:
            vague = previous in {"some", "random"}
        else:
            vague = previous in {"do", "does", "doing", "did"} or (word == "something" and after in {"happens"})
    else:
        previous = _previous_word(text, position)
        after = text.word_after(position + len(word))
        # The camera's own movement ("camera moves") is the camera rule's.
        if word in _GENERIC_VERBS:
            subjects, specific = VAGUE_SUBJECTS, SPECIFIC_FOLLOWERS
        else:
            subjects, specific = _VAGUE_NOUN_SUBJECTS, SPECIFIC_NOUN_FOLLOWERS
        vague = (previous is None or previous in subjects) and after not in specific
    if not vague or _negated(text, position):
        return False
    return DEGREE_WORDS.isdisjoint(text.sentence_words(position, position + 1))


_VAGUE_OBJECT_DOERS = frozenset({"do", "does", "doing", "did"})
_VAGUE_ACTION_DOERS = frozenset({"some", "random"})
_GENERIC_ANCHORS = _GENERIC_VERBS | _GENERIC_NOUNS


def _vague_anchors(text: _Text) -> frozenset[str]:
    """The anchors that can be vague in this prompt: "something" and "action" only with the word beside them
    that makes them so (a whole word of the prompt, or "happens" anywhere), so that a dialogue full of "I
    have something to tell you" is not looked at word by word."""
    anchors = _GENERIC_ANCHORS
    if not _VAGUE_OBJECT_DOERS.isdisjoint(text.token_set) or "happens" in text.padded:
        anchors = anchors | _VAGUE_OBJECTS
    if not _VAGUE_ACTION_DOERS.isdisjoint(text.token_set):
        anchors = anchors | _VAGUE_ACTIONS
    return anchors


def vague_motion(text: _Text) -> AdviceItem | None:
    if not text.has_any(_VAGUE_ANCHORS):
        return None
    for word, position in sorted(text.anchored(_vague_anchors(text)), key=lambda found: found[1]):
        if _vague_at(text, word, position):
            excerpt = text.excerpt(*text.clause(position, position + len(word)))
            return _item("vague_motion", f"“{excerpt}” does not say what moves, or how.", excerpt)
    return None


# --- dialogue -------------------------------------------------------------------------------------------

# Quotation marks: each opener and the closers it pairs with (English, German, Polish, Swedish, French,
# Danish, Swiss, Japanese and Chinese conventions). Straight and curly single quotes double as apostrophes.
_CLOSERS: dict[str, str] = {
    '"': '"',
    "\u201c": "\u201d\u201c",
    "\u201e": "\u201c\u201d",
    "\u201d": "\u201d",
    "\u00ab": "\u00bb",
    "\u00bb": "\u00ab\u00bb",
    "\u2039": "\u203a",
    "\u203a": "\u2039\u203a",
    "\u300c": "\u300d",
    "\u300e": "\u300f",
    "\u2018": "\u2019",
    "\u201a": "\u2018\u2019",
    "'": "'",
}


# A straight apostrophe opens only at the start of a word: not after a letter ("don't", "girls'"), not before
# a space. (The pattern starts with its literal, so it is found by a fast scan.)
_APOSTROPHE_OPENER = re.compile(r"'(?<![^\W_]')(?!\s)")
# An apostrophe closes only at the end of a word: not before a letter ("don't"), not after a space.
_APOSTROPHE_CLOSER = {mark: re.compile(mark + r"(?![^\W_])") for mark in _APOSTROPHES}
_LINE_END_PUNCTUATION = frozenset(".,!?\u2026\u3002\uff01\uff1f")


class Quoted(NamedTuple):
    start: int  # the opening mark
    end: int  # just past the closing mark
    words: int


def _closer_positions(prompt: str, closer: str) -> list[int]:
    if closer in _APOSTROPHES:
        found = (match.start() for match in _APOSTROPHE_CLOSER[closer].finditer(prompt))
        return [position for position in found if position and not prompt[position - 1].isspace()]
    positions = []
    position = prompt.find(closer)
    while position != -1:
        positions.append(position)
        position = prompt.find(closer, position + 1)
    return positions


def quoted_parts(prompt: str) -> Iterator[Quoted]:
    """The outermost quoted parts of the prompt, left to right, with the words of each."""
    for start, end in _quote_spans(prompt):
        yield Quoted(start, end, count_words(prompt[start + 1 : end - 1]))


_ASCII_MARKS = tuple(mark for mark in _CLOSERS if mark.isascii())


def _opener_positions(prompt: str, mark: str, before: int) -> list[int]:
    """Where `mark` opens a quote, before position `before`."""
    if mark == "'":
        return [found.start() for found in _APOSTROPHE_OPENER.finditer(prompt, 0, before)]
    positions = []
    position = prompt.find(mark, 0, before)
    while position != -1:
        positions.append(position)
        position = prompt.find(mark, position + 1, before)
    return positions


def _quote_spans(prompt: str) -> list[tuple[int, int]]:
    """[opening mark, past the closing mark) of each outermost quoted part. Quotes inside a quoted part
    belong to it; an opening mark that is never closed quotes nothing. Linear: every mark's openers and
    closers are found by fast scans, once; an opener after its mark's last closer can open nothing and is
    dropped; then each quoted part bisects its closer, and bisects past itself to the next opener."""
    closers_at: dict[str, list[int]] = {}
    closes_of: dict[str, list[int]] = {}
    openers: list[tuple[int, str]] = []
    for mark in _ASCII_MARKS if prompt.isascii() else _CLOSERS:
        if mark not in prompt:
            continue
        for closer in _CLOSERS[mark]:
            if closer not in closers_at:
                closers_at[closer] = _closer_positions(prompt, closer)
        closers = _CLOSERS[mark]
        closes = closers_at[closers] if len(closers) == 1 else sorted(at for c in closers for at in closers_at[c])
        if closes:
            closes_of[mark] = closes
            openers += [(at, mark) for at in _opener_positions(prompt, mark, closes[-1])]
    if not openers:
        return []
    if len(closes_of) > 1:
        openers.sort()
    starts = [at for at, _ in openers]
    spans: list[tuple[int, int]] = []
    bisect_left, bisect_right = bisect.bisect_left, bisect.bisect_right
    index, count = 0, len(openers)
    while index < count:
        start, mark = openers[index]
        closes = closes_of[mark]
        end = closes[bisect_right(closes, start)] + 1
        spans.append((start, end))
        index = bisect_left(starts, end, index + 1)
    return spans


def _has_cue(words: list[str]) -> bool:
    return not CUE_WORDS.isdisjoint(words) or any(
        word.endswith("ly") and len(word) > 4 and word not in NOT_MANNER_LY for word in words
    )


def dialogue(text: _Text) -> list[AdviceItem]:
    # Only the first line of each finding is quoted, but every line is counted. (`_spoken`, `Quoted` and
    # `count_words` inlined: this loop runs once per quoted part, 70 times in a 5,000-character dialogue.)
    long_first: Quoted | None = None
    long_lines = 0
    uncued_first: Quoted | None = None
    uncued = 0
    previous_end = 0
    padded = text.padded
    cjk = text.cjk
    window_chars = 20 * CUE_WORDS_BACK
    for start, end in _quote_spans(text.original):
        window_start = max(previous_end, start - window_chars)
        previous_end = end
        inside = padded[start + 2 : end]
        cjk_inside = cjk and _CJK_RUN.search(inside) is not None
        words = _count_spaced(inside, True) if cjk_inside else _count_plain(inside)
        if not words:
            continue
        # The last CUE_WORDS_BACK words of the window (rsplit stops there: the rest is one piece, dropped).
        before = padded[window_start + 1 : start + 1].rsplit(None, CUE_WORDS_BACK)[-CUE_WORDS_BACK:]
        if not TEXT_CUES.isdisjoint(before[-4:]):
            continue  # on-screen text or a name
        if words == 1:
            # One word is a line when it is said, or when it ends like a sentence.
            last = text.original[start + 1 : end - 1].rstrip()
            said = not (SPEECH_WORDS.isdisjoint(before[-3:]) and CUE_WORDS.isdisjoint(before[-3:]))
            if not (said or (last and last[-1] in _LINE_END_PUNCTUATION)):
                continue
        if words > LINE_WORDS_MAX:
            long_lines += 1
            long_first = long_first or Quoted(start, end, words)
        if not _has_cue(before) and not ENGLISH_HINTS.isdisjoint(before or text.words(start, end)):
            uncued += 1
            uncued_first = uncued_first or Quoted(start, end, words)
    items = []
    if long_first is not None:
        others = f" ({long_lines} lines are over {LINE_WORDS_MAX} words)" if long_lines > 1 else ""
        finding = f"A line of dialogue has {long_first.words} words{others}."
        items.append(_item("dialogue_too_long", finding, text.excerpt(long_first.start, long_first.end)))
    if uncued_first is not None:
        count = f"{uncued} lines of dialogue have" if uncued > 1 else "A line of dialogue has"
        finding = f"{count} no emotion or delivery before it (“whispers softly”, “laughs”, “nervously”)."
        items.append(_item("dialogue_without_cue", finding, text.excerpt(uncued_first.start, uncued_first.end)))
    return items


# --- quality constraints, the scene, length -------------------------------------------------------------

_ARTIFACTS = (
    r"distort\w*|jitter\w*|deform\w*|flicker\w*|warp\w*|morph\w*|artifacts?|artefacts?|glitch\w*|blur\w*|"
    r"shimmer\w*|stutter\w*|ghosting|judder\w*|shake|shaking|noise|extra\s+(?:fingers|limbs|hands)"
)
_CONSTRAINT = re.compile(
    rf"(?:no|without|avoid|zero|minimal|minimi[sz]e|reduce|free\s+of|prevent)\s+(?:[\w-]+\s+){{0,2}}?(?:{_ARTIFACTS})\b"
    r"|(?:faces?|identity|features|anatomy|hands|body|proportions)\s+(?:(?:stays?|remains?|is|are|kept)\s+)?"
    r"(?:stable|consistent|intact|unchanged)\b"
    r"|stable\s+(?:face|faces|identity|features|anatomy|proportions)\b"
)
_CONSTRAINT_ANCHORS = _set(
    "no without avoid zero minimal minimize minimise reduce free prevent faces face identity features anatomy "
    "hands body proportions stable"
)
_CONSTRAINT_ORDER = ("no", *sorted(_CONSTRAINT_ANCHORS - {"no"}))


def has_quality_constraints(text: _Text) -> bool:
    # The first constraint found is enough, so the likeliest start ("no distortion") is tried first.
    return any(
        _CONSTRAINT.match(text.lower, position)
        for word in _CONSTRAINT_ORDER
        if word in text.token_set
        for position in text.positions(word)
    )


def scene_description(text: _Text) -> AdviceItem | None:
    """Mostly what the image already shows: at least two words of setting, outfit or appearance and no word
    of motion, or at least four and three times the motion's."""
    scene = SCENE_WORDS.intersection(text.token_set)
    if len(scene) < 2:
        return None
    motion = len(MOTION_WORDS.intersection(text.token_set))
    if motion and (len(scene) < 4 or len(scene) < 3 * motion):
        return None
    first = min(next(text.positions(word), len(text.lower)) for word in scene)
    described = "mostly describes the image" if motion else "describes the image"
    return _item(
        "scene_description",
        f"The prompt {described} ({len(scene)} words of setting, outfit or appearance, {motion} of motion).",
        text.excerpt(*text.sentence(first, first + 1)) if first < len(text.lower) else None,
    )


# Every word any rule asks `_Text.token_set` about (has_any, anchored, `in`, intersections).
_LOOKED_UP: frozenset[str] = frozenset().union(
    _JUNK_TOKENS,
    _CAMERA_ANCHORS,
    _CAMERA_SUBJECT_WORDS,
    _PAIR_ANCHORS,
    _SCENE_ANCHORS,
    _SEQUENCE_WORDS,
    _SEQUENCE_ANCHORS,
    _VAGUE_ANCHORS,
    _VAGUE_OBJECT_DOERS,
    _VAGUE_ACTION_DOERS,
    _CONSTRAINT_ANCHORS,
    SCENE_WORDS,
    MOTION_WORDS,
)


def advise(prompt: str, *, duration_s: int | None = None, audio: bool | None = None) -> Advice:
    """The guide's advice on one prompt. `duration_s` is the clip's length if known; `audio` False (no sound
    is generated) skips the dialogue rules, which are about lip sync."""
    text = _Text(prompt)
    words = text.word_count
    if words == 0:
        return Advice(words=0, items=(_item("prompt_too_short", "The prompt has no words."),))
    starts, scene_changes = shot_starts(text)
    found = [
        several_camera_movements(text, starts),
        vague_motion(text),
        overloaded_clip(text, duration_s, starts, scene_changes),
        scene_description(text),
    ]
    if audio is not False:
        found += dialogue(text)
    if words < WORDS_MIN:
        found.append(_item("prompt_too_short", f"The prompt has {words} words."))
    elif words > WORDS_MAX:
        found.append(_item("prompt_too_long", f"The prompt has {words} words."))
    if not has_quality_constraints(text):
        found.append(_item("no_quality_constraints", "The prompt has no quality constraint line."))
    if duration_s is not None and duration_s > CLIP_S_MAX:
        found.append(_item("clip_too_long", f"The clip is {duration_s} s, longer than {CLIP_S_MAX} s."))
    # Warnings first, then tips, each in the order of RULES.
    items = sorted((item for item in found if item is not None), key=lambda item: _RANK[item.code])
    return Advice(words=words, items=tuple(items))
