"""The Litestar application: settings, the database pool, routes, errors, logs, metrics, OpenAPI."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import structlog
from litestar import Litestar, MediaType, Request, Response, get
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin

import ledger
import pricing
from entitlements import generations, generations_api, ledger_api, pricing_api, stripe_api, stripe_service
from entitlements.auth import role_guard
from entitlements.dispatcher import Dispatcher, Sweeper
from entitlements.errors import EXCEPTION_HANDLERS, ProblemError
from entitlements.observability import (
    METRICS_CONTENT_TYPE,
    configure_logging,
    metrics_text,
    request_logging_middleware,
)
from entitlements.settings import Settings
from generation_client import WorkerClient

READY_TIMEOUT_S = 2.0
# Invariants beyond the ledger's own that `audit` also checks (the generations' settlement, and that
# Stripe events and their ledger transactions match).
EXTRA_AUDIT_CHECKS: tuple[ledger.ExtraCheck, ...] = (*generations.AUDIT_CHECKS, *stripe_service.AUDIT_CHECKS)
log = structlog.get_logger("moments.app")


async def create_pool(settings: Settings, url: str | None = None) -> asyncpg.Pool:
    url = url or settings.database.url
    if url is None:
        raise RuntimeError("DATABASE_URL is not set (`moments dev` starts an embedded PostgreSQL for you)")
    db = settings.database
    pool = await asyncpg.create_pool(
        url,
        min_size=db.pool_size_min,
        max_size=db.pool_size_max,
        timeout=db.connect_timeout_s,
        server_settings={"statement_timeout": str(db.statement_timeout_ms), "application_name": "moments"},
    )
    assert pool is not None
    return pool


@get("/healthz", operation_id="healthz", opt={"public": True}, include_in_schema=True, tags=["ops"])
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz", operation_id="readyz", opt={"public": True}, tags=["ops"])
async def readyz(request: Request[Any, Any, Any]) -> dict[str, str]:
    try:
        await request.app.state.pool.fetchval("SELECT 1", timeout=READY_TIMEOUT_S)
    except (OSError, TimeoutError, asyncpg.PostgresError) as error:
        raise ProblemError(503, "not_ready", f"the database does not answer: {type(error).__name__}") from None
    return {"status": "ready"}


@get("/metrics", operation_id="metrics", opt={"public": True}, media_type=MediaType.TEXT, tags=["ops"])
async def metrics() -> Response[bytes]:
    return Response(metrics_text(), media_type=METRICS_CONTENT_TYPE)


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or Settings.from_env()
    configure_logging(settings.api.log_format)
    # Loaded and validated before serving: an incomplete or invalid table stops the service here.
    price_tables = pricing.load_tables()
    catalog = pricing.load_catalog()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        app.state.pool = await create_pool(settings)
        replica_url = settings.database.replica_url
        app.state.read_pool = await create_pool(settings, replica_url) if replica_url else app.state.pool
        app.state.ledger = ledger.Ledger(
            app.state.pool,
            batch_settings=ledger.BatchSettings(
                batch_size_max=settings.ledger.batch_size_max, committers=settings.ledger.committers
            ),
        )
        await app.state.ledger.start()
        # None without STRIPE_API_KEY: checkout endpoints then answer 503 stripe_not_configured.
        app.state.stripe = stripe_service.make_gateway(settings.stripe)
        background = await _start_background(app, settings)
        try:
            yield
        finally:
            await _stop_background(app, background)
            if app.state.stripe is not None:
                await app.state.stripe.aclose()
            await app.state.ledger.close()
            if app.state.read_pool is not app.state.pool:
                await app.state.read_pool.close()
            await app.state.pool.close()

    app = Litestar(
        route_handlers=[
            healthz,
            readyz,
            metrics,
            *pricing_api.ROUTES,
            *ledger_api.ROUTES,
            *generations_api.ROUTES,
            *stripe_api.ROUTES,
        ],
        guards=[role_guard],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=[lifespan],
        state=State(
            dict(settings=settings, price_tables=price_tables, catalog=catalog, extra_audit_checks=EXTRA_AUDIT_CHECKS)
        ),
        request_max_body_size=settings.api.request_body_bytes_max,
        openapi_config=OpenAPIConfig(
            title="Moments",
            version="1.0.0",
            path="/schema",
            render_plugins=[SwaggerRenderPlugin()],
        ),
        logging_config=None,
    )
    # Wrapped around the whole app, not as route middleware, so unrouted 404s and 405s are logged too.
    app.asgi_handler = request_logging_middleware(app.asgi_handler)
    return app


async def _start_background(app: Litestar, settings: Settings) -> list[asyncio.Task[None]]:
    """The dispatcher and the sweeper run beside the API in every `moments serve` process (unless
    DISPATCHER_ENABLED=false); they coordinate with other processes only through PostgreSQL."""
    app.state.dispatcher = None
    app.state.worker_client = None
    generation = settings.generation
    if not generation.dispatcher_enabled:
        return []
    tasks = [asyncio.create_task(Sweeper(app.state.pool, app.state.ledger, generation).run(), name="sweeper")]
    if not generation.worker_urls:
        log.warning("dispatcher_disabled", reason="GENERATION_WORKER_URL is not set")
        return tasks
    client = WorkerClient(generation.worker_urls, request_timeout_s=generation.worker_request_timeout_s)
    await client.__aenter__()
    app.state.worker_client = client
    app.state.dispatcher = Dispatcher(app.state.pool, app.state.ledger, generation, client)
    tasks.append(asyncio.create_task(app.state.dispatcher.run(), name="dispatcher"))
    return tasks


async def _stop_background(app: Litestar, tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if app.state.dispatcher is not None:
        await app.state.dispatcher.close()
    if app.state.worker_client is not None:
        await app.state.worker_client.aclose()


def create_app_from_env() -> Litestar:
    """The granian target: each server process builds its app from the environment."""
    return create_app()
