"""Generations: the paid path from a request to a delivered video, and its dispatcher and sweeper."""

from entitlements.generations.dispatcher import Dispatcher, Sweeper, SweepTask
from entitlements.generations.schemas import GenerationOut, GenerationStatus
from entitlements.generations.service import AUDIT_CHECKS, settle_failure, settle_success

__all__ = [
    "AUDIT_CHECKS",
    "Dispatcher",
    "GenerationOut",
    "GenerationStatus",
    "SweepTask",
    "Sweeper",
    "settle_failure",
    "settle_success",
]
