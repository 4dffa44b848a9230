"""The composition root: settings, pools, the ledger, background tasks, dependencies and controllers.

Nothing here decides anything: it builds the pieces once per process and hands them to the handlers
through Litestar's dependency injection, by name (`pool`, `read_pool`, `reads`, `ledger_service`, `catalog`,
`price_table`, `settings`, `caller`, `idempotency_key`, `page_limit`, `window`, …).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import partial
from typing import Any

import asyncpg
import httpx
import structlog
from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.plugins.htmx import HTMXPlugin
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.template.config import TemplateConfig

import ledger
import pricing
from entitlements import (
    accounts,
    approvals,
    billing,
    console,
    finance,
    generations,
    keys,
    limits,
    prompts,
    quotes,
    reads,
    seal,
    webhooks,
)
from entitlements.accounts.controllers import AccountsController
from entitlements.approvals.controllers import ApprovalsController
from entitlements.billing.controllers import BillingController
from entitlements.console.controllers import TEMPLATES_DIR, ConsoleController, console_static_router
from entitlements.console.pages import environment
from entitlements.database import bounded_pool
from entitlements.finance.controllers import FinanceController
from entitlements.generations.controllers import GenerationsController
from entitlements.http import (
    EXCEPTION_HANDLERS,
    STRICT_BODY,
    provide_caller,
    provide_idempotency_key,
    provide_limit,
    provide_window,
)
from entitlements.http.controllers import HealthController
from entitlements.http.dependencies import resolve_dependencies_in_order
from entitlements.http.hooks import before_request
from entitlements.http.limits import LEASES_STATE_KEY, POLICIES_STATE_KEY
from entitlements.http.observability import observe_ledger_batch, request_logging_middleware
from entitlements.http.openapi import StrictStructSchemaPlugin, openapi_config, swagger_assets_router
from entitlements.http.semantics import http_semantics
from entitlements.keys.controllers import KeysController
from entitlements.prompts.controllers import PromptsController
from entitlements.quotes.controllers import QuotesController
from entitlements.seal.controllers import SealController
from entitlements.settings import ConsoleSettings, GenerationSettings, LedgerSettings, Settings, StripeSettings
from entitlements.tiers.controllers import TiersController
from entitlements.webhooks.controllers import EventsController, WebhookEndpointsController
from generation_client import WorkerClient
from generation_client.logs import configure_logging

# Invariants beyond the ledger's own that `audit` also checks (the generations' settlement, and that
# Stripe events and their ledger transactions match).
EXTRA_AUDIT_CHECKS: tuple[ledger.ExtraCheck, ...] = (*generations.AUDIT_CHECKS, *billing.AUDIT_CHECKS)
# Gauges each domain reads from the database when /metrics is scraped.
METRICS_READERS = (billing.refresh_metrics, generations.refresh_metrics, webhooks.refresh_metrics)
CONTROLLERS = (
    HealthController,
    QuotesController,
    PromptsController,
    TiersController,
    AccountsController,
    GenerationsController,
    BillingController,
    KeysController,
    ApprovalsController,
    FinanceController,
    SealController,
    WebhookEndpointsController,
    EventsController,
    ConsoleController,
)
# What approving an approval of each kind does: the grant's and the refund's own code (and, for a rejected
# grant, giving its moments back to the requester's daily total).
APPROVAL_EFFECTS: dict[str, approvals.ApprovalEffect] = {
    "grant": approvals.ApprovalEffect(execute=accounts.grant_approved, on_reject=accounts.release_daily_grant),
    "refund": approvals.ApprovalEffect(execute=generations.refund_approved),
}
log = structlog.get_logger("moments.app")
# Of SHUTDOWN_TIMEOUT_S, what the app's own shutdown may take: the server kills the process at the whole.
LIFESPAN_SHUTDOWN_SHARE = 0.5


class DatabaseUnreachable(RuntimeError):
    """The database did not answer: one line for the operator, not a traceback."""


def server_settings(settings: Settings) -> dict[str, str]:
    """What each pooled connection asks of PostgreSQL when it opens. Behind PgBouncer in transaction mode
    only application_name, which PgBouncer knows and sets on whichever server connection serves the
    client: it refuses any other startup parameter (unless told to ignore it, when it would be silently
    lost), and a server connection is shared by every client. There the statement timeout is the
    role's or database's (docs/operations.md, "PgBouncer") and the client's command_timeout."""
    wanted = {"application_name": "moments"}
    if settings.database.pool_mode == "session":
        wanted["statement_timeout"] = str(settings.database.statement_timeout_ms)
    return wanted


