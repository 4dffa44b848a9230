"""Generations: create, read, list, the video, and support's refunds."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Response, get, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.response import File

from entitlements.approvals import ApprovalPending
from entitlements.generations import service
from entitlements.generations.admission import Admission
from entitlements.generations.dispatcher import Dispatcher
from entitlements.generations.schemas import (
    GenerationCreate,
    GenerationOut,
    GenerationsPage,
    RefundCreate,
    RefundOut,
)
from entitlements.http import (
    AppSettings,
    Catalog,
    CursorQuery,
    IdempotencyKey,
    LedgerService,
    PageLimit,
    Pool,
    PriceTable,
    TheCaller,
    UserIdPath,
    answer_response,
)
from entitlements.schemas import IMAGE_ID_CHARS_MAX, IMAGE_ID_PATTERN

ImageIdQuery = Annotated[
    str | None,
    QueryParameter(
        min_length=1, max_length=IMAGE_ID_CHARS_MAX, pattern=IMAGE_ID_PATTERN, description="Only this image's."
    ),
]


class GenerationsController(Controller):
    tags = ["generations"]

    @post(
        "/v1/users/{user_id:str}/generations",
        operation_id="createGeneration",
        summary="Reserve the moments and queue a video",
        opt={"roles": ("service",), "idempotent": True, "rate_class": "generations"},
        status_code=202,
    )
    async def create_generation(
        self,
        ledger_service: LedgerService,
        catalog: Catalog,
        price_table: PriceTable,
        settings: AppSettings,
        dispatcher: NamedDependency[Dispatcher | None],
        admission: NamedDependency[Admission],
        caller: TheCaller,
        idempotency_key: IdempotencyKey,
        user_id: UserIdPath,
        data: JSONBody[GenerationCreate],
    ) -> GenerationOut:
        generation = await service.create(
            ledger_service=ledger_service,
            catalog=catalog,
            table=price_table,
            caller=caller,
            user_id=user_id,
            body=data,
            key=idempotency_key,
            hold_ttl_s=settings.generation.hold_ttl_s,
            open_generations_max=settings.generation.open_generations_per_user_max,
            admission=admission,
        )
        if dispatcher is not None:
            dispatcher.wake()
        return generation

    @get(
        "/v1/generations/{generation_id:str}",
        operation_id="getGeneration",
        summary="One generation",
        opt={"roles": ("service", "support")},
    )
    async def get_generation(self, pool: Pool, generation_id: FromPath[str]) -> GenerationOut:
        # The primary: the caller polls the generation it has just created.
        return await service.get(pool, generation_id)

    @get(
        "/v1/users/{user_id:str}/generations",
        operation_id="listGenerations",
        summary="A user's generations, newest first",
        opt={"roles": ("service", "support")},
    )
    async def list_generations(
        self,
        read_pool: Pool,
        user_id: UserIdPath,
        page_limit: PageLimit,
        cursor: CursorQuery = None,
        image_id: ImageIdQuery = None,
    ) -> GenerationsPage:
        return await service.list_for_user(read_pool, user_id, image_id=image_id, limit=page_limit, cursor=cursor)

    @get(
        "/v1/generations/{generation_id:str}/video",
        operation_id="getGenerationVideo",
        summary="The delivered MP4 (409 video_unavailable before it exists)",
        opt={"roles": ("service", "support")},
        media_type="video/mp4",
    )
    async def get_generation_video(self, pool: Pool, generation_id: FromPath[str]) -> File:
        path = await service.video_file(pool, generation_id)
        return File(
            path=path, media_type="video/mp4", filename=f"{generation_id}.mp4", content_disposition_type="inline"
        )

    @post(
        "/v1/generations/{generation_id:str}/refund",
        operation_id="refundGeneration",
        summary="Refund a delivered generation, whole or in part (support: large ones approved)",
        description="A support refund above APPROVAL_THRESHOLD_MOMENTS answers 202 and takes effect once a second "
        "person approves it (`/v1/approvals`).",
        opt={"roles": ("support",), "idempotent": True},
        status_code=201,
        responses={202: ResponseSpec(ApprovalPending, description="Waits for a second person's approval")},
    )
    async def refund_generation(
        self,
        pool: Pool,
        ledger_service: LedgerService,
        settings: AppSettings,
        caller: TheCaller,
        idempotency_key: IdempotencyKey,
        generation_id: FromPath[str],
        data: JSONBody[RefundCreate],
    ) -> Response[RefundOut]:
        answer = await service.refund(
            pool=pool,
            ledger_service=ledger_service,
            caller=caller,
            generation_id=generation_id,
            body=data,
            key=idempotency_key,
            limits=settings.api,
        )
        return answer_response(answer.refunded, answer.pending, 201)
