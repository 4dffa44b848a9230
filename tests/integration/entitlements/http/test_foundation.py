"""The HTTP foundation through the real app and a real database: ops endpoints, pricing acceptance,
problem+json errors, request ids, authentication, the role matrix, and the body size limit."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import date, datetime
from typing import Any

import asyncpg
import pytest
from litestar import Litestar, get
from litestar.handlers import HTTPRouteHandler
from litestar.routes import HTTPRoute
from litestar.testing import AsyncTestClient

from entitlements.app import create_app
from entitlements.http import OPENAPI_PATH_PREFIX
from entitlements.keys import ROLES, create_key
from entitlements.settings import Settings
from tests.support.app import settings_for
from tests.support.database import clone_database, drop_database, dsn_with_database

PROBLEM = "application/problem+json"
ALL_ROLES = frozenset(ROLES)
PUBLIC = "public"
BODY_METHODS = {"POST", "PUT", "PATCH"}
_idempotency_keys = itertools.count(1)

# The roles column of API.md, literally. Extend it as endpoints are added to the contract: each entry
# is checked against the app whenever the app serves that endpoint. "any" is every role; "Stripe
# signature" and "none" are public (no API key). Admin may call everything regardless.
API_MD_ROLES: dict[str, frozenset[str] | str] = {
    "GET /healthz": PUBLIC,
    "GET /readyz": PUBLIC,
    "GET /metrics": PUBLIC,
    "GET /v1/pricing": ALL_ROLES,
    "POST /v1/quotes": ALL_ROLES,
    "POST /v1/prompts/advice": ALL_ROLES,
    "GET /v1/users/{user_id}/entitlements": frozenset({"service", "support"}),
    "PUT /v1/users/{user_id}/subscription": frozenset({"admin"}),
    "POST /v1/users/{user_id}/grants": frozenset({"support", "admin"}),
    "POST /v1/users/{user_id}/generations": frozenset({"service"}),
    "GET /v1/generations/{id}": frozenset({"service", "support"}),
    "GET /v1/users/{user_id}/generations": frozenset({"service", "support"}),
    "GET /v1/generations/{id}/video": frozenset({"service", "support"}),
    "POST /v1/generations/{id}/refund": frozenset({"support", "admin"}),
    "GET /v1/users/{user_id}/ledger": frozenset({"support", "finance"}),
    "GET /v1/ledger/transactions": frozenset({"finance"}),
    "GET /v1/ledger/audit": frozenset({"finance"}),
    "POST /v1/stripe/webhook": PUBLIC,
    "GET /v1/keys": frozenset({"admin"}),
    "POST /v1/keys": frozenset({"admin"}),
    "POST /v1/keys/{id}/revoke": frozenset({"admin"}),
    "POST /v1/keys/{id}/rotate": frozenset({"admin"}),
    "GET /v1/approvals": frozenset({"support", "admin"}),
    "POST /v1/approvals/{id}/approve": frozenset({"support", "admin"}),
    "POST /v1/approvals/{id}/reject": frozenset({"support", "admin"}),
    "GET /v1/ledger/seal": frozenset({"finance"}),
    "GET /v1/ledger/checkpoints": frozenset({"finance"}),
    "GET /v1/ledger/transactions/{id}/proof": frozenset({"support", "finance"}),
    "GET /v1/ledger/verify": frozenset({"finance"}),
}
# Endpoints that exist today; the contract table must match at least these.
ENDPOINTS_PRESENT_NOW = {"GET /v1/pricing", "POST /v1/quotes", "POST /v1/prompts/advice"}


# --- fixtures -----------------------------------------------------------------------------------------


# Most tests here only read: they share one database (a clone of the migrated template) and one app per
# module, which keeps the module fast. Tests that break their database get their own (`database_url`).


@pytest.fixture(scope="module")
async def shared_database_url(postgres_admin_dsn: str, template_database: str) -> AsyncIterator[str]:
    name = await clone_database(postgres_admin_dsn, template_database)
    yield dsn_with_database(postgres_admin_dsn, name)
    await drop_database(postgres_admin_dsn, name)


@pytest.fixture(scope="module")
def settings(shared_database_url: str) -> Settings:
    return settings_for(shared_database_url)


@pytest.fixture(scope="module")
def app(settings: Settings) -> Litestar:
    return create_app(settings)


@pytest.fixture(scope="module")
async def client(app: Litestar) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(app=app) as test_client:
        yield test_client


@pytest.fixture
async def shared_pool(shared_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    created = await asyncpg.create_pool(shared_database_url, min_size=1, max_size=2)
    assert created is not None
    yield created
    await created.close()


@pytest.fixture(scope="module")
async def keys(shared_database_url: str) -> dict[str, str]:
    """One raw API key per role."""
    connection = await asyncpg.connect(shared_database_url)
    try:
        created = {}
        for role in ROLES:
            raw_key = (await create_key(connection, role=role, name=f"test-{role}")).key
            created[role] = raw_key
        return created
    finally:
        await connection.close()


def bearer(raw_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {raw_key}"}


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM), response.headers
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    assert body["status"] == status
    assert {"type", "title", "status", "detail", "code"} <= set(body)
    return body


# --- ops endpoints and OpenAPI -----------------------------------------------------------------------


async def test_healthz_and_readyz_answer_200(client: AsyncTestClient[Litestar]) -> None:
    health = await client.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    # Never a reason to take the process out of service, but said: this one has no signing key.
    assert ready.json()["seal"].startswith("not sealing: no signing key")


async def test_readyz_says_not_ready_when_the_database_is_gone(postgres_admin_dsn: str, database_url: str) -> None:
    async with AsyncTestClient(app=create_app(settings_for(database_url))) as own_client:
        assert (await own_client.get("/readyz")).status_code == 200
        database = database_url.rsplit("/", 1)[1].split("?")[0]
        admin = await asyncpg.connect(postgres_admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE "{database}" WITH (FORCE)')
        finally:
            await admin.close()

        # The first call may find a pooled connection that the drop severed; neither may be a 500.
        for _ in range(2):
            response = await own_client.get("/readyz")
            assert_problem(response, 503, "not_ready")
        assert (await own_client.get("/healthz")).status_code == 200


async def test_metrics_is_prometheus_text_with_request_counts(client: AsyncTestClient[Litestar]) -> None:
    await client.get("/healthz")
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "# TYPE moments_http_requests_total counter" in response.text
    assert re.search(r'moments_http_requests_total\{[^}]*route="/healthz"[^}]*\} \d', response.text)


async def test_openapi_document_gives_every_operation_an_explicit_operation_id(
    client: AsyncTestClient[Litestar], app: Litestar
) -> None:
    response = await client.get(f"{OPENAPI_PATH_PREFIX}/openapi.json")
    assert response.status_code == 200
    document = response.json()
    operations = [
        (method.upper(), path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in {"get", "post", "put", "patch", "delete"}
    ]
    assert operations
    missing = [f"{m} {p}" for m, p, op in operations if not op.get("operationId")]
    assert not missing, f"operations without an operationId: {missing}"
    ids = [op["operationId"] for _, _, op in operations]
    assert len(ids) == len(set(ids)), f"duplicate operationIds: {ids}"
    # Explicit, not generated by Litestar from the path: each one is what a handler declared.
    declared = {
        handler.operation_id
        for _, _, handler in our_handlers(app)
        if isinstance(handler.operation_id, str) and handler.operation_id
    }
    generated = sorted(set(ids) - declared)
    assert not generated, f"operationIds Litestar generated (declare operation_id=...): {generated}"


@pytest.fixture(scope="module")
async def document(client: AsyncTestClient[Litestar]) -> dict[str, Any]:
    response = await client.get(f"{OPENAPI_PATH_PREFIX}/openapi.json")
    assert response.status_code == 200
    served: dict[str, Any] = response.json()
    return served


def operations_of(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in {"get", "post", "put", "patch", "delete"}:
                yield method.upper(), path, operation


def handler_by_operation_id(app: Litestar) -> dict[str, HTTPRouteHandler]:
    return {
        handler.operation_id: handler for _, _, handler in our_handlers(app) if isinstance(handler.operation_id, str)
    }


def problem_codes_of(response: dict[str, Any]) -> set[str]:
    schema = response["content"][PROBLEM]["schema"]
    assert schema["allOf"][0] == {"$ref": "#/components/schemas/Problem"}, schema
    return set(schema["allOf"][1]["properties"]["code"]["enum"])


def test_the_document_declares_a_bearer_scheme_on_every_guarded_operation(
    app: Litestar, document: dict[str, Any]
) -> None:
    schemes = document["components"]["securitySchemes"]
    assert set(schemes) == {"bearerAuth"}
    # What Swagger's Authorize button asks for: a bearer key, sent as `Authorization: Bearer <key>`.
    assert (schemes["bearerAuth"]["type"], schemes["bearerAuth"]["scheme"]) == ("http", "bearer")
    handlers = handler_by_operation_id(app)
    for method, path, operation in operations_of(document):
        handler = handlers[operation["operationId"]]
        if handler.opt.get("public"):
            assert "security" not in operation, (method, path)
            assert "Public" in operation["description"], (method, path)
        else:
            assert operation["security"] == [{"bearerAuth": []}], (method, path)
            declared = [role for role in handler.opt["roles"] if role != "admin"]
            assert operation["description"].endswith("Roles: " + ", ".join([*declared, "admin"]) + "."), operation


def test_every_idempotent_operation_documents_its_required_key_and_its_answers(
    app: Litestar, document: dict[str, Any]
) -> None:
    handlers = handler_by_operation_id(app)
    idempotent = [
        (m, p, op) for m, p, op in operations_of(document) if handlers[op["operationId"]].opt.get("idempotent")
    ]
    assert {op["operationId"] for _, _, op in idempotent} >= {"createGrant", "createGeneration", "refundGeneration"}
    for method, path, operation in idempotent:
        headers = {p["name"]: p for p in operation["parameters"] if p["in"] == "header"}
        key = headers["Idempotency-Key"]
        assert key["required"] is True, (method, path)
        assert key["schema"]["type"] == "string", key
        assert (key["schema"]["minLength"], key["schema"]["maxLength"]) == (1, 255)
        assert problem_codes_of(operation["responses"]["400"]) == {"idempotency_key_required"}
        assert "idempotency_key_reused" in problem_codes_of(operation["responses"]["409"])


def test_the_stripe_webhook_documents_its_signature_header_and_answers(document: dict[str, Any]) -> None:
    operation = document["paths"]["/v1/stripe/webhook"]["post"]
    headers = {p["name"]: p for p in operation["parameters"] if p["in"] == "header"}
    assert headers["Stripe-Signature"]["required"] is True
    assert operation["requestBody"]["content"]["application/json"]["schema"]["type"] == "object"
    assert {"200", "202", "400", "413", "422", "503"} <= set(operation["responses"])
    assert problem_codes_of(operation["responses"]["400"]) == {"invalid_signature", "livemode_mismatch"}
    assert "stripe_not_configured" in problem_codes_of(operation["responses"]["503"])


def test_every_failure_an_operation_can_answer_is_a_documented_problem(app: Litestar, document: dict[str, Any]) -> None:
    problem = document["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "title", "status", "detail", "code"}
    assert {"instance", "errors", "allowed", "required", "available", "owed"} <= set(problem["properties"])
    handlers = handler_by_operation_id(app)
    for method, path, operation in operations_of(document):
        handler = handlers[operation["operationId"]]
        responses = operation["responses"]
        failures = {status: response for status, response in responses.items() if int(status) >= 400}
        for status, response in failures.items():
            assert set(response["content"]) == {PROBLEM}, (method, path, status)
        statuses = set(failures)
        expected = set()
        if not handler.opt.get("public"):
            expected |= {"401", "403"}
            assert responses["401"]["headers"]["WWW-Authenticate"]["required"] is True
        if operation.get("parameters") or operation.get("requestBody"):
            expected.add("422")
        if operation.get("requestBody"):
            expected.add("413")
        if handler.opt.get("idempotent"):
            expected |= {"400", "409"}
        if "{generation_id}" in path or "{key_id}" in path:
            expected.add("404")
        assert expected <= statuses, (method, path, sorted(expected - statuses))
        # Litestar's generic 400 (a ValidationException body) is gone where we never answer 400.
        if "400" in responses:
            assert handler.opt.get("idempotent") or operation["operationId"] == "stripeWebhook", (method, path)
    generation = document["paths"]["/v1/users/{user_id}/generations"]["post"]["responses"]
    assert problem_codes_of(generation["402"]) == {"insufficient_moments", "in_debt"}
    assert problem_codes_of(generation["403"]) == {"forbidden", "tier_required"}
    assert "not_ready" in problem_codes_of(document["paths"]["/readyz"]["get"]["responses"]["503"])


def test_every_success_body_has_a_schema(document: dict[str, Any]) -> None:
    for method, path, operation in operations_of(document):
        for status, response in operation["responses"].items():
            if not status.startswith("2") or status == "204":
                continue
            content = response.get("content")
            assert content, (method, path, status)
            for media_type, body in content.items():
                schema = body["schema"]
                assert schema.get("$ref") or schema.get("type") == "string", (method, path, status, media_type)
    created = {
        ("/v1/users/{user_id}/generations", "post", "202"): "GenerationOut",
        ("/v1/generations/{generation_id}/refund", "post", "201"): "RefundOut",
        ("/v1/users/{user_id}/grants", "post", "201"): "GrantOut",
        ("/v1/keys", "post", "201"): "KeyCreated",
    }
    for (path, method, status), name in created.items():
        schema = document["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": f"#/components/schemas/{name}"}


def test_structs_that_refuse_unknown_fields_say_so_in_the_document(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    for name in ("QuoteCreate", "GenerationCreate", "GrantCreate", "RefundCreate", "KeyCreate", "GenerationOut"):
        assert schemas[name]["additionalProperties"] is False, name
    # The price grid is part of the contract: each mode's allowed values, as the service checks them.
    modes = {variant["properties"]["mode"]["const"]: variant for variant in schemas["QuoteCreate"]["oneOf"]}
    assert modes["advanced"]["properties"]["duration_s"]["minimum"] == 4
    assert modes["adult"]["properties"]["resolution"]["enum"] == ["720p", None]


async def test_the_viewer_loads_only_assets_this_service_serves(client: AsyncTestClient[Litestar]) -> None:
    page = await client.get(f"{OPENAPI_PATH_PREFIX}/swagger")
    assert page.status_code == 200
    references = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    assert len(references) >= 4, references
    assert not [ref for ref in references if "://" in ref or ref.startswith("//")], references
    assert "://" not in page.text.split("const ui = SwaggerUIBundle", 1)[0]
    for reference in references:
        asset = await client.get(reference)
        assert asset.status_code == 200, reference
        assert len(asset.content) > 500, reference
        assert "problem" not in asset.headers["content-type"], reference


# --- pricing acceptance ------------------------------------------------------------------------------


async def test_pricing_lists_every_cell_of_the_grid(client: AsyncTestClient[Litestar], keys: dict[str, str]) -> None:
    response = await client.get("/v1/pricing", headers=bearer(keys["service"]))
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body["version"], str)
    assert body["version"]
    assert datetime.fromisoformat(body["effective_from"].replace("Z", "+00:00")).tzinfo is not None
    assert body["currency"] == "moments"
    cells = body["cells"]
    assert len(cells) == 73
    advanced = [c for c in cells if c["mode"] == "advanced"]
    adult = [c for c in cells if c["mode"] == "adult"]
    assert len(advanced) == 72
    assert {(c["resolution"], c["duration_s"], c["audio"]) for c in advanced} == {
        (resolution, duration_s, audio)
        for resolution in ("480p", "720p", "1080p")
        for duration_s in range(4, 16)
        for audio in (True, False)
    }
    assert adult == [{"mode": "adult", "resolution": "720p", "duration_s": 8, "audio": False, "moments": 600}]
    for cell in cells:
        assert type(cell["moments"]) is int
        assert cell["moments"] > 0


async def test_quotes_for_the_acceptance_examples(client: AsyncTestClient[Litestar], keys: dict[str, str]) -> None:
    headers = bearer(keys["service"])
    version = (await client.get("/v1/pricing", headers=headers)).json()["version"]

    adult = await client.post("/v1/quotes", json={"mode": "adult"}, headers=headers)
    assert adult.status_code == 200, adult.text
    assert adult.json() == {
        "moments": 600,
        "price_version": version,
        "mode": "adult",
        "resolution": "720p",
        "duration_s": 8,
        "audio": False,
    }

    advanced = await client.post(
        "/v1/quotes",
        json={"mode": "advanced", "resolution": "1080p", "duration_s": 15, "audio": True},
        headers=headers,
    )
    assert advanced.status_code == 200, advanced.text
    assert advanced.json()["moments"] == 2700
    assert advanced.json()["price_version"] == version

    # Audio defaults to on for advanced.
    defaulted = await client.post(
        "/v1/quotes", json={"mode": "advanced", "resolution": "1080p", "duration_s": 15}, headers=headers
    )
    assert defaulted.status_code == 200, defaulted.text
    assert defaulted.json()["audio"] is True
    assert defaulted.json()["moments"] == 2700


async def test_every_pricing_cell_quotes_its_own_price(client: AsyncTestClient[Litestar], keys: dict[str, str]) -> None:
    headers = bearer(keys["finance"])
    pricing = (await client.get("/v1/pricing", headers=headers)).json()
    for cell in pricing["cells"]:
        request = {k: cell[k] for k in ("mode", "resolution", "duration_s", "audio")}
        response = await client.post("/v1/quotes", json=request, headers=headers)
        assert response.status_code == 200, (request, response.text)
        assert response.json() == {**request, "moments": cell["moments"], "price_version": pricing["version"]}


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


INVALID_QUOTES = [
    pytest.param(_json({"mode": "adult", "resolution": "1080p"}), "resolution", id="adult-at-1080p"),
    pytest.param(_json({"mode": "adult", "duration_s": 5}), "duration_s", id="adult-5s"),
    pytest.param(_json({"mode": "adult", "audio": True}), "audio", id="adult-with-audio"),
    pytest.param(_json({"mode": "advanced", "resolution": "720p", "duration_s": 3}), "duration_s", id="duration-3"),
    pytest.param(_json({"mode": "advanced", "resolution": "720p", "duration_s": 16}), "duration_s", id="duration-16"),
    pytest.param(
        _json({"mode": "advanced", "resolution": "720p", "duration_s": 4.5}),
        "duration_s",
        id="duration-fractional",
    ),
    pytest.param(
        _json({"mode": "advanced", "resolution": "720p", "duration_s": "4"}),
        "duration_s",
        id="duration-string",
    ),
    pytest.param(
        _json({"mode": "advanced", "resolution": "720p", "duration_s": True}), "duration_s", id="duration-bool"
    ),
    pytest.param(_json({"mode": "advanced", "resolution": "2160p", "duration_s": 4}), "resolution", id="resolution-4k"),
    pytest.param(_json({"mode": "advanced", "duration_s": 4}), "resolution", id="advanced-no-resolution"),
    pytest.param(_json({"mode": "advanced", "resolution": "720p"}), "duration_s", id="advanced-no-duration"),
    pytest.param(_json({"mode": "cinematic"}), "mode", id="unknown-mode"),
    pytest.param(_json({"mode": "adult", "colour": "red"}), "colour", id="unknown-field"),
    pytest.param(_json({"mode": 5}), "mode", id="mode-wrong-type"),
    pytest.param(_json({}), "mode", id="mode-missing"),
    pytest.param(b'{"mode": "adult"', "body", id="malformed-json"),
    pytest.param(b"", "body", id="empty-body"),
    pytest.param(_json([{"mode": "adult"}]), "body", id="json-array"),
    pytest.param(_json("adult"), "body", id="json-string"),
]


@pytest.mark.parametrize(("raw_body", "field"), INVALID_QUOTES)
async def test_invalid_quote_is_a_validation_problem_naming_the_field(
    client: AsyncTestClient[Litestar], keys: dict[str, str], raw_body: bytes, field: str
) -> None:
    response = await client.post(
        "/v1/quotes",
        content=raw_body,
        headers={**bearer(keys["service"]), "Content-Type": "application/json"},
    )
    assert response.status_code < 500, response.text
    body = assert_problem(response, 422, "validation_failed")
    fields = [error["field"] for error in body.get("errors", [])]
    assert field in fields or field in body["detail"], body


HOSTILE_BODIES = [
    pytest.param(b'{"mode": "\xff"}', "body", id="invalid-utf8"),
    pytest.param(b'{"mode": ' + b"[" * 20_000 + b"]" * 20_000 + b"}", "mode", id="deep-nesting"),
    pytest.param(
        b'{"mode": "advanced", "resolution": "720p", "duration_s": 1e400}', "duration_s", id="number-overflow"
    ),
    pytest.param(
        b'{"mode": "advanced", "resolution": "720p", "duration_s": 99999999999999999999999}',
        "duration_s",
        id="huge-int",
    ),
]


@pytest.mark.parametrize(("raw_body", "field"), HOSTILE_BODIES)
async def test_hostile_bodies_are_validation_problems_never_500(
    client: AsyncTestClient[Litestar], keys: dict[str, str], raw_body: bytes, field: str
) -> None:
    headers = {**bearer(keys["service"]), "Content-Type": "application/json"}
    response = await client.post("/v1/quotes", content=raw_body, headers=headers)
    body = assert_problem(response, 422, "validation_failed")
    assert field in body["detail"], body


async def test_an_integral_float_is_the_integer_json_says_it_is(
    client: AsyncTestClient[Litestar], keys: dict[str, str]
) -> None:
    request = {"mode": "advanced", "resolution": "1080p", "duration_s": 15.0}
    response = await client.post("/v1/quotes", json=request, headers=bearer(keys["service"]))
    assert response.status_code == 200, response.text
    assert response.json()["duration_s"] == 15
    assert response.json()["moments"] == 2700


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"])
async def test_a_body_that_is_not_json_is_415(
    client: AsyncTestClient[Litestar], keys: dict[str, str], content_type: str
) -> None:
    headers = {**bearer(keys["service"]), "Content-Type": content_type}
    response = await client.post("/v1/quotes", content=b'{"mode": "adult"}', headers=headers)
    assert_problem(response, 415, "unsupported_media_type")
    charset = {**bearer(keys["service"]), "Content-Type": "application/json; charset=utf-8"}
    assert (await client.post("/v1/quotes", content=b'{"mode": "adult"}', headers=charset)).status_code == 200


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=null", "limit"),
        ("limit=5&limit=7", "limit"),
        ("limit=5.0", "limit"),
        ("kind=null", "kind"),
        ("until=0.5", "until"),
        ("since=0001-01-01T00:00:00%2B14:00", "since"),
        ("until=9999-12-31T23:59:59-14:00", "until"),
    ],
)
async def test_query_values_are_read_as_the_document_writes_them(
    client: AsyncTestClient[Litestar], keys: dict[str, str], query: str, field: str
) -> None:
    response = await client.get(f"/v1/ledger/transactions?{query}", headers=bearer(keys["finance"]))
    body = assert_problem(response, 422, "validation_failed")
    assert body["errors"][0]["field"] == field, body


async def test_null_stays_text_for_a_text_parameter(client: AsyncTestClient[Litestar], keys: dict[str, str]) -> None:
    response = await client.get("/v1/users/user_1/generations?image_id=null", headers=bearer(keys["service"]))
    assert response.status_code == 200, response.text


async def test_options_lists_every_method_of_the_path(client: AsyncTestClient[Litestar], keys: dict[str, str]) -> None:
    for path, allowed in [
        ("/v1/keys", "GET, HEAD, OPTIONS, POST"),
        ("/v1/users/user_1/generations", "GET, HEAD, OPTIONS, POST"),
    ]:
        response = await client.options(path, headers=bearer(keys["admin"]))
        assert response.status_code == 204
        assert response.headers["allow"] == allowed


# --- request ids --------------------------------------------------------------------------------------


async def test_every_response_carries_a_request_id(client: AsyncTestClient[Litestar], keys: dict[str, str]) -> None:
    responses = [
        await client.get("/healthz"),
        await client.get("/metrics"),
        await client.get("/v1/pricing"),  # 401
        await client.get("/v1/pricing", headers=bearer(keys["service"])),  # 200
        await client.post("/v1/quotes", json={"mode": "x"}, headers=bearer(keys["service"])),  # 422
        await client.post("/v1/quotes", content=b"{", headers=bearer(keys["service"])),  # 422
    ]
    ids = [response.headers.get_list("x-request-id") for response in responses]
    assert all(len(answered) == 1 for answered in ids), ids
    assert len({answered[0] for answered in ids}) == len(ids), "each request gets its own id"


@pytest.mark.parametrize(("method", "path"), [("GET", "/no/such/path"), ("DELETE", "/healthz")])
async def test_unrouted_responses_carry_a_request_id_too(
    client: AsyncTestClient[Litestar], method: str, path: str
) -> None:
    response = await client.request(method, path, headers={"X-Request-Id": "unrouted-1"})
    assert response.status_code in {404, 405}
    assert response.headers.get("content-type", "").startswith(PROBLEM)
    assert response.headers.get("x-request-id") == "unrouted-1"


async def test_a_valid_incoming_request_id_is_echoed(client: AsyncTestClient[Litestar]) -> None:
    response = await client.get("/healthz", headers={"X-Request-Id": "req-Abc.123_x"})
    assert response.headers["x-request-id"] == "req-Abc.123_x"
    unauthorized = await client.get("/v1/pricing", headers={"X-Request-Id": "req-401"})
    assert unauthorized.headers["x-request-id"] == "req-401"


@pytest.mark.parametrize("incoming", ["has spaces", "x" * 65, "semi;colon", "new\u00e9"])
async def test_an_invalid_incoming_request_id_is_replaced(client: AsyncTestClient[Litestar], incoming: str) -> None:
    response = await client.get("/healthz", headers={"X-Request-Id": incoming.encode()})
    assert response.status_code == 200
    answered = response.headers["x-request-id"]
    assert answered != incoming
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,64}", answered)


# --- authentication -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer garbage",
        "Bearer ",
        "Bearer",
        "Basic dXNlcjpwYXNz",
        "Token mk_whatever",
        "Bearer " + "x" * 2000,
    ],
    ids=["missing", "garbage", "empty-token", "scheme-only", "basic", "token-scheme", "oversized"],
)
async def test_requests_without_a_valid_key_are_unauthorized(
    client: AsyncTestClient[Litestar], authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = await client.get("/v1/pricing", headers=headers)
    assert_problem(response, 401, "unauthorized")


async def test_a_known_key_under_another_scheme_is_unauthorized(
    client: AsyncTestClient[Litestar], keys: dict[str, str]
) -> None:
    response = await client.get("/v1/pricing", headers={"Authorization": f"Token {keys['admin']}"})
    assert_problem(response, 401, "unauthorized")
    response = await client.get("/v1/pricing", headers={"Authorization": keys["admin"]})
    assert_problem(response, 401, "unauthorized")


async def test_a_revoked_key_is_unauthorized(client: AsyncTestClient[Litestar], shared_pool: asyncpg.Pool) -> None:
    created = await create_key(shared_pool, role="admin", name="soon-revoked")
    key_id, raw_key = created.api_key.id, created.key
    assert (await client.get("/v1/pricing", headers=bearer(raw_key))).status_code == 200

    # By SQL, as another process or an operator would: the process hears of it through PostgreSQL's
    # notification, within the time a notification takes to arrive.
    await shared_pool.execute("UPDATE api_keys SET revoked_at = now() WHERE id = $1", key_id)

    response = await eventually_refused(client, raw_key)
    assert_problem(response, 401, "unauthorized")


async def eventually_refused(client: AsyncTestClient[Litestar], raw_key: str) -> Any:
    """The answer to the key once it is refused, asking every few milliseconds for at most a second."""
    for _ in range(200):
        response = await client.get("/v1/pricing", headers=bearer(raw_key))
        if response.status_code != 200:
            return response
        await asyncio.sleep(0.005)
    return response


# --- the role matrix, generated from the app ---------------------------------------------------------


def _is_framework(handler: HTTPRouteHandler) -> bool:
    return str(getattr(handler.fn, "__module__", "")).startswith("litestar.")


def our_handlers(app: Litestar) -> Iterator[tuple[HTTPRoute, str, HTTPRouteHandler]]:
    """(route, method, handler) for every HTTP handler except what Litestar adds by itself: the OpenAPI
    routes under the OpenAPI prefix, and the automatic OPTIONS handler of each route."""
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            under_openapi = route.path == OPENAPI_PATH_PREFIX or route.path.startswith(OPENAPI_PATH_PREFIX + "/")
            automatic_options = handler.http_methods == {"OPTIONS"} and _is_framework(handler)
            if _is_framework(handler) and (under_openapi or automatic_options):
                continue
            for method in sorted(handler.http_methods):
                yield route, method, handler


def _dummy(parameter: Any) -> str:
    kind = parameter.type
    if kind is int:
        # An id nothing has: the matrix must not revoke or rotate the very keys it calls with.
        return "987654321"
    if kind is float:
        return "1.5"
    if kind is uuid.UUID:
        return "00000000-0000-4000-8000-000000000001"
    if kind is datetime:
        return "2026-01-01T00:00:00Z"
    if kind is date:
        return "2026-01-01"
    if parameter.name == "user_id":
        return "user_1"
    return "1"


def concrete_path(route: HTTPRoute) -> str:
    path = route.path
    for parameter in route.path_parameters.values():
        path = path.replace("{" + parameter.full + "}", _dummy(parameter))
    assert "{" not in path, f"a path parameter was not filled in: {path}"
    return path


_PARAMETER = re.compile(r"\{[^}]*\}")


def endpoint_key(method: str, route_path: str) -> str:
    """`GET /v1/users/{}/ledger` — parameter names and types erased, for matching against API.md."""
    return f"{method} {_PARAMETER.sub('{}', route_path)}"


def allowed_roles(handler: HTTPRouteHandler) -> frozenset[str] | str:
    if handler.opt.get("public"):
        return PUBLIC
    return frozenset(handler.opt.get("roles") or ()) | {"admin"}


async def send(client: AsyncTestClient[Litestar], method: str, path: str, raw_key: str | None) -> Any:
    headers = {"Idempotency-Key": f"role-matrix-{next(_idempotency_keys)}"}
    if raw_key is not None:
        headers.update(bearer(raw_key))
    body = {"json": {}} if method in BODY_METHODS else {}
    return await client.request(method, path, headers=headers, **body)


def _is_forbidden(response: Any) -> bool:
    if response.status_code != 403:
        return False
    try:
        return bool(response.json().get("code") == "forbidden")
    except ValueError:
        return False


def undeclared_handlers(app: Litestar) -> list[str]:
    operations = {handler.operation_id for _, _, handler in our_handlers(app) if not handler.opt.get("session")}
    offenders = []
    for route, method, handler in our_handlers(app):
        roles = handler.opt.get("roles")
        if handler.opt.get("session") and not handler.opt.get("public"):
            # A console page takes the roles of the API operations it mirrors (tests/…/console/ checks them).
            mirrors = handler.opt.get("mirrors")
            if not mirrors or set(mirrors) - operations:
                offenders.append(f"{method} {route.path}: mirrors no API operation, or an unknown one: {mirrors}")
            continue
        if handler.opt.get("public"):
            if roles:
                offenders.append(f"{method} {route.path}: both public and roles={roles}")
            continue
        if not roles or not isinstance(roles, tuple | list | frozenset | set):
            offenders.append(f"{method} {route.path}: declares neither opt['public'] nor opt['roles']")
        elif set(roles) - ALL_ROLES:
            offenders.append(f"{method} {route.path}: unknown roles {sorted(set(roles) - ALL_ROLES)}")
    return offenders


def test_every_handler_declares_public_or_roles(app: Litestar) -> None:
    offenders = undeclared_handlers(app)
    assert not offenders, "handlers that do not fail closed:\n" + "\n".join(offenders)


async def test_an_undeclared_handler_is_flagged_and_refused(shared_database_url: str, keys: dict[str, str]) -> None:
    """The checks above can fail: a handler added without a declaration is listed, and the guard refuses
    it to every role but admin."""

    @get("/v1/forgotten", operation_id="forgotten")
    async def forgotten() -> dict[str, str]:
        return {"status": "served"}

    extended = create_app(settings_for(shared_database_url))
    extended.register(forgotten)
    assert undeclared_handlers(extended) == ["GET /v1/forgotten: declares neither opt['public'] nor opt['roles']"]
    async with AsyncTestClient(app=extended) as extended_client:
        assert (await send(extended_client, "GET", "/v1/forgotten", None)).status_code == 401
        for role in ("service", "support", "finance"):
            assert _is_forbidden(await send(extended_client, "GET", "/v1/forgotten", keys[role])), role
        assert (await send(extended_client, "GET", "/v1/forgotten", keys["admin"])).status_code == 200


def test_nothing_of_ours_hides_under_the_openapi_prefix(app: Litestar) -> None:
    # The guard lets every path starting with the OpenAPI prefix through without a key.
    hidden = [
        f"{method} {route.path}"
        for route in app.routes
        if isinstance(route, HTTPRoute) and route.path.startswith(OPENAPI_PATH_PREFIX)
        for handler in route.route_handlers
        if not _is_framework(handler)
        for method in handler.http_methods
    ]
    assert not hidden, f"routes of ours that the guard would serve without a key: {hidden}"


async def test_role_matrix_generated_from_the_app(
    app: Litestar, client: AsyncTestClient[Litestar], keys: dict[str, str]
) -> None:
    failures = []
    checked = 0
    for route, method, handler in our_handlers(app):
        allowed = allowed_roles(handler)
        if allowed == PUBLIC or handler.opt.get("session"):
            # Console pages answer a session, not a bearer key: tests/integration/entitlements/console/.
            continue
        path = concrete_path(route)
        anonymous = await send(client, method, path, None)
        if anonymous.status_code != 401 or anonymous.json().get("code") != "unauthorized":
            failures.append(f"{method} {path} without a key: {anonymous.status_code} {anonymous.text[:200]}")
        for role in ROLES:
            response = await send(client, method, path, keys[role])
            checked += 1
            if role in allowed:
                if response.status_code == 401 or _is_forbidden(response) or response.status_code >= 500:
                    failures.append(
                        f"{method} {path} as {role} (allowed): {response.status_code} {response.text[:200]}"
                    )
            elif not _is_forbidden(response):
                failures.append(
                    f"{method} {path} as {role} (not allowed): {response.status_code} {response.text[:200]}"
                )
    assert checked >= len(ENDPOINTS_PRESENT_NOW) * len(ROLES)
    assert not failures, "role matrix failures:\n" + "\n".join(failures)


def test_declared_roles_match_the_api_md_table(app: Litestar) -> None:
    contract = {endpoint_key(*key.split(" ", 1)): roles for key, roles in API_MD_ROLES.items()}
    served = {endpoint_key(method, route.path): handler for route, method, handler in our_handlers(app)}
    missing_now = {endpoint_key(*key.split(" ", 1)) for key in ENDPOINTS_PRESENT_NOW} - set(served)
    assert not missing_now, f"endpoints that should exist are not served: {missing_now}"

    mismatches = []
    for key, handler in sorted(served.items()):
        if key not in contract:
            continue  # API.md allows new endpoints; the generated matrix still covers them.
        expected = contract[key]
        if expected != PUBLIC:
            expected = frozenset(expected) | {"admin"}
        declared = allowed_roles(handler)
        if declared != expected:
            mismatches.append(f"{key}: API.md says {_show(expected)}, the handler allows {_show(declared)}")
    assert not mismatches, "roles differ from API.md:\n" + "\n".join(mismatches)


def _show(roles: frozenset[str] | str) -> str:
    return roles if isinstance(roles, str) else ", ".join(sorted(roles))


# --- request body limit -------------------------------------------------------------------------------


async def test_a_body_at_the_limit_is_accepted_and_past_it_is_413(
    client: AsyncTestClient[Litestar], keys: dict[str, str], settings: Settings
) -> None:
    limit = settings.api.request_body_bytes_max
    headers = {**bearer(keys["service"]), "Content-Type": "application/json"}
    payload = b'{"mode": "adult"}'
    at_limit = payload + b" " * (limit - len(payload))
    assert len(at_limit) == limit

    accepted = await client.post("/v1/quotes", content=at_limit, headers=headers)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["moments"] == 600

    too_large = await client.post("/v1/quotes", content=at_limit + b" ", headers=headers)
    assert_problem(too_large, 413, "payload_too_large")

    huge = await client.post("/v1/quotes", content=b"x" * (limit * 4), headers=headers)
    assert_problem(huge, 413, "payload_too_large")


async def test_a_streamed_body_past_the_limit_without_content_length_is_413(
    app: Litestar, client: AsyncTestClient[Litestar], keys: dict[str, str], settings: Settings
) -> None:
    """Chunked transfer: no Content-Length to check up front, so the limit must hold while reading.
    Driven through the ASGI interface directly (the test client cannot stream a request body)."""
    chunk = b" " * 1024
    chunks = settings.api.request_body_bytes_max // len(chunk) + 2
    incoming = [{"type": "http.request", "body": chunk, "more_body": True} for _ in range(chunks)]
    incoming.append({"type": "http.request", "body": b"", "more_body": False})
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send_message(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/quotes",
        "raw_path": b"/v1/quotes",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"authorization", f"Bearer {keys['service']}".encode()),
            (b"content-type", b"application/json"),
            (b"transfer-encoding", b"chunked"),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "state": {},
    }
    # Run the app on the test client's event loop, where its lifespan opened the database pool.
    client.blocking_portal.call(app, scope, receive, send_message)

    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert start["status"] == 413, body
    assert json.loads(body)["code"] == "payload_too_large"
