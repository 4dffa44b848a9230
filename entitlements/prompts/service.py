"""Prompt advice as the API serves it: the request's mode and duration read against the price table in
force, the pure rules of `advice.py`, and their answer as response items. No I/O; never a gate.

Each process keeps the answers to the last ADVICE_CACHE_ENTRIES_MAX distinct (prompt, duration, sound): a
generation's advice is worked out again each time it is read, and the same generation is read over and
over (polled while it renders, listed by support), usually after its prompt was advised on. Advice on a
5,000-character prompt costs hundreds of microseconds; a kept answer, about one.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import pricing
from entitlements.errors import ValidationFailed
from entitlements.prompts import advice
from entitlements.prompts.schemas import AdviceCreate, AdviceItem, AdviceOut

Question = tuple[str, int | None, bool | None]
Answer = tuple[int, tuple[AdviceItem, ...]]
ADVICE_CACHE_ENTRIES_DEFAULT = 512


class AdviceCache:
    """The last `entries_max` answers, least recently used forgotten first. Answers are frozen, so one is
    handed to many readers. Per process, in memory; at most a prompt (5,000 characters, 20 KB at worst)
    and its few items per entry."""

    def __init__(self, entries_max: int) -> None:
        self.entries_max = entries_max
        self._answers: OrderedDict[Question, Answer] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._answers)

    def answer(self, question: Question) -> Answer:
        kept = self._answers.get(question)
        if kept is not None:
            self.hits += 1
            self._answers.move_to_end(question)
            return kept
        self.misses += 1
        found = fresh_advice(*question)
        if self.entries_max:
            self._answers[question] = found
            if len(self._answers) > self.entries_max:
                self._answers.popitem(last=False)
        return found


_cache = AdviceCache(ADVICE_CACHE_ENTRIES_DEFAULT)


def configure_cache(entries_max: int) -> AdviceCache:
    """A fresh cache of this bound for the process (the composition root passes ADVICE_CACHE_ENTRIES_MAX)."""
    global _cache
    _cache = AdviceCache(entries_max)
    return _cache


def cache() -> AdviceCache:
    return _cache


def advise(table: pricing.PriceTable, body: AdviceCreate) -> AdviceOut:
    duration_s, audio = clip_of(table, mode=body.mode, duration_s=body.duration_s)
    words, items = _cache.answer((body.prompt, duration_s, audio))
    return AdviceOut(words=words, advice=list(items))


def advice_items(prompt: str, *, duration_s: int | None, audio: bool | None) -> list[AdviceItem]:
    """The advice on a generation's prompt, for the clip it was created with."""
    return list(_cache.answer((prompt, duration_s, audio))[1])


def fresh_advice(prompt: str, duration_s: int | None, audio: bool | None) -> Answer:
    """The guide's advice worked out afresh, as response items."""
    found = advice.advise(prompt, duration_s=duration_s, audio=audio)
    items = tuple(
        AdviceItem(code=item.code, severity=item.severity, message=item.message, excerpt=item.excerpt)
        for item in found.items
    )
    return found.words, items


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
