"""The served OpenAPI document as the whole contract, and its viewer, offline.

Litestar generates the document from the handlers; `complete_document` then adds, in one pass over
every operation, what the handlers' signatures cannot say by themselves:
- the bearer security scheme on every operation that is not `opt["public"]`;
- every problem+json status the operation can answer, each with the codes it is answered with: derived
  from the route (roles, `opt["idempotent"]`, a body, parameters) plus `RAISES`, the per-operation table of
  the domain codes its use case may raise; Litestar's generic 400 is dropped where we never answer it;
- the roles in each description (`allowed_roles(handler)`, the guard's own answer);
- `limit`'s real maximum (PAGE_SIZE_MAX) and refinements of request bodies the composition root passes
  (the price grid, the catalog), so that a request the document calls valid is one the service takes.
`StrictStructSchemaPlugin` marks every Struct that refuses unknown fields with `additionalProperties:
false`. The viewer (Swagger UI) loads its assets from this service (`/static/swagger/`), never a CDN.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Request
from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.router import Router
from litestar.routes import HTTPRoute
from litestar.static_files import create_static_files_router
from litestar.typing import FieldDefinition

from entitlements.http.auth import OPENAPI_PATH_PREFIX, allowed_roles
from entitlements.http.problems import PROBLEM_MEDIA_TYPE, STATUS_BY_CODE

if TYPE_CHECKING:
    from litestar import Litestar
    from litestar._openapi.schema_generation import SchemaCreator
    from litestar.handlers import HTTPRouteHandler
    from litestar.openapi.spec import Schema

BEARER_SCHEME = "bearerAuth"
PROBLEM_SCHEMA = "Problem"
STATIC_DIR = Path(__file__).resolve().parent / "static"
SWAGGER_ASSETS_PATH = "/static/swagger"
SWAGGER_ASSETS_DIR = STATIC_DIR / "swagger"
_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")

# The domain codes each operation's use case may raise, beyond what its route implies (401/403 when
# guarded, 422 with parameters or a body, 413/415 with a body, 400/409/503 when idempotent). Keep it beside
# the services it describes: a code raised but not listed here fails the contract test (schemathesis).
RAISES: dict[str, tuple[str, ...]] = {
    "readyz": ("not_ready",),
    # Advice is never a gate: beyond bad input (implied by its body) it refuses nothing.
    "advisePrompt": (),
    "createGrant": ("conflict",),
    "createGeneration": ("tier_required", "insufficient_moments", "in_debt", "conflict", "concurrency_limited"),
    "getGeneration": ("not_found",),
    "getGenerationVideo": ("not_found", "video_unavailable", "unavailable"),
    "refundGeneration": ("not_found", "not_refundable", "conflict"),
    "createCheckoutSession": ("tier_required", "stripe_error", "stripe_not_configured", "stripe_unavailable"),
    "stripeWebhook": (
        "invalid_signature",
        "livemode_mismatch",
        "payload_too_large",
        "stripe_not_configured",
        "unavailable",
    ),
    "getStripeEvent": ("not_found",),
    "reapplyStripeEvent": ("not_found", "conflict"),
    "revokeKey": ("not_found",),
    "rotateKey": ("not_found", "conflict"),
    "approveApproval": ("not_found", "conflict", "not_refundable", "unavailable"),
    "rejectApproval": ("not_found", "conflict"),
    "getAccountBalance": ("not_found",),
    "getExport": ("not_found",),
    "getExportFile": ("not_found", "conflict"),
    "closePeriod": ("conflict",),
    # not_sealed: not yet in a signed checkpoint; conflict: the ledger no longer matches what was sealed.
    "getTransactionProof": ("not_found", "not_sealed", "conflict"),
    "verifySeal": ("not_found",),
    "createWebhookEndpoint": ("conflict", "idempotency_key_reused"),
    "getWebhookEndpoint": ("not_found",),
    "removeWebhookEndpoint": ("not_found",),
    "rotateWebhookSecret": ("not_found", "idempotency_key_reused"),
    "enableWebhookEndpoint": ("not_found",),
    "listWebhookDeliveries": ("not_found",),
    "redeliverEvent": ("not_found",),
}
# What a 429 rate_limited carries (draft-ietf-httpapi-ratelimit-headers; every response of a limited class
# carries the two RateLimit fields).
RATE_LIMITED_HEADERS: dict[str, Any] = {
    "Retry-After": {
        "description": "Seconds until the request would be allowed (rate_limited).",
        "schema": {"type": "integer", "minimum": 1},
    },
    "RateLimit-Policy": {
        "description": 'The class\'s policy: `"<class>";q=<burst>;w=<seconds to refill>`.',
        "schema": {"type": "string"},
    },
    "RateLimit": {
        "description": 'What remains: `"<class>";r=<requests now>;t=<seconds until the burst is whole>`.',
        "schema": {"type": "string"},
    },
}
# What an idempotent (money-changing) operation may answer because it is idempotent and writes the ledger.
IDEMPOTENT_CODES = ("idempotency_key_required", "idempotency_key_reused", "unavailable")
BODY_CODES = ("validation_failed", "payload_too_large", "unsupported_media_type")
# Operations whose handler reads its body itself (no Struct to describe it): the body, as documented.
RAW_BODIES: dict[str, dict[str, Any]] = {
    "stripeWebhook": {
        "description": "The Stripe event exactly as Stripe sent it; the signature covers these bytes.",
        "required": True,
        "content": {"application/json": {"schema": {"type": "object", "description": "A Stripe event object."}}},
    },
}

_TEXT_BODY: dict[str, Any] = {"schema": {"type": "string"}}
# Successful answers in more than the handler's one media type (a `format` parameter chooses), by operation.
EXTRA_RESPONSE_CONTENT: dict[str, dict[str, Any]] = {
    "getRollforward": {"text/csv; charset=utf-8": _TEXT_BODY},
    "getExportFile": {"text/csv; charset=utf-8": _TEXT_BODY, "application/x-ndjson": _TEXT_BODY},
}

PROBLEM_JSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": PROBLEM_SCHEMA,
    "description": "RFC 9457 problem details; `code` is the stable, machine-readable reason.",
    "required": ["type", "title", "status", "detail", "code"],
    "additionalProperties": False,
    "properties": {
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "code": {"type": "string", "enum": sorted(STATUS_BY_CODE)},
        "instance": {"type": "string", "description": "The request's path."},
        "errors": {
            "type": "array",
            "description": "Each offending field (validation_failed).",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "additionalProperties": False,
                "properties": {
                    "field": {"type": "string"},
                    "message": {"type": "string"},
                    "allowed": {"type": "array"},
                },
            },
        },
        "allowed": {"type": "array", "description": "Every acceptable value of a closed set."},
        "required": {"type": "integer", "description": "Moments the request needs (insufficient_moments)."},
        "available": {"type": "integer", "description": "Moments the user can spend (insufficient_moments)."},
        "owed": {"type": "integer", "description": "Moments the user owes (in_debt)."},
    },
}


class StrictStructSchemaPlugin(StructSchemaPlugin):
    """Litestar's Struct schemas, plus `additionalProperties: false` where the Struct refuses unknown fields
    (what msgspec answers a stray field with, the document says)."""

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: SchemaCreator) -> Schema:
        schema = super().to_openapi_schema(field_definition, schema_creator)
        config = getattr(field_definition.type_, "__struct_config__", None)
        if isinstance(config, msgspec.structs.StructConfig) and config.forbid_unknown_fields:
            schema.additional_properties = False
        return schema


def _handlers_by_operation(app: Litestar) -> dict[tuple[str, str], HTTPRouteHandler]:
    found: dict[tuple[str, str], HTTPRouteHandler] = {}
    for route in app.routes:
        if isinstance(route, HTTPRoute):
            for method, (handler, _) in route.route_handler_map.items():
                found[(route.path_format or "/", method.lower())] = handler
    return found


def problem_codes(operation_id: str, handler: HTTPRouteHandler, operation: Mapping[str, Any]) -> list[str]:
    """Every problem code an operation may answer, derived from its route and `RAISES`."""
    codes: list[str] = []
    if not handler.opt.get("public"):
        # Every route with a caller is rate-limited per key (entitlements/http/limits.py), and every key is
        # read from the database: a database that does not answer is 503 on any of them.
        codes += ["unauthorized", "forbidden", "rate_limited", "unavailable"]
    if operation.get("parameters") or operation.get("requestBody"):
        codes.append("validation_failed")
    if operation.get("requestBody") and operation_id not in RAW_BODIES:
        codes += BODY_CODES
    if handler.opt.get("idempotent"):
        codes += IDEMPOTENT_CODES
    codes += RAISES.get(operation_id, ())
    return list(dict.fromkeys(codes))


def _problem_response(status: int, codes: list[str]) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "allOf": [
            {"$ref": f"#/components/schemas/{PROBLEM_SCHEMA}"},
            {"properties": {"status": {"const": status}, "code": {"enum": codes}}},
        ]
    }
    response: dict[str, Any] = {
        "description": "Problem: " + ", ".join(f"`{code}`" for code in codes),
        "content": {PROBLEM_MEDIA_TYPE: {"schema": schema}},
    }
    if status == 401:
        response["headers"] = {
            "WWW-Authenticate": {"schema": {"type": "string", "const": "Bearer"}, "required": True},
        }
    if "rate_limited" in codes:
        response["headers"] = RATE_LIMITED_HEADERS
    if status == 503:
        response["headers"] = {
            "Retry-After": {
                "schema": {"type": "string", "pattern": "^[0-9]+$"},
                "required": True,
                "description": "Seconds to wait before sending the same request again.",
            },
        }
    return response


def _roles_line(handler: HTTPRouteHandler) -> str:
    if handler.opt.get("public"):
        return "Public: no API key."
    return "Roles: " + ", ".join(allowed_roles(handler)) + "."


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A required parameter's schema without the `null` branch of an optional annotation (a header or query
    value is a string or absent, never null)."""
    branches = schema.get("oneOf")
    if not isinstance(branches, list):
        return schema
    kept = [branch for branch in branches if branch != {"type": "null"}]
    if len(kept) != 1:
        return schema
    rest = {key: value for key, value in schema.items() if key != "oneOf"}
    return {**kept[0], **rest}


