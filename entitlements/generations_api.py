"""Endpoints: tiers, entitlements, generations (create, read, list, video) and support refunds."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any, Literal

from litestar import Request, Response, get, post, put
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.response import File

from entitlements import generations, tiers
from entitlements.auth import caller_of
from entitlements.errors import NotFound, ProblemError, ValidationFailed
from entitlements.generations import GenerationCreate, GenerationOut, RefundCreate
from entitlements.http import check_user_id, idempotency_key, page_limit, strict_body
from entitlements.pricing_api import current_table, quote_or_422
from entitlements.schemas import IMAGE_ID_CHARS_MAX, IMAGE_ID_PATTERN, Balance, Struct


class SubscriptionSet(Struct, frozen=True):
    tier: Literal["FREE", "PREMIUM", "ULTIMATE"]


class SubscriptionOut(Struct, frozen=True):
    user_id: str
    tier: str


class VideoEntitlement(Struct, frozen=True):
    allowed: bool
    reason: str | None


class EntitlementsOut(Struct, frozen=True):
    user_id: str
    tier: str
    balance: Balance
    owed: int
    video: VideoEntitlement


class GenerationsPage(Struct, frozen=True):
    items: list[GenerationOut]
    next_cursor: str | None


def _replay(stored: Any) -> Response[Any]:
    return Response(stored.body, status_code=stored.status_code)


@put("/v1/users/{user_id:str}/subscription", operation_id="setSubscription", opt={"roles": ("admin",)}, tags=["tiers"])
async def set_subscription(
    request: Request[Any, Any, Any], user_id: FromPath[str], data: JSONBody[SubscriptionSet]
) -> SubscriptionOut:
    data = await strict_body(request, SubscriptionSet)
    check_user_id(user_id)
    await tiers.set_manual_tier(request.app.state.pool, user_id, data.tier)
    return SubscriptionOut(user_id=user_id, tier=data.tier)


@get(
    "/v1/users/{user_id:str}/entitlements",
    operation_id="getEntitlements",
    opt={"roles": ("service", "support")},
    tags=["tiers"],
)
async def get_entitlements(request: Request[Any, Any, Any], user_id: FromPath[str]) -> EntitlementsOut:
    check_user_id(user_id)
    pool = request.app.state.pool
    tier = await tiers.tier_of(pool, user_id)
    balances = await request.app.state.ledger.balances(user_id)
    reason = tiers.video_refusal(request.app.state.catalog, tier, balances.owed)
    cheapest = min(cell.moments for cell in current_table(request).cells)
    if reason is None and balances.available < cheapest:
        reason = "insufficient_moments"
    return EntitlementsOut(
        user_id=user_id,
        tier=tier,
        balance=Balance(available=balances.available, held=balances.held),
        owed=balances.owed,
        video=VideoEntitlement(allowed=reason is None, reason=reason),
    )


@post(
    "/v1/users/{user_id:str}/generations",
    operation_id="createGeneration",
    opt={"roles": ("service",)},
    tags=["generations"],
    status_code=202,
)
async def create_generation(
    request: Request[Any, Any, Any], user_id: FromPath[str], data: JSONBody[GenerationCreate]
) -> Response[Any]:
    data = await strict_body(request, GenerationCreate)
    check_user_id(user_id)
    key = idempotency_key(request)
    table = current_table(request)
    quote = quote_or_422(
        table, mode=data.mode, resolution=data.resolution, duration_s=data.duration_s, audio=data.audio
    )
    state = request.app.state
    stored = await generations.create(
        pool=state.pool,
        ledger_service=state.ledger,
        catalog=state.catalog,
        table=table,
        quote=quote,
        caller=caller_of(request),
        user_id=user_id,
        body=data,
        key=key,
        hold_ttl_s=state.settings.generation.hold_ttl_s,
    )
    if state.dispatcher is not None:
        state.dispatcher.wake()
    return _replay(stored)


@get(
    "/v1/generations/{generation_id:str}",
    operation_id="getGeneration",
    opt={"roles": ("service", "support")},
    tags=["generations"],
)
async def get_generation(request: Request[Any, Any, Any], generation_id: FromPath[str]) -> GenerationOut:
    row = await generations.fetch(request.app.state.pool, generations.parse_generation_id(generation_id))
    return generations.to_out(row)


@get(
    "/v1/users/{user_id:str}/generations",
    operation_id="listGenerations",
    opt={"roles": ("service", "support")},
    tags=["generations"],
)
async def list_generations(
    request: Request[Any, Any, Any],
    user_id: FromPath[str],
    image_id: FromQuery[str | None] = None,
    limit: FromQuery[int | None] = None,
    cursor: FromQuery[str | None] = None,
) -> GenerationsPage:
    check_user_id(user_id)
    if image_id is not None and not (len(image_id) <= IMAGE_ID_CHARS_MAX and re.match(IMAGE_ID_PATTERN, image_id)):
        raise ValidationFailed("image_id", f"must be 1-{IMAGE_ID_CHARS_MAX} characters matching {IMAGE_ID_PATTERN}")
    items, next_cursor = await generations.list_for_user(
        request.app.state.pool, user_id, image_id=image_id, limit=page_limit(request, limit), cursor=cursor
    )
    return GenerationsPage(items=items, next_cursor=next_cursor)


@get(
    "/v1/generations/{generation_id:str}/video",
    operation_id="getGenerationVideo",
    opt={"roles": ("service", "support")},
    tags=["generations"],
    media_type="video/mp4",
)
async def get_generation_video(request: Request[Any, Any, Any], generation_id: FromPath[str]) -> File:
    row = await generations.fetch(request.app.state.pool, generations.parse_generation_id(generation_id))
    if row["status"] not in {"succeeded", "refunded"} or row["video_path"] is None:
        raise NotFound(f"generation {generation_id} has no video yet (status {row['status']})")
    path = Path(row["video_path"])
    if not await asyncio.to_thread(path.is_file):
        raise ProblemError(503, "video_unavailable", "the video file is not reachable from this server")
    return File(path=path, media_type="video/mp4", filename=f"{generation_id}.mp4", content_disposition_type="inline")


@post(
    "/v1/generations/{generation_id:str}/refund",
    operation_id="refundGeneration",
    opt={"roles": ("support",)},
    tags=["generations"],
    status_code=201,
)
async def refund_generation(
    request: Request[Any, Any, Any], generation_id: FromPath[str], data: JSONBody[RefundCreate]
) -> Response[Any]:
    data = await strict_body(request, RefundCreate)
    key = idempotency_key(request)
    state = request.app.state
    stored = await generations.refund(
        pool=state.pool,
        ledger_service=state.ledger,
        caller=caller_of(request),
        generation_id=generations.parse_generation_id(generation_id),
        body=data,
        key=key,
    )
    return _replay(stored)


ROUTES = [
    set_subscription,
    get_entitlements,
    create_generation,
    get_generation,
    list_generations,
    get_generation_video,
    refund_generation,
]
