"""Stripe's webhook answer (the other billing bodies sit with the service until it is split)."""

from __future__ import annotations

from typing import Literal

from entitlements.schemas import Struct


class WebhookOut(Struct, frozen=True):
    id: str
    # applied / ignored (stored and deliberately left without effect) / duplicate (stored and applied
    # before) / pending (stored; waits for what it refers to, retried by the sweeper).
    status: Literal["applied", "ignored", "duplicate", "pending"]
    detail: str | None
