"""Settings: one frozen dataclass per concern, each read once from the environment.

Every field is documented in README.md with its environment variable and default. Limits carry their
unit in their name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from generation_client.logs import LogFormat


class SettingsError(ValueError):
    pass


# How much longer than the server's statement_timeout the client waits for a statement's answer.
COMMAND_TIMEOUT_MARGIN_S = 1.0


def _text(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _optional(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def _int(name: str, default: int, *, minimum: int, maximum: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise SettingsError(f"{name} must be between {minimum} and {maximum}, got {value}")
    return value


def _float(name: str, default: float, *, minimum: float, maximum: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise SettingsError(f"{name} must be between {minimum} and {maximum}, got {value}")
    return value


def _bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    if raw.lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.lower() in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


# DATABASE_POOL_MODE: what sits between the service and PostgreSQL. "session": PostgreSQL itself, or a pooler
# that gives each client connection one server connection for its whole life (PgBouncer's pool_mode=session).
# "transaction": PgBouncer's pool_mode=transaction, where consecutive transactions of one client connection
# may run on different server connections (docs/operations.md, "PgBouncer").
PoolMode = Literal["session", "transaction"]
POOL_MODES: tuple[PoolMode, ...] = ("session", "transaction")
# asyncpg's own default: prepared statements kept per connection (what the service runs, plus a margin).
STATEMENT_CACHE_SIZE_DIRECT = 100


def _choice(name: str, default: PoolMode, choices: tuple[PoolMode, ...]) -> PoolMode:
    raw = os.environ.get(name, "").strip().lower() or default
    for choice in choices:
        if raw == choice:
            return choice
    raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")


@dataclass(frozen=True, kw_only=True)
class DatabaseSettings:
    url: str | None
    replica_url: str | None
    pool_size_min: int
    pool_size_max: int
    statement_timeout_ms: int
    connect_timeout_s: float
    # The longest a caller waits for a pool connection (and for one to be handed back) before 503.
    acquire_timeout_s: float = 3.0
    # Where LISTEN and the migrations go: PostgreSQL itself, never a transaction-mode pooler (None: `url`).
    direct_url: str | None = None
    pool_mode: PoolMode = "session"

    # Reads routed to DATABASE_REPLICA_URL (entitlements/reads.py) go to the primary instead while the
    # replica may be more than this far behind it (or does not answer).
    replica_lag_max_s: float = 2.0
    # How often each process measures the replica's lag; well under the bound, which is checked per read.
    replica_check_interval_s: float = 0.5
    # The replica's connect and pool-acquire bound, and the lag probe's: a dead replica costs a read this
    # long at most before it is served by the primary.
    replica_timeout_s: float = 1.0

    @property
    def direct(self) -> str | None:
        """The URL of a connection that keeps its session: DATABASE_DIRECT_URL, else DATABASE_URL."""
        return self.direct_url or self.url

    @property
    def statement_cache_size(self) -> int:
        """asyncpg's prepared-statement cache per connection. 0 behind a transaction-mode pooler, as asyncpg
        documents for PgBouncer: a statement prepared on one server connection is unknown on the next, and
        PgBouncer 1.18 does not carry them over. asyncpg then uses the unnamed statement, parsed and bound
        in one exchange (no Sync between them), which stays on one server connection."""
        return 0 if self.pool_mode == "transaction" else STATEMENT_CACHE_SIZE_DIRECT

    @property
    def command_timeout_s(self) -> float:
        """The client's own bound on one statement: the server's statement_timeout cannot fire while the
        server is stalled (SIGSTOP, a frozen disk), so the client gives up a second after it would have."""
        return self.statement_timeout_ms / 1000 + COMMAND_TIMEOUT_MARGIN_S

    def __post_init__(self) -> None:
        if self.pool_size_min > self.pool_size_max:
            raise SettingsError("DB_POOL_SIZE_MIN must not exceed DB_POOL_SIZE_MAX")
        if self.replica_check_interval_s >= self.replica_lag_max_s:
            raise SettingsError("DATABASE_REPLICA_CHECK_INTERVAL_S must be less than DATABASE_REPLICA_LAG_MAX_S")

    @classmethod
    def from_env(cls) -> DatabaseSettings:
        return cls(
            url=_optional("DATABASE_URL"),
            replica_url=_optional("DATABASE_REPLICA_URL"),
            pool_size_min=_int("DB_POOL_SIZE_MIN", 2, minimum=1, maximum=100),
            pool_size_max=_int("DB_POOL_SIZE_MAX", 20, minimum=1, maximum=500),
            statement_timeout_ms=_int("DB_STATEMENT_TIMEOUT_MS", 15_000, minimum=100, maximum=600_000),
            connect_timeout_s=_float("DB_CONNECT_TIMEOUT_S", 10.0, minimum=0.1, maximum=120.0),
            acquire_timeout_s=_float("DB_ACQUIRE_TIMEOUT_S", 3.0, minimum=0.1, maximum=60.0),
            direct_url=_optional("DATABASE_DIRECT_URL"),
            pool_mode=_choice("DATABASE_POOL_MODE", "session", POOL_MODES),
            replica_lag_max_s=_float("DATABASE_REPLICA_LAG_MAX_S", 2.0, minimum=0.1, maximum=3600.0),
            replica_check_interval_s=_float("DATABASE_REPLICA_CHECK_INTERVAL_S", 0.5, minimum=0.05, maximum=600.0),
            replica_timeout_s=_float("DATABASE_REPLICA_TIMEOUT_S", 1.0, minimum=0.1, maximum=60.0),
        )


@dataclass(frozen=True, kw_only=True)
class ApiSettings:
    page_size_default: int
    page_size_max: int
    request_body_bytes_max: int
    support_grant_moments_max: int
    # The most one support person (a key's name) may grant in one UTC day, pending requests included.
    support_grant_daily_moments_max: int
    # A support grant or refund of more than this waits for a second person's approval.
    approval_threshold_moments: int
    # A pending approval not decided within this long can no longer be approved.
    approval_ttl_s: int
    # Prompt advice answers each process keeps (0 keeps none); at most about 22 KB each.
    advice_cache_entries_max: int
    log_format: LogFormat  # "json", "console", or "auto" (console on a TTY)
    # A cached key is read again from PostgreSQL after this long even if no revocation was heard.
    api_key_cache_ttl_s: int
    api_key_cache_entries_max: int

    @classmethod
    def from_env(cls) -> ApiSettings:
        log_format: Any = _text("LOG_FORMAT", "auto")
        if log_format not in {"json", "console", "auto"}:
            raise SettingsError(f"LOG_FORMAT must be json, console or auto, got {log_format!r}")
        page_size_max = _int("PAGE_SIZE_MAX", 200, minimum=1, maximum=1000)
        return cls(
            page_size_default=min(_int("PAGE_SIZE_DEFAULT", 50, minimum=1, maximum=1000), page_size_max),
            page_size_max=page_size_max,
            request_body_bytes_max=_int("REQUEST_BODY_BYTES_MAX", 64 * 1024, minimum=1024, maximum=10 << 20),
            support_grant_moments_max=_int("SUPPORT_GRANT_MOMENTS_MAX", 5_000, minimum=0, maximum=10_000_000),
            support_grant_daily_moments_max=_int(
                "SUPPORT_GRANT_DAILY_MOMENTS_MAX", 10_000, minimum=0, maximum=100_000_000
            ),
            approval_threshold_moments=_int("APPROVAL_THRESHOLD_MOMENTS", 2_000, minimum=0, maximum=10_000_000),
            approval_ttl_s=_int("APPROVAL_TTL_S", 7 * 86_400, minimum=60, maximum=90 * 86_400),
            advice_cache_entries_max=_int("ADVICE_CACHE_ENTRIES_MAX", 512, minimum=0, maximum=10_000),
            log_format=log_format,
            api_key_cache_ttl_s=_int("API_KEY_CACHE_TTL_S", 60, minimum=0, maximum=3600),
            api_key_cache_entries_max=_int("API_KEY_CACHE_ENTRIES_MAX", 10_000, minimum=1, maximum=1_000_000),
        )


@dataclass(frozen=True, kw_only=True)
class GenerationSettings:
    worker_urls: tuple[str, ...]
    video_dir: Path
    hold_ttl_s: int
    dispatcher_enabled: bool
    dispatcher_concurrency: int
    job_lease_s: int
    worker_request_timeout_s: float
    render_timeout_s: int
    attempts_max: int
    retry_backoff_base_s: float
    retry_backoff_cap_s: float
    poll_interval_s: float
    sweep_interval_s: float
    # The most generations one user may have in progress (queued or running) at once; 0: no cap.
    open_generations_per_user_max: int = 20
    # An unreachable worker is retried (with backoff) this long after the job's first unanswered attempt
    # before the generation fails: long enough to outlast a worker restart.
    worker_retry_budget_s: float = 300.0
    # A video that cannot be written to VIDEO_DIR is tried this often before the generation fails.
    video_store_attempts_max: int = 3
    # Admission control (admission.py): the queue depth below which nothing is refused, the depth above
    # which everything is, the window the workers' throughput is measured over, how often it is read.
    admission_queue_depth_min: int = 64
    admission_queue_depth_max: int = 5000
    admission_window_s: int = 60
    admission_refresh_s: float = 1.0

    def __post_init__(self) -> None:
        if self.retry_backoff_base_s > self.retry_backoff_cap_s:
            raise SettingsError("RETRY_BACKOFF_BASE_S must not exceed RETRY_BACKOFF_CAP_S")
        if self.admission_queue_depth_min > self.admission_queue_depth_max:
            raise SettingsError("ADMISSION_QUEUE_DEPTH_MIN must not exceed ADMISSION_QUEUE_DEPTH_MAX")

    @classmethod
    def from_env(cls) -> GenerationSettings:
        urls = tuple(u.strip() for u in _text("GENERATION_WORKER_URL", "").split(",") if u.strip())
        return cls(
            worker_urls=urls,
            video_dir=Path(_text("VIDEO_DIR", ".data/videos")),
            hold_ttl_s=_int("HOLD_TTL_S", 900, minimum=5, maximum=86_400),
            dispatcher_enabled=_bool("DISPATCHER_ENABLED", True),
            dispatcher_concurrency=_int("DISPATCHER_CONCURRENCY", 4, minimum=1, maximum=256),
            job_lease_s=_int("JOB_LEASE_S", 60, minimum=2, maximum=3600),
            worker_request_timeout_s=_float("WORKER_REQUEST_TIMEOUT_S", 10.0, minimum=0.1, maximum=300),
            render_timeout_s=_int("RENDER_TIMEOUT_S", 300, minimum=1, maximum=86_400),
            attempts_max=_int("GENERATION_ATTEMPTS_MAX", 100, minimum=1, maximum=1000),
            retry_backoff_base_s=_float("RETRY_BACKOFF_BASE_S", 0.5, minimum=0.0, maximum=60),
            retry_backoff_cap_s=_float("RETRY_BACKOFF_CAP_S", 10.0, minimum=0.0, maximum=600),
            poll_interval_s=_float("DISPATCHER_POLL_INTERVAL_S", 0.5, minimum=0.01, maximum=60),
            sweep_interval_s=_float("SWEEP_INTERVAL_S", 5.0, minimum=0.05, maximum=3600),
            open_generations_per_user_max=_int("OPEN_GENERATIONS_PER_USER_MAX", 20, minimum=0, maximum=100_000),
            worker_retry_budget_s=_float("WORKER_RETRY_BUDGET_S", 300.0, minimum=0.0, maximum=86_400),
            video_store_attempts_max=_int("VIDEO_STORE_ATTEMPTS_MAX", 3, minimum=1, maximum=20),
            admission_queue_depth_min=_int("ADMISSION_QUEUE_DEPTH_MIN", 64, minimum=0, maximum=1_000_000),
            admission_queue_depth_max=_int("ADMISSION_QUEUE_DEPTH_MAX", 5000, minimum=1, maximum=1_000_000),
            admission_window_s=_int("ADMISSION_WINDOW_S", 60, minimum=5, maximum=3600),
            admission_refresh_s=_float("ADMISSION_REFRESH_S", 1.0, minimum=0.05, maximum=60),
        )


# A rate limit's bounds, per second: below the least, a key's state would reach past what PostgreSQL's
# timestamps can hold; past the most, one request's share of a second is under the microsecond they keep.
RATE_PER_S_MIN = 0.001
RATE_PER_S_MAX = 100_000.0
RATE_LIMIT_LEASE_S_DEFAULT = 0.1


@dataclass(frozen=True, kw_only=True)
class RateLimitSettings:
    """Requests per second and burst per API key, for each endpoint class (entitlements/limits); a rate
    of 0 leaves its class unlimited, and `enabled=False` all of them (a benchmark measuring the service
    itself). One service key carries the whole calling product's traffic, so the defaults are generous:
    they stop a runaway client, not a busy one."""

    enabled: bool
    generations_per_s: float
    generations_burst: int
    writes_per_s: float
    writes_burst: int
    reads_per_s: float
    reads_burst: int
    # How long a process may keep requests of a key's allowance it took in one statement (0: one
    # statement per request). A lease holds at most this long's worth of the class's rate.
    lease_s: float = RATE_LIMIT_LEASE_S_DEFAULT

    def __post_init__(self) -> None:
        for name in ("generations", "writes", "reads"):
            per_s = getattr(self, f"{name}_per_s")
            if 0 < per_s < RATE_PER_S_MIN:
                raise SettingsError(
                    f"RATE_LIMIT_{name.upper()}_PER_S must be 0 (no limit) or at least {RATE_PER_S_MIN}, got {per_s}"
                )

    @classmethod
    def from_env(cls) -> RateLimitSettings:
        return cls(
            enabled=_bool("RATE_LIMITS_ENABLED", True),
            generations_per_s=_float("RATE_LIMIT_GENERATIONS_PER_S", 20.0, minimum=0.0, maximum=RATE_PER_S_MAX),
            generations_burst=_int("RATE_LIMIT_GENERATIONS_BURST", 100, minimum=1, maximum=1_000_000),
            writes_per_s=_float("RATE_LIMIT_WRITES_PER_S", 50.0, minimum=0.0, maximum=RATE_PER_S_MAX),
            writes_burst=_int("RATE_LIMIT_WRITES_BURST", 200, minimum=1, maximum=1_000_000),
            reads_per_s=_float("RATE_LIMIT_READS_PER_S", 200.0, minimum=0.0, maximum=RATE_PER_S_MAX),
            reads_burst=_int("RATE_LIMIT_READS_BURST", 1000, minimum=1, maximum=1_000_000),
            lease_s=_float("RATE_LIMIT_LEASE_S", RATE_LIMIT_LEASE_S_DEFAULT, minimum=0.0, maximum=10.0),
        )


@dataclass(frozen=True, kw_only=True)
class LedgerSettings:
    batch_size_max: int
    committers: int
    # Months of ledger partitions the sweeper keeps created beyond the current one (a write dated in a month
    # without its partition fails): enough that a sweeper down for a while does not stop the ledger.
    partitions_ahead_months: int = 2

    @classmethod
    def from_env(cls) -> LedgerSettings:
        return cls(
            batch_size_max=_int("LEDGER_BATCH_SIZE_MAX", 512, minimum=1, maximum=10_000),
            committers=_int("LEDGER_COMMITTERS", 3, minimum=1, maximum=64),
            partitions_ahead_months=_int("LEDGER_PARTITIONS_AHEAD_MONTHS", 2, minimum=1, maximum=24),
        )


# Stripe's key prefixes say which mode a key belongs to: secret (sk_) and restricted (rk_) keys alike.
_LIVE_KEY_PREFIXES = ("sk_live_", "rk_live_")
_TEST_KEY_PREFIXES = ("sk_test_", "rk_test_")


def stripe_livemode(api_key: str | None, livemode: bool | None) -> bool:
    """Whether this service is connected to Stripe's live mode: STRIPE_LIVEMODE if set, else what the
    key's prefix says, else test mode (a service nobody told it is live accepts only test events)."""
    from_key: bool | None = None
    if api_key is not None:
        if api_key.startswith(_LIVE_KEY_PREFIXES):
            from_key = True
        elif api_key.startswith(_TEST_KEY_PREFIXES):
            from_key = False
    if livemode is not None and from_key is not None and livemode != from_key:
        raise SettingsError(
            f"STRIPE_LIVEMODE is {str(livemode).lower()} but STRIPE_API_KEY is a {'live' if from_key else 'test'}"
            " mode key"
        )
    if livemode is None and from_key is None and api_key is not None:
        raise SettingsError(
            "STRIPE_API_KEY starts with none of sk_live_, rk_live_, sk_test_, rk_test_: set STRIPE_LIVEMODE"
        )
    return livemode if livemode is not None else bool(from_key)


