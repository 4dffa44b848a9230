"""Health, readiness and metrics: public, for load balancers and Prometheus."""

from __future__ import annotations

import asyncpg
from litestar import Controller, MediaType, Response, get

from entitlements.errors import NotReady
from entitlements.http.deps import Pool
from entitlements.http.observability import METRICS_CONTENT_TYPE, metrics_text
from entitlements.schemas import Struct

READY_TIMEOUT_S = 2.0


class Status(Struct, frozen=True):
    status: str


class HealthController(Controller):
    tags = ["ops"]
    opt = {"public": True}

    @get("/healthz", operation_id="healthz", description="200 while the process is alive.")
    async def healthz(self) -> Status:
        return Status(status="ok")

    @get("/readyz", operation_id="readyz", description="200 when the database answers, else 503 not_ready.")
    async def readyz(self, pool: Pool) -> Status:
        try:
            await pool.fetchval("SELECT 1", timeout=READY_TIMEOUT_S)
        except (OSError, TimeoutError, asyncpg.PostgresError) as error:
            raise NotReady(f"the database does not answer: {type(error).__name__}") from None
        return Status(status="ready")

    @get("/metrics", operation_id="metrics", media_type=MediaType.TEXT, description="Prometheus text format.")
    async def metrics(self) -> Response[bytes]:
        return Response(metrics_text(), media_type=METRICS_CONTENT_TYPE)
