"""Abuse limits: rate limits per API key and endpoint class, kept in PostgreSQL (GCRA)."""

from entitlements.limits.service import (
    ENDPOINT_CLASSES,
    Decision,
    Leases,
    Policy,
    RateLimited,
    check,
    decide,
    granted_requests,
    lease_max,
    policies,
)

__all__ = [
    "ENDPOINT_CLASSES",
    "Decision",
    "Leases",
    "Policy",
    "RateLimited",
    "check",
    "decide",
    "granted_requests",
    "lease_max",
    "policies",
]
