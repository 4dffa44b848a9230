"""The support console's pages (`/console`): server-rendered Jinja templates, htmx for the parts that change.

Every route but sign-in is `opt["session"]`: the role guard finds the session from its cookie and allows the
roles of the API operations the route `mirrors`. Every form carries the session's CSRF token (sign-in's, a
double-submit token of its own) and every action calls the same service as the API, with an
Idempotency-Key the page made when it drew the form, so a double click or a resubmitted form does one thing.
An action answers htmx with a client redirect to the user's page (which then shows what happened), and a
plain form post with a 303 to it; a refusal is the problem's detail, in place of the form's result.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import quote

import asyncpg
import msgspec
import structlog
from litestar import Controller, Litestar, Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException, NotFoundException
from litestar.params import FromPath, PathParameter, QueryParameter
from litestar.plugins.htmx import ClientRedirect, HTMXTemplate
from litestar.response import File, Redirect, Template
from litestar.router import Router
from litestar.static_files import create_static_files_router
from litestar.status_codes import HTTP_303_SEE_OTHER

import ledger
from entitlements import accounts, approvals, billing, console, finance, generations, seal, webhooks
from entitlements.approvals import APPROVAL_ID_MAX, ApprovalDecision, ApprovalEffect
from entitlements.console import ConsoleSession
from entitlements.database import is_unavailable
from entitlements.errors import DomainError, SessionRequired, ValidationFailed
from entitlements.http import (
    RETRY_AFTER_S_DEFAULT,
    SESSION_COOKIE,
    STATUS_BY_CODE,
    AppSettings,
    AuditChecks,
    CursorQuery,
    LedgerService,
    Pool,
    UserIdPath,
    decode_strictly,
    log_database_fault,
    may,
    operation_roles,
)
from entitlements.schemas import IMAGE_ID_CHARS_MAX, IMAGE_ID_PATTERN, Preview, aware

log = structlog.get_logger("moments.console")
S = TypeVar("S", bound=msgspec.Struct)

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
OWN_STATIC_DIR = Path(__file__).resolve().parent / "static"
# htmx, Pico CSS and Chart.js from npm at build time (the Makefile copies them here; gitignored).
VENDOR_STATIC_DIR = Path(__file__).resolve().parents[1] / "http" / "static" / "console"
STATIC_PATH = "/console/static"
SIGN_IN_PATH = "/console/sign-in"
SIGN_IN_COOKIE = "moments_console_sign_in"
SIGN_IN_COOKIE_MAX_AGE_S = 3600
IDEMPOTENCY_PREFIX = "console-"
MOMENTS_DIGITS_MAX = 13
# Pages list this many rows at a time (older ones a click away).
ROWS_PER_PAGE = 25

# Nothing on a console page comes from anywhere but this service; no page is cached or framed.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}

# What each route shows or does, as the API operations whose roles it takes (`opt["mirrors"]`).
ANY_PAGE = ("getUserLedger", "listGenerations", "auditLedger", "reconcileStripe", "listApprovals")
FINANCE = ("auditLedger", "reconcileStripe", "getRollforward", "listExports", "getSeal")
ExportRunner = NamedDependency[finance.ExportRunner]
ExportIdPath = Annotated[str, PathParameter(min_length=1, max_length=100)]
# What a finance page lists at once: closed periods beside the roll-forward.
PERIODS_LISTED = 12
Effects = NamedDependency[Mapping[str, ApprovalEffect]]
ImageIdQuery = Annotated[
    str | None, QueryParameter(min_length=1, max_length=IMAGE_ID_CHARS_MAX, pattern=IMAGE_ID_PATTERN)
]
ApprovalIdPath = Annotated[int, PathParameter(ge=1, le=APPROVAL_ID_MAX)]


def _session(request: Request[Any, Any, Any]) -> ConsoleSession:
    session = request.state.get("console_session")
    assert isinstance(session, ConsoleSession), "the role guard finds the session of every session route"
    return session


def _allowed(app: Litestar, session: ConsoleSession | None) -> frozenset[str]:
    if session is None:
        return frozenset()
    return may(app, session.caller, operation_roles(app).keys())


def render(request: Request[Any, Any, Any], template: str, *, status: int = 200, **context: Any) -> Template:
    session = request.state.get("console_session")
    session = session if isinstance(session, ConsoleSession) else None
    return HTMXTemplate(
        template_name=template,
        context={
            "session": session,
            "may": _allowed(request.app, session),
            "csrf_token": session.csrf_token if session else None,
            "is_htmx": bool(getattr(request, "htmx", False)),
            "new_key": lambda: IDEMPOTENCY_PREFIX + str(uuid.uuid4()),
            **context,
        },
        status_code=status,
        headers=SECURITY_HEADERS,
    )


def _is_htmx(request: Request[Any, Any, Any]) -> bool:
    return bool(getattr(request, "htmx", False))


def _go(request: Request[Any, Any, Any], path: str) -> Response[Any]:
    """After an action: htmx follows a client redirect, a plain form a 303 (so reloading never re-posts)."""
    if _is_htmx(request):
        return ClientRedirect(path)
    return Redirect(path, status_code=HTTP_303_SEE_OTHER)


def _safe_next(value: str | None) -> str:
    """Where sign-in sends you: a console path only (never another site)."""
    if value and value.startswith("/console") and not value.startswith("//") and "\\" not in value:
        return value
    return "/console"


async def _form(request: Request[Any, Any, Any]) -> dict[str, str]:
    """The form's fields (first value of each), its CSRF token checked against the session's."""
    form = await request.form()
    fields = {name: str(value) for name, value in form.items() if isinstance(value, str)}
    console.check_csrf(_session(request), fields.get("csrf_token"))
    return fields


def _moments(text: str | None, *, required: bool) -> int | None:
    text = (text or "").strip().replace(",", "").replace("_", "")
    if not text:
        if required:
            raise ValidationFailed("moments", "is required")
        return None
    if not (text.isascii() and text.isdigit()) or len(text) > MOMENTS_DIGITS_MAX:
        raise ValidationFailed("moments", f"must be a whole number of moments, 1-{ledger.AMOUNT_MOMENTS_MAX}")
    return int(text)


def _struct(model: type[S], values: dict[str, Any]) -> S:
    """A form's values as the API's own request Struct, checked exactly as the API checks its body."""
    return decode_strictly(msgspec.json.Decoder(model), msgspec.json.encode(values), model)


def _with_preview_reason(fields: dict[str, str]) -> dict[str, str]:
    """A preview needs no reason yet (the balance after does not depend on it); the action still does."""
    return fields if fields.get("reason", "").strip() else fields | {"reason": "(preview)"}


def _idempotency_key(fields: Mapping[str, str]) -> str:
    key = fields.get("idempotency_key", "")
    if not key.startswith(IDEMPOTENCY_PREFIX) or not 1 <= len(key) <= 255 or not key.isprintable():
        raise ValidationFailed("idempotency_key", "is missing: reload the page to get a fresh form")
    return key


def _grant_body(fields: Mapping[str, str]) -> accounts.GrantCreate:
    values: dict[str, Any] = {
        "moments": _moments(fields.get("moments"), required=True),
        "reason": fields.get("reason", ""),
    }
    if fields.get("category"):
        values["category"] = fields["category"]
    return _struct(accounts.GrantCreate, values)


def _refund_body(fields: Mapping[str, str]) -> generations.RefundCreate:
    values: dict[str, Any] = {"reason": fields.get("reason", "")}
    moments = _moments(fields.get("moments"), required=False)
    if moments is not None:
        values["moments"] = moments
    return _struct(generations.RefundCreate, values)


# Errors as pages -------------------------------------------------------------------------------------


def _problem_page(request: Request[Any, Any, Any], code: str, detail: str) -> Response[Any]:
    status = STATUS_BY_CODE.get(code, 500)
    template = "partials/problem.html" if _is_htmx(request) else "problem.html"
    page = render(request, template, status=status, code=code, detail=detail)
    if status == 503:
        page.headers["Retry-After"] = str(RETRY_AFTER_S_DEFAULT)
    return page


def handle_session_required(request: Request[Any, Any, Any], exc: SessionRequired) -> Response[Any]:
    query = "?expired=1" if exc.extra.get("expired") else ""
    sign_in = f"{SIGN_IN_PATH}{query}"
    if request.method == "GET" and not _is_htmx(request):
        separator = "&" if query else "?"
        sign_in += f"{separator}next={quote(request.url.path, safe='/')}"
    return _go(request, sign_in)


def handle_domain_error(request: Request[Any, Any, Any], exc: DomainError) -> Response[Any]:
    return _problem_page(request, exc.code, exc.detail)


def handle_ledger_refusal(request: Request[Any, Any, Any], exc: ledger.LedgerRuleError) -> Response[Any]:
    code = exc.code if exc.code in STATUS_BY_CODE else "conflict"
    return _problem_page(request, code, str(exc))


def handle_ledger_unavailable(request: Request[Any, Any, Any], exc: ledger.LedgerUnavailable) -> Response[Any]:
    return _problem_page(request, "unavailable", "the ledger could not complete the action; submit the form again")


def handle_invalid_cursor(request: Request[Any, Any, Any], exc: ledger.InvalidCursor) -> Response[Any]:
    return _problem_page(request, "validation_failed", "that page link is not one this console made")


def handle_database_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    if not is_unavailable(exc):
        return handle_unexpected(request, exc)
    log_database_fault(exc)
    return _problem_page(request, "unavailable", "the database is not answering; try again in a moment")


def handle_http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    if isinstance(exc, NotFoundException):
        return _problem_page(request, "not_found", "there is no such console page")
    if exc.status_code == 413:
        return _problem_page(request, "payload_too_large", "the form is too large")
    if exc.status_code < 500:
        return _problem_page(request, "validation_failed", str(exc.detail))
    log.error("console_http_exception", status=exc.status_code, detail=str(exc.detail))
    return _problem_page(request, "internal_error", "something went wrong; the request id finds it in the logs")


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("console_unhandled_exception", bug=True, error_type=type(exc).__name__)
    return _problem_page(request, "internal_error", "something went wrong; the request id finds it in the logs")


CONSOLE_EXCEPTION_HANDLERS = {
    SessionRequired: handle_session_required,
    DomainError: handle_domain_error,
    ledger.LedgerRuleError: handle_ledger_refusal,
    ledger.LedgerUnavailable: handle_ledger_unavailable,
    ledger.InvalidCursor: handle_invalid_cursor,
    HTTPException: handle_http_exception,
    asyncpg.PostgresError: handle_database_error,
    asyncpg.InterfaceError: handle_database_error,
    OSError: handle_database_error,
    TimeoutError: handle_database_error,
    Exception: handle_unexpected,
}


def _secure(request: Request[Any, Any, Any], settings: AppSettings) -> bool:
    return settings.console.cookie_secure == "always" or request.url.scheme == "https"


class ConsoleController(Controller):
    path = "/console"
    include_in_schema = False
    # Forms are read by the handlers themselves (`_form`), never decoded as a JSON body.
    dto = None
    return_dto = None
    exception_handlers = CONSOLE_EXCEPTION_HANDLERS  # type: ignore[assignment]
    opt = {"session": True}

    # Signing in and out ------------------------------------------------------------------------------

    @get("/sign-in", opt={"public": True, "session": False})
    async def sign_in_page(
        self,
        request: Request[Any, Any, Any],
        settings: AppSettings,
        expired: Annotated[str | None, QueryParameter(max_length=10)] = None,
        next_path: Annotated[str | None, QueryParameter(name="next", max_length=300)] = None,
    ) -> Template:
        token = request.cookies.get(SIGN_IN_COOKIE) or console.new_form_token()
        notice = "Your session expired: sign in again." if expired else None
        response = render(
            request, "sign_in.html", form_token=token, notice=notice, next=_safe_next(next_path), error=None
        )
        response.cookies.append(self._sign_in_cookie(request, settings, token))
        return response

    @post("/sign-in", opt={"public": True, "session": False}, status_code=HTTP_303_SEE_OTHER)
    async def sign_in(self, request: Request[Any, Any, Any], pool: Pool, settings: AppSettings) -> Response[Any]:
        form = await request.form()
        fields = {name: str(value) for name, value in form.items() if isinstance(value, str)}
        expected = request.cookies.get(SIGN_IN_COOKIE)
        next_path = _safe_next(fields.get("next"))
        if not console.tokens_match(expected, fields.get("csrf_token")):
            token = console.new_form_token()
            error = "This sign-in form is out of date: it was sent without its security token. Try again."
            response = render(
                request, "sign_in.html", status=403, form_token=token, notice=None, next=next_path, error=error
            )
            response.cookies.append(self._sign_in_cookie(request, settings, token))
            return response
        try:
            token, _ = await console.sign_in(pool, fields.get("api_key", ""), settings.console)
        except DomainError as refused:
            status = STATUS_BY_CODE[refused.code]
            assert expected is not None
            return render(
                request,
                "sign_in.html",
                status=status,
                form_token=expected,
                notice=None,
                next=next_path,
                error=refused.detail,
            )
        signed_in = Redirect(next_path, status_code=HTTP_303_SEE_OTHER)
        signed_in.set_cookie(
            SESSION_COOKIE,
            token,
            max_age=settings.console.session_absolute_s,
            path="/console",
            secure=_secure(request, settings),
            httponly=True,
            samesite="strict",
        )
        signed_in.delete_cookie(SIGN_IN_COOKIE, path=SIGN_IN_PATH)
        return signed_in

    @staticmethod
    def _sign_in_cookie(request: Request[Any, Any, Any], settings: AppSettings, token: str) -> Cookie:
        return Cookie(
            key=SIGN_IN_COOKIE,
            value=token,
            max_age=SIGN_IN_COOKIE_MAX_AGE_S,
            path=SIGN_IN_PATH,
            secure=_secure(request, settings),
            httponly=True,
            samesite="strict",
        )

    @post("/sign-out", opt={"mirrors": ANY_PAGE}, status_code=HTTP_303_SEE_OTHER)
    async def sign_out(self, request: Request[Any, Any, Any], pool: Pool) -> Response[Any]:
        await _form(request)
        await console.sign_out(pool, request.cookies.get(SESSION_COOKIE))
        response = Redirect(SIGN_IN_PATH, status_code=HTTP_303_SEE_OTHER)
        response.delete_cookie(SESSION_COOKIE, path="/console")
        return response

    # Finding a user ----------------------------------------------------------------------------------

    @get("", opt={"mirrors": ANY_PAGE})
    async def home(self, request: Request[Any, Any, Any]) -> Template:
        return render(request, "home.html", query="", matches=None)

    @get("/search", opt={"mirrors": ANY_PAGE})
    async def search(
        self,
        request: Request[Any, Any, Any],
        pool: Pool,
        ledger_service: LedgerService,
        q: Annotated[str, QueryParameter(max_length=console.SEARCH_CHARS_MAX)] = "",
    ) -> Response[Any]:
        matches = await console.search(pool, ledger_service, q)
        users = {match.user_id for match in matches}
        if len(users) == 1:
            return _go(request, f"/console/users/{_path_segment(users.pop())}")
        return render(request, "home.html", query=q, matches=matches)

    # The user page -----------------------------------------------------------------------------------

    @get("/users/{user_id:str}", opt={"mirrors": console.USER_PAGE_OPERATIONS})
    async def user_page(
        self,
        request: Request[Any, Any, Any],
        pool: Pool,
        ledger_service: LedgerService,
        settings: AppSettings,
        user_id: UserIdPath,
        done: Annotated[
            str | None, QueryParameter(max_length=100, pattern=r"^(transaction|approval):[0-9]{1,19}$(?!\n)")
        ] = None,
    ) -> Template:
        allowed = _allowed(request.app, _session(request))
        page = await console.user_page(pool, ledger_service, user_id, may=tuple(allowed), limit=ROWS_PER_PAGE)
        kind, _, number = (done or "").partition(":")
        return render(
            request,
            "user.html",
            page=page,
            done_kind=kind or None,
            done_id=int(number) if number else None,
            limits=settings.api,
        )

    @get("/users/{user_id:str}/journal", opt={"mirrors": (console.LEDGER_OPERATION,)})
    async def journal(
        self,
        request: Request[Any, Any, Any],
        pool: Pool,
        ledger_service: LedgerService,
        user_id: UserIdPath,
        cursor: CursorQuery = None,
    ) -> Template:
        view = await console.journal(pool, ledger_service, user_id, limit=ROWS_PER_PAGE, cursor=cursor)
        template = "partials/journal_rows.html" if _is_htmx(request) else "journal_page.html"
        return render(request, template, user_id=user_id, journal=view)

    @get("/users/{user_id:str}/generations", opt={"mirrors": (console.GENERATIONS_OPERATION,)})
    async def generations_list(
        self,
        request: Request[Any, Any, Any],
        pool: Pool,
        ledger_service: LedgerService,
        settings: AppSettings,
        user_id: UserIdPath,
        cursor: CursorQuery = None,
        image_id: ImageIdQuery = None,
    ) -> Template:
        view = await console.generations_view(
            pool, ledger_service, user_id, image_id=image_id, limit=ROWS_PER_PAGE, cursor=cursor
        )
        template = "partials/generations.html" if _is_htmx(request) else "generations_page.html"
        return render(request, template, user_id=user_id, generations=view, limits=settings.api)

    @get(
        "/generations/{generation_id:str}/video",
        opt={"mirrors": ("getGenerationVideo",)},
        media_type="video/mp4",
    )
    async def video(self, pool: Pool, generation_id: FromPath[str]) -> File:
        path = await generations.video_file(pool, generation_id)
        return File(
            path=path, media_type="video/mp4", filename=f"{generation_id}.mp4", content_disposition_type="inline"
        )

    @get(
        "/generations/{generation_id:str}/captions.vtt",
        opt={"mirrors": ("getGenerationVideo",)},
        media_type="text/vtt",
    )
    async def captions(self, pool: Pool, generation_id: FromPath[str]) -> Response[str]:
        """The videos have no speech: their captions say what the soundtrack is, for who cannot hear it."""
        generation = await generations.get(pool, generation_id)
        words = "[generated soundtrack, no speech]" if generation.audio else "[no sound]"
        end = f"00:00:{min(generation.duration_s, 59):02d}.000"
        return Response(f"WEBVTT\n\n00:00:00.000 --> {end}\n{words}\n", media_type="text/vtt")

    # Actions -----------------------------------------------------------------------------------------

    @post("/users/{user_id:str}/grants/preview", opt={"mirrors": ("createGrant",)}, status_code=200)
    async def grant_preview(
        self,
        request: Request[Any, Any, Any],
        pool: Pool,
        ledger_service: LedgerService,
        settings: AppSettings,
        user_id: UserIdPath,
    ) -> Template:
        fields = _with_preview_reason(await _form(request))
        caller = _session(request).caller
        return await _preview_page(
            request,
            lambda: accounts.preview_grant(
                pool, ledger_service, caller, user_id, _grant_body(fields), limits=settings.api
            ),
        )

    @post("/users/{user_id:str}/grants", opt={"mirrors": ("createGrant",)}, status_code=200)
    async def grant(
        self,
        request: Request[Any, Any, Any],
        pool: Pool,
        ledger_service: LedgerService,
        settings: AppSettings,
        user_id: UserIdPath,
    ) -> Response[Any]:
        fields = await _form(request)
        answer = await accounts.grant(
            pool,
            ledger_service,
            _session(request).caller,
            user_id,
            _grant_body(fields),
            key=_idempotency_key(fields),
            limits=settings.api,
        )
        done = f"approval:{answer.pending.approval_id}" if answer.pending else f"transaction:{_granted_id(answer)}"
        return _go(request, f"/console/users/{_path_segment(user_id)}?done={done}")

    @post("/generations/{generation_id:str}/refund/preview", opt={"mirrors": ("refundGeneration",)}, status_code=200)
    async def refund_preview(
        self,
        request: Request[Any, Any, Any],
        pool: Pool,
        ledger_service: LedgerService,
        settings: AppSettings,
        generation_id: FromPath[str],
    ) -> Template:
        fields = _with_preview_reason(await _form(request))
        caller = _session(request).caller
        return await _preview_page(
            request,
            lambda: generations.preview_refund(
                pool, ledger_service, caller, generation_id, _refund_body(fields), limits=settings.api
            ),
        )

    @post("/generations/{generation_id:str}/refund", opt={"mirrors": ("refundGeneration",)}, status_code=200)
    async def refund(
        self,
        request: Request[Any, Any, Any],
        pool: Pool,
        ledger_service: LedgerService,
        settings: AppSettings,
        generation_id: FromPath[str],
    ) -> Response[Any]:
        fields = await _form(request)
        answer = await generations.refund(
            pool=pool,
            ledger_service=ledger_service,
            caller=_session(request).caller,
            generation_id=generation_id,
            body=_refund_body(fields),
            key=_idempotency_key(fields),
            limits=settings.api,
        )
        if answer.pending is not None:
            done = f"approval:{answer.pending.approval_id}"
        else:
            assert answer.refunded is not None
            done = f"transaction:{answer.refunded.transaction_id}"
        return _go(request, f"/console/users/{_path_segment(answer.user_id)}?done={done}")

    # Approvals ---------------------------------------------------------------------------------------

    @get("/approvals", opt={"mirrors": ("listApprovals",)})
    async def approvals_page(self, request: Request[Any, Any, Any], pool: Pool, cursor: CursorQuery = None) -> Template:
        pending = await approvals.list_approvals(pool, status="pending", limit=ROWS_PER_PAGE, cursor=None)
        decided = await approvals.list_approvals(pool, status=None, limit=ROWS_PER_PAGE, cursor=cursor)
        return render(request, "approvals.html", pending=pending, recent=decided)

    @post("/approvals/{approval_id:int}/approve", opt={"mirrors": ("approveApproval",)}, status_code=200)
    async def approve(
        self,
        request: Request[Any, Any, Any],
        pool: Pool,
        ledger_service: LedgerService,
        approval_effects: Effects,
        approval_id: ApprovalIdPath,
    ) -> Response[Any]:
        fields = await _form(request)
        decision = _struct(ApprovalDecision, {"reason": fields.get("reason", "")})
        approval = await approvals.approve(
            pool, ledger_service, _session(request).caller, approval_id, decision, approval_effects
        )
        return _go(request, f"/console/users/{_path_segment(approval.user_id)}?done=approval:{approval.id}")

    @post("/approvals/{approval_id:int}/reject", opt={"mirrors": ("rejectApproval",)}, status_code=200)
    async def reject(
        self, request: Request[Any, Any, Any], pool: Pool, approval_effects: Effects, approval_id: ApprovalIdPath
    ) -> Response[Any]:
        fields = await _form(request)
        decision = _struct(ApprovalDecision, {"reason": fields.get("reason", "")})
        approval = await approvals.reject(pool, _session(request).caller, approval_id, decision, approval_effects)
        return _go(request, f"/console/users/{_path_segment(approval.user_id)}?done=approval:{approval.id}")

    # Webhooks ----------------------------------------------------------------------------------------

    @get("/webhooks", opt={"mirrors": ("listWebhookEndpoints",)})
    async def webhooks_page(self, request: Request[Any, Any, Any], read_pool: Pool, settings: AppSettings) -> Template:
        # Every endpoint on one page: there are at most WEBHOOK_ENDPOINTS_MAX.
        endpoints = await webhooks.overview(read_pool, limit=settings.webhooks.endpoints_max)
        return render(request, "webhooks.html", endpoints=endpoints)

    # Finance -----------------------------------------------------------------------------------------

    @get("/finance", opt={"mirrors": FINANCE})
    async def finance(self, request: Request[Any, Any, Any]) -> Template:
        return render(request, "finance/index.html")

    @get("/finance/audit", opt={"mirrors": ("auditLedger",)})
    async def audit(
        self, request: Request[Any, Any, Any], ledger_service: LedgerService, audit_checks: AuditChecks
    ) -> Template:
        report = await accounts.audit(ledger_service, audit_checks)
        return render(request, "finance/audit.html", report=report)

    @get("/finance/reconciliation", opt={"mirrors": ("reconcileStripe",)})
    async def reconciliation(
        self,
        request: Request[Any, Any, Any],
        read_pool: Pool,
        since: Annotated[str | None, QueryParameter(max_length=40)] = None,
        until: Annotated[str | None, QueryParameter(max_length=40)] = None,
    ) -> Template:
        window_since, window_until = _window(since, until)
        report = await billing.reconcile(read_pool, since=window_since, until=window_until)
        return render(request, "finance/reconciliation.html", report=report, since=since or "", until=until or "")

    @get("/finance/rollforward", opt={"mirrors": ("getRollforward",)})
    async def rollforward(
        self,
        request: Request[Any, Any, Any],
        pool: Pool,
        since: Annotated[str | None, QueryParameter(max_length=40)] = None,
        until: Annotated[str | None, QueryParameter(max_length=40)] = None,
    ) -> Template:
        window_since, window_until = _window(since, until) if since or until else _last_month()
        report = await finance.rollforward(pool, since=window_since, until=window_until)
        periods = await finance.list_periods(pool, limit=PERIODS_LISTED, cursor=None)
        return render(
            request,
            "finance/rollforward.html",
            report=report,
            periods=periods.items,
            since=since or f"{report.since:%Y-%m-%d}",
            until=until or f"{report.until:%Y-%m-%d}",
        )

    @get("/finance/exports", opt={"mirrors": ("listExports",)})
    async def exports_page(self, request: Request[Any, Any, Any], pool: Pool, cursor: CursorQuery = None) -> Template:
        page = await finance.list_exports(pool, limit=ROWS_PER_PAGE, cursor=cursor)
        template = "partials/exports_table.html" if _is_htmx(request) else "finance/exports.html"
        return render(
            request, template, exports=page, working=any(e.status in {"pending", "running"} for e in page.items)
        )

    @post("/finance/exports", opt={"mirrors": ("createExport",)}, status_code=200)
    async def create_export(
        self, request: Request[Any, Any, Any], pool: Pool, export_runner: ExportRunner
    ) -> Response[Any]:
        fields = await _form(request)
        since, until = _window(fields.get("since") or None, fields.get("until") or None)
        values = {"dataset": fields.get("dataset", ""), "format": fields.get("format", "")}
        values |= {name: bound.isoformat() for name, bound in (("since", since), ("until", until)) if bound}
        body = _struct(finance.ExportCreate, values)
        accepted = await finance.create_export(pool, export_runner, _session(request).caller, body)
        return _go(request, f"/console/finance/exports?created={accepted.id}")

    @get("/finance/exports/{export_id:str}/file", opt={"mirrors": ("getExportFile",)})
    async def export_download(self, pool: Pool, settings: AppSettings, export_id: ExportIdPath) -> File:
        path, export = await finance.export_file(pool, settings.finance, export_id)
        return File(path=path, media_type=finance.MEDIA_TYPES[export.format], filename=path.name)

    @get("/finance/seal", opt={"mirrors": ("getSeal", "verifySeal")})
    async def seal(
        self,
        request: Request[Any, Any, Any],
        pool: Pool,
        settings: AppSettings,
        seal_signer: NamedDependency[seal.Signer],
        verify: Annotated[bool, QueryParameter(description="Also verify the latest checkpoints now.")] = False,
    ) -> Template:
        seal_status = await seal.status(pool, settings.seal, seal_signer)
        verification = await seal.verify_window(pool, settings.seal, seal_signer, checkpoint=None) if verify else None
        return render(request, "finance/seal.html", seal=seal_status, verification=verification, settings=settings.seal)


def _last_month() -> tuple[datetime, datetime]:
    this_month = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (this_month - timedelta(days=1)).replace(day=1), this_month


def _granted_id(answer: accounts.GrantAnswer) -> int:
    assert answer.granted is not None
    return answer.granted.transaction_id


async def _preview_page(request: Request[Any, Any, Any], attempt: Callable[[], Awaitable[Preview]]) -> Template:
    """The balance after an action, or why it would be refused, in place of the form's preview line."""
    try:
        preview = await attempt()
    except (DomainError, ledger.LedgerRuleError) as refused:
        refusal = refused.detail if isinstance(refused, DomainError) else str(refused)
        return render(request, "partials/preview.html", preview=None, refusal=refusal)
    return render(request, "partials/preview.html", preview=preview, refusal=None)


