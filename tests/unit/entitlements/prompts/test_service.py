"""The advice request read against the price table: mode and duration, their errors, and the published
schema of the request, which must accept exactly what the service accepts."""

from __future__ import annotations

from typing import Any

import pytest

import pricing
from entitlements.errors import ValidationFailed
from entitlements.prompts import advice_items, request_json_schema
from entitlements.prompts.schemas import AdviceCreate
from entitlements.prompts.service import (
    ADVICE_CACHE_ENTRIES_DEFAULT,
    AdviceCache,
    advise,
    cache,
    clip_of,
    configure_cache,
    fresh_advice,
)

DIALOGUE = "She says 'I really cannot believe that you came all the way here tonight'. No jitter."


@pytest.fixture(scope="module")
def table() -> pricing.PriceTable:
    (only,) = pricing.load_tables()
    return only


@pytest.mark.parametrize(
    ("mode", "duration_s", "clip"),
    [
        (None, None, (None, None)),
        (None, 4, (4, None)),
        (None, 15, (15, None)),
        ("advanced", None, (None, True)),
        ("advanced", 12, (12, True)),
        # Adult is 8 s without sound: the dialogue rules, which are about lip sync, do not apply.
        ("adult", None, (8, False)),
        ("adult", 8, (8, False)),
    ],
)
def test_the_mode_fills_in_the_clip(
    table: pricing.PriceTable, mode: str | None, duration_s: int | None, clip: tuple[int | None, bool | None]
) -> None:
    assert clip_of(table, mode=mode, duration_s=duration_s) == clip


@pytest.mark.parametrize(
    ("mode", "duration_s", "field", "allowed"),
    [
        ("cartoon", None, "mode", ["advanced", "adult"]),
        ("ADVANCED", 4, "mode", ["advanced", "adult"]),
        ("advanced", 3, "duration_s", list(range(4, 16))),
        ("advanced", 16, "duration_s", list(range(4, 16))),
        ("adult", 4, "duration_s", [8]),
        (None, 3, "duration_s", list(range(4, 16))),
        (None, 2**63, "duration_s", list(range(4, 16))),
        (None, -1, "duration_s", list(range(4, 16))),
    ],
)
def test_a_mode_or_duration_the_table_does_not_offer_is_named_with_the_allowed_values(
    table: pricing.PriceTable, mode: str | None, duration_s: int | None, field: str, allowed: list[Any]
) -> None:
    with pytest.raises(ValidationFailed) as refused:
        clip_of(table, mode=mode, duration_s=duration_s)
    assert refused.value.field == field
    assert refused.value.extra["allowed"] == allowed
    assert refused.value.detail.startswith(field)


def test_advice_follows_the_modes_clip(table: pricing.PriceTable) -> None:
    advanced = {
        item.code for item in advise(table, AdviceCreate(prompt=DIALOGUE, mode="advanced", duration_s=12)).advice
    }
    assert {"dialogue_too_long", "clip_too_long"} <= advanced
    adult = {item.code for item in advise(table, AdviceCreate(prompt=DIALOGUE, mode="adult")).advice}
    assert adult.isdisjoint({"dialogue_too_long", "dialogue_without_cue", "clip_too_long"})
    answer = advise(table, AdviceCreate(prompt=DIALOGUE))
    assert answer.words == 16
    assert [item.code for item in answer.advice] == [
        item.code for item in advice_items(DIALOGUE, duration_s=None, audio=None)
    ]


def _valid(schema: dict[str, Any], body: dict[str, Any]) -> bool:
    """The request schema read as JSON Schema for these two properties (a validator for its own shape)."""

    def matches(variant: dict[str, Any]) -> bool:
        if any(name not in body for name in variant.get("required", ())):
            return False
        for name, rule in variant.get("properties", {}).items():
            if name not in body:
                continue
            value = body[name]
            if "const" in rule and value != rule["const"]:
                return False
            if "enum" in rule and value not in rule["enum"]:
                return False
            if rule.get("type") == "null" and value is not None:
                return False
            if isinstance(value, int) and not rule.get("minimum", value) <= value <= rule.get("maximum", value):
                return False
        return True

    return matches(schema) and sum(matches(variant) for variant in schema["oneOf"]) == 1


def test_the_published_schema_accepts_exactly_what_the_service_accepts(table: pricing.PriceTable) -> None:
    schema = request_json_schema(table)
    for mode in (None, "advanced", "adult", "cartoon", "absent"):
        for duration_s in (None, "absent", *range(0, 18)):
            body = {name: value for name, value in (("mode", mode), ("duration_s", duration_s)) if value != "absent"}
            try:
                clip_of(table, mode=body.get("mode"), duration_s=body.get("duration_s"))
                accepted = True
            except ValidationFailed:
                accepted = False
            assert _valid(schema, body) is accepted, body


@pytest.mark.parametrize("entries_max", [2, 3, 512])
def test_the_cache_keeps_at_most_its_bound_and_forgets_the_least_recent(entries_max: int) -> None:
    cache = AdviceCache(entries_max)

    def ask(number: int) -> None:
        cache.answer((f"She turns slowly, take {number}.", 4, True))

    for number in range(entries_max):
        ask(number)
    assert len(cache) == entries_max  # at the bound
    ask(0)  # now the most recent
    ask(entries_max)  # one past the bound: the least recent goes
    assert len(cache) == entries_max
    misses = cache.misses
    ask(0)
    assert cache.misses == misses  # kept
    ask(1)
    assert cache.misses == misses + 1  # forgotten, or never kept


def test_a_cache_of_none_keeps_nothing_and_still_answers() -> None:
    cache = AdviceCache(0)
    first = cache.answer((DIALOGUE, 12, True))
    assert cache.answer((DIALOGUE, 12, True)) == first
    assert (len(cache), cache.hits, cache.misses) == (0, 0, 2)


def test_a_kept_answer_is_the_answer_and_each_reader_gets_its_own_list() -> None:
    configure_cache(8)
    fresh = advice_items(DIALOGUE, duration_s=12, audio=True)
    kept = advice_items(DIALOGUE, duration_s=12, audio=True)
    assert cache().hits == 1
    assert kept == fresh
    assert kept is not fresh
    kept.clear()
    assert advice_items(DIALOGUE, duration_s=12, audio=True) == fresh
    assert [*fresh_advice(DIALOGUE, 12, True)[1]] == fresh
    # The clip is part of the question: without sound there is no dialogue advice.
    silent = {item.code for item in advice_items(DIALOGUE, duration_s=12, audio=False)}
    assert silent.isdisjoint({"dialogue_too_long", "dialogue_without_cue"})
    configure_cache(ADVICE_CACHE_ENTRIES_DEFAULT)
