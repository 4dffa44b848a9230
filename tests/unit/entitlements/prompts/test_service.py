"""The advice request read against the price table: mode and duration, their errors, and the published
schema of the request, which must accept exactly what the service accepts."""

from __future__ import annotations

from typing import Any

import pytest

import pricing
from entitlements.errors import ValidationFailed
from entitlements.prompts import advice_items, request_json_schema
from entitlements.prompts.schemas import AdviceCreate
from entitlements.prompts.service import ADVICE_CACHE_ENTRIES_MAX, advise, cache_info, clear_cache, clip_of

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


def test_the_cache_keeps_at_most_its_bound_and_forgets_the_least_recent() -> None:
    clear_cache()
    limit = ADVICE_CACHE_ENTRIES_MAX
    for number in range(limit):
        advice_items(f"She turns slowly, take {number}.", duration_s=4, audio=True)
    assert cache_info().currsize == limit
    advice_items("She turns slowly, take 0.", duration_s=4, audio=True)  # now the most recent
    advice_items(f"She turns slowly, take {limit}.", duration_s=4, audio=True)  # one past the bound
    assert cache_info().currsize == limit
    misses = cache_info().misses
    advice_items("She turns slowly, take 0.", duration_s=4, audio=True)
    assert cache_info().misses == misses  # kept
    advice_items("She turns slowly, take 1.", duration_s=4, audio=True)
    assert cache_info().misses == misses + 1  # forgotten: it was the least recent
    clear_cache()


def test_a_kept_answer_is_the_answer_and_each_reader_gets_its_own_list() -> None:
    clear_cache()
    fresh = advice_items(DIALOGUE, duration_s=12, audio=True)
    kept = advice_items(DIALOGUE, duration_s=12, audio=True)
    assert kept == fresh
    assert kept is not fresh
    kept.clear()
    assert advice_items(DIALOGUE, duration_s=12, audio=True) == fresh
    # The clip is part of the question: without sound there is no dialogue advice.
    silent = {item.code for item in advice_items(DIALOGUE, duration_s=12, audio=False)}
    assert silent.isdisjoint({"dialogue_too_long", "dialogue_without_cue"})