@dataclass(frozen=True, kw_only=True)
class StripeSettings:
    api_key: str | None = field(repr=False)
    webhook_secret: str | None = field(repr=False)
    api_base: str | None
    webhook_tolerance_s: int
    success_url: str
    cancel_url: str
    # The mode events must be in (`livemode`); an event of the other mode is refused.
    livemode: bool = False
    # Retrievals while applying an event (a session's line items, a payment's invoice): per call, and
    # how often the stripe library retries one.
    lookup_timeout_s: float = 5.0
    lookup_retries_max: int = 1
    # How often a stored event is tried before it ends `failed` (an admin may re-apply it after a fix).
    event_attempts_max: int = 20
    # Deeper webhook bodies are refused (Stripe's own are about 12 levels deep).
    event_depth_max: int = 64

    @classmethod
    def from_env(cls) -> StripeSettings:
        api_key = _optional("STRIPE_API_KEY")
        explicit = _optional("STRIPE_LIVEMODE")
        return cls(
            api_key=api_key,
            webhook_secret=_optional("STRIPE_WEBHOOK_SECRET"),
            api_base=_optional("STRIPE_API_BASE"),
            webhook_tolerance_s=_int("STRIPE_WEBHOOK_TOLERANCE_S", 300, minimum=1, maximum=3600),
            success_url=_text("STRIPE_SUCCESS_URL", "http://127.0.0.1/checkout/success"),
            cancel_url=_text("STRIPE_CANCEL_URL", "http://127.0.0.1/checkout/cancel"),
            livemode=stripe_livemode(api_key, _bool("STRIPE_LIVEMODE", False) if explicit is not None else None),
            lookup_timeout_s=_float("STRIPE_LOOKUP_TIMEOUT_S", 5.0, minimum=0.1, maximum=60.0),
            lookup_retries_max=_int("STRIPE_LOOKUP_RETRIES_MAX", 1, minimum=0, maximum=5),
            event_attempts_max=_int("STRIPE_EVENT_ATTEMPTS_MAX", 20, minimum=1, maximum=100),
            event_depth_max=_int("STRIPE_EVENT_DEPTH_MAX", 64, minimum=16, maximum=512),
        )


