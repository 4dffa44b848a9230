"""Pricing and quotes."""

from entitlements.quotes.schemas import DurationS, ModeName, ResolutionName
from entitlements.quotes.service import cheapest_moments, quote, quote_out, request_json_schema

__all__ = ["DurationS", "ModeName", "ResolutionName", "cheapest_moments", "quote", "quote_out", "request_json_schema"]
