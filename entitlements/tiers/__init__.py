"""Subscription tiers and the video gate."""

from entitlements.tiers.service import set_manual_tier, tier_of, video_refusal

__all__ = ["set_manual_tier", "tier_of", "video_refusal"]
