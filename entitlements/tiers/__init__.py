"""Subscription tiers and the video gate."""

from entitlements.tiers.service import check_video_gate, set_manual_tier, tier_of, video_refusal

__all__ = ["check_video_gate", "set_manual_tier", "tier_of", "video_refusal"]
