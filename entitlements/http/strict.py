"""Requests read as the contract says, where Litestar is lenient (called from the `before_request` hook):

- a query parameter is given at most once (Litestar keeps one of `limit=5&limit=7` silently);
- a typed query parameter is written in its type's text form, as the document says: `null` is not a value
  (Litestar reads `?limit=null` as no limit at all, `?kind=null` as no filter), an integer is digits, a
  date-time is RFC 3339 (Litestar reads `?until=0.5` as half a second after 1970); a text parameter keeps
  "null" as the text it is;
- OPTIONS answers `Allow` with every method of the path (Litestar's automatic OPTIONS handler keeps the
  methods of the first handler registered on a path, so `/v1/keys` said `OPTIONS, POST` without GET).
"""

from __future__ import annotations

import re
from datetime import datetime
from types import NoneType
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.constants import RESERVED_KWARGS
from litestar.enums import MediaType
from litestar.handlers import HTTPRouteHandler
from litestar.params import DependencyKwarg, ParameterKwarg
from litestar.routes import HTTPRoute
from litestar.status_codes import HTTP_204_NO_CONTENT
from litestar.typing import FieldDefinition

from entitlements.errors import ValidationFailed

_typed: dict[HTTPRouteHandler, dict[str, Any]] = {}
_allow: dict[str, str] = {}
_INTEGER = re.compile(r"-?[0-9]+")


def _value_type(field: FieldDefinition) -> Any:
    """The type a query parameter's text is read as, None left aside; `str` for text."""
    members = [inner.annotation for inner in field.inner_types if inner.annotation is not NoneType]
    if not field.is_optional:
        return field.annotation
    return members[0] if len(members) == 1 else object


def _query_names(request: Request[Any, Any, Any], handler: HTTPRouteHandler) -> set[str]:
    """The query parameters the handler reads, its dependencies' included (Litestar's own list)."""
    for route in request.app.routes:
        if isinstance(route, HTTPRoute):
            for candidate, kwargs_model in route.route_handler_map.values():
                if candidate is handler:
                    return {parameter.field_alias for parameter in kwargs_model.expected_query_params}
    return set()


def _typed_parameters(request: Request[Any, Any, Any], handler: HTTPRouteHandler) -> dict[str, Any]:
    """Every query parameter the handler reads whose type is not text, by its query name."""
    typed = _typed.get(handler)
    if typed is None:
        query_names = _query_names(request, handler)
        dependencies = handler.resolve_dependencies()
        signatures = [handler.parsed_fn_signature, *(provide.parsed_fn_signature for provide in dependencies.values())]
        typed = {}
        # A parameter of the handler's own wins over one of the same name in a dependency it may not even
        # use (the console's text `since` beside the API's `window`, whose `since` is a date-time).
        own = set(handler.parsed_fn_signature.parameters)
        for signature in signatures:
            for name, field in signature.parameters.items():
                kwarg = field.kwarg_definition
                if name in RESERVED_KWARGS or name in dependencies or isinstance(kwarg, DependencyKwarg):
                    continue
                if signature is not handler.parsed_fn_signature and name in own:
                    continue
                if isinstance(kwarg, ParameterKwarg) and (kwarg.header or kwarg.cookie):
                    continue
                value_type = _value_type(field)
                query_name = getattr(kwarg, "query", None) or name
                if value_type is not str and query_name in query_names:
                    typed[query_name] = value_type
        _typed[handler] = typed
    return typed


def _text_form_refusal(value_type: Any, value: str) -> str | None:
    if value == "null":
        return "must be a value; leave the parameter out to mean none"
    if value_type is int and not _INTEGER.fullmatch(value):
        return "must be a whole number, written in digits"
    if value_type is datetime:
        try:
            msgspec.convert(value, datetime, strict=True)
        except msgspec.ValidationError:
            return "must be an RFC 3339 date-time, such as 2026-11-01T00:00:00Z"
    return None


def _allow_header(request: Request[Any, Any, Any]) -> str:
    path = next(iter(sorted(request.route_handler.paths)), "")
    allow = _allow.get(path)
    if allow is None:
        methods: set[str] = {"OPTIONS"}
        for route in request.app.routes:
            if isinstance(route, HTTPRoute) and route.path == path:
                methods |= set(route.methods)
        allow = _allow[path] = with_head(methods)
    return allow


def with_head(methods: set[str] | list[str]) -> str:
    """An `Allow` value: the methods, and HEAD wherever GET is (http_semantics answers it)."""
    found = set(methods) | ({"HEAD"} if "GET" in methods else set())
    return ", ".join(sorted(found))


def options_response(request: Request[Any, Any, Any]) -> Response[None]:
    return Response(
        None, status_code=HTTP_204_NO_CONTENT, headers={"Allow": _allow_header(request)}, media_type=MediaType.TEXT
    )


def check_query(request: Request[Any, Any, Any]) -> None:
    handler = request.route_handler
    if not isinstance(handler, HTTPRouteHandler) or not request.scope.get("query_string"):
        return
    typed = _typed_parameters(request, handler)
    seen: set[str] = set()
    for name, value in request.query_params.multi_items():
        if name in seen:
            raise ValidationFailed(name, "is given more than once")
        seen.add(name)
        refusal = _text_form_refusal(typed[name], value) if name in typed else None
        if refusal is not None:
            raise ValidationFailed(name, refusal)
