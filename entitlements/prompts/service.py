"""Prompt advice as the API serves it: the request's mode and duration read against the price table in
force, the pure rules of `advice.py`, and their answer as response items. No I/O; never a gate.

The answers to the last ADVICE_CACHE_ENTRIES_MAX distinct (prompt, duration, sound) are kept in memory
(per process): a generation's advice is worked out again each time it is read, and the same generation is
read over and over (polled while it renders, listed by support), usually after the same prompt was advised
on. Advice on a 5,000-character prompt costs hundreds of microseconds; a kept answer, one.
"""

from __future__ import annotations

import functools
from typing import Any

import pricing
from entitlements.errors import ValidationFailed
from entitlements.prompts import advice
from entitlements.prompts.schemas import AdviceCreate, AdviceItem, AdviceOut

# At most this many answers are kept: 512 prompts of at most 5,000 characters (20 KB each at worst, four
# bytes a character) keep the cache under about 11 MB per process.
ADVICE_CACHE_ENTRIES_MAX = 512


def advise(table: pricing.PriceTable, body: AdviceCreate) -> AdviceOut:
    duration_s, audio = clip_of(table, mode=body.mode, duration_s=body.duration_s)
    words, items = _advice(body.prompt, duration_s, audio)
    return AdviceOut(words=words, advice=list(items))


def advice_items(prompt: str, *, duration_s: int | None, audio: bool | None) -> list[AdviceItem]:
    """The advice on a generation's prompt, for the clip it was created with."""
    return list(_advice(prompt, duration_s, audio)[1])


@functools.lru_cache(maxsize=ADVICE_CACHE_ENTRIES_MAX)
def _advice(prompt: str, duration_s: int | None, audio: bool | None) -> tuple[int, tuple[AdviceItem, ...]]:
    """The guide's advice as response items (frozen, so one answer can be handed to many readers)."""
    found = advice.advise(prompt, duration_s=duration_s, audio=audio)
    items = tuple(
        AdviceItem(code=item.code, severity=item.severity, message=item.message, excerpt=item.excerpt)
        for item in found.items
    )
    return found.words, items


def fresh_advice(prompt: str, duration_s: int | None, audio: bool | None) -> tuple[int, tuple[AdviceItem, ...]]:
    """The advice worked out afresh, never from a kept answer (what the benchmark measures)."""
    return _advice.__wrapped__(prompt, duration_s, audio)


def cache_info() -> functools._CacheInfo:
    return _advice.cache_info()


def clear_cache() -> None:
    """Forget every kept answer (the benchmark measures advice worked out afresh)."""
    _advice.cache_clear()


def clip_of(table: pricing.PriceTable, *, mode: str | None, duration_s: int | None) -> tuple[int | None, bool | None]:
    """The clip's duration and audio as far as the request says: the mode's defaults fill in what it leaves
    out (adult is 8 s without sound). A mode or a duration the table does not offer is bad input, named
    with every allowed value, as a quote would name it."""
    if mode is None:
        low = min(grid.duration_s_min for grid in table.modes)
        high = max(grid.duration_s_max for grid in table.modes)
        if duration_s is not None and not low <= duration_s <= high:
            raise ValidationFailed(
                "duration_s",
                f"duration_s {duration_s} is not offered by any mode; allowed: whole seconds from {low} to {high}",
                allowed=list(range(low, high + 1)),
            )
        return duration_s, None
    grid = table.grid(mode)
    if grid is None:
        modes = [known.name for known in table.modes]
        raise ValidationFailed("mode", f'mode "{mode[:50]}" is not known; allowed: {", ".join(modes)}', allowed=modes)
    if duration_s is None:
        duration_s = grid.duration_s_default
    elif duration_s not in grid.durations_s:
        if grid.duration_s_min == grid.duration_s_max:
            described = str(grid.duration_s_min)
        else:
            described = f"whole seconds from {grid.duration_s_min} to {grid.duration_s_max}"
        raise ValidationFailed(
            "duration_s",
            f"duration_s {duration_s} is not allowed for mode {grid.name}; allowed: {described}",
            allowed=grid.durations_s,
        )
    audio = grid.audio_allowed[0] if len(grid.audio_allowed) == 1 else grid.audio_default
    return duration_s, audio


def request_json_schema(table: pricing.PriceTable) -> dict[str, Any]:
    """The request's mode and duration_s as JSON Schema from this table, so that the published contract
    accepts exactly what `clip_of` accepts: one alternative per mode, and one without a mode."""
    low = min(grid.duration_s_min for grid in table.modes)
    high = max(grid.duration_s_max for grid in table.modes)
    variants: list[dict[str, Any]] = [
        {
            "title": "no mode",
            "properties": {"mode": {"type": "null"}, "duration_s": _durations(low, high)},
        }
    ]
    for grid in table.modes:
        variants.append(
            {
                "title": f"mode {grid.name}",
                "properties": {
                    "mode": {"const": grid.name},
                    "duration_s": _durations(grid.duration_s_min, grid.duration_s_max),
                },
                "required": ["mode"],
            }
        )
    return {
        "properties": {
            "mode": {"type": ["string", "null"], "enum": [*(grid.name for grid in table.modes), None]},
            "duration_s": _durations(low, high),
        },
        "oneOf": variants,
    }


def _durations(low: int, high: int) -> dict[str, Any]:
    return {"type": ["integer", "null"], "minimum": low, "maximum": high}
