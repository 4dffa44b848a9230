"""Prompt advice: requests and responses."""

from __future__ import annotations

from entitlements.prompts.advice import Code, Severity
from entitlements.quotes import DurationS, ModeName
from entitlements.schemas import Prompt, Struct


class AdviceCreate(Struct, frozen=True):
    prompt: Prompt
    # Either narrows the advice: the mode's default duration and audio (adult: 8 s, no sound).
    mode: ModeName | None = None
    duration_s: DurationS | None = None


class AdviceItem(Struct, frozen=True):
    # A closed set: advice.RULES, each with its severity and the guide's rule.
    code: Code
    # warning: the guide says it degrades the result; tip: the guide recommends otherwise.
    severity: Severity
    # What was found, then the guide's rule in its own words.
    message: str
    # The part of the prompt at fault, exactly as written (at most 200 characters); null for the whole.
    excerpt: str | None


class AdviceOut(Struct, frozen=True):
    words: int
    advice: list[AdviceItem]