CookieSecure = Literal["auto", "always"]


@dataclass(frozen=True, kw_only=True)
class ConsoleSettings:
    # A session unused this long is over (sign in again).
    session_idle_s: int
    # A session is over this long after sign-in, however busy.
    session_absolute_s: int
    # "auto": the cookie is Secure when the request came over TLS; "always": behind a TLS-terminating proxy.
    cookie_secure: CookieSecure

    @classmethod
    def from_env(cls) -> ConsoleSettings:
        cookie_secure: Any = _text("CONSOLE_COOKIE_SECURE", "auto")
        if cookie_secure not in {"auto", "always"}:
            raise SettingsError(f"CONSOLE_COOKIE_SECURE must be auto or always, got {cookie_secure!r}")
        absolute_s = _int("CONSOLE_SESSION_ABSOLUTE_S", 12 * 3600, minimum=300, maximum=30 * 86_400)
        return cls(
            # A session never idles longer than it lives.
            session_idle_s=min(_int("CONSOLE_SESSION_IDLE_S", 1800, minimum=60, maximum=86_400), absolute_s),
            session_absolute_s=absolute_s,
            cookie_secure=cookie_secure,
        )


# The retry schedule of a webhook delivery after each failed attempt: seconds, minutes, hours, about a day
# in all (20.6 hours from the first attempt to the last).
WEBHOOK_RETRY_SCHEDULE_S_DEFAULT = (5.0, 30.0, 300.0, 1800.0, 7200.0, 21600.0, 43200.0)


