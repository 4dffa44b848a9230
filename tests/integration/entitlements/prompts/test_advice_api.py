"""POST /v1/prompts/advice and the advice on a generation, through HTTP against a migrated database.

Advice is free, never stored and never a gate: any role may ask, nothing is written, a prompt full of
warnings is generated like any other, and every reader of a generation sees the same advice.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import ledger
from entitlements.generations import settle_success
from entitlements.keys import ROLES
from entitlements.prompts.examples import DONT_EXAMPLES, EXAMPLE_PROMPTS
from tests.support.generations import (
    assert_audit_ok,
    assert_nothing_held,
    balance,
    body,
    create,
    create_ok,
    fresh_key,
    get_generation,
    premium_user,
    price_of,
)
from tests.support.http import Api, api_for

USER = "user-advice"
ADVICE = "/v1/prompts/advice"
# Every warning the guide has, in one prompt.
BAD_PROMPT = (
    "Dolly in while panning left and tilting up. Everything moving at once. She says 'I really cannot believe "
    "that you came all the way here tonight'. Cut to the kitchen."
)


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[Api]:
    async with api_for(database_url) as client:
        yield client


async def advise(api: Api, request: dict[str, Any], role: str = "service") -> dict[str, Any]:
    response = await api.post(ADVICE, role, request)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def codes(advice: list[dict[str, Any]]) -> list[str]:
    return [item["code"] for item in advice]


# The calling key's rate-limit state, which every limited request moves (entitlements/limits): not advice.
NOT_ADVICE = {"rate_limits"}


async def row_counts(pool: asyncpg.Pool) -> dict[str, int]:
    tables = await pool.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")
    return {
        row["tablename"]: await pool.fetchval(f'SELECT count(*) FROM "{row["tablename"]}"')
        for row in tables
        if row["tablename"] not in NOT_ADVICE
    }


# --- the endpoint -----------------------------------------------------------------------------------------


async def test_any_role_gets_the_same_advice_and_nothing_is_written(api: Api, pool: asyncpg.Pool) -> None:
    before = await row_counts(pool)
    answers = [await advise(api, {"prompt": BAD_PROMPT, "duration_s": 12}, role) for role in ROLES]
    assert all(answer == answers[0] for answer in answers)
    assert answers[0]["words"] == 30
    assert codes(answers[0]["advice"]) == [
        "several_camera_movements",
        "dialogue_too_long",
        "vague_motion",
        "overloaded_clip",
        "prompt_too_short",
        "dialogue_without_cue",
        "no_quality_constraints",
        "clip_too_long",
    ]
    for item in answers[0]["advice"]:
        assert set(item) == {"code", "severity", "message", "excerpt"}
        assert "The guide: “" in item["message"]
        assert item["excerpt"] is None or item["excerpt"] in BAD_PROMPT
    assert await row_counts(pool) == before
    response = await api.client.post(ADVICE, json={"prompt": BAD_PROMPT})
    assert response.status_code == 401


@pytest.mark.parametrize("name", EXAMPLE_PROMPTS)
async def test_the_guides_examples_through_the_api(api: Api, name: str) -> None:
    answer = await advise(api, {"prompt": EXAMPLE_PROMPTS[name], "mode": "advanced", "duration_s": 6})
    assert codes(answer["advice"]) == ["prompt_too_short"]
    for prompt, code in DONT_EXAMPLES.items():
        assert code in codes((await advise(api, {"prompt": prompt}))["advice"])


async def test_the_mode_and_duration_narrow_the_advice(api: Api) -> None:
    line = "She says 'I really cannot believe that you came all the way here tonight'"
    advanced = codes((await advise(api, {"prompt": line, "mode": "advanced", "duration_s": 10}))["advice"])
    assert {"dialogue_too_long", "clip_too_long"} <= set(advanced)
    adult = codes((await advise(api, {"prompt": line, "mode": "adult"}))["advice"])
    assert {"dialogue_too_long", "dialogue_without_cue", "clip_too_long"}.isdisjoint(adult)
    unknown = codes((await advise(api, {"prompt": line, "mode": None, "duration_s": None}))["advice"])
    assert "dialogue_too_long" in unknown
    assert "clip_too_long" not in unknown


async def test_a_prompt_at_5000_characters_is_advised_and_past_it_refused(api: Api) -> None:
    at_limit = ("She turns slowly and smiles. " * 200)[:5_000]
    answer = await advise(api, {"prompt": at_limit})
    assert "prompt_too_long" in codes(answer["advice"])
    # Characters, not bytes: 5,000 four-byte emoji are at the limit too (and one word, with no space in it).
    emoji = await advise(api, {"prompt": "\U0001f600" * 5_000})
    assert emoji["words"] == 1
    response = await api.post(ADVICE, "service", {"prompt": at_limit + "x"})
    assert response.status_code == 422
    assert [error["field"] for error in response.json()["errors"]] == ["prompt"]


@pytest.mark.parametrize(
    ("request_body", "field"),
    [
        ({}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x" * 5_001}, "prompt"),
        ({"prompt": "a\x00b"}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": None}, "prompt"),
        ({"prompt": ["a"]}, "prompt"),
        ({"prompt": "a", "colour": "red"}, "colour"),
        ({"prompt": "a", "mode": "cartoon"}, "mode"),
        ({"prompt": "a", "mode": 1}, "mode"),
        ({"prompt": "a", "mode": "m" * 51}, "mode"),
        ({"prompt": "a", "duration_s": "4"}, "duration_s"),
        ({"prompt": "a", "duration_s": 4.5}, "duration_s"),
        ({"prompt": "a", "duration_s": True}, "duration_s"),
        ({"prompt": "a", "duration_s": 3}, "duration_s"),
        ({"prompt": "a", "duration_s": 10**30}, "duration_s"),
        ({"prompt": "a", "mode": "advanced", "duration_s": 16}, "duration_s"),
        ({"prompt": "a", "mode": "adult", "duration_s": 4}, "duration_s"),
    ],
)
async def test_bad_input_is_422_naming_the_field(api: Api, request_body: dict[str, Any], field: str) -> None:
    response = await api.post(ADVICE, "support", request_body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["code"] == "validation_failed"
    assert [error["field"] for error in problem["errors"]] == [field]


@pytest.mark.parametrize(
    "raw",
    [b"{", b'{"prompt": "\xff"}', b'{"prompt": "\\ud800"}', b"[" * 10_000 + b"]" * 10_000, b'"prompt"'],
    ids=["truncated", "invalid-utf8", "lone-surrogate", "deep-nesting", "not-an-object"],
)
async def test_hostile_bodies_are_4xx_never_500(api: Api, raw: bytes) -> None:
    headers = api.headers("finance") | {"Content-Type": "application/json"}
    response = await api.client.post(ADVICE, content=raw, headers=headers)
    assert response.status_code == 422, response.text


# --- advice on a generation -----------------------------------------------------------------------------


async def test_a_generation_carries_the_advice_of_its_prompt_and_every_reader_sees_it(api: Api) -> None:
    request = body(prompt=BAD_PROMPT, duration_s=12)
    await premium_user(api, USER, await price_of(api, request))
    expected = (await advise(api, {"prompt": BAD_PROMPT, "mode": "advanced", "duration_s": 12}))["advice"]
    created = await create_ok(api, USER, request)
    assert created["advice"] == expected
    # Worked out again from the stored prompt by every later reader.
    assert (await get_generation(api, created["id"]))["advice"] == expected
    page = (await api.get(f"/v1/users/{USER}/generations", "support")).json()
    assert [item["advice"] for item in page["items"]] == [expected]


async def test_adult_generations_get_the_advice_of_a_silent_8_second_clip(api: Api) -> None:
    line = "She says 'I really cannot believe that you came all the way here tonight'"
    request = body(prompt=line, mode="adult", resolution=None, duration_s=None)
    await premium_user(api, USER, await price_of(api, request))
    created = await create_ok(api, USER, request)
    assert {"dialogue_too_long", "dialogue_without_cue", "clip_too_long"}.isdisjoint(codes(created["advice"]))


async def test_advice_is_never_a_gate(api: Api, pool: asyncpg.Pool) -> None:
    request = body(prompt=BAD_PROMPT)
    price = await price_of(api, request)
    await premium_user(api, USER, price)
    created = await create_ok(api, USER, request)
    assert created["status"] == "queued"
    assert "warning" in {item["severity"] for item in created["advice"]}
    assert await balance(api, USER) == {"available": 0, "held": price}
    # And it never lets through what the gate refuses: the same prompt without the moments is 402.
    response = await create(api, USER, request)
    assert response.status_code == 402, response.text
    assert response.json()["code"] == "insufficient_moments"
    await assert_audit_ok(api)


async def test_a_replay_carries_the_advice_even_if_stored_before_advice_existed(api: Api, pool: asyncpg.Pool) -> None:
    request = body(prompt=BAD_PROMPT)
    price = await price_of(api, request)
    await premium_user(api, USER, price)
    key = fresh_key("advice")
    created = (await create(api, USER, request, key)).json()
    assert created["advice"]
    # An answer stored by a version without advice: the replay decodes it and adds today's advice.
    changed = await pool.execute(
        "UPDATE api_idempotency SET response_body = response_body - 'advice' WHERE operation = 'create_generation'"
    )
    assert changed == "UPDATE 1"
    replay = await create(api, USER, request, key)
    assert replay.status_code == 202, replay.text
    assert replay.json() == created
    await assert_nothing_held(api, pool, "nobody", available=0, transactions=0)


async def test_a_refund_shows_the_generation_with_its_advice(api: Api, pool: asyncpg.Pool, tmp_path: Path) -> None:
    request = body(prompt=EXAMPLE_PROMPTS["with camera movement"])
    await premium_user(api, USER, await price_of(api, request))
    created = await create_ok(api, USER, request)
    video = tmp_path / "video.mp4"
    video.write_bytes(b"not really an mp4")
    async with ledger.Ledger(pool) as ledger_service:
        assert await settle_success(pool, ledger_service, uuid.UUID(created["id"]), video, len(b"video"))
    response = await api.post(
        f"/v1/generations/{created['id']}/refund", "support", {"reason": "test"}, fresh_key("refund")
    )
    assert response.status_code == 201, response.text
    assert response.json()["generation"]["advice"] == created["advice"]
    assert codes(created["advice"]) == ["prompt_too_short"]
    await assert_audit_ok(api)
