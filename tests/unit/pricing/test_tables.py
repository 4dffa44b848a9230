"""load_tables() refuses every kind of broken price table file, naming the file and what is wrong."""

from datetime import UTC, datetime
from pathlib import Path

import pytest

from pricing import CELL_MOMENTS_MAX, InvalidPriceTable, PriceTable, load_tables, quote
from pricing.price_table import GRID_CELLS_MAX, TABLES_DIRECTORY, _sorted_and_distinct

VALID = """\
version = "2026-11-01"
effective_from = 2026-11-01T00:00:00Z
currency = "moments"

[modes.advanced]
resolutions = ["480p", "720p", "1080p"]
duration_s = { min = 4, max = 15 }
audio = { allowed = [true, false], default = true }
price = { per_second = { "480p" = 50, "720p" = 90, "1080p" = 160 }, audio_per_second = 20 }

[modes.adult]
resolutions = ["720p"]
duration_s = { min = 8, max = 8 }
audio = { allowed = [false], default = false }
price = { flat = 600 }
"""
FILE = "2026-11-01.toml"


def write(directory: Path, text: str, name: str = FILE) -> Path:
    path = directory / name
    path.write_text(text)
    return path


def edited(old: str, new: str, text: str = VALID) -> str:
    # Fails loudly if the edit does not apply, so that no test passes by testing the valid file.
    assert text.count(old) == 1, old
    return text.replace(old, new)


def refusal(directory: Path, text: str, name: str = FILE) -> str:
    write(directory, text, name)
    with pytest.raises(InvalidPriceTable) as caught:
        load_tables(directory)
    return str(caught.value)


def test_the_valid_text_loads(tmp_path: Path) -> None:
    write(tmp_path, VALID)
    (table,) = load_tables(tmp_path)
    assert table.version == "2026-11-01"
    assert len(table.cells) == 73


def test_the_published_file_is_the_valid_text() -> None:
    assert (TABLES_DIRECTORY / FILE).read_text() == VALID


def test_missing_per_second_price_names_the_cell(tmp_path: Path) -> None:
    message = refusal(tmp_path, edited(', "1080p" = 160 }', " }"))
    assert message == "2026-11-01.toml: advanced/1080p/4s/audio=on: no per_second price for resolution '1080p'"


def test_missing_audio_price_names_the_cell(tmp_path: Path) -> None:
    message = refusal(tmp_path, edited(", audio_per_second = 20 }", " }"))
    assert message.startswith("2026-11-01.toml: advanced/480p/4s/audio=on: ")
    assert "audio_per_second" in message


@pytest.mark.parametrize("bad", ["0", "-50", "50.0", "50.5", "true", '"50"'])
def test_refuses_a_per_second_price_that_is_not_a_positive_integer(tmp_path: Path, bad: str) -> None:
    message = refusal(tmp_path, edited('"720p" = 90', f'"720p" = {bad}'))
    assert message.startswith("2026-11-01.toml: modes.advanced: price.per_second['720p'] must be a positive")


@pytest.mark.parametrize("bad", ["0", "-20", "20.0", "true"])
def test_refuses_an_audio_price_that_is_not_a_positive_integer(tmp_path: Path, bad: str) -> None:
    message = refusal(tmp_path, edited("audio_per_second = 20", f"audio_per_second = {bad}"))
    assert message.startswith("2026-11-01.toml: modes.advanced: ")
    assert "$.price.audio_per_second" in message


@pytest.mark.parametrize("bad", ["0", "-600", "600.0", "true", '"600"'])
def test_refuses_a_flat_price_that_is_not_a_positive_integer(tmp_path: Path, bad: str) -> None:
    message = refusal(tmp_path, edited("flat = 600", f"flat = {bad}"))
    assert message.startswith("2026-11-01.toml: modes.adult: ")
    assert "$.price.flat" in message


def test_refuses_a_cell_above_the_moments_bound(tmp_path: Path) -> None:
    # 15 s x (66_650 + 20) = 1_000_050: only the 15 s audio-on 1080p cell breaks the bound.
    message = refusal(tmp_path, edited('"1080p" = 160', '"1080p" = 66650'))
    assert CELL_MOMENTS_MAX == 1_000_000
    assert message == "2026-11-01.toml: advanced/1080p/15s/audio=on: 1000050 moments is outside 1..1000000"