def _floats(
    name: str, default: tuple[float, ...], *, minimum: float, maximum: float, length_max: int
) -> tuple[float, ...]:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        values = tuple(float(part) for part in raw.split(","))
    except ValueError:
        raise SettingsError(f"{name} must be comma-separated numbers, got {raw!r}") from None
    if not 1 <= len(values) <= length_max or not all(minimum <= value <= maximum for value in values):
        raise SettingsError(f"{name} must be 1-{length_max} numbers, each between {minimum} and {maximum}")
    return values


@dataclass(frozen=True, kw_only=True)
class WebhookSettings:
    # The deliverer runs in every `moments serve` process unless this is false.
    deliverer_enabled: bool
    # Receivers on private and loopback addresses (a company network, tests); link-local and cloud
    # metadata addresses are refused whatever this says.
    allow_private_urls: bool
    # One attempt: connecting, sending and reading the answer's status.
    timeout_s: float
    # A claimed delivery is the claimer's for this long; past it (a dead process) another takes it.
    lease_s: int
    retry_schedule_s: tuple[float, ...]
    # Each wait is the schedule's, times a random factor within 1 +- this.
    retry_jitter_ratio: float
    # How long the previous secret still signs after a rotation.
    secret_grace_s: int
    # Deliveries in flight at once, per process.
    concurrency: int
    poll_interval_s: float
    endpoints_max: int
    # A user's `balance.low` threshold: available below it is low (0 is depleted).
    balance_low_threshold_moments: int

    def __post_init__(self) -> None:
        if self.lease_s <= self.timeout_s:
            raise SettingsError("WEBHOOK_LEASE_S must exceed WEBHOOK_TIMEOUT_S")

    @classmethod
    def from_env(cls) -> WebhookSettings:
        return cls(
            deliverer_enabled=_bool("WEBHOOK_DELIVERER_ENABLED", True),
            allow_private_urls=_bool("WEBHOOK_ALLOW_PRIVATE_URLS", False),
            timeout_s=_float("WEBHOOK_TIMEOUT_S", 10.0, minimum=0.1, maximum=120.0),
            lease_s=_int("WEBHOOK_LEASE_S", 60, minimum=1, maximum=3600),
            retry_schedule_s=_floats(
                "WEBHOOK_RETRY_SCHEDULE_S",
                WEBHOOK_RETRY_SCHEDULE_S_DEFAULT,
                minimum=0.0,
                maximum=86_400.0,
                length_max=30,
            ),
            retry_jitter_ratio=_float("WEBHOOK_RETRY_JITTER_RATIO", 0.2, minimum=0.0, maximum=0.9),
            secret_grace_s=_int("WEBHOOK_SECRET_GRACE_S", 86_400, minimum=0, maximum=30 * 86_400),
            concurrency=_int("WEBHOOK_CONCURRENCY", 16, minimum=1, maximum=512),
            poll_interval_s=_float("WEBHOOK_POLL_INTERVAL_S", 0.1, minimum=0.01, maximum=60.0),
            endpoints_max=_int("WEBHOOK_ENDPOINTS_MAX", 50, minimum=1, maximum=1000),
            balance_low_threshold_moments=_int("BALANCE_LOW_THRESHOLD_MOMENTS", 100, minimum=1, maximum=1_000_000_000),
        )


