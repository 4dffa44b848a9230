"""Pricing and quotes."""

from entitlements.quotes.schemas import DurationS, ModeName, ResolutionName
from entitlements.quotes.service import cheapest_moments, quote, quote_out

__all__ = ["DurationS", "ModeName", "ResolutionName", "cheapest_moments", "quote", "quote_out"]