_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _window(since: str | None, until: str | None) -> tuple[datetime | None, datetime | None]:
    """The form's dates (a date is its midnight UTC) or RFC 3339 instants, as the API's window."""
    bounds: list[datetime | None] = []
    for name, text in (("since", since), ("until", until)):
        if not text:
            bounds.append(None)
            continue
        value = f"{text}T00:00:00Z" if _DATE.fullmatch(text) else text
        try:
            bounds.append(aware(msgspec.convert(value, datetime, strict=True), name))
        except msgspec.ValidationError:
            raise ValidationFailed(name, "must be a date (2026-11-01) or an RFC 3339 date-time") from None
    if bounds[0] is not None and bounds[1] is not None and bounds[0] > bounds[1]:
        raise ValidationFailed("until", "must not be before since")
    return bounds[0], bounds[1]


def _path_segment(text: str) -> str:
    return quote(text, safe="")


def console_static_router() -> Router:
    """The console's own CSS and JavaScript, and the vendored htmx, Pico CSS and Chart.js: public, like any
    stylesheet (nothing in them is secret), served by this service so the console needs no internet."""
    return create_static_files_router(
        path=STATIC_PATH,
        directories=[OWN_STATIC_DIR, VENDOR_STATIC_DIR],
        name="console_static",
        opt={"public": True},
        include_in_schema=False,
    )
