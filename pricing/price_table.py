"""The price table: one TOML file per published version, expanded into every priced cell at load.

A table is validated completely when loaded so that the service refuses to start with an incomplete
or wrong one, rather than discovering a missing price on some user's request.
"""

import functools
import itertools
import tomllib
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import msgspec

TABLES_DIRECTORY = Path(__file__).parent / "tables"
# Every amount in the ledger is in moments; a table priced in anything else is a mistake.
CURRENCY = "moments"
# No single generation may cost more than this: a larger cell is a typo (an extra zero), not a price.
CELL_MOMENTS_MAX = 1_000_000
# Bounds the grid expansion, so that a typo in a duration range cannot exhaust memory at start-up.
GRID_CELLS_MAX = 10_000

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
NonEmptyStr = Annotated[str, msgspec.Meta(min_length=1)]


class InvalidPriceTable(Exception):
    """A price table is missing, malformed or incomplete, or none is in effect."""


class Cell(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One priced point of the grid."""

    mode: str
    resolution: str
    duration_s: int
    audio: bool
    moments: int


class ModeGrid(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The values a mode allows.

    A `*_default` is set exactly when the field may be omitted from a quote request: the table names
    a default for it, or it has a single allowed value.
    """

    name: str
    resolutions: tuple[str, ...]
    duration_s_min: int
    duration_s_max: int
    audio_allowed: tuple[bool, ...]
    resolution_default: str | None
    duration_s_default: int | None
    audio_default: bool | None

    @property
    def durations_s(self) -> list[int]:
        return list(range(self.duration_s_min, self.duration_s_max + 1))


# dict=True gives the frozen struct a __dict__ for its cached lookup indices (never encoded).
class PriceTable(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, dict=True):
    """One published version of the price table, with every cell of its grid."""

    version: str
    effective_from: datetime
    currency: str
    modes: tuple[ModeGrid, ...]
    cells: tuple[Cell, ...]

    @functools.cached_property
    def _cells_by_key(self) -> dict[tuple[str, str, int, bool], Cell]:
        return {(cell.mode, cell.resolution, cell.duration_s, cell.audio): cell for cell in self.cells}

    @functools.cached_property
    def _grids_by_mode(self) -> dict[str, ModeGrid]:
        return {grid.name: grid for grid in self.modes}

    def grid(self, mode: str) -> ModeGrid | None:
        return self._grids_by_mode.get(mode)

    def find_cell(self, mode: str, resolution: str, duration_s: int, audio: bool) -> Cell | None:
        # bool is an int subclass and True == 1 hashes alike: without this, duration_s=True would
        # find the 1 s cell and audio=1 the audio-on cell.
        if type(duration_s) is not int or type(audio) is not bool:
            return None
        return self._cells_by_key.get((mode, resolution, duration_s, audio))


# --- The file format. Unknown keys are refused: a misspelt key must not be silently ignored. ---


class _TableFile(msgspec.Struct, forbid_unknown_fields=True):
    version: NonEmptyStr
    effective_from: Annotated[datetime, msgspec.Meta(tz=True)]
    currency: str
    # Each mode is converted on its own so that an error message can name the mode.
    modes: Annotated[dict[NonEmptyStr, object], msgspec.Meta(min_length=1)]


class _DurationSpec(msgspec.Struct, forbid_unknown_fields=True):
    min: PositiveInt
    max: PositiveInt
    default: PositiveInt | None = None


class _AudioSpec(msgspec.Struct, forbid_unknown_fields=True):
    allowed: Annotated[list[bool], msgspec.Meta(min_length=1)]
    default: bool | None = None


class _PriceSpec(msgspec.Struct, forbid_unknown_fields=True):
    flat: PositiveInt | None = None
    # Checked by hand: msgspec's error path does not name the dict key, and the key is the resolution.
    per_second: dict[str, object] | None = None
    audio_per_second: PositiveInt | None = None


class _ModeSpec(msgspec.Struct, forbid_unknown_fields=True):
    resolutions: Annotated[list[NonEmptyStr], msgspec.Meta(min_length=1)]
    duration_s: _DurationSpec
    audio: _AudioSpec
    price: _PriceSpec


def load_tables(directory: Path | None = None) -> tuple[PriceTable, ...]:
    """Load and validate every `*.toml` table in `directory`, sorted by effective_from."""
    directory = TABLES_DIRECTORY if directory is None else directory
    paths = sorted(directory.glob("*.toml"))
    if not paths:
        raise InvalidPriceTable(f"{directory}: no price tables (*.toml)")
    return _sorted_and_distinct([_load_table(path) for path in paths])


def current_table(tables: Sequence[PriceTable], now: datetime) -> PriceTable:
    """The latest table whose effective_from is at or before `now`."""
    if now.utcoffset() is None:
        raise ValueError(f"now must be timezone-aware, got {now!r}")
    in_effect = [table for table in tables if table.effective_from <= now]
    if not in_effect:
        raise InvalidPriceTable(f"no price table is in effect at {now.isoformat()}")
    return max(in_effect, key=lambda table: table.effective_from)


def _sorted_and_distinct(tables: list[PriceTable]) -> tuple[PriceTable, ...]:
    # A version names exactly one table, and at any instant exactly one table applies.
    versions = [table.version for table in tables]
    for version in versions:
        if versions.count(version) > 1:
            raise InvalidPriceTable(f"{version}.toml: version {version!r} is published more than once")
    ordered = sorted(tables, key=lambda table: table.effective_from)
    for earlier, later in itertools.pairwise(ordered):
        if earlier.effective_from == later.effective_from:
            raise InvalidPriceTable(
                f"{later.version}.toml: effective_from {later.effective_from.isoformat()} is the same as "
                f"version {earlier.version!r}'s; which table applies would be ambiguous"
            )
    return tuple(ordered)


def _load_table(path: Path) -> PriceTable:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidPriceTable(f"{path.name}: {error}") from error
    return parse_table(text, path.name, expected_version=path.stem)


def parse_table(text: str, file_name: str, *, expected_version: str | None = None) -> PriceTable:
    """A table from its TOML text, validated exactly as a published one is at start-up (a draft for the
    price what-if comes through here too). `expected_version`: the version its file name promises."""
    try:
        raw = tomllib.loads(text)
        # builtin_types: effective_from must be a TOML datetime, not a string that happens to parse.
        table_file = msgspec.convert(raw, _TableFile, builtin_types=(datetime,))
    except (tomllib.TOMLDecodeError, msgspec.ValidationError, RecursionError) as error:
        raise InvalidPriceTable(f"{file_name}: {error}") from error
    if expected_version is not None and table_file.version != expected_version:
        raise InvalidPriceTable(
            f"{file_name}: version {table_file.version!r} does not match the file name {expected_version!r}"
        )
    if table_file.currency != CURRENCY:
        raise InvalidPriceTable(f"{file_name}: currency must be {CURRENCY!r}, got {table_file.currency!r}")

    grids: list[ModeGrid] = []
    cells: list[Cell] = []
    for mode, raw_mode in table_file.modes.items():
        context = f"{file_name}: modes.{mode}"
        try:
            spec = msgspec.convert(raw_mode, _ModeSpec)
        except msgspec.ValidationError as error:
            raise InvalidPriceTable(f"{context}: {error}") from error
        grid = _grid(context, mode, spec)
        # Arithmetic, not len(grid.durations_s): a typo like max = 10**12 must not build that list.
        durations_count = grid.duration_s_max - grid.duration_s_min + 1
        cell_count = len(grid.resolutions) * durations_count * len(grid.audio_allowed)
        if len(cells) + cell_count > GRID_CELLS_MAX:
            raise InvalidPriceTable(f"{context}: the grid has more than {GRID_CELLS_MAX} cells")
        grids.append(grid)
        cells.extend(_cells(file_name, grid, _per_second(context, grid, spec.price), spec.price))
    return PriceTable(
        version=table_file.version,
        effective_from=table_file.effective_from.astimezone(UTC),
        currency=table_file.currency,
        modes=tuple(grids),
        cells=tuple(cells),
    )


def _grid(context: str, mode: str, spec: _ModeSpec) -> ModeGrid:
    if len(set(spec.resolutions)) != len(spec.resolutions):
        raise InvalidPriceTable(f"{context}: resolutions {spec.resolutions} has duplicates")
    duration = spec.duration_s
    if duration.min > duration.max:
        raise InvalidPriceTable(f"{context}: duration_s min {duration.min} is above max {duration.max}")
    if duration.default is not None and not duration.min <= duration.default <= duration.max:
        raise InvalidPriceTable(
            f"{context}: duration_s default {duration.default} is outside {duration.min}..{duration.max}"
        )
    audio = spec.audio
    if len(set(audio.allowed)) != len(audio.allowed):
        raise InvalidPriceTable(f"{context}: audio allowed {audio.allowed} has duplicates")
    if audio.default is not None and audio.default not in audio.allowed:
        raise InvalidPriceTable(f"{context}: audio default {audio.default} is not in allowed {audio.allowed}")
    # A field with a single allowed value may be omitted: there is nothing to choose.
    duration_s_default = duration.min if duration.min == duration.max else duration.default
    audio_default = audio.allowed[0] if len(audio.allowed) == 1 else audio.default
    return ModeGrid(
        name=mode,
        resolutions=tuple(spec.resolutions),
        duration_s_min=duration.min,
        duration_s_max=duration.max,
        audio_allowed=tuple(audio.allowed),
        resolution_default=spec.resolutions[0] if len(spec.resolutions) == 1 else None,
        duration_s_default=duration_s_default,
        audio_default=audio_default,
    )


def _per_second(context: str, grid: ModeGrid, price: _PriceSpec) -> dict[str, int]:
    if (price.flat is None) == (price.per_second is None):
        raise InvalidPriceTable(f"{context}: price needs exactly one of `flat` or `per_second`")
    if price.flat is not None and price.audio_per_second is not None:
        raise InvalidPriceTable(f"{context}: price.audio_per_second cannot be combined with a flat price")
    per_second: dict[str, int] = {}
    for resolution, moments in (price.per_second or {}).items():
        if resolution not in grid.resolutions:
            raise InvalidPriceTable(
                f"{context}: price.per_second names resolution {resolution!r}, "
                f"which is not in resolutions {list(grid.resolutions)}"
            )
        # type() rather than isinstance(): a bool is an int, but `true` is not a price.
        if type(moments) is not int or moments < 1:
            raise InvalidPriceTable(
                f"{context}: price.per_second[{resolution!r}] must be a positive integer, got {moments!r}"
            )
        per_second[resolution] = moments
    return per_second


def _cells(file_name: str, grid: ModeGrid, per_second: dict[str, int], price: _PriceSpec) -> Iterator[Cell]:
    for resolution in grid.resolutions:
        for duration_s in grid.durations_s:
            for audio in grid.audio_allowed:
                label = f"{file_name}: {grid.name}/{resolution}/{duration_s}s/audio={'on' if audio else 'off'}"
                moments = _cell_moments(label, price, per_second, resolution, duration_s, audio)
                if not 1 <= moments <= CELL_MOMENTS_MAX:
                    raise InvalidPriceTable(f"{label}: {moments} moments is outside 1..{CELL_MOMENTS_MAX}")
                yield Cell(mode=grid.name, resolution=resolution, duration_s=duration_s, audio=audio, moments=moments)


def _cell_moments(
    label: str, price: _PriceSpec, per_second: dict[str, int], resolution: str, duration_s: int, audio: bool
) -> int:
    if price.flat is not None:
        return price.flat
    if resolution not in per_second:
        raise InvalidPriceTable(f"{label}: no per_second price for resolution {resolution!r}")
    audio_per_second = 0
    if audio:
        if price.audio_per_second is None:
            raise InvalidPriceTable(f"{label}: audio is allowed but there is no audio_per_second price")
        audio_per_second = price.audio_per_second
    return duration_s * (per_second[resolution] + audio_per_second)