@dataclass(frozen=True, kw_only=True)
class FinanceSettings:
    # Where exports' files are written (and served from): shared storage when several hosts serve the API.
    export_dir: Path
    # An export's process holds it this long; past that, another process takes it over (its own died).
    export_lease_s: int
    # How long one export's query may run (the API's DB_STATEMENT_TIMEOUT_MS is too short for a big one).
    export_statement_timeout_s: int
    # How often a process looks for exports waiting or left behind by a process that died.
    export_poll_interval_s: float

    @classmethod
    def from_env(cls) -> FinanceSettings:
        return cls(
            export_dir=Path(_text("EXPORT_DIR", ".data/exports")),
            export_lease_s=_int("EXPORT_LEASE_S", 3600, minimum=10, maximum=7 * 86_400),
            export_statement_timeout_s=_int("EXPORT_STATEMENT_TIMEOUT_S", 3600, minimum=1, maximum=86_400),
            export_poll_interval_s=_float("EXPORT_POLL_INTERVAL_S", 10.0, minimum=0.05, maximum=3600),
        )


@dataclass(frozen=True, kw_only=True)
class SealSettings:
    """The ledger's seal (docs/seal.md). The signing key lives outside the database: a file, or the PEM
    text itself in the environment; never logged."""

    # The Ed25519 private key (PKCS #8 PEM) that signs checkpoints, as `moments seal-key` writes it.
    key_file: Path | None
    # The same PEM text, for platforms that hand secrets over as environment variables.
    key_pem: str | None = field(repr=False)
    # Public keys of earlier signing keys (PEM files, comma-separated): checkpoints signed before a key
    # rotation still verify. The signing key's own public key needs no entry.
    public_key_files: tuple[Path, ...]
    # Whether this process runs a sealer at all (any number may; one seals at a time).
    enabled: bool
    # A checkpoint is written once this many transactions are chained since the last one...
    checkpoint_transactions: int
    # ... or once this long has passed since the last one, whichever comes first (if any are waiting).
    checkpoint_interval_s: float
    # How long an idle sealer sleeps before looking for new ledger transactions.
    poll_interval_s: float
    # GET /v1/ledger/verify recomputes at most about this many transactions per request.
    verify_transactions_max: int
    # /metrics and GET /v1/ledger/seal count unsealed transactions up to this many ("at least" beyond).
    lag_count_max: int

    def __post_init__(self) -> None:
        if self.key_file is not None and self.key_pem is not None:
            raise SettingsError("set SEAL_KEY_FILE or SEAL_PRIVATE_KEY, not both")

    @classmethod
    def from_env(cls) -> SealSettings:
        key_file = _optional("SEAL_KEY_FILE")
        return cls(
            key_file=Path(key_file) if key_file else None,
            key_pem=_optional("SEAL_PRIVATE_KEY"),
            public_key_files=tuple(
                Path(name.strip()) for name in _text("SEAL_PUBLIC_KEY_FILES", "").split(",") if name.strip()
            ),
            enabled=_bool("SEAL_ENABLED", True),
            checkpoint_transactions=_int("SEAL_CHECKPOINT_TRANSACTIONS", 1000, minimum=1, maximum=100_000),
            checkpoint_interval_s=_float("SEAL_CHECKPOINT_INTERVAL_S", 10.0, minimum=0.05, maximum=86_400),
            poll_interval_s=_float("SEAL_POLL_INTERVAL_S", 0.5, minimum=0.01, maximum=60),
            verify_transactions_max=_int("SEAL_VERIFY_TRANSACTIONS_MAX", 20_000, minimum=1, maximum=10_000_000),
            lag_count_max=_int("SEAL_LAG_COUNT_MAX", 1_000_000, minimum=1, maximum=1_000_000_000),
        )