def ledger_transaction_settings(settings: Settings) -> dict[str, str]:
    """SET LOCAL in every ledger transaction, sent with the statement that opens it, so free of a round
    trip, and right whichever server connection a pooler gives the transaction: the threshold the balance
    trigger reads (migrations/0011_webhooks.sql), and the statement timeout of the money path."""
    return {
        "statement_timeout": str(settings.database.statement_timeout_ms),
        "moments.balance_low_threshold_moments": str(settings.webhooks.balance_low_threshold_moments),
    }


async def create_pool(settings: Settings, url: str | None = None, **overrides: Any) -> asyncpg.Pool:
    """The primary's pool (or, with `overrides` of bounded_pool's arguments, the replica's)."""
    url = url or settings.database.url
    if url is None:
        raise DatabaseUnreachable("DATABASE_URL is not set (`moments dev` starts an embedded PostgreSQL for you)")
    db = settings.database
    sizes_and_bounds: dict[str, Any] = {
        "min_size": db.pool_size_min,
        "max_size": db.pool_size_max,
        "connect_timeout_s": db.connect_timeout_s,
        "acquire_timeout_s": db.acquire_timeout_s,
    } | overrides
    try:
        return await bounded_pool(
            url,
            **sizes_and_bounds,
            command_timeout_s=db.command_timeout_s,
            statement_cache_size=db.statement_cache_size,
            server_settings=server_settings(settings),
            reset=_keep_session,
        )
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        raise DatabaseUnreachable(f"the database does not answer ({type(error).__name__}: {error})") from None


async def create_reads(settings: Settings, primary: asyncpg.Pool) -> reads.Reads:
    """The primary and, with DATABASE_REPLICA_URL, the replica: its pool opens no connection up front (a
    replica that is down must not stop the service starting) and waits DATABASE_REPLICA_TIMEOUT_S at most
    to connect or for a connection."""
    db = settings.database
    replica: reads.ReplicaPool | None = None
    if db.replica_url is not None:
        opened = await create_pool(
            settings,
            db.replica_url,
            min_size=0,
            connect_timeout_s=db.replica_timeout_s,
            acquire_timeout_s=db.replica_timeout_s,
            pool_class=reads.ReplicaPool,
        )
        assert isinstance(opened, reads.ReplicaPool)
        replica = opened
    return reads.Reads(
        primary,
        replica,
        replica_url=db.replica_url,
        lag_max_s=db.replica_lag_max_s,
        check_interval_s=db.replica_check_interval_s,
        timeout_s=db.replica_timeout_s,
    )


async def _keep_session(_connection: asyncpg.Connection) -> None:
    """Returning a connection to the pool costs no round trip: asyncpg still rolls back an open
    transaction, and nothing here leaves session state behind (settings are SET LOCAL, no LISTEN or
    advisory lock on pooled connections), so its default RESET ALL / UNLISTEN * query has nothing to do.
    Behind PgBouncer in transaction mode there is no session to reset in any case."""


def _state_value(state: State, name: str) -> Provide:
    # A provider without parameters: Litestar then parses nothing for it (a `state: State` parameter cost a
    # validation and a State copy per dependency per request, about a tenth of a generation request).
    def provide() -> object:
        return state[name]

    return Provide(provide, sync_to_thread=False)


