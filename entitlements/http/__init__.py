"""The HTTP layer: the only code that knows status codes. Problem+json, auth, strict bodies, shared
parameters, request logs and metrics, health."""

from entitlements.http import outgoing
from entitlements.http.auth import (
    OPENAPI_PATH_PREFIX,
    SESSION_COOKIE,
    allowed_roles,
    may,
    mirrored_roles,
    operation_roles,
    role_guard,
)
from entitlements.http.body import STRICT_BODY, decode_strictly
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
    IDEMPOTENCY_KEY_PATTERN,
    CursorQuery,
    UserIdPath,
    Window,
    provide_caller,
    provide_idempotency_key,
    provide_limit,
    provide_window,
)
from entitlements.http.problems import (
    EXCEPTION_HANDLERS,
    PROBLEM_MEDIA_TYPE,
    RETRY_AFTER_S_DEFAULT,
    STATUS_BY_CODE,
    log_database_fault,
)
from entitlements.http.responses import answer_response

__all__ = [
    "EXCEPTION_HANDLERS",
    "IDEMPOTENCY_KEY_PATTERN",
    "OPENAPI_PATH_PREFIX",
    "PROBLEM_MEDIA_TYPE",
    "RETRY_AFTER_S_DEFAULT",
    "SESSION_COOKIE",
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
    "answer_response",
    "decode_strictly",
    "log_database_fault",
    "may",
    "mirrored_roles",
    "operation_roles",
    "outgoing",
    "provide_caller",
    "provide_idempotency_key",
    "provide_limit",
    "provide_window",
    "role_guard",
]