@dataclass(frozen=True, kw_only=True)
class ProcessSettings:
    # SIGTERM/SIGINT to stopped: every process `moments dev` or `moments serve` started ends within this
    # long (well under `docker stop`'s 10 s), in-flight work finished or handed back.
    shutdown_timeout_s: float = 6.0

    @classmethod
    def from_env(cls) -> ProcessSettings:
        return cls(shutdown_timeout_s=_float("SHUTDOWN_TIMEOUT_S", 6.0, minimum=1.0, maximum=60.0))


@dataclass(frozen=True, kw_only=True)
class Settings:
    database: DatabaseSettings
    api: ApiSettings
    generation: GenerationSettings
    ledger: LedgerSettings
    stripe: StripeSettings
    console: ConsoleSettings
    finance: FinanceSettings
    seal: SealSettings
    rate_limits: RateLimitSettings
    webhooks: WebhookSettings
    process: ProcessSettings = field(default_factory=ProcessSettings)

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            database=DatabaseSettings.from_env(),
            api=ApiSettings.from_env(),
            generation=GenerationSettings.from_env(),
            ledger=LedgerSettings.from_env(),
            stripe=StripeSettings.from_env(),
            console=ConsoleSettings.from_env(),
            finance=FinanceSettings.from_env(),
            seal=SealSettings.from_env(),
            rate_limits=RateLimitSettings.from_env(),
            webhooks=WebhookSettings.from_env(),
            process=ProcessSettings.from_env(),
        )
