"""Health, readiness and metrics: public, for load balancers and Prometheus."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import asyncpg
import structlog
from litestar import Controller, MediaType, Response, get
from litestar.di import NamedDependency

from entitlements.errors import NotReady
from entitlements.http.deps import Pool
from entitlements.http.observability import METRICS_CONTENT_TYPE, metrics_text
from entitlements.schemas import Struct
from entitlements.seal import Signer as SealSigner

READY_TIMEOUT_S = 2.0
# Business gauges read from the database when /metrics is scraped (every process sees the same figures).
METRICS_READ_TIMEOUT_S = 2.0
MetricsReader = Callable[[asyncpg.Pool], Awaitable[None]]
log = structlog.get_logger("moments.metrics")


class Status(Struct, frozen=True):
    status: str


class Ready(Struct, frozen=True):
    status: str
    # Whether this process seals the ledger, and why not (never a reason to take it out of service).
    seal: str


class HealthController(Controller):
    tags = ["ops"]
    opt = {"public": True}

    @get("/healthz", operation_id="healthz", description="200 while the process is alive.")
    async def healthz(self) -> Status:
        return Status(status="ok")

    @get("/readyz", operation_id="readyz", description="200 when the database answers, else 503 not_ready.")
    async def readyz(self, pool: Pool, seal_signer: NamedDependency[SealSigner]) -> Ready:
        try:
            await pool.fetchval("SELECT 1", timeout=READY_TIMEOUT_S)
        except (OSError, TimeoutError, asyncpg.PostgresError) as error:
            raise NotReady(f"the database does not answer: {type(error).__name__}") from None
        key = seal_signer.key
        sealing = f"sealing (key {key.key_id})" if seal_signer.sealing and key is not None else seal_signer.problem
        return Ready(status="ready", seal=sealing or "not sealing")

    @get("/metrics", operation_id="metrics", media_type=MediaType.TEXT, description="Prometheus text format.")
    async def metrics(self, pool: Pool, metrics_readers: NamedDependency[Sequence[MetricsReader]]) -> Response[bytes]:
        for read in metrics_readers:
            try:
                await asyncio.wait_for(read(pool), METRICS_READ_TIMEOUT_S)
            except (OSError, TimeoutError, asyncpg.PostgresError) as error:
                # The HTTP figures are still worth serving; the database's keep their last values.
                log.warning("metrics_read_failed", error=repr(error))
        return Response(metrics_text(), media_type=METRICS_CONTENT_TYPE)