def _process_metrics(
    admission: generations.Admission, store: generations.VideoStore, routing: reads.Reads
) -> tuple[Callable[[asyncpg.Pool], Awaitable[None]], ...]:
    """The queue's and the holds' gauges, read again when /metrics is scraped; the video store's, probed;
    the replica's lag, as this process last measured it."""

    async def queue(_: asyncpg.Pool) -> None:
        await admission.read()

    async def replica(_: asyncpg.Pool) -> None:
        routing.refresh_metrics()

    async def video_store(_: asyncpg.Pool) -> None:
        await store.unusable_because()

    return (queue, replica, video_store) if store.required else (queue, replica)


def dependencies_for(state: State) -> dict[str, Provide]:
    """What handlers are given by name: the process's pieces (from `state`, filled in by the lifespan) and
    the request's own (caller, Idempotency-Key, page limit, time window)."""
    prices = state["price_tables"]

    def provide_price_table() -> pricing.PriceTable:
        return pricing.current_table(prices, datetime.now(UTC))

    def provide_read_pool() -> asyncpg.Pool:
        # Decided per request (entitlements/reads.py): the replica while fresh enough, else the primary.
        routed: asyncpg.Pool = state["reads"].replica()
        return routed

    return {
        "pool": _state_value(state, "pool"),
        "read_pool": Provide(provide_read_pool, sync_to_thread=False),
        "reads": _state_value(state, "reads"),
        "ledger_service": _state_value(state, "ledger"),
        "catalog": _state_value(state, "catalog"),
        "settings": _state_value(state, "settings"),
        "dispatcher": _state_value(state, "dispatcher"),
        "admission": _state_value(state, "admission"),
        "video_store": _state_value(state, "video_store"),
        "stripe_gateway": _state_value(state, "stripe"),
        "audit_checks": _state_value(state, "extra_audit_checks"),
        "metrics_readers": _state_value(state, "metrics_readers"),
        "key_cache": _state_value(state, "key_cache"),
        "approval_effects": _state_value(state, "approval_effects"),
        "export_runner": _state_value(state, "export_runner"),
        "seal_signer": _state_value(state, "seal_signer"),
        "price_table": Provide(provide_price_table, sync_to_thread=False),
        "caller": Provide(provide_caller, sync_to_thread=False),
        "idempotency_key": Provide(provide_idempotency_key, sync_to_thread=False),
        "page_limit": Provide(provide_limit, sync_to_thread=False),
        "window": Provide(provide_window, sync_to_thread=False),
    }


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or Settings.from_env()
    configure_logging(settings.api.log_format)
    resolve_dependencies_in_order()
    prompts.configure_cache(settings.api.advice_cache_entries_max)
    # Loaded and validated before serving: an incomplete or invalid table stops the service here.
    price_tables = pricing.load_tables()
    catalog = pricing.load_catalog()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        app.state.pool = await create_pool(settings)
        app.state.reads = await create_reads(settings, app.state.pool)
        # Measured once before serving, so that a replica that is up serves from the first request.
        await app.state.reads.check()
        app.state.ledger = ledger.Ledger(
            app.state.pool,
            batch_settings=ledger.BatchSettings(
                batch_size_max=settings.ledger.batch_size_max,
                committers=settings.ledger.committers,
                observe_batch=observe_ledger_batch,
            ),
            transaction_settings=ledger_transaction_settings(settings),
        )
        await app.state.ledger.start()
        app.state.key_cache = keys.KeyCache(
            ttl_s=settings.api.api_key_cache_ttl_s, entries_max=settings.api.api_key_cache_entries_max
        )
        # LISTEN needs a session of its own: DATABASE_DIRECT_URL, never a transaction-mode pooler.
        direct_url = settings.database.direct
        assert direct_url is not None, "create_pool refused to start without DATABASE_URL"
        app.state.key_cache.start(direct_url)
        app.state.admission = generations.Admission(app.state.pool, settings.generation)
        app.state.video_store = generations.VideoStore(
            settings.generation.video_dir,
            required=settings.generation.dispatcher_enabled and bool(settings.generation.worker_urls),
        )
        app.state.metrics_readers = (
            *readers,
            *_process_metrics(app.state.admission, app.state.video_store, app.state.reads),
        )
        # None without STRIPE_API_KEY: checkout endpoints then answer 503 stripe_not_configured.
        app.state.stripe = billing.make_gateway(settings.stripe)
        # Exports run in every API process (dispatcher or not): the file is written where it is served.
        app.state.export_runner = finance.ExportRunner(app.state.pool, settings.finance)
        app.state.export_runner.start()
        background = await _start_background(app, settings)
        try:
            yield
        finally:
            await _shut_down(app, background, settings.process.shutdown_timeout_s * LIFESPAN_SHUTDOWN_SHARE)

    # The document is the whole contract: request bodies whose rules are data (the price grid, the catalog)
    # are described from that data, so what the document calls valid is what the service accepts.
    # The seal's signing key is read once, here; without one the service runs and says it does not seal.
    seal_signer = seal.signer_for(settings.seal)
    readers = (*METRICS_READERS, partial(seal.refresh_metrics, count_max=settings.seal.lag_count_max))
    table_now = pricing.current_table(price_tables, datetime.now(UTC))
    grid = quotes.request_json_schema(table_now)
    body_refinements = {
        "QuoteCreate": grid,
        "GenerationCreate": grid,
        "AdviceCreate": prompts.request_json_schema(table_now),
        "CheckoutCreate": billing.checkout_request_json_schema(catalog),
    }
    state = State(
        dict(
            settings=settings,
            price_tables=price_tables,
            catalog=catalog,
            extra_audit_checks=EXTRA_AUDIT_CHECKS,
            approval_effects=APPROVAL_EFFECTS,
            metrics_readers=readers,
            seal_signer=seal_signer,
            dispatcher=None,
            admission=None,
            video_store=None,
            stripe=None,
            key_cache=None,
            export_runner=None,
            reads=None,
            **{POLICIES_STATE_KEY: limits.policies(settings.rate_limits), LEASES_STATE_KEY: limits.Leases()},
        )
    )
    app = Litestar(
        route_handlers=[*CONTROLLERS, swagger_assets_router(), console_static_router()],
        plugins=[StrictStructSchemaPlugin(), HTMXPlugin()],
        template_config=TemplateConfig(instance=JinjaTemplateEngine.from_environment(environment(TEMPLATES_DIR))),
        before_request=before_request,
        dependencies=dependencies_for(state),
        dto=STRICT_BODY,
        return_dto=None,
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=[lifespan],
        state=state,
        request_max_body_size=settings.api.request_body_bytes_max,
        openapi_config=openapi_config(page_size_max=settings.api.page_size_max, body_refinements=body_refinements),
        logging_config=None,
    )
    # Wrapped around the whole app, not as route middleware, so unrouted 404s and 405s are logged (and
    # answered with the same headers) too.
    app.asgi_handler = request_logging_middleware(http_semantics(app.asgi_handler))
    return app


