"""Tiers and entitlements: requests and responses."""

from __future__ import annotations

from typing import Literal

import pricing
from entitlements.schemas import Balance, Struct


class SubscriptionSet(Struct, frozen=True):
    tier: pricing.TierName


class SubscriptionOut(Struct, frozen=True):
    user_id: str
    tier: pricing.TierName


class VideoEntitlement(Struct, frozen=True):
    allowed: bool
    # The problem code a generation request would be refused with now, or null.
    reason: Literal["tier_required", "in_debt", "insufficient_moments"] | None


class EntitlementsOut(Struct, frozen=True):
    user_id: str
    tier: pricing.TierName
    balance: Balance
    owed: int
    video: VideoEntitlement