def test_refuses_a_flat_price_above_the_moments_bound(tmp_path: Path) -> None:
    message = refusal(tmp_path, edited("flat = 600", f"flat = {CELL_MOMENTS_MAX + 1}"))
    assert message.startswith("2026-11-01.toml: adult/720p/8s/audio=off: ")


def test_refuses_min_above_max(tmp_path: Path) -> None:
    message = refusal(tmp_path, edited("min = 4, max = 15", "min = 15, max = 4"))
    assert message == "2026-11-01.toml: modes.advanced: duration_s min 15 is above max 4"


@pytest.mark.parametrize("bad", ["0", "-4", "4.0", "4.5", "true"])
def test_refuses_a_duration_that_is_not_a_positive_whole_number(tmp_path: Path, bad: str) -> None:
    message = refusal(tmp_path, edited("min = 4, max = 15", f"min = {bad}, max = 15"))
    assert message.startswith("2026-11-01.toml: modes.advanced: ")
    assert "$.duration_s.min" in message


def test_refuses_a_version_that_differs_from_the_file_name(tmp_path: Path) -> None:
    message = refusal(tmp_path, edited('version = "2026-11-01"', 'version = "2026-11-02"'))
    assert message == "2026-11-01.toml: version '2026-11-02' does not match the file name '2026-11-01'"


@pytest.mark.parametrize(
    "bad", ["2026-11-01T00:00:00", '"2026-11-01T00:00:00Z"', "2026-11-01", "00:00:00", "1793491200"]
)
def test_refuses_an_effective_from_that_is_not_a_zoned_datetime(tmp_path: Path, bad: str) -> None:
    message = refusal(tmp_path, edited("effective_from = 2026-11-01T00:00:00Z", f"effective_from = {bad}"))
    assert message.startswith("2026-11-01.toml: ")
    assert "$.effective_from" in message


def test_effective_from_is_normalised_to_utc(tmp_path: Path) -> None:
    write(tmp_path, edited("2026-11-01T00:00:00Z", "2026-11-01T01:00:00+01:00"))
    (table,) = load_tables(tmp_path)
    assert table.effective_from == datetime(2026, 11, 1, tzinfo=UTC)
    assert table.effective_from.tzinfo is UTC


def test_refuses_duplicate_versions() -> None:
    # One directory cannot hold two files with one stem (and the stem must equal the version), so the
    # uniqueness check is exercised directly.
    table = PriceTable(
        version="v1", effective_from=datetime(2026, 1, 1, tzinfo=UTC), currency="moments", modes=(), cells=()
    )
    later = PriceTable(
        version="v1", effective_from=datetime(2027, 1, 1, tzinfo=UTC), currency="moments", modes=(), cells=()
    )
    with pytest.raises(InvalidPriceTable, match="version 'v1' is published more than once"):
        _sorted_and_distinct([table, later])


def test_refuses_two_tables_in_effect_from_the_same_instant(tmp_path: Path) -> None:
    write(tmp_path, VALID)
    message = refusal(tmp_path, edited('version = "2026-11-01"', 'version = "b"'), name="b.toml")
    assert message.startswith("b.toml: effective_from 2026-11-01T00:00:00+00:00 is the same as version ")


def test_tables_are_sorted_by_effective_from_not_by_file_name(tmp_path: Path) -> None:
    later = edited("effective_from = 2026-11-01T00:00:00Z", "effective_from = 2027-01-01T00:00:00Z")
    write(tmp_path, edited('version = "2026-11-01"', 'version = "a"', later), name="a.toml")
    write(tmp_path, edited('version = "2026-11-01"', 'version = "b"'), name="b.toml")
    assert [table.version for table in load_tables(tmp_path)] == ["b", "a"]


@pytest.mark.parametrize("key", ["version", "effective_from", "currency"])
def test_refuses_a_missing_header_key(tmp_path: Path, key: str) -> None:
    line = next(line for line in VALID.splitlines() if line.startswith(f"{key} ="))
    message = refusal(tmp_path, edited(line + "\n", ""))
    assert message == f"2026-11-01.toml: Object missing required field `{key}`"


@pytest.mark.parametrize("key", ["resolutions", "duration_s", "audio", "price"])
def test_refuses_a_missing_mode_key(tmp_path: Path, key: str) -> None:
    advanced = VALID[VALID.index("[modes.advanced]") : VALID.index("[modes.adult]")]
    line = next(line for line in advanced.splitlines() if line.startswith(f"{key} ="))
    message = refusal(tmp_path, edited(line + "\n", "", VALID))
    assert message == f"2026-11-01.toml: modes.advanced: Object missing required field `{key}`"