def _complete_parameters(operation: dict[str, Any], page_size_max: int | None) -> None:
    for parameter in operation.get("parameters", ()):
        schema = parameter.get("schema")
        if not isinstance(schema, dict):
            continue
        if parameter.get("required") or parameter.get("in") == "query":
            # Query values are never null either: absent is how a client leaves one out.
            parameter["schema"] = schema = _without_null(schema)
        if parameter.get("in") == "query" and parameter.get("name") == "limit" and page_size_max is not None:
            schema["maximum"] = min(int(schema.get("maximum", page_size_max)), page_size_max)


def _complete_operation(
    path: str, method: str, operation: dict[str, Any], handler: HTTPRouteHandler, page_size_max: int | None
) -> None:
    operation_id = str(operation.get("operationId", f"{method} {path}"))
    if operation_id in RAW_BODIES:
        operation["requestBody"] = copy.deepcopy(RAW_BODIES[operation_id])
    _complete_parameters(operation, page_size_max)
    if not handler.opt.get("public"):
        operation["security"] = [{BEARER_SCHEME: []}]
    description = operation.get("description") or ""
    operation["description"] = (description.rstrip() + "\n\n" if description else "") + _roles_line(handler)

    responses: dict[str, Any] = operation.setdefault("responses", {})
    for response in responses.values():
        # Litestar documents a file's Last-Modified as an RFC 3339 date-time; it is an HTTP-date (RFC 9110).
        modified = response.get("headers", {}).get("last-modified") if isinstance(response, dict) else None
        if isinstance(modified, dict) and isinstance(modified.get("schema"), dict):
            modified["schema"] = {"type": "string", "description": "An HTTP-date: Wed, 02 Dec 2026 04:03:27 GMT."}
            modified["description"] = "When the file last changed (RFC 9110 HTTP-date)"
    for media_type, content in EXTRA_RESPONSE_CONTENT.get(operation_id, {}).items():
        success = responses.setdefault("200", {"description": "OK"})
        success.setdefault("content", {})[media_type] = copy.deepcopy(content)
    by_status: dict[int, list[str]] = {}
    for code in problem_codes(operation_id, handler, operation):
        by_status.setdefault(STATUS_BY_CODE[code], []).append(code)
    for status_text in [status for status in responses if status.isdigit() and int(status) >= 400]:
        # Litestar's generic "400 ValidationException": we answer 422 validation_failed instead.
        if int(status_text) not in by_status:
            del responses[status_text]
    for status, codes in sorted(by_status.items()):
        responses[str(status)] = _problem_response(status, codes)


