"""Generations: the paid path from a request to a delivered video, and its dispatcher and sweeper."""

from entitlements.generations.dispatcher import Dispatcher, Sweeper, SweepTask
from entitlements.generations.schemas import GenerationOut, GenerationStatus, OpenHold, RefundCreate
from entitlements.generations.service import (
    AUDIT_CHECKS,
    get,
    hold_ids,
    list_for_user,
    open_holds,
    preview_refund,
    refresh_metrics,
    refund,
    refund_approved,
    settle_failure,
    settle_success,
    user_of,
    video_file,
    video_path,
)

__all__ = [
    "AUDIT_CHECKS",
    "Dispatcher",
    "GenerationOut",
    "GenerationStatus",
    "OpenHold",
    "RefundCreate",
    "SweepTask",
    "Sweeper",
    "get",
    "hold_ids",
    "list_for_user",
    "open_holds",
    "preview_refund",
    "refresh_metrics",
    "refund",
    "refund_approved",
    "settle_failure",
    "settle_success",
    "user_of",
    "video_file",
    "video_path",
]
