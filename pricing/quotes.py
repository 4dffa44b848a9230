"""Quote a generation request against a price table's grid."""

from typing import TypeVar

import msgspec

from pricing.price_table import ModeGrid, PriceTable

_Value = TypeVar("_Value", str, int, bool)


class Quote(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The price of one generation, with the table version and the cell it came from."""

    moments: int
    price_version: str
    mode: str
    resolution: str
    duration_s: int
    audio: bool


class InvalidQuoteRequest(Exception):
    """A request outside its mode's grid: names the field and the values that field allows."""

    def __init__(self, field: str, allowed: list[str] | list[int] | list[bool], message: str) -> None:
        super().__init__(message)
        self.field = field
        self.allowed = allowed
        self.message = message


def quote(
    table: PriceTable,
    *,
    mode: str,
    resolution: str | None = None,
    duration_s: int | None = None,
    audio: bool | None = None,
) -> Quote:
    """Price one request. Fields are checked in order: mode, resolution, duration_s, audio."""
    grid = table.grid(mode) if isinstance(mode, str) else None
    if grid is None:
        modes = [known.name for known in table.modes]
        raise InvalidQuoteRequest("mode", modes, f"mode {_plain(mode)} is not known; allowed: {_listed(modes)}")

    resolutions = list(grid.resolutions)
    if resolution is None:
        resolution = _default(grid, "resolution", grid.resolution_default, resolutions)
    elif resolution not in resolutions:
        raise _not_allowed(grid, "resolution", resolution, resolutions, _listed(resolutions))

    durations_s = grid.durations_s
    if duration_s is None:
        duration_s = _default(grid, "duration_s", grid.duration_s_default, durations_s)
    # type() rather than isinstance(): True is an int but not a duration.
    elif type(duration_s) is not int or duration_s not in durations_s:
        if grid.duration_s_min == grid.duration_s_max:
            described = _listed(durations_s)
        else:
            described = f"whole seconds from {grid.duration_s_min} to {grid.duration_s_max}"
        raise _not_allowed(grid, "duration_s", duration_s, durations_s, described)

    audio_allowed = list(grid.audio_allowed)
    if audio is None:
        audio = _default(grid, "audio", grid.audio_default, audio_allowed)
    # type() rather than isinstance(): 1 == True, but 1 is not an audio setting.
    elif type(audio) is not bool or audio not in audio_allowed:
        raise _not_allowed(grid, "audio", audio, audio_allowed, _listed(audio_allowed))

    cell = table.find_cell(grid.name, resolution, duration_s, audio)
    if cell is None:
        # The loader prices every cell of the grid, so this is a programming error, not bad input.
        raise AssertionError(f"{table.version}: no cell {grid.name}/{resolution}/{duration_s}s/{audio}")
    return Quote(
        moments=cell.moments,
        price_version=table.version,
        mode=cell.mode,
        resolution=cell.resolution,
        duration_s=cell.duration_s,
        audio=cell.audio,
    )


def _default(grid: ModeGrid, field: str, default: _Value | None, allowed: list[_Value]) -> _Value:
    if default is None:
        raise InvalidQuoteRequest(field, allowed, f"{field} is required for mode {grid.name}")
    return default


def _not_allowed(
    grid: ModeGrid, field: str, value: object, allowed: list[str] | list[int] | list[bool], described: str
) -> InvalidQuoteRequest:
    message = f"{field} {_plain(value)} is not allowed for mode {grid.name}; allowed: {described}"
    return InvalidQuoteRequest(field, allowed, message)


def _plain(value: object) -> str:
    """A value as a client wrote it in JSON (`"8K"`, `true`, `7`), not as Python prints it."""
    try:
        return msgspec.json.encode(value).decode()
    except (TypeError, msgspec.EncodeError):
        return "that value"


def _listed(allowed: list[str] | list[int] | list[bool]) -> str:
    """Allowed values as plain text: `480p, 720p, 1080p`; `true, false`."""
    return ", ".join(value if isinstance(value, str) else _plain(value) for value in allowed)
