"""Settings.from_env: the documented defaults, and a clear SettingsError naming the variable at fault."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from entitlements import settings as settings_module
from entitlements.settings import Settings, SettingsError

_SOURCE = inspect.getsource(settings_module)


def _names(reader: str) -> list[str]:
    return re.findall(rf'\b{reader}\(\s*"([A-Z][A-Z0-9_]*)"', _SOURCE)


# Discovered from the module so that a setting added later is covered without editing this file.
INT_VARIABLES = _names("_int")
FLOAT_VARIABLES = _names("_float")
BOOL_VARIABLES = _names("_bool")
ALL_VARIABLES = sorted(
    set(INT_VARIABLES + FLOAT_VARIABLES + BOOL_VARIABLES + _names("_text") + _names("_optional") + _names("_choice"))
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ALL_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_the_variables_were_found() -> None:
    assert {"HOLD_TTL_S", "PAGE_SIZE_MAX", "REQUEST_BODY_BYTES_MAX", "DB_POOL_SIZE_MAX"} <= set(INT_VARIABLES)
    assert {"DB_CONNECT_TIMEOUT_S", "WORKER_REQUEST_TIMEOUT_S"} <= set(FLOAT_VARIABLES)
    assert "DISPATCHER_ENABLED" in BOOL_VARIABLES
    assert {"DATABASE_URL", "STRIPE_WEBHOOK_SECRET", "LOG_FORMAT"} <= set(ALL_VARIABLES)


def test_defaults() -> None:
    settings = Settings.from_env()

    assert settings.database.url is None
    assert settings.database.replica_url is None
    assert settings.database.pool_size_min == 2
    assert settings.database.pool_size_max == 20
    assert settings.database.statement_timeout_ms == 15_000
    assert settings.database.connect_timeout_s == 10.0
    assert settings.database.direct_url is None
    assert settings.database.pool_mode == "session"
    assert settings.database.statement_cache_size == 100
    assert settings.database.replica_lag_max_s == 2.0
    assert settings.database.replica_check_interval_s == 0.5
    assert settings.database.replica_timeout_s == 1.0

    assert settings.api.page_size_default == 50
    assert settings.api.page_size_max == 200
    assert settings.api.request_body_bytes_max == 64 * 1024
    assert settings.api.support_grant_moments_max == 5_000
    assert settings.api.support_grant_daily_moments_max == 10_000
    assert settings.api.approval_threshold_moments == 2_000
    assert settings.api.approval_ttl_s == 7 * 86_400
    assert settings.api.advice_cache_entries_max == 512
    assert settings.api.log_format == "auto"

    assert settings.console.session_idle_s == 1800
    assert settings.console.session_absolute_s == 12 * 3600
    assert settings.console.cookie_secure == "auto"

    generation = settings.generation
    assert generation.worker_urls == ()
    assert generation.video_dir == Path(".data/videos")
    assert generation.hold_ttl_s == 900
    assert generation.dispatcher_enabled is True
    assert generation.dispatcher_concurrency == 4
    assert generation.job_lease_s == 60
    assert generation.worker_request_timeout_s == 10.0
    assert generation.render_timeout_s == 300
    assert generation.attempts_max == 100
    assert generation.retry_backoff_base_s == 0.5
    assert generation.retry_backoff_cap_s == 10.0
    assert generation.poll_interval_s == 0.5
    assert generation.sweep_interval_s == 5.0
    assert generation.open_generations_per_user_max == 20

    limits = settings.rate_limits
    assert limits.enabled is True
    assert (limits.generations_per_s, limits.generations_burst) == (20.0, 100)
    assert (limits.writes_per_s, limits.writes_burst) == (50.0, 200)
    assert (limits.reads_per_s, limits.reads_burst) == (200.0, 1000)
    assert generation.worker_retry_budget_s == 300.0
    assert generation.video_store_attempts_max == 3
    assert generation.admission_queue_depth_min == 64
    assert generation.admission_queue_depth_max == 5000
    assert generation.admission_window_s == 60
    assert generation.admission_refresh_s == 1.0
    assert settings.database.acquire_timeout_s == 3.0
    assert settings.database.command_timeout_s == 16.0
    assert settings.process.shutdown_timeout_s == 6.0

    stripe = settings.stripe
    assert stripe.api_key is None
    assert stripe.webhook_secret is None
    assert stripe.api_base is None
    assert stripe.webhook_tolerance_s == 300

    assert settings.finance.export_dir == Path(".data/exports")
    assert settings.finance.export_lease_s == 3600
    assert settings.finance.export_statement_timeout_s == 3600
    assert settings.finance.export_poll_interval_s == 10.0


def test_blank_values_mean_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in INT_VARIABLES + FLOAT_VARIABLES + BOOL_VARIABLES + ["DATABASE_URL", "STRIPE_API_KEY"]:
        monkeypatch.setenv(name, "  ")
    assert Settings.from_env() == _defaults_with(monkeypatch)


def _defaults_with(monkeypatch: pytest.MonkeyPatch) -> Settings:
    with monkeypatch.context() as clean:
        for name in ALL_VARIABLES:
            clean.delenv(name, raising=False)
        return Settings.from_env()


def test_values_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@db.example:5432/moments")
    monkeypatch.setenv("HOLD_TTL_S", "60")
    monkeypatch.setenv("DB_CONNECT_TIMEOUT_S", "2.5")
    monkeypatch.setenv("DISPATCHER_ENABLED", "false")
    monkeypatch.setenv("GENERATION_WORKER_URL", " http://a:1 , http://b:2,, ")
    monkeypatch.setenv("LOG_FORMAT", "json")

    settings = Settings.from_env()

    assert settings.database.url == "postgresql://u@db.example:5432/moments"
    assert settings.generation.hold_ttl_s == 60
    assert settings.database.connect_timeout_s == 2.5
    assert settings.generation.dispatcher_enabled is False
    assert settings.generation.worker_urls == ("http://a:1", "http://b:2")
    assert settings.api.log_format == "json"


def test_the_replica_is_measured_more_often_than_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_REPLICA_LAG_MAX_S", "1")
    monkeypatch.setenv("DATABASE_REPLICA_CHECK_INTERVAL_S", "1")
    with pytest.raises(SettingsError, match="DATABASE_REPLICA_CHECK_INTERVAL_S must be less than"):
        Settings.from_env()
    monkeypatch.setenv("DATABASE_REPLICA_CHECK_INTERVAL_S", "0.25")
    assert Settings.from_env().database.replica_check_interval_s == 0.25


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", True), ("true", True), ("YES", True), ("on", True), ("0", False), ("False", False), ("off", False)],
)
def test_booleans(monkeypatch: pytest.MonkeyPatch, raw: str, expected: bool) -> None:
    monkeypatch.setenv("DISPATCHER_ENABLED", raw)
    assert Settings.from_env().generation.dispatcher_enabled is expected


@pytest.mark.parametrize("name", INT_VARIABLES)
@pytest.mark.parametrize("raw", ["abc", "1.5", "10s", "0x10"])
def test_a_bad_integer_names_its_variable(monkeypatch: pytest.MonkeyPatch, name: str, raw: str) -> None:
    monkeypatch.setenv(name, raw)
    with pytest.raises(SettingsError, match=rf"\b{name}\b.*whole number"):
        Settings.from_env()


@pytest.mark.parametrize("name", INT_VARIABLES)
@pytest.mark.parametrize("raw", ["-1", "999999999999"])
def test_an_out_of_range_integer_names_its_variable(monkeypatch: pytest.MonkeyPatch, name: str, raw: str) -> None:
    monkeypatch.setenv(name, raw)
    with pytest.raises(SettingsError, match=rf"\b{name}\b.*between"):
        Settings.from_env()


@pytest.mark.parametrize("name", FLOAT_VARIABLES)
@pytest.mark.parametrize("raw", ["abc", "-1", "1e12", "nan", "inf"])
def test_a_bad_number_names_its_variable(monkeypatch: pytest.MonkeyPatch, name: str, raw: str) -> None:
    monkeypatch.setenv(name, raw)
    with pytest.raises(SettingsError, match=rf"\b{name}\b"):
        Settings.from_env()


@pytest.mark.parametrize("name", BOOL_VARIABLES)
@pytest.mark.parametrize("raw", ["maybe", "2", "enabled"])
def test_a_bad_boolean_names_its_variable(monkeypatch: pytest.MonkeyPatch, name: str, raw: str) -> None:
    monkeypatch.setenv(name, raw)
    with pytest.raises(SettingsError, match=rf"\b{name}\b"):
        Settings.from_env()


def test_a_bad_log_format_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_FORMAT", "xml")
    with pytest.raises(SettingsError, match="LOG_FORMAT"):
        Settings.from_env()


@pytest.mark.parametrize(
    ("name", "lowest", "highest"),
    [
        ("HOLD_TTL_S", 5, 86_400),
        ("PAGE_SIZE_MAX", 1, 1000),
        ("REQUEST_BODY_BYTES_MAX", 1024, 10 << 20),
        ("SUPPORT_GRANT_MOMENTS_MAX", 0, 10_000_000),
        ("SUPPORT_GRANT_DAILY_MOMENTS_MAX", 0, 100_000_000),
        ("APPROVAL_THRESHOLD_MOMENTS", 0, 10_000_000),
        ("APPROVAL_TTL_S", 60, 90 * 86_400),
        ("CONSOLE_SESSION_IDLE_S", 60, 86_400),
        ("CONSOLE_SESSION_ABSOLUTE_S", 300, 30 * 86_400),
        ("STRIPE_EVENT_ATTEMPTS_MAX", 1, 100),
        ("STRIPE_EVENT_DEPTH_MAX", 16, 512),
        ("STRIPE_LOOKUP_RETRIES_MAX", 0, 5),
        ("ADVICE_CACHE_ENTRIES_MAX", 0, 10_000),
        ("EXPORT_LEASE_S", 10, 7 * 86_400),
        ("EXPORT_STATEMENT_TIMEOUT_S", 1, 86_400),
        ("OPEN_GENERATIONS_PER_USER_MAX", 0, 100_000),
        ("RATE_LIMIT_GENERATIONS_BURST", 1, 1_000_000),
        ("RATE_LIMIT_WRITES_BURST", 1, 1_000_000),
        ("RATE_LIMIT_READS_BURST", 1, 1_000_000),
    ],
)
def test_limits_are_accepted_at_their_bounds_and_refused_past_them(
    monkeypatch: pytest.MonkeyPatch, name: str, lowest: int, highest: int
) -> None:
    for accepted in (lowest, highest):
        monkeypatch.setenv(name, str(accepted))
        Settings.from_env()
    for refused in (lowest - 1, highest + 1):
        monkeypatch.setenv(name, str(refused))
        with pytest.raises(SettingsError, match=rf"{name} must be between {lowest} and {highest}, got {refused}"):
            Settings.from_env()


def test_a_console_session_never_idles_longer_than_it_lives(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSOLE_SESSION_IDLE_S", "3600")
    monkeypatch.setenv("CONSOLE_SESSION_ABSOLUTE_S", "3600")
    assert Settings.from_env().console.session_idle_s == 3600
    monkeypatch.setenv("CONSOLE_SESSION_ABSOLUTE_S", "600")
    assert Settings.from_env().console.session_idle_s == 600


@pytest.mark.parametrize(("raw", "accepted"), [("auto", True), ("always", True), ("never", False), ("yes", False)])
def test_the_console_cookie_setting(monkeypatch: pytest.MonkeyPatch, raw: str, accepted: bool) -> None:
    monkeypatch.setenv("CONSOLE_COOKIE_SECURE", raw)
    if accepted:
        assert Settings.from_env().console.cookie_secure == raw
    else:
        with pytest.raises(SettingsError, match="CONSOLE_COOKIE_SECURE"):
            Settings.from_env()


def test_the_default_page_size_never_exceeds_the_maximum(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAGE_SIZE_MAX", "10")
    monkeypatch.setenv("PAGE_SIZE_DEFAULT", "500")
    api = Settings.from_env().api
    assert api.page_size_max == 10
    assert api.page_size_default == 10


def test_secrets_are_not_in_the_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_secret_value_123")
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", "whsec_secret_value_456")
    settings = Settings.from_env()
    assert settings.stripe.api_key == "sk_test_secret_value_123"
    assert settings.stripe.webhook_secret == "whsec_secret_value_456"
    assert "secret_value" not in repr(settings)


@pytest.mark.parametrize(
    ("key", "explicit", "live"),
    [
        (None, None, False),
        ("sk_test_abc", None, False),
        ("rk_test_abc", None, False),
        ("sk_live_abc", None, True),
        ("rk_live_abc", None, True),
        ("sk_live_abc", "true", True),
        (None, "true", True),
        ("custom-key", "false", False),
    ],
)
def test_the_stripe_mode_is_the_keys_or_stripe_livemode(
    monkeypatch: pytest.MonkeyPatch, key: str | None, explicit: str | None, live: bool
) -> None:
    if key is not None:
        monkeypatch.setenv("STRIPE_API_KEY", key)
    if explicit is not None:
        monkeypatch.setenv("STRIPE_LIVEMODE", explicit)
    assert Settings.from_env().stripe.livemode is live


@pytest.mark.parametrize(("key", "explicit"), [("sk_live_abc", "false"), ("sk_test_abc", "true"), ("custom", None)])
def test_a_mode_that_contradicts_the_key_or_cannot_be_told_is_refused(
    monkeypatch: pytest.MonkeyPatch, key: str, explicit: str | None
) -> None:
    monkeypatch.setenv("STRIPE_API_KEY", key)
    if explicit is not None:
        monkeypatch.setenv("STRIPE_LIVEMODE", explicit)
    with pytest.raises(SettingsError, match="STRIPE_LIVEMODE"):
        Settings.from_env()


def test_the_stripe_event_limits_default() -> None:
    stripe = Settings.from_env().stripe
    assert (stripe.event_attempts_max, stripe.event_depth_max) == (20, 64)
    assert (stripe.lookup_timeout_s, stripe.lookup_retries_max) == (5.0, 1)
    assert stripe.livemode is False


def test_behind_pgbouncer_in_transaction_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://moments@pgbouncer:6432/moments")
    monkeypatch.setenv("DATABASE_POOL_MODE", "Transaction")
    database = Settings.from_env().database
    assert database.pool_mode == "transaction"
    assert database.statement_cache_size == 0
    # LISTEN and the migrations fall back to DATABASE_URL until DATABASE_DIRECT_URL says otherwise.
    assert database.direct == "postgresql://moments@pgbouncer:6432/moments"
    monkeypatch.setenv("DATABASE_DIRECT_URL", "postgresql://moments@db:5432/moments")
    assert Settings.from_env().database.direct == "postgresql://moments@db:5432/moments"


def test_an_unknown_pool_mode_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_POOL_MODE", "statement")
    with pytest.raises(SettingsError, match="DATABASE_POOL_MODE must be one of session, transaction"):
        Settings.from_env()
