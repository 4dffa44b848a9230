"""Subscription tiers and the video gate."""

from entitlements.tiers.queries import tier_expression
from entitlements.tiers.schemas import SubscriptionView
from entitlements.tiers.service import (
    entitlements,
    set_manual_tier,
    subscription_of,
    tier_of,
    video_refusal,
)

__all__ = [
    "SubscriptionView",
    "entitlements",
    "set_manual_tier",
    "subscription_of",
    "tier_expression",
    "tier_of",
    "video_refusal",
]