def sweeper_for(
    pool: asyncpg.Pool,
    ledger_service: ledger.Ledger,
    settings: GenerationSettings,
    stripe_settings: StripeSettings,
    stripe_gateway: billing.StripeGateway | None = None,
    catalog: pricing.Catalog | None = None,
    console_settings: ConsoleSettings | None = None,
    ledger_settings: LedgerSettings | None = None,
) -> generations.Sweeper:
    """The sweeper with every domain's periodic work: expired holds and lots, Stripe events stored but not
    ended (a failure, an unknown customer, a refund before its purchase), console sessions long over, and
    the ledger's monthly partitions created ahead."""
    ahead_months = (ledger_settings or LedgerSettings.from_env()).partitions_ahead_months
    also = {
        "ledger_partitions": partial(ledger.ensure_partitions, pool, ahead_months=ahead_months),
        "stripe_events": partial(
            billing.reapply_pending_events, pool, ledger_service, stripe_gateway, stripe_settings, catalog
        ),
        "console_sessions": partial(console.purge_sessions, pool, console_settings or ConsoleSettings.from_env()),
    }
    return generations.Sweeper(pool, ledger_service, settings, also)


def _sealer_task(app: Litestar, settings: Settings) -> list[asyncio.Task[None]]:
    """The seal's sealer, in every process that has the signing key (one seals at a time)."""
    signer: seal.Signer = app.state.seal_signer
    if not signer.sealing:
        log.warning("seal_not_running", reason=signer.problem)
        return []
    assert signer.key is not None
    sealer = seal.Sealer(app.state.pool, settings.seal, signer.key)
    return [asyncio.create_task(sealer.run(), name="sealer")]


