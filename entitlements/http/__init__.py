"""The HTTP layer: the only code that knows status codes. Problem+json, auth, strict bodies, shared
parameters, request logs and metrics, health."""

from entitlements.http.auth import OPENAPI_PATH_PREFIX, allowed_roles, role_guard
from entitlements.http.body import STRICT_BODY
from entitlements.http.deps import (
    AppSettings,
    AuditChecks,
    Catalog,
    IdempotencyKey,
    KeyCacheOfProcess,
    LedgerService,
    PageLimit,
    Pool,
    PriceTable,
    TheCaller,
    TimeWindow,
)
from entitlements.http.params import (
    CursorQuery,
    UserIdPath,
    Window,
    provide_caller,
    provide_idempotency_key,
    provide_limit,
    provide_window,
)
from entitlements.http.problems import EXCEPTION_HANDLERS, PROBLEM_MEDIA_TYPE, STATUS_BY_CODE

__all__ = [
    "EXCEPTION_HANDLERS",
    "OPENAPI_PATH_PREFIX",
    "PROBLEM_MEDIA_TYPE",
    "STATUS_BY_CODE",
    "STRICT_BODY",
    "AppSettings",
    "AuditChecks",
    "Catalog",
    "CursorQuery",
    "IdempotencyKey",
    "KeyCacheOfProcess",
    "LedgerService",
    "PageLimit",
    "Pool",
    "PriceTable",
    "TheCaller",
    "TimeWindow",
    "UserIdPath",
    "Window",
    "allowed_roles",
    "provide_caller",
    "provide_idempotency_key",
    "provide_limit",
    "provide_window",
    "role_guard",
]
