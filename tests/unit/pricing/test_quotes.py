"""quote() and current_table() against the published 2026-11-01 table."""

import itertools
import json
from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest

from pricing import (
    Cell,
    InvalidPriceTable,
    InvalidQuoteRequest,
    PriceTable,
    Quote,
    current_table,
    load_tables,
    quote,
)

# The published prices, written out here independently of the table file, so that a changed file or
# a wrong formula fails these tests.
PER_SECOND = {"480p": 50, "720p": 90, "1080p": 160}
AUDIO_PER_SECOND = 20
ADULT_FLAT = 600
ADVANCED_DURATIONS = list(range(4, 16))
ADVANCED_GRID = list(itertools.product(PER_SECOND, ADVANCED_DURATIONS, [True, False]))
VERSION = "2026-11-01"


def expected_advanced_moments(resolution: str, duration_s: int, audio: bool) -> int:
    return duration_s * (PER_SECOND[resolution] + (AUDIO_PER_SECOND if audio else 0))


@pytest.fixture(scope="module")
def table() -> PriceTable:
    tables = load_tables()
    assert [loaded.version for loaded in tables] == [VERSION]
    return tables[0]


def test_published_table_header(table: PriceTable) -> None:
    assert table.version == VERSION
    assert table.effective_from == datetime(2026, 11, 1, tzinfo=UTC)
    assert table.currency == "moments"


def test_grid_is_exactly_72_advanced_cells_and_1_adult(table: PriceTable) -> None:
    assert len(ADVANCED_GRID) == 72
    expected = {("advanced", *point) for point in ADVANCED_GRID} | {("adult", "720p", 8, False)}
    actual = [(cell.mode, cell.resolution, cell.duration_s, cell.audio) for cell in table.cells]
    assert len(actual) == 73
    assert set(actual) == expected


@pytest.mark.parametrize(("resolution", "duration_s", "audio"), ADVANCED_GRID)
def test_every_advanced_cell_is_priced_by_the_formula(
    table: PriceTable, resolution: str, duration_s: int, audio: bool
) -> None:
    moments = expected_advanced_moments(resolution, duration_s, audio)
    assert quote(table, mode="advanced", resolution=resolution, duration_s=duration_s, audio=audio) == Quote(
        moments=moments,
        price_version=VERSION,
        mode="advanced",
        resolution=resolution,
        duration_s=duration_s,
        audio=audio,
    )
    assert table.find_cell("advanced", resolution, duration_s, audio) == Cell(
        mode="advanced", resolution=resolution, duration_s=duration_s, audio=audio, moments=moments
    )


def test_adult_cell_is_flat(table: PriceTable) -> None:
    explicit = quote(table, mode="adult", resolution="720p", duration_s=8, audio=False)
    assert explicit.moments == ADULT_FLAT
    assert table.find_cell("adult", "720p", 8, False) == Cell(
        mode="adult", resolution="720p", duration_s=8, audio=False, moments=ADULT_FLAT
    )


def test_known_prices(table: PriceTable) -> None:
    assert quote(table, mode="advanced", resolution="1080p", duration_s=15, audio=True).moments == 2700
    assert quote(table, mode="advanced", resolution="480p", duration_s=4, audio=False).moments == 200


def test_adult_defaults_every_field(table: PriceTable) -> None:
    assert quote(table, mode="adult") == Quote(
        moments=ADULT_FLAT, price_version=VERSION, mode="adult", resolution="720p", duration_s=8, audio=False
    )


def test_advanced_audio_defaults_to_on(table: PriceTable) -> None:
    defaulted = quote(table, mode="advanced", resolution="720p", duration_s=10)
    assert defaulted.audio is True
    assert defaulted.moments == expected_advanced_moments("720p", 10, True)


def test_quote_encodes_to_the_api_shape(table: PriceTable) -> None:
    encoded = msgspec.json.decode(msgspec.json.encode(quote(table, mode="adult")))
    assert encoded == {
        "moments": 600,
        "price_version": VERSION,
        "mode": "adult",
        "resolution": "720p",
        "duration_s": 8,
        "audio": False,
    }


def refused(table: PriceTable, **request: object) -> InvalidQuoteRequest:
    with pytest.raises(InvalidQuoteRequest) as caught:
        quote(table, **request)  # type: ignore[arg-type]
    return caught.value


@pytest.mark.parametrize("resolution", ["480p", "1080p", "4k", ""])
def test_adult_refuses_other_resolutions(table: PriceTable, resolution: str) -> None:
    error = refused(table, mode="adult", resolution=resolution)
    assert error.field == "resolution"
    assert error.allowed == ["720p"]
    assert error.message == f'resolution "{resolution}" is not allowed for mode adult; allowed: 720p'
    assert str(error) == error.message


@pytest.mark.parametrize("duration_s", [d for d in [*ADVANCED_DURATIONS, 3, 16, 0, -1] if d != 8])
def test_adult_refuses_other_durations(table: PriceTable, duration_s: int) -> None:
    error = refused(table, mode="adult", duration_s=duration_s)
    assert error.field == "duration_s"
    assert error.allowed == [8]
    assert error.message == f"duration_s {duration_s} is not allowed for mode adult; allowed: 8"


def test_adult_refuses_audio_on(table: PriceTable) -> None:
    error = refused(table, mode="adult", audio=True)
    assert error.field == "audio"
    assert error.allowed == [False]
    assert error.message == "audio true is not allowed for mode adult; allowed: false"