def _refine_component(schema: dict[str, Any], refinement: Mapping[str, Any]) -> None:
    """Merges a body refinement into its component: property schemas are replaced, combinators added."""
    for name, property_schema in refinement.get("properties", {}).items():
        schema.setdefault("properties", {})[name] = copy.deepcopy(property_schema)
    for keyword in ("anyOf", "oneOf", "allOf"):
        if keyword in refinement:
            schema[keyword] = copy.deepcopy(refinement[keyword])


def complete_document(
    document: Mapping[str, Any],
    app: Litestar,
    *,
    page_size_max: int | None = None,
    body_refinements: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """A completed copy of Litestar's document (the input is left as it was)."""
    completed: dict[str, Any] = copy.deepcopy(dict(document))
    handlers = _handlers_by_operation(app)
    for path, item in completed.get("paths", {}).items():
        for method in _METHODS:
            operation = item.get(method)
            handler = handlers.get((path, method))
            if isinstance(operation, dict) and handler is not None:
                _complete_operation(path, method, operation, handler, page_size_max)
    components = completed.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas[PROBLEM_SCHEMA] = copy.deepcopy(PROBLEM_JSON_SCHEMA)
    for name, refinement in (body_refinements or {}).items():
        if name in schemas:
            _refine_component(schemas[name], refinement)
    return completed


class _Completion:
    """One completed document per source document (Litestar builds the source once and keeps it)."""

    def __init__(self, page_size_max: int | None, body_refinements: Mapping[str, Mapping[str, Any]]) -> None:
        self.page_size_max = page_size_max
        self.body_refinements = body_refinements
        self._source: Mapping[str, Any] | None = None
        self._completed: dict[str, Any] = {}

    def __call__(self, request: Request[Any, Any, Any], source: Mapping[str, Any]) -> dict[str, Any]:
        if source is not self._source:
            self._completed = complete_document(
                source, request.app, page_size_max=self.page_size_max, body_refinements=self.body_refinements
            )
            self._source = source
        return self._completed


class CompletedJsonRenderPlugin(JsonRenderPlugin):
    def __init__(self, completion: _Completion) -> None:
        super().__init__()
        self.completion = completion

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        return super().render(request, self.completion(request, openapi_schema))


class OfflineSwaggerRenderPlugin(SwaggerRenderPlugin):
    """Swagger UI from this service's own copy of swagger-ui-dist, favicon included."""

    def __init__(self, completion: _Completion) -> None:
        super().__init__(
            js_url=f"{SWAGGER_ASSETS_PATH}/swagger-ui-bundle.js",
            css_url=f"{SWAGGER_ASSETS_PATH}/swagger-ui.css",
            standalone_preset_js_url=f"{SWAGGER_ASSETS_PATH}/swagger-ui-standalone-preset.js",
            favicon=f"<link rel='icon' type='image/png' href='{SWAGGER_ASSETS_PATH}/favicon-32x32.png'>",
        )
        self.completion = completion

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        return super().render(request, self.completion(request, openapi_schema))


def openapi_config(
    *, page_size_max: int | None = None, body_refinements: Mapping[str, Mapping[str, Any]] | None = None
) -> OpenAPIConfig:
    completion = _Completion(page_size_max, body_refinements or {})
    return OpenAPIConfig(
        title="Moments",
        version="1.0.0",
        description="Billing, entitlements and the moment ledger behind video generation. Errors are "
        "RFC 9457 problem+json with a stable `code`.",
        path=OPENAPI_PATH_PREFIX,
        components=Components(
            security_schemes={
                BEARER_SCHEME: SecurityScheme(
                    type="http",
                    scheme="bearer",
                    description="`Authorization: Bearer <api key>`; each key has one role "
                    "(service, support, finance, admin).",
                )
            }
        ),
        render_plugins=[CompletedJsonRenderPlugin(completion), OfflineSwaggerRenderPlugin(completion)],
    )


def swagger_assets_router() -> Router:
    """The viewer's assets (copied from frontend/node_modules by `make`), public like the document."""
    return create_static_files_router(
        path=SWAGGER_ASSETS_PATH,
        directories=[SWAGGER_ASSETS_DIR],
        name="swagger_assets",
        opt={"public": True},
        include_in_schema=False,
    )
