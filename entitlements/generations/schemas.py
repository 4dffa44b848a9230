"""Generations: requests and responses."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

import ledger
from entitlements.approvals import ApprovalPending
from entitlements.prompts import AdviceItem
from entitlements.quotes import DurationS, ModeName, ResolutionName
from entitlements.schemas import IMAGE_ID_CHARS_MAX, IMAGE_ID_PATTERN, Prompt, Reason, Struct

GenerationStatus = Literal["queued", "running", "succeeded", "failed", "refunded"]
ImageId = Annotated[str, msgspec.Meta(min_length=1, max_length=IMAGE_ID_CHARS_MAX, pattern=IMAGE_ID_PATTERN)]


class GenerationCreate(Struct, frozen=True):
    image_id: ImageId
    prompt: Prompt
    mode: ModeName
    resolution: ResolutionName | None = None
    duration_s: DurationS | None = None
    audio: bool | None = None


class RefundCreate(Struct, frozen=True):
    reason: Reason
    # Omitted: everything still charged.
    moments: Annotated[int, msgspec.Meta(ge=1, le=ledger.AMOUNT_MOMENTS_MAX)] | None = None


class GenerationOut(Struct, frozen=True):
    id: str
    user_id: str
    image_id: str
    prompt: str
    mode: str
    resolution: str
    duration_s: int
    audio: bool
    # The price quoted and held when the generation was created.
    moments: int
    # Reserved for it while queued or running; 0 once settled.
    held: int
    # What the user has paid for it: 0 until it succeeds, then `moments` less any refund.
    charged: int
    price_version: str
    status: GenerationStatus
    error: str | None
    video_url: str | None
    created_at: datetime
    updated_at: datetime
    # The guide's advice on the prompt, worked out from the prompt whenever the generation is shown (never
    # stored). The default reads answers stored before advice existed (idempotent replays).
    advice: list[AdviceItem] = msgspec.field(default_factory=list)


class RefundOut(Struct, frozen=True):
    transaction_id: int
    refunded: int
    generation: GenerationOut


class RefundAnswer(Struct, frozen=True):
    """What a refund request answered (stored for its Idempotency-Key): refunded now, or waiting for a
    second person. `user_id` lets the console find the user by the key."""

    user_id: str
    refunded: RefundOut | None = None
    pending: ApprovalPending | None = None


class OpenHold(Struct, frozen=True):
    """Moments reserved for a generation still queued or running."""

    generation_id: str
    hold_id: int
    status: str
    moments: int
    created_at: datetime
    expires_at: datetime


class GenerationsPage(Struct, frozen=True):
    items: list[GenerationOut]
    next_cursor: str | None