@pytest.mark.parametrize("duration_s", [3, 16, 0, -1, True, False, 4.0, "4"])
def test_advanced_refuses_durations_outside_4_to_15(table: PriceTable, duration_s: object) -> None:
    error = refused(table, mode="advanced", resolution="720p", duration_s=duration_s)
    assert error.field == "duration_s"
    assert error.allowed == ADVANCED_DURATIONS
    assert error.message == (
        f"duration_s {json.dumps(duration_s)} is not allowed for mode advanced; allowed: whole seconds from 4 to 15"
    )


@pytest.mark.parametrize("resolution", ["4k", "720", "720P", ""])
def test_advanced_refuses_unknown_resolutions(table: PriceTable, resolution: str) -> None:
    error = refused(table, mode="advanced", resolution=resolution, duration_s=8)
    assert error.field == "resolution"
    assert error.allowed == ["480p", "720p", "1080p"]


@pytest.mark.parametrize("audio", [1, 0, "true", "yes"])
def test_advanced_refuses_non_boolean_audio(table: PriceTable, audio: object) -> None:
    error = refused(table, mode="advanced", resolution="720p", duration_s=8, audio=audio)
    assert error.field == "audio"
    assert error.allowed == [True, False]


@pytest.mark.parametrize("mode", ["ADVANCED", "standard", "", None, 1])
def test_unknown_mode(table: PriceTable, mode: object) -> None:
    error = refused(table, mode=mode, resolution="720p", duration_s=8)
    assert error.field == "mode"
    assert error.allowed == ["advanced", "adult"]
    # Values as the client wrote them in JSON, allowed values as plain text: no Python reprs.
    assert error.message == f"mode {json.dumps(mode)} is not known; allowed: advanced, adult"


def test_advanced_requires_resolution(table: PriceTable) -> None:
    error = refused(table, mode="advanced", duration_s=8)
    assert error.field == "resolution"
    assert error.allowed == ["480p", "720p", "1080p"]
    assert error.message == "resolution is required for mode advanced"


def test_advanced_requires_duration(table: PriceTable) -> None:
    error = refused(table, mode="advanced", resolution="720p")
    assert error.field == "duration_s"
    assert error.allowed == ADVANCED_DURATIONS
    assert error.message == "duration_s is required for mode advanced"


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"mode": "nope", "resolution": "4k", "duration_s": 99, "audio": 1}, "mode"),
        ({"mode": "advanced", "resolution": "4k", "duration_s": 99, "audio": 1}, "resolution"),
        ({"mode": "advanced", "duration_s": 99, "audio": 1}, "resolution"),
        ({"mode": "advanced", "resolution": "720p", "duration_s": 99, "audio": 1}, "duration_s"),
        ({"mode": "adult", "resolution": "720p", "duration_s": 8, "audio": 1}, "audio"),
    ],
)
def test_fields_are_checked_in_order(table: PriceTable, request_fields: dict[str, object], field: str) -> None:
    assert refused(table, **request_fields).field == field


def test_find_cell_refuses_cross_typed_keys(table: PriceTable) -> None:
    assert table.find_cell("advanced", "720p", 8, True) is not None
    # True == 1 and 1 == True hash alike: neither may stand in for the other.
    assert table.find_cell("advanced", "720p", True, True) is None
    assert table.find_cell("advanced", "720p", 8, 1) is None  # type: ignore[arg-type]
    assert table.find_cell("advanced", "720p", 16, True) is None
    assert table.find_cell("adult", "720p", 8, True) is None


def make_table(version: str, effective_from: datetime) -> PriceTable:
    return PriceTable(version=version, effective_from=effective_from, currency="moments", modes=(), cells=())


NOVEMBER = datetime(2026, 11, 1, tzinfo=UTC)
JANUARY = datetime(2027, 1, 1, tzinfo=UTC)
UTC_MINUS_5 = timezone(timedelta(hours=-5))
TABLES = (make_table("2027-01-01", JANUARY), make_table("2026-11-01", NOVEMBER))  # not sorted on purpose


@pytest.mark.parametrize(
    ("now", "version"),
    [
        (NOVEMBER, "2026-11-01"),
        (JANUARY - timedelta(microseconds=1), "2026-11-01"),
        (JANUARY, "2027-01-01"),
        (JANUARY + timedelta(days=400), "2027-01-01"),
        # The same instants as JANUARY and just before it, seen from UTC-5: compared as instants.
        (datetime(2026, 12, 31, 19, tzinfo=UTC_MINUS_5), "2027-01-01"),
        (datetime(2026, 12, 31, 18, 59, 59, tzinfo=UTC_MINUS_5), "2026-11-01"),
    ],
)
def test_current_table_picks_the_latest_in_effect(now: datetime, version: str) -> None:
    assert current_table(TABLES, now).version == version


def test_current_table_refuses_when_none_is_in_effect() -> None:
    with pytest.raises(InvalidPriceTable, match="no price table is in effect"):
        current_table(TABLES, NOVEMBER - timedelta(microseconds=1))
    with pytest.raises(InvalidPriceTable):
        current_table((), JANUARY)


def test_current_table_refuses_a_naive_now() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        current_table(TABLES, datetime(2027, 6, 1))


def test_published_table_is_in_effect_from_its_start(table: PriceTable) -> None:
    assert current_table((table,), NOVEMBER) is table
    with pytest.raises(InvalidPriceTable):
        current_table((table,), NOVEMBER - timedelta(seconds=1))