def test_refuses_no_modes(tmp_path: Path) -> None:
    header = VALID[: VALID.index("[modes.advanced]")]
    assert "modes" in refusal(tmp_path, header)
    assert "modes" in refusal(tmp_path, header + "modes = {}\n")


def test_refuses_unknown_keys(tmp_path: Path) -> None:
    assert "unknown field `curency`" in refusal(tmp_path, VALID + 'curency = "moments"\n')
    message = refusal(tmp_path, edited("audio_per_second = 20", "audio_per_secnd = 20"))
    assert message.startswith("2026-11-01.toml: modes.advanced: ")
    assert "audio_per_secnd" in message


def test_refuses_a_currency_other_than_moments(tmp_path: Path) -> None:
    message = refusal(tmp_path, edited('currency = "moments"', 'currency = "usd"'))
    assert message == "2026-11-01.toml: currency must be 'moments', got 'usd'"


def test_refuses_a_price_for_a_resolution_the_mode_does_not_offer(tmp_path: Path) -> None:
    message = refusal(tmp_path, edited('"1080p" = 160 }', '"1080p" = 160, "4k" = 300 }'))
    assert "price.per_second names resolution '4k'" in message


def test_refuses_both_or_neither_flat_and_per_second(tmp_path: Path) -> None:
    both = refusal(tmp_path, edited("price = { flat = 600 }", 'price = { flat = 600, per_second = { "720p" = 1 } }'))
    assert both == "2026-11-01.toml: modes.adult: price needs exactly one of `flat` or `per_second`"
    neither = refusal(tmp_path, edited("price = { flat = 600 }", "price = {}"))
    assert neither == both


def test_refuses_an_audio_price_with_a_flat_price(tmp_path: Path) -> None:
    message = refusal(tmp_path, edited("flat = 600", "flat = 600, audio_per_second = 5"))
    assert "audio_per_second cannot be combined with a flat price" in message


def test_refuses_defaults_outside_the_allowed_values(tmp_path: Path) -> None:
    audio = refusal(tmp_path, edited("allowed = [false], default = false", "allowed = [false], default = true"))
    assert audio.startswith("2026-11-01.toml: modes.adult: audio default True is not in allowed")
    duration = refusal(tmp_path, edited("min = 4, max = 15", "min = 4, max = 15, default = 16"))
    assert duration.startswith("2026-11-01.toml: modes.advanced: duration_s default 16 is outside 4..15")


def test_refuses_duplicate_and_empty_grid_values(tmp_path: Path) -> None:
    assert "duplicates" in refusal(tmp_path, edited('["480p", "720p", "1080p"]', '["480p", "720p", "720p"]'))
    assert "duplicates" in refusal(tmp_path, edited("allowed = [true, false]", "allowed = [true, true]"))
    assert "$.resolutions" in refusal(tmp_path, edited('resolutions = ["720p"]', "resolutions = []"))
    assert "$.audio.allowed" in refusal(tmp_path, edited("allowed = [false]", "allowed = []"))


def test_refuses_a_grid_too_large_to_expand(tmp_path: Path) -> None:
    message = refusal(tmp_path, edited("min = 4, max = 15", f"min = 1, max = {10**12}"))
    assert message == f"2026-11-01.toml: modes.advanced: the grid has more than {GRID_CELLS_MAX} cells"


def test_refuses_invalid_toml(tmp_path: Path) -> None:
    assert refusal(tmp_path, VALID + "price = \n").startswith("2026-11-01.toml: ")


def test_refuses_an_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidPriceTable, match=r"no price tables"):
        load_tables(tmp_path)


def test_one_bad_file_refuses_the_whole_directory(tmp_path: Path) -> None:
    write(tmp_path, VALID)
    message = refusal(tmp_path, "not toml at all", name="2027-01-01.toml")
    assert message.startswith("2027-01-01.toml: ")


def test_a_mode_default_lets_the_field_be_omitted(tmp_path: Path) -> None:
    # Generalised defaults: a table may give duration_s a default as it gives audio one.
    write(tmp_path, edited("min = 4, max = 15", "min = 4, max = 15, default = 6"))
    (table,) = load_tables(tmp_path)
    assert quote(table, mode="advanced", resolution="480p").moments == 6 * (50 + 20)