async def _start_background(app: Litestar, settings: Settings) -> list[asyncio.Task[None]]:
    """The sealer, the webhook deliverer, the dispatcher and the sweeper run beside the API in every
    `moments serve` process (the sealer unless SEAL_ENABLED=false or it has no key; the deliverer unless
    WEBHOOK_DELIVERER_ENABLED=false; the last two unless DISPATCHER_ENABLED=false); they coordinate with
    other processes only through PostgreSQL."""
    app.state.dispatcher = None
    app.state.worker_client = None
    app.state.webhook_client = None
    tasks = _sealer_task(app, settings)
    if app.state.reads.configured:
        tasks.append(asyncio.create_task(app.state.reads.run(), name="replica-monitor"))
    if settings.webhooks.deliverer_enabled:
        # No redirects followed, no proxy from the environment: the deliverer decides where it connects.
        app.state.webhook_client = httpx.AsyncClient(follow_redirects=False, trust_env=False)
        deliverer = webhooks.Deliverer(app.state.pool, settings.webhooks, app.state.webhook_client)
        tasks.append(asyncio.create_task(deliverer.run(), name="webhook-deliverer"))
    generation = settings.generation
    if not generation.dispatcher_enabled:
        return tasks
    pool, ledger_service = app.state.pool, app.state.ledger
    sweeper = sweeper_for(
        pool,
        ledger_service,
        generation,
        settings.stripe,
        app.state.stripe,
        app.state.catalog,
        settings.console,
        settings.ledger,
    )
    tasks.append(asyncio.create_task(sweeper.run(), name="sweeper"))
    if not generation.worker_urls:
        log.warning("dispatcher_disabled", reason="GENERATION_WORKER_URL is not set")
        return tasks
    client = WorkerClient(generation.worker_urls, request_timeout_s=generation.worker_request_timeout_s)
    await client.__aenter__()
    app.state.worker_client = client
    sweeper.cancels_through(client)
    app.state.dispatcher = generations.Dispatcher(
        pool, ledger_service, generation, client, admission=app.state.admission, store=app.state.video_store
    )
    tasks.append(asyncio.create_task(app.state.dispatcher.run(), name="dispatcher"))
    return tasks


async def _stop_background(app: Litestar, tasks: Sequence[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if app.state.dispatcher is not None:
        await app.state.dispatcher.close()
    if app.state.worker_client is not None:
        await app.state.worker_client.aclose()
    if app.state.webhook_client is not None:
        await app.state.webhook_client.aclose()


async def _shut_down(app: Litestar, background: Sequence[asyncio.Task[None]], timeout_s: float) -> None:
    """Every step bounded, so that a database or worker that does not answer never holds the process past
    SHUTDOWN_TIMEOUT_S: the dispatcher hands its jobs back, the committers answer what they hold, the
    pools close (or are terminated)."""
    deadline = asyncio.get_running_loop().time() + timeout_s

    async def step(name: str, work: Awaitable[object]) -> bool:
        left_s = max(deadline - asyncio.get_running_loop().time(), 0.05)
        try:
            await asyncio.wait_for(work, left_s)
        except Exception as error:  # shutting down: say what did not stop cleanly, and go on
            log.warning("shutdown_step_failed", step=name, error=repr(error)[:200])
            return False
        return True

    await step("background", _stop_background(app, background))
    await step("exports", app.state.export_runner.close())
    if app.state.stripe is not None:
        await step("stripe", app.state.stripe.aclose())
    await step("key_cache", app.state.key_cache.close())
    await step("ledger", app.state.ledger.close())
    await step("replica", app.state.reads.close())
    if not await step("pool", app.state.pool.close()):
        app.state.pool.terminate()


def create_app_from_env() -> Litestar:
    """The granian target: each server process builds its app from the environment."""
    return create_app()
