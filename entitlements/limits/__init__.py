"""Abuse limits: rate limits per API key and endpoint class, kept in PostgreSQL (GCRA)."""

from entitlements.limits.service import ENDPOINT_CLASSES, Decision, Policy, RateLimited, check, decide, policies

__all__ = ["ENDPOINT_CLASSES", "Decision", "Policy", "RateLimited", "check", "decide", "policies"]
